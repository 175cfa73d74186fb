"""The Helm chart: lint, strict validation for two Kubernetes versions, the fields that matter."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from config.settings import ENV_PREFIX, Settings, load_settings
from tests.deploy.chart import (
    CHART,
    KUBERNETES_VERSIONS,
    ROOT,
    SCENARIOS,
    Rendered,
    RenderError,
    helm,
    render,
)

SECRET_SETTINGS = {"PROXY_SCOPE_SECRET", "PROXY_ADMIN_TOKEN"}
ALL_SETTINGS = {f"{ENV_PREFIX}{name}".upper() for name in Settings.model_fields}


def kubernetes_validate(manifests: str, version: str) -> subprocess.CompletedProcess[str]:
    tool = str(Path(sys.executable).with_name("kubernetes-validate"))
    return subprocess.run(
        [tool, "--kubernetes-version", version, "--strict", "-"],
        input=manifests,
        capture_output=True,
        text=True,
        timeout=120,
    )


def settings_env(rendered: Rendered) -> dict[str, str]:
    """The proxy container's environment as Kubernetes would build it from the rendered objects."""
    env = dict(rendered.one("ConfigMap")["data"])
    secrets = {doc["metadata"]["name"]: doc.get("data", {}) for doc in rendered.all("Secret")}
    for variable in rendered.container().get("env", []):
        ref = variable.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            env[variable["name"]] = variable["value"]
        elif ref["name"] not in secrets:
            continue  # a Secret managed outside the chart
        elif ref["key"] in secrets[ref["name"]]:
            env[variable["name"]] = base64.b64decode(secrets[ref["name"]][ref["key"]]).decode()
        else:
            assert ref.get("optional"), f"{variable['name']} needs a key the chart did not make"
    return env


# -- every scenario ---------------------------------------------------------------------------


def test_the_ci_scenarios_cover_what_the_issue_lists() -> None:
    for needed in ("default", "sidecar", "bundled-redis", "existing-secret", "servicemonitor"):
        assert f"{needed}-values.yaml" in SCENARIOS


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint_strict_passes(scenario: str) -> None:
    result = helm("lint", "--strict", str(CHART), "--values", str(CHART / "ci" / scenario))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_manifests_validate_strictly(scenario: str, version: str) -> None:
    result = kubernetes_validate(render(scenario).text, version)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout + result.stderr


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_proxy_accepts_the_settings_each_scenario_renders(
    scenario: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Config errors would only show at pod start: load the rendered env the proxy's own way."""
    env = settings_env(render(scenario))
    assert set(env) <= ALL_SETTINGS
    for name in ALL_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(CHART)  # no .env file there
    settings = load_settings()
    assert settings.scope_secret.get_secret_value() or scenario.startswith("existing-secret")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_pod_runs_restricted(scenario: str) -> None:
    rendered = render(scenario)
    pods = [doc["spec"]["template"]["spec"] for doc in rendered.all("Deployment")]
    pods += [doc["spec"] for doc in rendered.all("Pod")]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]
            assert "memory" in container["resources"]["limits"]


# -- the default render -----------------------------------------------------------------------


