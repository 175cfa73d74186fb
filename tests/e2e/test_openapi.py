"""`/openapi.json` describes the proxy's own surface, and schemathesis finds the proxy true to it.

Schemathesis runs as its CLI does in anyone's CI: over real HTTP against a proxy (on a real Redis)
in front of the fake Lunary, with every check it has. The proxy runs with PROXY_PASSTHROUGH=false,
since the document describes what the proxy answers itself: with passthrough on, a run id that is
not a UUID is Lunary's to answer (a 500, as Lunary does), which no document of ours can promise.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ProxyFactory
from tests.fake_lunary import FakeLunary

OWN_SURFACE = {
    "/v1/runs/{id}": {"get", "head"},
    "/v1/runs/{id}/related": {"get", "head"},
    "/healthz": {"get"},
    "/readyz": {"get"},
    "/metrics": {"get"},
    "/openapi.json": {"get"},
    "/admin/cache/runs/{id}": {"delete"},
}


def test_the_document_lists_every_route_the_proxy_answers_itself(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    proxy = make_proxy()

    answer = proxy.get("/openapi.json")
    head = proxy.client.head("/openapi.json")

    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/json")
    document = answer.json()
    assert document["openapi"] == "3.1.0"
    assert {path: set(ops) for path, ops in document["paths"].items()} == OWN_SURFACE
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert operation["responses"], f"{method} {path} documents no response"
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) == len(answer.content)
    assert fake.requests == []


def schemathesis_cli() -> str:
    path = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert path is not None, "schemathesis is a test dependency: pip install -e '.[test]'"
    return path


def test_schemathesis_finds_the_proxy_true_to_its_document(
    make_proxy: ProxyFactory, fake: FakeLunary, redis_url: str, tmp_path: Path
) -> None:
    key = fake.add_key()
    runs = [fake.add_run(), fake.add_run(settled=False), fake.add_run(size=4000)]
    fake.add_run(parent=runs[0])
    # half the generated ids are runs the key can read, in several spellings, so the 200s
    # (hits, misses, 304s) are checked against the document too, not only the 404s
    spellings = [*runs, runs[0].upper(), "{" + runs[1] + "}", runs[2].replace("-", "")]
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        f"[dictionaries.runs]\nvalues = {json.dumps(spellings)}\n"
        '[parameters]\n"path.id" = { dictionary = "runs", probability = 0.5 }\n'
        # credentials by the document's security schemes: Lunary's key on the cached routes
        # (as a bearer token or X-API-Key), the admin token on the purge route
        f'[auth.openapi.LunaryBearer]\nbearer = "{key}"\n'
        f'[auth.openapi.LunaryApiKey]\napi_key = "{key}"\n'
        '[auth.openapi.AdminBearer]\nbearer = "openapi-admin-token"\n'
    )
    proxy = make_proxy(redis_url=redis_url, passthrough=False, admin_token="openapi-admin-token")

    result = subprocess.run(
        [
            schemathesis_cli(), "--config-file", str(config), "run",
            f"{proxy.url}/openapi.json", "--checks", "all", "--max-examples", "30",
            "--workers", "1", "--request-timeout", "5", "--max-failures", "5",
            "--no-color",
        ],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )  # fmt: skip

    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-8000:]
    assert "No issues found" in report, report[-8000:]
    assert "WARNINGS" not in report, report[-8000:]
    assert fake.count(runs[0], "GET") >= 1, "no generated request read a known run"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_the_document_is_not_writable(make_proxy: ProxyFactory, method: str) -> None:
    proxy = make_proxy()

    answer = proxy.client.request(method, "/openapi.json", content=b"{}")

    assert answer.status_code == 405
    assert answer.headers["allow"] == "GET, HEAD"
    assert answer.json()["error"] == "method_not_allowed"
