"""Every 502 and 504 the proxy makes explains itself: the client's Cache-Status and body name the
cause, the access line and the metric count it, and one warning says it in the failure's own
words; never with a credential. Each upstream here fails in one way, over real loopback sockets."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import ProxyFactory, RunningProxy
from tests.e2e.test_access_log import access_lines
from tests.e2e.test_upstream_client import closed_port_url
from tests.fake_lunary import FakeLunary
from tests.prometheus import value
from tests.servers import ProxyProcess, ServerThread, make_tls_files
from tests.upstream_faults import (
    FaultServer,
    answers_garbage,
    reads_and_resets,
    reads_and_waits,
    silent,
)

# a credential a test sends, to find if it leaks anywhere: header, bearer token and query
API_KEY = "lcp-test-key-6b1f0d2e-LEAK-CANARY"
HEADERS = {"X-API-Key": API_KEY, "Authorization": f"Bearer {API_KEY}"}
QUERY = {"api_key": API_KEY}


@dataclass(frozen=True)
class Fault:
    """An upstream failing one way, and what the proxy must say of it."""

    upstream: Callable[[Path], AbstractContextManager[str]]  # yields its URL while it runs
    status: int
    cause: str
    says: str  # a fragment of the warning's message (the failure in its own words)
    timeout: float = 0.5


@contextlib.contextmanager
def refusing(_: Path) -> Iterator[str]:
    yield closed_port_url()


@contextlib.contextmanager
def unresolvable(_: Path) -> Iterator[str]:
    yield "http://nonexistent.invalid"  # RFC 6761: never resolves


@contextlib.contextmanager
def untrusted_tls(directory: Path) -> Iterator[str]:
    """HTTPS with a certificate from a throwaway CA the proxy does not trust."""
    with ServerThread(FakeLunary(), tls=make_tls_files(str(directory))) as server:
        yield server.url


Upstream = Callable[[Path], AbstractContextManager[str]]


def behaving(behaviour: Callable[..., None], scheme: str = "http") -> Upstream:
    @contextlib.contextmanager
    def running(_: Path) -> Iterator[str]:
        with FaultServer(behaviour, scheme) as server:
            yield server.url

    return running


FAULTS = {
    "refused": Fault(refusing, 502, "refused", "Connect call failed"),
    "dns": Fault(unresolvable, 502, "dns", "nonexistent.invalid", timeout=5),
    "tls": Fault(untrusted_tls, 502, "tls", "certificate verify failed"),
    # TCP connects; the TLS handshake never ends
    "connect_timeout": Fault(behaving(silent, "https"), 504, "connect_timeout", "no connection"),
    "read_timeout": Fault(behaving(reads_and_waits), 504, "read_timeout", "no answer"),
    "reset": Fault(behaving(reads_and_resets), 502, "reset", "reset"),
    "protocol": Fault(behaving(answers_garbage), 502, "protocol", "not an HTTP answer"),
}


def upstream_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "proxy.upstream"]


def access_records(caplog: pytest.LogCaptureFixture, request_id: str) -> list[dict[str, object]]:
    return [
        r.__dict__ for r in caplog.records if r.name == "proxy.access" and
        r.__dict__.get("request_id") == request_id
    ]  # fmt: skip


def assert_no_credential(caplog: pytest.LogCaptureFixture, *texts: str) -> None:
    for record in caplog.records:
        assert API_KEY not in repr(record.__dict__), record.getMessage()
    for text in texts:
        assert API_KEY not in text


def failing_proxy(
    make_proxy: ProxyFactory, fault: Fault, tmp_path: Path, stack: contextlib.ExitStack
) -> tuple[RunningProxy, str]:
    url = stack.enter_context(fault.upstream(tmp_path))
    return make_proxy(upstream_url=url, upstream_timeout=fault.timeout), url


@pytest.mark.parametrize("name", list(FAULTS))
def test_a_fill_that_fails_names_its_cause_everywhere(
    make_proxy: ProxyFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    fault = FAULTS[name]
    caplog.set_level(logging.INFO)
    with contextlib.ExitStack() as stack:
        proxy, url = failing_proxy(make_proxy, fault, tmp_path, stack)
        answer = proxy.get(f"/v1/runs/{uuid.uuid4()}", headers=HEADERS, params=QUERY)
        metrics = proxy.get("/metrics").text

    assert answer.status_code == fault.status
    assert answer.json() == {
        "error": "upstream_timeout" if fault.status == 504 else "upstream_unreachable",
        "message": answer.json()["message"],
        "cause": fault.cause,
    }
    assert answer.headers["cache-status"].endswith(f"; fwd=miss; detail={fault.cause}")
    [access] = access_records(caplog, answer.headers["x-request-id"])
    assert (access["status"], access["upstream_status"], access["cause"]) == (
        fault.status,
        None,
        fault.cause,
    )
    errors = "lunary_proxy_upstream_errors_total"
    assert value(metrics, errors, purpose="fill", cause=fault.cause) == 1
    [warning] = upstream_warnings(caplog)
    assert warning.levelno == logging.WARNING
    fields = warning.__dict__
    assert (fields["cause"], fields["purpose"]) == (fault.cause, "fill")
    assert fields["upstream"] == url.split("://", 1)[1] + ("" if name != "dns" else ":80")
    assert fault.says in fields["error"], fields["error"]
    assert fault.cause in warning.getMessage()
    assert_no_credential(caplog, answer.text, metrics)


@pytest.mark.parametrize("name", ["refused", "read_timeout", "protocol"])
def test_a_passthrough_that_fails_names_its_cause_too(
    make_proxy: ProxyFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    fault = FAULTS[name]
    caplog.set_level(logging.INFO)
    with contextlib.ExitStack() as stack:
        proxy, _ = failing_proxy(make_proxy, fault, tmp_path, stack)
        answer = proxy.get("/v1/runs/count", headers=HEADERS, params=QUERY)
        metrics = proxy.get("/metrics").text

    assert answer.status_code == fault.status
    assert answer.json()["cause"] == fault.cause
    [access] = access_records(caplog, answer.headers["x-request-id"])
    assert (access["route"], access["cause"]) == ("passthrough", fault.cause)
    errors = "lunary_proxy_upstream_errors_total"
    assert value(metrics, errors, purpose="passthrough", cause=fault.cause) == 1
    failures = "lunary_proxy_upstream_requests_total"
    label = "timeout" if fault.status == 504 else "unreachable"
    assert value(metrics, failures, purpose="passthrough", status=label) == 1
    [warning] = upstream_warnings(caplog)
    assert (warning.__dict__["cause"], warning.__dict__["purpose"]) == (fault.cause, "passthrough")
    assert fault.says in warning.__dict__["error"]
    assert_no_credential(caplog, answer.text, metrics)


def test_one_warning_per_cause_per_interval_and_the_rest_counted(upstream: ServerThread) -> None:
    """50 refused fills: one warning while they last, the other 49 counted in the line the
    proxy writes as it stops; every access line and the metric count all 50."""
    url = closed_port_url()
    with (
        ProxyProcess(
            PROXY_UPSTREAM_URL=url, PROXY_SCOPE_SECRET="s", PROXY_LOG_FORMAT="json"
        ) as proxy,
        httpx.Client(base_url=proxy.url, timeout=10) as client,
    ):
        answers = [
            client.get(f"/v1/runs/{uuid.uuid4()}", headers=HEADERS, params=QUERY) for _ in range(50)
        ]
        metrics = client.get("/metrics").text
        during = proxy.log()
    log = proxy.final_log

    assert [a.status_code for a in answers] == [502] * 50
    assert (
        value(metrics, "lunary_proxy_upstream_errors_total", purpose="fill", cause="refused") == 50
    )
    lines = [orjson.loads(line) for line in log.splitlines() if line.startswith("{")]
    warnings = [line for line in lines if line["logger"] == "proxy.upstream"]
    assert [(w["cause"], w["suppressed"]) for w in warnings] == [("refused", 0), ("refused", 49)]
    assert during.count('"logger":"proxy.upstream"') == 1  # the second came at the stop
    assert warnings[0]["upstream"] == url.split("://", 1)[1]
    ids = {a.headers["x-request-id"] for a in answers}
    causes = [line["cause"] for line in access_lines(log) if line["request_id"] in ids]
    assert causes == ["refused"] * 50
    assert API_KEY not in log
    assert API_KEY not in metrics
