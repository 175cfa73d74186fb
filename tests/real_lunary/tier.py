"""A real Lunary backend named by the environment, and the proxies the tier puts before it.

The variables are the ones `real-lunary/setup.sh` writes to its keys.env, so a backend booted
by it, or any self-hosted Lunary with two orgs set up the same way, can be named by exporting
them or by `LUNARY_KEYS_FILE=/path/keys.env` (variables set in the environment win).
"""

from __future__ import annotations

import difflib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx
from dotenv import dotenv_values

from tests.real_lunary.events import Run, settled

KEYS_FILE = "LUNARY_KEYS_FILE"
REQUIRED = (
    "LUNARY_BACKEND_URL",
    "LUNARY_PUBLIC_KEY_A",  # org A, project A1: its id, and a key that may ingest
    "LUNARY_PRIVATE_KEY_A",  # org A, project A1: reads runs
    "LUNARY_PRIVATE_KEY_A2",  # org A, project A2
    "LUNARY_PRIVATE_KEY_B",  # org B
)
JWT = "LUNARY_JWT_A"  # a dashboard session of org A: the only safe way to DELETE a run


class KeysFileMissing(Exception):
    """LUNARY_KEYS_FILE names no file: a mistake to report, not a reason to skip."""


@dataclass(frozen=True)
class Backend:
    url: str
    public_key_a: str
    private_key_a: str
    private_key_a2: str
    private_key_b: str
    jwt_a: str | None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Backend | str:
        """The backend the environment names, or why it names none (the tier's skip reason)."""
        values = dict(environ)
        path = environ.get(KEYS_FILE)
        if path:
            if not os.path.isfile(path):
                raise KeysFileMissing(f"{KEYS_FILE}={path} is not a file")
            from_file = {name: v for name, v in dotenv_values(path).items() if v}
            values = {**from_file, **environ}
        missing = [name for name in REQUIRED if not values.get(name)]
        if missing:
            return (
                f"no real Lunary backend named: set {', '.join(missing)} (optional: {JWT}), "
                f"or {KEYS_FILE}=/path/keys.env as real-lunary/setup.sh writes it"
            )
        return cls(
            url=values["LUNARY_BACKEND_URL"].rstrip("/"),
            public_key_a=values["LUNARY_PUBLIC_KEY_A"],
            private_key_a=values["LUNARY_PRIVATE_KEY_A"],
            private_key_a2=values["LUNARY_PRIVATE_KEY_A2"],
            private_key_b=values["LUNARY_PRIVATE_KEY_B"],
            jwt_a=values.get(JWT) or None,
        )


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass(frozen=True)
class Tier:
    """Clients for the backend itself and for two proxy replicas sharing one Redis."""

    backend: Backend
    lunary: httpx.Client
    one: httpx.Client
    two: httpx.Client

    @property
    def reader(self) -> dict[str, str]:
        """Org A's private key of project A1: whose reads the tests cache."""
        return bearer(self.backend.private_key_a)

    @property
    def ingester(self) -> dict[str, str]:
        """Project A1's public key, as the SDKs ingest: another scope than the reader's."""
        return bearer(self.backend.public_key_a)

    def create(self, run: Run, via: httpx.Client) -> None:
        """Ingest `run`, settled, through a proxy as an SDK would."""
        answer = via.post("/v1/runs/ingest", headers=self.ingester, json={"events": settled(run)})
        assert answer.status_code == 200, describe(answer)
        assert [r["success"] for r in answer.json()["results"]] == [True, True], answer.text

    def cache(self, run: Run) -> dict[str, httpx.Response]:
        """Read both routes of `run` through replica one until they are HITs: a MISS that
        answers what Lunary does, then a HIT of the same bytes. The cached answers, by path."""
        cached = {}
        for path in run.paths:
            miss = self.one.get(path, headers=self.reader)
            assert miss.headers.get("x-cache") == "MISS", describe(miss)
            assert_same_answer(miss, self.lunary.get(path, headers=self.reader))
            hit = self.one.get(path, headers=self.reader)
            assert hit.headers.get("x-cache") == "HIT", describe(hit)
            assert_same_answer(hit, miss)
            cached[path] = hit
        return cached


def describe(answer: httpx.Response) -> str:
    """An answer as a failure message needs it: status, the proxy's cache headers, the body."""
    cache = answer.headers.get("x-cache", "-")
    status = answer.headers.get("cache-status", "-")
    return f"{answer.status_code} X-Cache={cache} Cache-Status={status!r} {answer.text[:300]}"


def body_diff(got: bytes, want: bytes) -> str:
    """A line diff of two JSON bodies (pretty-printed when they parse): what a failure shows."""

    def lines(body: bytes) -> list[str]:
        try:
            return json.dumps(json.loads(body), indent=1, sort_keys=True).splitlines()
        except ValueError:
            return body.decode(errors="replace").splitlines()

    diff = difflib.unified_diff(lines(want), lines(got), "lunary", "proxy", lineterm="", n=1)
    return "\n".join(diff)


def assert_same_answer(proxy: httpx.Response, lunary: httpx.Response) -> None:
    """The proxy answered what Lunary answers: status, body byte for byte, media type."""
    assert (proxy.status_code, proxy.content) == (lunary.status_code, lunary.content), (
        f"proxy: {describe(proxy)}\nlunary: {describe(lunary)}\n"
        f"{body_diff(proxy.content, lunary.content)}"
    )
    assert proxy.headers.get("content-type") == lunary.headers.get("content-type")


def poll(read: Callable[[], httpx.Response], done: Callable[[httpx.Response], bool],
         seconds: float) -> httpx.Response:  # fmt: skip
    """Read until `done` or `seconds` pass: the last answer either way."""
    deadline = time.monotonic() + seconds
    while True:
        answer = read()
        if done(answer) or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)