def test_probes_gate_start_on_the_store_then_follow_the_process() -> None:
    """A wrong Redis URL stops a rollout at its first pod; a Redis outage later does not take
    every pod out of the Service (the proxy serves through it)."""
    proxy = render("default-values.yaml").container()
    startup = proxy["startupProbe"]
    assert startup["httpGet"] == {"path": "/readyz", "port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    assert proxy["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert proxy["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def test_a_probe_handler_can_be_replaced() -> None:
    proxy = render(
        sets=("readinessProbe.httpGet=null", "readinessProbe.tcpSocket.port=http")
    ).container()
    assert proxy["readinessProbe"]["tcpSocket"] == {"port": "http"}
    assert "httpGet" not in proxy["readinessProbe"]


def test_settings_reach_the_container_through_the_configmap() -> None:
    rendered = render("default-values.yaml")
    config = rendered.one("ConfigMap")
    assert rendered.container()["envFrom"] == [
        {"configMapRef": {"name": config["metadata"]["name"]}}
    ]
    assert config["data"]["PROXY_UPSTREAM_URL"] == "https://api.lunary.ai"
    assert not set(config["data"]) & SECRET_SETTINGS
    assert "PROXY_REDIS_URL" not in config["data"]  # empty: the in-memory store


def test_large_integers_render_without_an_exponent() -> None:
    """Helm reads YAML numbers as floats; 20971520 must not become "2.097152e+07"."""
    data = render(sets=("settings.PROXY_MAX_REQUEST_BYTES=20971520",)).one("ConfigMap")["data"]
    assert data["PROXY_MAX_REQUEST_BYTES"] == "20971520"
    data = render("production-values.yaml").one("ConfigMap")["data"]
    assert data["PROXY_MAX_ENTRY_BYTES"] == "1048576"
    assert data["PROXY_REDIS_TIMEOUT"] == "0.25"


def test_secrets_come_from_the_secret_never_the_configmap() -> None:
    rendered = render("default-values.yaml")
    secret = rendered.one("Secret")
    env = {variable["name"]: variable for variable in rendered.container()["env"]}
    scope_ref = env["PROXY_SCOPE_SECRET"]["valueFrom"]["secretKeyRef"]
    assert scope_ref == {"name": secret["metadata"]["name"], "key": "scope-secret"}
    assert env["PROXY_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert "admin-token" not in secret["data"]  # no token: the admin API stays off
    generated = base64.b64decode(secret["data"]["scope-secret"])
    assert len(generated) >= 32


def test_a_settings_change_rolls_the_pods() -> None:
    def annotations(*sets: str) -> dict[str, str]:
        # a given scope secret: a generated one differs on every `helm template`
        given = ("secret.scopeSecret=0123456789abcdef0123456789abcdef", *sets)
        template = render(sets=given).one("Deployment")["spec"]["template"]
        return dict(template["metadata"]["annotations"])

    before = annotations()
    assert annotations() == before  # stable: a no-op upgrade rolls nothing
    changed_settings = annotations("settings.PROXY_CACHE_TTL=30")
    assert changed_settings["checksum/config"] != before["checksum/config"]
    changed_secret = annotations("secret.adminToken=t0ken-t0ken-t0ken")
    assert changed_secret["checksum/secret"] != before["checksum/secret"]


def test_autoscaling_owns_the_replica_count() -> None:
    rendered = render("default-values.yaml")
    assert "replicas" not in rendered.one("Deployment")["spec"]
    hpa = rendered.one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == rendered.one("Deployment")["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2
    fixed = render(sets=("autoscaling.enabled=false", "replicaCount=3"))
    assert fixed.all("HorizontalPodAutoscaler") == []
    assert fixed.one("Deployment")["spec"]["replicas"] == 3


def test_the_secret_checksum_does_not_expose_a_weak_token() -> None:
    """The checksum covers the rendered Secret, salted by its scope secret, not the bare values."""
    token = "hunter2-hunter2-hunter2"
    rendered = render(sets=(f"secret.adminToken={token}",))
    checksum = rendered.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    bare = hashlib.sha256(json.dumps({"adminToken": token}).encode()).hexdigest()
    assert checksum["checksum/secret"] != bare
    assert "hunter2" not in json.dumps(checksum)


def test_a_recreate_strategy_drops_the_rolling_update_block() -> None:
    strategy = render(sets=("deploymentStrategy.type=Recreate",)).one("Deployment")["spec"]
    assert strategy["strategy"] == {"type": "Recreate"}


def test_disruptions_and_rollouts_keep_capacity() -> None:
    rendered = render("default-values.yaml")
    deployment = rendered.one("Deployment")
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = rendered.one("PodDisruptionBudget")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert pdb["spec"]["maxUnavailable"] == 1


def test_the_service_selects_the_proxy_pods_only() -> None:
    rendered = render("bundled-redis-values.yaml")
    service = rendered.one("Service")
    labels = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    redis_labels = rendered.one("Deployment", "redis")["spec"]["template"]["metadata"]["labels"]
    (test_pod,) = rendered.all("Pod")
    selector = service["spec"]["selector"].items()
    assert selector <= labels.items()
    assert not selector <= redis_labels.items()
    assert not selector <= test_pod["metadata"]["labels"].items()
    proxy_selector = rendered.one("Deployment")["spec"]["selector"]["matchLabels"].items()
    assert not proxy_selector <= redis_labels.items()


def test_helm_test_hook_calls_readyz_through_the_service() -> None:
    rendered = render("default-values.yaml")
    (pod,) = rendered.all("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    service = rendered.one("Service")["metadata"]["name"]
    assert f"http://{service}:8080/readyz" in " ".join(pod["spec"]["containers"][0]["command"])


def test_optional_features_are_off_by_default() -> None:
    rendered = render("default-values.yaml")
    for kind in ("ServiceMonitor", "NetworkPolicy"):
        assert rendered.all(kind) == []
    assert [doc["metadata"]["name"] for doc in rendered.all("Deployment")] == [
        "release-lunary-cache-proxy"
    ]


# -- the scenarios' own points ----------------------------------------------------------------


def test_bundled_redis_is_wired_into_the_settings() -> None:
    rendered = render("bundled-redis-values.yaml")
    redis_service = rendered.one("Service", "redis")["metadata"]["name"]
    data = rendered.one("ConfigMap")["data"]
    assert data["PROXY_REDIS_URL"] == f"redis://{redis_service}:6379/0"
    redis = rendered.one("Deployment", "redis")["spec"]["template"]["spec"]["containers"][0]
    assert "allkeys-lru" in redis["command"]
    # protected mode would refuse every connection that is not from loopback
    assert redis["command"][redis["command"].index("--protected-mode") + 1] == "no"
    (guard,) = [p for p in rendered.all("NetworkPolicy") if p["metadata"]["name"] == redis_service]
    (rule,) = guard["spec"]["ingress"]
    proxy_labels = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert rule["from"][0]["podSelector"]["matchLabels"].items() <= proxy_labels.items()
    secret = rendered.one("Secret")["data"]
    assert base64.b64decode(secret["admin-token"]) == b"trial-admin-token-not-for-production"


def test_an_existing_secret_replaces_the_charts_own() -> None:
    rendered = render("existing-secret-values.yaml")
    assert rendered.all("Secret") == []
    refs = {
        variable["name"]: variable["valueFrom"]["secretKeyRef"]
        for variable in rendered.container()["env"]
        if "valueFrom" in variable
    }
    assert refs["PROXY_SCOPE_SECRET"] == {"name": "lunary-cache-proxy-credentials", "key": "scope"}
    assert refs["PROXY_ADMIN_TOKEN"]["key"] == "admin"
    assert refs["PROXY_REDIS_URL"] == {
        "name": "lunary-cache-proxy-credentials",
        "key": "redis",
        "optional": True,
    }
    annotations = rendered.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/secret" not in annotations


def test_a_redis_url_with_credentials_stays_out_of_the_configmap() -> None:
    url = "rediss://proxy:hunter2@redis.example:6380/0"
    rendered = render(sets=(f"secret.redisUrl={url}",))
    assert "hunter2" not in json.dumps(rendered.one("ConfigMap"))
    assert base64.b64decode(rendered.one("Secret")["data"]["redis-url"]).decode() == url


def test_the_servicemonitor_scrapes_the_service_port() -> None:
    rendered = render("servicemonitor-values.yaml")
    monitor = rendered.one("ServiceMonitor")
    service = rendered.one("Service")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_the_servicemonitor_options_reach_its_endpoint() -> None:
    options = yaml.safe_load((CHART / "ci/servicemonitor-values.yaml").read_text())
    options = options["metrics"]["serviceMonitor"]
    (endpoint,) = render("servicemonitor-values.yaml").one("ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["honorLabels"] is True
    assert endpoint["interval"] == options["interval"]
    assert endpoint["scrapeTimeout"] == options["scrapeTimeout"]
    for name in ("tlsConfig", "relabelings", "metricRelabelings"):
        assert endpoint[name] == options[name], name


def test_a_servicemonitor_in_another_namespace_selects_the_release_namespace() -> None:
    monitor = render("servicemonitor-values.yaml").one("ServiceMonitor")
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["apps"]}  # render's namespace


def test_the_default_servicemonitor_stays_beside_the_service_over_plain_http() -> None:
    monitor = render(sets=("metrics.serviceMonitor.enabled=true",)).one("ServiceMonitor")
    assert "namespace" not in monitor["metadata"]
    assert "namespaceSelector" not in monitor["spec"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["scheme"] == "http"
    assert endpoint["honorLabels"] is False
    assert not {"tlsConfig", "relabelings", "metricRelabelings"} & set(endpoint)


def test_a_servicemonitor_tls_config_needs_https() -> None:
    tls = ("metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.tlsConfig.serverName=x")
    with pytest.raises(RenderError, match=r"tlsConfig is set but .*scheme is not https"):
        render(sets=tls)
    (endpoint,) = render(sets=(*tls, "metrics.serviceMonitor.scheme=https")).one("ServiceMonitor")[
        "spec"
    ]["endpoints"]
    assert endpoint["tlsConfig"] == {"serverName": "x"}


@pytest.mark.parametrize(
    ("assignment", "complaint"),
    [
        ("metrics.serviceMonitor.honorLabel=true", "honorLabel"),  # a typo
        ("metrics.serviceMonitor.scheme=ftp", "scheme"),
        ("metrics.serviceMonitor.namespace=Monitoring", r"serviceMonitor\.namespace"),
        ("metrics.serviceMonitor.relabelings[0].sourceLabel=pod", "sourceLabel"),
        ("metrics.serviceMonitor.metricRelabelings[0].modulus=0", "modulus"),
        ("metrics.serviceMonitor.interval=30", "interval"),
    ],
)
def test_the_schema_rejects_bad_servicemonitor_values(assignment: str, complaint: str) -> None:
    with pytest.raises(RenderError, match=complaint):
        render(sets=("metrics.serviceMonitor.enabled=true", assignment))


def test_the_networkpolicy_admits_only_the_proxy_port() -> None:
    rendered = render("production-values.yaml")
    policy = rendered.one("NetworkPolicy")
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert ingress["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "llm-apps"
    }
    # the chart's own `helm test` pod still reaches /readyz
    (test_pod,) = rendered.all("Pod")
    admitted = ingress["from"][1]["podSelector"]["matchLabels"]
    assert admitted.items() <= test_pod["metadata"]["labels"].items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    egress_ports = {port["port"] for rule in policy["spec"]["egress"] for port in rule["ports"]}
    assert {53, 443, 6380} <= egress_ports


def test_long_release_names_keep_the_redis_objects_apart() -> None:
    args = ["template", "team-llm-gateway-production-eu-west-1-cache", str(CHART)]
    result = helm(*args, "--set", "redis.enabled=true")
    assert result.returncode == 0, result.stderr
    names = [
        (doc["kind"], doc["metadata"]["name"]) for doc in yaml.safe_load_all(result.stdout) if doc
    ]
    assert len(names) == len(set(names))
    assert all(len(name) <= 63 for _, name in names)


def test_the_sidecar_scenario_puts_the_app_beside_the_proxy() -> None:
    rendered = render("sidecar-values.yaml")
    app = rendered.container("app")
    assert {"name": "LUNARY_API_URL", "value": "http://localhost:8080"} in app["env"]
    assert rendered.container()["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_an_image_digest_wins_over_the_tag() -> None:
    image = render("production-values.yaml").container()["image"]
    assert image == (
        "registry.example.com/platform/lunary-cache-proxy@sha256:"
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    )
    assert render("default-values.yaml").container()["image"] == "lunary-cache-proxy:0.1.0"


# -- what the chart refuses -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("assignment", "complaint"),
    [
        ("settings.PROXY_CACHE_TLL=30", "PROXY_CACHE_TLL"),  # a typo
        ("settings.PROXY_SCOPE_SECRET=abc", "PROXY_SCOPE_SECRET"),  # a secret in the ConfigMap
        ("settings.PROXY_CACHE_TTL=-1", "PROXY_CACHE_TTL"),
        ("settings.PROXY_REDIS_URL=http://redis:6379", "PROXY_REDIS_URL"),
        ("settings.PROXY_LOG_FORMAT=xml", "PROXY_LOG_FORMAT"),
        ("servce.port=80", "servce"),
        ("image.digest=latest", "digest"),
        ("settings.PROXY_REDIS_URL=rediss://default:hunter2@redis:6380/0", "PROXY_REDIS_URL"),
        ("settings.PROXY_HOST=127.0.0.1", "PROXY_HOST"),  # the kubelet probes the pod IP
        ("podDisruptionBudget.maxUnavailable=banana", "maxUnavailable"),
        ("networkPolicy.enabled=true,networkPolicy.egressPorts=null", "egressPorts"),
        ("autoscaling.minReplicas=8", "minReplicas"),
        ("secret.adminToken=short", "adminToken"),  # the proxy refuses under 16 characters
    ],
)
def test_the_schema_rejects_bad_values(assignment: str, complaint: str) -> None:
    with pytest.raises(RenderError, match=complaint):
        render(sets=(assignment,))


def test_bundled_redis_and_an_external_url_conflict() -> None:
    with pytest.raises(RenderError, match=r"either redis\.enabled or settings\.PROXY_REDIS_URL"):
        render("bundled-redis-values.yaml", sets=("settings.PROXY_REDIS_URL=redis://r:6379",))


def test_the_schema_knows_every_setting_but_the_secrets() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    known = set(schema["properties"]["settings"]["properties"])
    assert known == ALL_SETTINGS - SECRET_SETTINGS


# -- the plain sidecar example ----------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_sidecar_example_validates(version: str) -> None:
    result = kubernetes_validate((ROOT / "examples/sidecar.yaml").read_text(), version)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_sidecar_example_points_the_app_at_localhost() -> None:
    documents = list(yaml.safe_load_all((ROOT / "examples/sidecar.yaml").read_text()))
    (deployment,) = [doc for doc in documents if doc["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (proxy,) = pod["initContainers"]
    assert proxy["restartPolicy"] == "Always"  # a native sidecar: up before the app, down after
    (app,) = pod["containers"]
    assert {"name": "LUNARY_API_URL", "value": "http://localhost:8080"} in app["env"]
    proxy_env = {variable["name"] for variable in proxy["env"]}
    assert proxy_env <= ALL_SETTINGS
    assert "PROXY_SCOPE_SECRET" in proxy_env


def test_the_sidecar_example_gives_the_proxy_a_writable_spool() -> None:
    """The root filesystem is read-only; bodies over PROXY_REQUEST_BUFFER_BYTES go to /tmp."""
    documents = list(yaml.safe_load_all((ROOT / "examples/sidecar.yaml").read_text()))
    (deployment,) = [doc for doc in documents if doc["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (proxy,) = pod["initContainers"]
    (mount,) = [m for m in proxy["volumeMounts"] if m["mountPath"] == "/tmp"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume


QUANTITY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_spool_volume_holds_what_every_worker_may_spool(
    scenario: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each worker process spools up to PROXY_REQUEST_SPOOL_BYTES; past its sizeLimit the
    emptyDir gets the pod evicted."""
    rendered = render(scenario)
    for name in ALL_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    for name, value in settings_env(rendered).items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(CHART)  # no .env file there
    settings = load_settings()
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "tmp"]
    size = volume["emptyDir"]["sizeLimit"]
    size_bytes = int(size[:-2]) * QUANTITY[size[-2:]]
    assert size_bytes > settings.workers * settings.request_spool_bytes
