"""Lunary over HTTPS: the certificate and host name are verified against the system's trust plus
PROXY_UPSTREAM_CA_FILE's CAs; one TLS connection carries many requests; SNI names the host."""

from __future__ import annotations

import os
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from config import ConfigError, Settings, load_settings
from proxy.upstream.tls import upstream_tls
from tests.conftest import ProxyFactory
from tests.e2e.test_cli import run_cli
from tests.fake_lunary import FakeLunary
from tests.servers import ProxyProcess, ServerThread, TlsFiles, free_port, make_tls_files


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def localhost_url(server: ServerThread) -> str:
    return f"https://localhost:{server.port}"


def subjects(context: ssl.SSLContext) -> set[str]:
    return {repr(cert["subject"]) for cert in context.get_ca_certs()}


# -- verification -----------------------------------------------------------------------------


def test_the_passthrough_pool_verifies_with_the_ca_file_too(
    make_proxy: ProxyFactory, fake: FakeLunary, tls_upstream: ServerThread, tls_files: TlsFiles
) -> None:
    """Passthrough has its own connection pool: it is given the same context as the fills'."""
    key = fake.add_key()
    trusting = make_proxy(upstream_url=tls_upstream.url, upstream_ca_file=tls_files.ca)
    untrusting = make_proxy(upstream_url=tls_upstream.url)

    assert trusting.get("/v1/runs/count", headers=bearer(key)).status_code == 200
    refused = untrusting.get("/v1/runs/count", headers=bearer(key))
    assert refused.status_code == 502
    assert refused.json()["cause"] == "tls"


def test_an_unknown_ca_is_refused_by_default(
    make_proxy: ProxyFactory, fake: FakeLunary, tls_upstream: ServerThread
) -> None:
    proxy = make_proxy(upstream_url=tls_upstream.url)
    key, run = fake.add_key(), fake.add_run()

    answer = proxy.get(f"/v1/runs/{run}", headers=bearer(key))

    assert answer.status_code == 502
    assert fake.count(run) == 0
    assert len(tls_upstream.handshakes) >= 1  # it was reached, and refused at the handshake


def test_the_ca_file_makes_the_upstream_trusted(
    make_proxy: ProxyFactory, fake: FakeLunary, tls_upstream: ServerThread, tls_files: TlsFiles
) -> None:
    proxy = make_proxy(upstream_url=tls_upstream.url, upstream_ca_file=tls_files.ca)
    key, run = fake.add_key(), fake.add_run()

    answers = [proxy.get(f"/v1/runs/{run}", headers=bearer(key)) for _ in range(2)]

    assert [a.status_code for a in answers] == [200, 200]
    assert [a.headers["x-cache"] for a in answers] == ["MISS", "HIT"]
    assert fake.count(run) == 1


def test_the_ca_file_adds_to_the_system_trust(tls_files: TlsFiles) -> None:
    system = ssl.create_default_context()
    if not system.get_ca_certs():
        pytest.skip("this machine's system trust holds no CA to keep")
    alone = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    alone.load_verify_locations(tls_files.ca)
    (extra,) = alone.get_ca_certs()

    context = upstream_tls(tls_files.ca)

    assert subjects(context) == subjects(system) | {repr(extra["subject"])}
    assert len(context.get_ca_certs()) == len(system.get_ca_certs()) + 1
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


