"""The chart's `upstreamCA`: a CA bundle from a Secret or a ConfigMap, mounted read-only, with
PROXY_UPSTREAM_CA_FILE naming it; one source at most, and no typo passes the schema."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.chart import KUBERNETES_VERSIONS, Rendered, RenderError, render
from tests.deploy.test_chart import ALL_SETTINGS, kubernetes_validate, settings_env

CA_DIR = "/etc/lunary-cache-proxy/upstream-ca"
SOURCES = {
    "secret": ("upstreamCA.secretName=lunary-ca", {"secret": {"secretName": "lunary-ca"}}),
    "configMap": ("upstreamCA.configMapName=lunary-ca", {"configMap": {"name": "lunary-ca"}}),
}


def pod(rendered: Rendered) -> dict[str, Any]:
    spec: dict[str, Any] = rendered.one("Deployment")["spec"]["template"]["spec"]
    return spec


def ca_volumes(rendered: Rendered) -> list[dict[str, Any]]:
    return [v for v in pod(rendered)["volumes"] if v["name"] == "upstream-ca"]


def ca_mounts(rendered: Rendered) -> list[dict[str, Any]]:
    return [m for m in rendered.container()["volumeMounts"] if m["name"] == "upstream-ca"]


@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("key", ["ca.crt", "bundle.pem"])
def test_a_ca_from_either_source_is_mounted_and_named(source: str, key: str) -> None:
    assignment, expected = SOURCES[source]

    rendered = render(sets=(assignment, f"upstreamCA.key={key}"))

    (volume,) = ca_volumes(rendered)
    kind, reference = next(iter(expected.items()))
    assert set(volume) == {"name", kind}
    assert volume[kind] == {
        **reference,
        "defaultMode": 0o444,
        "items": [{"key": key, "path": key}],
    }
    assert ca_mounts(rendered) == [{"name": "upstream-ca", "mountPath": CA_DIR, "readOnly": True}]
    env = settings_env(rendered)
    assert env["PROXY_UPSTREAM_CA_FILE"] == f"{CA_DIR}/{key}"
    assert set(env) <= ALL_SETTINGS


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_the_mounted_ca_validates_strictly(source: str, version: str) -> None:
    result = kubernetes_validate(render(sets=(SOURCES[source][0],)).text, version)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout + result.stderr


def test_by_default_nothing_is_mounted_and_the_system_trust_alone_is_used() -> None:
    rendered = render("default-values.yaml")

    assert ca_volumes(rendered) == []
    assert ca_mounts(rendered) == []
    assert "PROXY_UPSTREAM_CA_FILE" not in settings_env(rendered)


def test_both_sources_fail_the_render() -> None:
    both = ("upstreamCA.secretName=a", "upstreamCA.configMapName=b")
    with pytest.raises(RenderError, match="upstreamCA: set either secretName or configMapName"):
        render(sets=both)


def test_a_source_and_the_setting_together_fail_the_render() -> None:
    with pytest.raises(RenderError, match=r"either upstreamCA or settings\.PROXY_UPSTREAM_CA"):
        render(sets=("upstreamCA.secretName=a", "settings.PROXY_UPSTREAM_CA_FILE=/ca.pem"))


def test_the_setting_alone_goes_to_the_config_map() -> None:
    """For a bundle the pod has already (an image built with it, a CSI volume)."""
    rendered = render(sets=("settings.PROXY_UPSTREAM_CA_FILE=/etc/ssl/corp.pem",))

    assert rendered.one("ConfigMap")["data"]["PROXY_UPSTREAM_CA_FILE"] == "/etc/ssl/corp.pem"
    assert ca_volumes(rendered) == []


@pytest.mark.parametrize(
    ("assignment", "complaint"),
    [
        ("upstreamCA.secret=a", "Additional property secret is not allowed"),
        ("upstreamCA.configmapName=a", "Additional property configmapName is not allowed"),
        ("upstreamCA.key=ca/crt", "upstreamCA.key"),
        ("upstreamCA.key=", "upstreamCA.key"),
    ],
)
def test_the_schema_refuses_typos_and_bad_keys(assignment: str, complaint: str) -> None:
    with pytest.raises(RenderError, match=complaint):
        render(sets=("upstreamCA.secretName=lunary-ca", assignment))
