# lunary-cache-proxy: a two-stage image. Dependencies are a layer of their own, installed from
# the exact versions in requirements.lock, so a code change rebuilds only the last layers.
# BASE_IMAGE must be Debian-like with python3 (3.11+) and its venv module; scripts/image-smoke
# builds from a local debootstrap base where registries cannot be pulled from.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
# Two virtualenvs: the build backend (hatchling) never reaches the one the runtime gets.
RUN python3 -m venv /opt/build && python3 -m venv /opt/lunary-cache-proxy
WORKDIR /src
COPY requirements.lock requirements-build.lock ./
RUN /opt/build/bin/pip install --no-deps --require-hashes -r requirements-build.lock \
    && /opt/lunary-cache-proxy/bin/pip install --no-deps --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY config ./config
COPY proxy ./proxy
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheels . \
    && /opt/lunary-cache-proxy/bin/pip install --no-deps /tmp/wheels/*.whl \
    && /opt/lunary-cache-proxy/bin/pip uninstall --yes setuptools pip

FROM ${BASE_IMAGE} AS runtime
# No installer in the runtime (python:*-slim ships pip and setuptools); a fixed numeric user, so
# Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
RUN if python3 -m pip --version >/dev/null 2>&1; then \
        python3 -m pip uninstall --yes --no-cache-dir pip setuptools wheel; \
    fi \
    && useradd --no-log-init --uid 10001 --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin lunary
COPY --from=build /opt/lunary-cache-proxy /opt/lunary-cache-proxy
ENV PATH=/opt/lunary-cache-proxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PROXY_HOST=0.0.0.0 \
    PROXY_PORT=8080
USER 10001:10001
EXPOSE 8080
# The base may have no curl: ask /healthz with the interpreter that is already there.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PROXY_PORT', '8080'), timeout=2)"]
ENTRYPOINT ["lunary-cache-proxy"]