def test_the_system_trust_still_verifies_with_a_ca_file(
    make_proxy: ProxyFactory,
    fake: FakeLunary,
    tls_upstream: ServerThread,
    tls_files: TlsFiles,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """End to end: the "system" CA (SSL_CERT_FILE stands in for it) and the file's CA both
    verify, each for an upstream it signed. SSL_CERT_FILE alone would replace the system's."""
    other = make_tls_files(str(tmp_path))
    monkeypatch.setenv("SSL_CERT_FILE", other.ca)
    key = fake.add_key()
    with ServerThread(fake, tls=other) as system_signed:
        for upstream in (system_signed, tls_upstream):
            proxy = make_proxy(upstream_url=upstream.url, upstream_ca_file=tls_files.ca)
            run = fake.add_run()

            answer = proxy.get(f"/v1/runs/{run}", headers=bearer(key))

            assert answer.status_code == 200, upstream.url
            assert answer.headers["x-cache"] == "MISS"


def test_a_certificate_for_another_name_is_refused_even_from_a_trusted_ca(
    make_proxy: ProxyFactory, fake: FakeLunary, tmp_path: Path
) -> None:
    elsewhere = make_tls_files(str(tmp_path), ("DNS:other.example",))
    key, run = fake.add_key(), fake.add_run()
    with ServerThread(fake, tls=elsewhere) as upstream:
        for url in (upstream.url, localhost_url(upstream)):
            proxy = make_proxy(upstream_url=url, upstream_ca_file=elsewhere.ca)

            answer = proxy.get(f"/v1/runs/{run}", headers=bearer(key))

            assert answer.status_code == 502, url
            assert answer.json()["cause"] == "tls", url

    assert fake.count(run) == 0


def test_a_plain_http_upstream_starts_with_a_bad_ssl_cert_file(
    upstream: ServerThread, fake: FakeLunary
) -> None:
    """The TLS context is built at start-up: a bundle OpenSSL cannot read is not fatal there
    (an https upstream would then be refused at the handshake)."""
    key, run = fake.add_key(), fake.add_run()
    settings = {"PROXY_UPSTREAM_URL": upstream.url, "SSL_CERT_FILE": "/nonexistent/ca.pem"}

    with ProxyProcess(**settings) as proxy:
        answer = httpx.get(f"{proxy.url}/v1/runs/{run}", headers=bearer(key))

    assert answer.status_code == 200


# -- connections ------------------------------------------------------------------------------


def test_reads_share_one_tls_connection(
    make_proxy: ProxyFactory, fake: FakeLunary, tls_upstream: ServerThread, tls_files: TlsFiles
) -> None:
    proxy = make_proxy(upstream_url=tls_upstream.url, upstream_ca_file=tls_files.ca)
    key = fake.add_key()
    runs = [fake.add_run() for _ in range(5)]

    answers = [proxy.get(f"/v1/runs/{run}", headers=bearer(key)) for run in runs]

    assert [a.headers["x-cache"] for a in answers] == ["MISS"] * 5
    assert fake.count("/v1/runs/") == 5
    assert len(tls_upstream.handshakes) == 1


@pytest.mark.parametrize(
    ("host", "sent"), [("localhost", "localhost"), ("127.0.0.1", None)], ids=["name", "address"]
)
def test_sni_names_the_upstream_host(
    make_proxy: ProxyFactory,
    fake: FakeLunary,
    tls_upstream: ServerThread,
    tls_files: TlsFiles,
    host: str,
    sent: str | None,
) -> None:
    """A host name goes out as SNI (a virtual-hosted or fronted Lunary needs it); an address
    never does (RFC 6066)."""
    proxy = make_proxy(
        upstream_url=f"https://{host}:{tls_upstream.port}", upstream_ca_file=tls_files.ca
    )
    key, run = fake.add_key(), fake.add_run()

    assert proxy.get(f"/v1/runs/{run}", headers=bearer(key)).status_code == 200
    assert tls_upstream.handshakes == [sent]


# -- the setting ------------------------------------------------------------------------------


def bad_ca_files(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """Name -> (path, what the error line says)."""
    garbage, empty, key_only = tmp_path / "garbage.pem", tmp_path / "empty.pem", tmp_path / "k.pem"
    garbage.write_text("not a certificate\n")
    empty.write_text("")
    subprocess.run(
        ["openssl", "genrsa", "-out", str(key_only), "2048"], check=True, capture_output=True
    )
    return {
        "missing": (str(tmp_path / "absent.pem"), "No such file or directory"),
        "directory": (str(tmp_path), "Is a directory"),
        "not-pem": (str(garbage), "is not a PEM file of certificates"),
        "empty": (str(empty), "is not a PEM file of certificates"),
        "a-key": (str(key_only), "is not a PEM file of certificates"),
    }


@pytest.mark.parametrize("case", ["missing", "directory", "not-pem", "empty", "a-key"])
def test_a_bad_ca_file_is_a_config_error(tmp_path: Path, case: str) -> None:
    path, problem = bad_ca_files(tmp_path)[case]

    with pytest.raises(ConfigError) as raised:
        load_settings(upstream_ca_file=path)

    assert str(raised.value).startswith("PROXY_UPSTREAM_CA_FILE: ")
    assert problem in str(raised.value)
    assert path in str(raised.value)


def test_a_pem_ca_file_is_accepted(tls_files: TlsFiles) -> None:
    assert Settings.model_fields["upstream_ca_file"].default == ""
    assert load_settings(upstream_ca_file=tls_files.ca).upstream_ca_file == tls_files.ca


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_ca_file_is_a_config_error(tls_files: TlsFiles, tmp_path: Path) -> None:
    locked = tmp_path / "ca.pem"
    locked.write_bytes(Path(tls_files.ca).read_bytes())
    locked.chmod(0)

    with pytest.raises(ConfigError, match=r"^PROXY_UPSTREAM_CA_FILE: cannot read .*denied"):
        load_settings(upstream_ca_file=str(locked))


def test_a_bad_ca_file_stops_start_up_with_one_line(tmp_path: Path) -> None:
    path, problem = bad_ca_files(tmp_path)["not-pem"]
    port = str(free_port())  # on loopback, were it to start

    result = run_cli(
        cwd=tmp_path, PROXY_UPSTREAM_CA_FILE=path, PROXY_HOST="127.0.0.1", PROXY_PORT=port
    )

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "PROXY_UPSTREAM_CA_FILE" in lines[0]
    assert problem in lines[0]
