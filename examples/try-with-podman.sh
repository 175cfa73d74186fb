#!/usr/bin/env bash
# Try lunary-cache-proxy with plain podman, for machines without compose: the Redis and the
# proxy of examples/compose.yaml, with the same settings, in one pod; the proxy on 127.0.0.1:8080.
#
#   LUNARY_URL=https://api.lunary.ai examples/try-with-podman.sh   # build if needed, start
#   examples/try-with-podman.sh down                               # stop and remove it all
#
# --build rebuilds the image from this checkout; --dry-run prints the podman commands instead of
# running them. An exported PROXY_SCOPE_SECRET is passed on (see examples/compose.yaml).
set -euo pipefail

POD=lunary-cache-proxy
IMAGE=lunary-cache-proxy:local
REDIS_IMAGE=docker.io/library/redis:7.2-alpine
LUNARY_URL=${LUNARY_URL:-https://api.lunary.ai}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROXY_HEALTH="python3 -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)\""
REDIS_HEALTH="redis-cli ping | grep -q PONG"

action=up
build=0
dry_run=0
for arg in "$@"; do
  case $arg in
    up | down) action=$arg ;;
    --build) build=1 ;;
    --dry-run) dry_run=1 ;;
    -h | --help) sed -n '2,9s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

# Runs a podman command, its output (container and pod ids) hidden; with --dry-run, prints it.
run() {
  if [ "$dry_run" -eq 1 ]; then
    printf '%q' "$1"; shift; printf ' %q' "$@"; printf '\n'
  else
    "$@" >/dev/null
  fi
}

# Waits for a container's own health command (the one compose.yaml gives it) to pass.
wait_healthy() {
  local tries=0
  [ "$dry_run" -eq 1 ] && return
  until podman healthcheck run "$1" >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -ge 60 ]; then
      echo "$1 is not healthy after 30 s; its last log lines:" >&2
      podman logs --tail 30 "$1" >&2
      exit 1
    fi
    sleep 0.5
  done
}

if [ "$dry_run" -eq 0 ] && ! command -v podman >/dev/null 2>&1; then
  echo "podman is not installed; with docker, use examples/compose.yaml" >&2
  exit 1
fi

run podman pod rm --force --ignore "$POD"
[ "$action" = down ] && exit 0

if [ "$build" -eq 1 ] || [ "$dry_run" -eq 1 ] || ! podman image exists "$IMAGE"; then
  echo "building $IMAGE from $ROOT" >&2
  if [ "$dry_run" -eq 1 ]; then
    run podman build --tag "$IMAGE" --file "$ROOT/Dockerfile" "$ROOT"
  else
    podman build --tag "$IMAGE" --file "$ROOT/Dockerfile" "$ROOT"
  fi
fi

# Containers in a pod share one network namespace: Redis is on the pod's loopback, unpublished,
# and the name `redis` points there, so the proxy's settings are exactly compose.yaml's.
run podman pod create --name "$POD" --publish 127.0.0.1:8080:8080 --add-host redis:127.0.0.1

run podman run --detach --pod "$POD" --name "$POD-redis" --restart unless-stopped \
  --health-cmd "$REDIS_HEALTH" --health-interval 5s --health-timeout 3s --health-retries 5 \
  "$REDIS_IMAGE" \
  redis-server --protected-mode no --save "" --appendonly no --maxmemory 256mb --maxmemory-policy allkeys-lru
wait_healthy "$POD-redis"

# PROXY_SCOPE_SECRET by name only: podman passes it on when it is exported, else leaves it unset.
run podman run --detach --pod "$POD" --name "$POD-proxy" --restart unless-stopped \
  --env "PROXY_UPSTREAM_URL=$LUNARY_URL" \
  --env PROXY_REDIS_URL=redis://redis:6379/0 \
  --env PROXY_PORT=8080 \
  --env PROXY_LOG_FORMAT=console \
  --env PROXY_SCOPE_SECRET \
  --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges:true \
  --health-cmd "$PROXY_HEALTH" --health-interval 10s --health-timeout 3s \
  --health-start-period 5s --health-retries 3 \
  "$IMAGE"
wait_healthy "$POD-proxy"

[ "$dry_run" -eq 1 ] && exit 0
cat <<EOF
lunary-cache-proxy is up: http://127.0.0.1:8080 -> $LUNARY_URL
  point your app at it:  LUNARY_API_URL=http://127.0.0.1:8080
  follow its log:        podman logs --follow $POD-proxy
  stop and remove it:    $0 down
EOF
