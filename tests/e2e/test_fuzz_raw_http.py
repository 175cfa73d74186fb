"""Fuzz the proxy with raw HTTP/1.1 bytes on loopback: a client's mistake is never a 5xx, a crash,
an unsafe path forwarded upstream or an echoed credential.

HTTP clients normalise what they send, so this writes bytes to a plain socket, as a hostile or
broken client would. The proxy runs as `python -m proxy` runs it (uvicorn, httptools, the
proxy's own protocol from proxy/web/server.py) in front of a recording upstream that answers every
request 200: any 5xx the client sees is the proxy's own, and every request that got through is
there to inspect. Bytes the HTTP server cannot parse get its refusal (a 400, or 431 for a head
too large) and a close, in the proxy's JSON error shape like every other refusal.
"""

from __future__ import annotations

import posixpath
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

import orjson
import pytest
from hypothesis import currently_in_test_context, event, example, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from config import Settings
from proxy.__main__ import server_options
from proxy.web.app import create_app
from proxy.web.asgi import Receive, Scope, Send
from tests.servers import ServerThread, raw_exchange
from tests.spec_paths import spec_accepts

# Every credential the fuzzer sends carries this marker; no answer may ever hold it.
MARKER = b"lcp-secret-"
ADMIN_TOKEN = "lcp-secret-admin-token"
READ_TIMEOUT = 8.0  # per connection; the upstream timeout is 2 s, so a hang is a failure
FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    # no health check is suppressed: the fixture is module-scoped, and the large values (100 KB,
    # 500 headers) are literals, so hypothesis draws few bytes per request
)


# -- the recording upstream ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recorded:
    method: str
    raw_path: bytes
    query_string: bytes
    headers: list[tuple[bytes, bytes]]


class RecordingUpstream:
    """An ASGI app that records each request and always answers 200 with a small JSON body."""

    BODY = b'{"recorded":true}'

    def __init__(self) -> None:
        self.requests: list[Recorded] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        while True:  # drain the body: the proxy streams it up
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        self.requests.append(
            Recorded(scope["method"], scope["raw_path"], scope["query_string"], scope["headers"])
        )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(self.BODY)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": self.BODY})


@dataclass
class Target:
    port: int
    upstream: RecordingUpstream
    checked: int = 0  # recorded requests already checked


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    """One proxy (memory store, admin on) before one recording upstream, for the whole module:
    examples share them, as a long-running proxy shares its state between clients."""
    upstream = RecordingUpstream()
    with ServerThread(upstream) as upstream_server:
        settings = Settings(
            upstream_url=upstream_server.url,
            scope_secret=SecretStr("fuzz-scope-secret"),
            admin_token=SecretStr(ADMIN_TOKEN),
            upstream_timeout=2,
        )
        # served as `python -m proxy` serves it: its own HTTP protocol, no WebSockets
        with ServerThread(create_app(settings), **server_options(settings)) as proxy_server:
            yield Target(proxy_server.port, upstream)


# -- raw exchanges ---------------------------------------------------------------------------


def exchange(port: int, request: bytes) -> bytes:
    return raw_exchange(port, request, READ_TIMEOUT)


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n.lower() == name), None)

    @property
    def refused_by_server(self) -> bool:
        """The HTTP server's own refusal of a request it could not parse: the app adds an
        X-Request-ID to everything it answers."""
        return self.status >= 400 and self.header(b"x-request-id") is None


_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) [^\r\n]*")
_HEADER_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([^\r\n]*?)[ \t]*")


def parse_answer(data: bytes, *, head: bool) -> Answer:
    """A strict HTTP/1.1 response parse of everything the server sent before closing."""
    while True:
        head_block, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"no end of the response head: {data[:300]!r}"
        status_line, *lines = head_block.split(b"\r\n")
        matched = _STATUS_LINE.fullmatch(status_line)
        assert matched, f"bad status line {status_line!r}"
        status = int(matched[1])
        headers = []
        for line in lines:
            parsed = _HEADER_LINE.fullmatch(line)
            assert parsed, f"bad header line {line!r}"
            headers.append((parsed[1], parsed[2]))
        if status >= 200:
            break
        data = rest  # an interim answer (100 Continue): the real one follows
    answer = Answer(status, headers, b"")
    length = answer.header(b"content-length")
    if answer.refused_by_server:
        head = False  # refused before the method was known: a body even to HEAD
    if head or status in (204, 304):
        assert rest == b"", f"a body after a {status} to HEAD={head}: {rest[:100]!r}"
    elif answer.header(b"transfer-encoding") == b"chunked":
        answer.body = _dechunked(rest)
    elif length is not None:
        assert length.isdigit(), length
        assert len(rest) == int(length), f"Content-Length {length!r}, {len(rest)} bytes sent"
        answer.body = rest
    else:
        answer.body = rest
    return answer


def _dechunked(data: bytes) -> bytes:
    body = b""
    while True:
        size_line, sep, data = data.partition(b"\r\n")
        assert sep, "a chunked body cut short"
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            assert data in (b"\r\n", b""), f"junk after the last chunk: {data[:100]!r}"
            return body
        assert data[size : size + 2] == b"\r\n", "a chunk cut short"
        body, data = body + data[:size], data[size + 2 :]


def is_own_surface(raw_path: bytes) -> bool:
    """The proxy's own endpoints (SPEC section 2), never forwarded, however a server might
    normalise the path: decoded up to twice, `;` parameters dropped, a backslash read as a
    slash, case folded, empty and dot segments resolved."""
    if raw_path in (b"/healthz", b"/readyz", b"/metrics"):
        return True
    once = unquote_to_bytes(raw_path)
    for path in (raw_path, once, unquote_to_bytes(once)):
        text = re.sub(rb";[^/]*", b"", path.replace(b"\\", b"/")).lower()
        normal = posixpath.normpath(b"/" + text).lstrip(b"/")  # normpath keeps a leading `//`
        if normal in (b"admin", b"openapi.json") or normal.startswith(b"admin/"):
            return True
    return False


# -- what a fuzzed request is made of ---------------------------------------------------------


@dataclass
class RawRequest:
    method: bytes
    path: bytes  # the request-target's path, exactly as sent
    query: bytes | None  # after '?', if any
    fragment: bytes | None = None
    absolute: bool = False  # absolute-form request-target (http://host/path)
    version: bytes = b"HTTP/1.1"
    header_lines: list[bytes] = field(default_factory=list)  # raw, without CRLF
    body: bytes = b""

    def target(self) -> bytes:
        target = (b"http://127.0.0.1" if self.absolute else b"") + self.path
        if self.query is not None:
            target += b"?" + self.query
        if self.fragment is not None:
            target += b"#" + self.fragment
        return target

    def encode(self) -> bytes:
        # always closed, so reading until EOF ends; every fuzzed Connection value says close
        # too. First, so that a later `Connection: Upgrade, close` is the one uvicorn reads.
        request_line = self.method + b" " + self.target() + b" " + self.version
        lines = [request_line, b"Connection: close", *self.header_lines]
        return b"\r\n".join(lines) + b"\r\n\r\n" + self.body


# Each request is "clean" (three in four: only what uvicorn parses, so it reaches the proxy,
# with every hazard percent-encoded) or "hostile" (anything: junk methods and versions, raw
# control bytes, bad header names, obs-fold, broken framing), which mostly tests that uvicorn
# refuses it and that the proxy is none the worse for it.

VALID_METHODS = [b"GET", b"HEAD", b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE",
                 b"OPTIONS", b"TRACE"]  # fmt: skip
TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
JUNK_METHODS = [b"get", b"Get", b"CONNECT", b"PRI", b"PROPFIND", b"PURGE", b"QUERY", b"",
                b"G\x00T", b"GET\xff", b"\xc3\xa9", b"GET\tGET", b"M-SEARCH"]  # fmt: skip
tokens = st.lists(st.sampled_from(list(TOKEN_CHARS)), min_size=1, max_size=12).map(bytes)
junk_methods = st.one_of(st.sampled_from(JUNK_METHODS), tokens)

RUNS = [b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", b"6f1c7a52-1f0e-4c52-9d9b-6f3b1e1f0a11"]


def spellings(run: bytes) -> list[bytes]:
    """Spellings of a run id: Postgres accepts all but the last three (passed through)."""
    return [
        run,
        run.upper(),
        run.replace(b"-", b""),
        b"{" + run + b"}",
        b"%7B" + run + b"%7d",
        b"%7b" + run.upper() + b"%7D",
        run[:4] + b"-" + run[4:],  # a hyphen after the first group of four
        b"%%%02x" % run[0] + run[1:],  # the first digit percent-encoded
        run + b"-",
        run[:-1],
        b"{" + run,
    ]


uuid_spelling = st.sampled_from(RUNS).flatmap(lambda run: st.sampled_from(spellings(run)))

PATH_ATOMS = [
    b".", b"..", b"...", b"%2e", b"%2E", b"%2e%2e", b"%2E%2e", b".%2e", b"%2E.", b"%2f", b"%2F",
    b"%252e", b"%252E%252e", b"%252f", b"%25", b"%", b"%zz", b"%00", b"%0a", b"%0D", b"%1f",
    b"%7f", b"%20", b"%80", b"%c2%85", b"%ff", b"%5c", b"\\", b"{", b"}", b"|", b"^", b"`",
    b'"', b"<", b";", b"=", b"~", b"@", b":", b"!", b"$", b"'", b"(", b"*", b"+", b",", b"v1",
    b"runs", b"related", b"count", b"ingest", b"admin", b"a", b"A", b"0",
    # percent-encodings that are not UTF-8: overlong '.' and '/', a surrogate, cut short
    b"%c0%ae", b"%C0%AE", b"%c0%af", b"%e0%80%ae", b"%ed%a0%80", b"%f4%90%80%80", b"%c3",
    b"%c3%a9", b"..;",
]  # fmt: skip
# raw bytes uvicorn refuses in a request-target: controls, space, bytes >= 0x80
RAW_BAD_ATOMS = [b"\x00", b"\x01", b"\t", b"\x7f", b" ", b"\x80", b"\xff", b"\xc3\xa9"]
clean_segment = st.one_of(
    st.lists(st.sampled_from(PATH_ATOMS), min_size=1, max_size=3).map(b"".join), uuid_spelling
)
hostile_segment = st.one_of(
    clean_segment,
    st.lists(st.sampled_from(PATH_ATOMS + RAW_BAD_ATOMS), min_size=1, max_size=3).map(b"".join),
    st.binary(max_size=6).map(lambda b: b.replace(b"?", b"").replace(b"#", b"")),
)
OWN_PATHS = [
    b"/healthz", b"/readyz", b"/metrics", b"/openapi.json", b"/admin", b"/admin/",
    b"/admin/cache/runs/" + RUNS[0], b"/admin/cache/runs/%7B" + RUNS[0] + b"%7D",
    b"/ADMIN/cache/runs/" + RUNS[0], b"/%61dmin/cache/runs/" + RUNS[0], b"/admin/cache/runs/x",
    b"/admin/cache/runs/%2e%2e", b"/admin/../v1/runs", b"/OpenAPI.json", b"/%6fpenapi.json",
    b"/healthz/", b"/HEALTHZ", b"/metrics/x",
    # what a base URL with a trailing slash, `;` parameters or dot-dot-semicolon make of a purge
    b"//admin/cache/runs/" + RUNS[0], b"/admin;/cache/runs/" + RUNS[0],
    b"/v1/..;/admin/cache/runs/" + RUNS[0], b"/%2561dmin/cache/runs/" + RUNS[0],
    b"/admin%3b/cache/runs/" + RUNS[0], b"/openapi.json/", b"//OpenAPI.json",
    b"/v1/runs/%c0%ae%c0%ae/admin",
]  # fmt: skip


@st.composite
def paths(draw: st.DrawFn, hostile: bool) -> bytes:
    kind = draw(st.sampled_from(["run", "run", "grammar", "grammar", "own", "long"]))
    if kind == "run":
        tail = draw(st.sampled_from([b"", b"", b"/related", b"/related/", b"/feedback", b"/"]))
        prefix = draw(st.sampled_from([b"/v1/runs/", b"/v1/runs/", b"/V1/Runs/", b"/v1//runs/"]))
        return prefix + draw(uuid_spelling) + tail
    if kind == "own":
        return draw(st.sampled_from(OWN_PATHS))
    if kind == "long":
        # from 64 KiB on, uvicorn refuses the request-target (httptools.parse_url)
        size = draw(st.sampled_from([1000, 8000, 60_000, 70_000] if hostile else [1000, 60_000]))
        unit = draw(st.sampled_from([b"a", b"%2e", b"a/", b"%41"]))
        return (b"/v1/" + unit * size)[:size]
    segments = draw(st.lists(hostile_segment if hostile else clean_segment, max_size=6))
    rooted = draw(st.sampled_from([b"/"] * 9 + [b""]))
    return rooted + b"/".join(segments)


QUERY_ATOMS = [b"a=1", b"projectId=p1", b"b=2", b"", b"=", b"&", b"%2e%2e", b"..", b"%2f",
               b"/../x", b"%00", b"x=%zz", b"q=" + RUNS[0], b"?"]  # fmt: skip
queries = st.one_of(st.none(), st.lists(st.sampled_from(QUERY_ATOMS), max_size=4).map(b"&".join))

# fuzzed headers: names and values a broken or hostile client might send
HEADER_VALUES: dict[bytes, list[bytes]] = {
    b"Cache-Control": [b"no-store", b"no-cache", b"max-age=0", b"max-age=-1", b"max-age=1e9",
                       b"max-age=99999999999999999999", b'no-cache="', b",,,", b"NO-STORE",
                       b"no-store, no-cache", b"private", b"\xff", b""],
    b"Pragma": [b"no-cache", b"", b"\xff"],
    b"If-None-Match": [b"*", b'"abc"', b'W/"x"', b'"', b",", b", ,", b"\xff", b"", b"*, *"],
    b"X-Request-ID": [b"abc", b"a" * 200, b"\xff", b"", b"id with space", b"../x", b"a,b",
                      b"%00", b"<script>"],
    b"X-Forwarded-For": [b"203.0.113.7", b"", b"\xff", b"1.1.1.1, 2.2.2.2", b"::1", b",,",
                         b"a" * 1000, b"unknown"],
    b"Expect": [b"100-continue", b"200-ok", b""],
    b"Upgrade": [b"h2c", b"HTTP/2.0", b"foo", b""],  # websocket: see the regression test
    b"Connection": [b"close", b"close, X-Hop", b"Upgrade, close", b"TE, close", b"close, close",
                    b"close, Authorization", b"x-api-key, close"],
    b"X-Hop": [b"1"],
    b"TE": [b"trailers", b"gzip", b""],
    b"Cookie": [b"a=b", b"\xff", b""],
    b"Accept-Encoding": [b"gzip", b"br, zstd", b"*;q=0", b""],
    b"Origin": [b"http://evil.example", b"null", b""],
    b"Proxy-Authorization": [b"Basic abc", b""],
    b"Host": [b"", b"evil.example", b"127.0.0.1:1", b"\xff", b"a b"],
    b"Content-Type": [b"application/json", b"", b"\xff"],
}  # fmt: skip
JUNK_NAMES = [b"X A", b"X-A ", b" X-A", b"", b"X:A", b"X-\xff", b"X-\x00", b"\xc3\xa9",
              b"Content-Length ", b"Transfer-Encoding ", b"X-\x7f"]  # fmt: skip
# field-content uvicorn accepts: visible ASCII, space, tab and any byte >= 0x80
FIELD_BYTES = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])
field_values = st.lists(st.sampled_from(list(FIELD_BYTES)), max_size=24).map(bytes)


@st.composite
def header_lines(draw: st.DrawFn, hostile: bool) -> list[bytes]:
    names = st.one_of(st.sampled_from(list(HEADER_VALUES)), tokens)
    if hostile:
        names = st.one_of(names, st.sampled_from(JUNK_NAMES), st.binary(max_size=8))
    lines = []
    for name in draw(st.lists(names, max_size=6)):
        values = st.one_of(st.sampled_from(HEADER_VALUES.get(name, [b"v"])), field_values)
        value = draw(st.one_of(values, st.binary(max_size=24)) if hostile else values)
        if name == b"Connection" and b"close" not in value:
            value = b"close"  # a kept-alive connection would never reach EOF
        line = name + b":" + draw(st.sampled_from([b" ", b"", b"\t", b"  "])) + value
        if hostile and draw(st.integers(0, 9)) == 0:
            line += b"\r\n " + draw(st.sampled_from([b"folded", b"", b"\xff"]))  # obs-fold
        lines.append(line)
    return lines


CREDENTIAL_NAMES = [b"Authorization", b"X-API-Key", b"authorization", b"x-api-key",
                    b"AUTHORIZATION", b"X-Api-Key"]  # fmt: skip
SCHEMES = [b"Bearer ", b"bearer ", b"Basic ", b"", b"Bearer  ", b"\xff ", b"Bearer\t"]
secret_tokens = st.lists(
    st.sampled_from(list(b"abcdefghijklmnopqrstuvwxyz0123456789-_.")), min_size=4, max_size=24
).map(bytes)


@st.composite
def credential_lines(draw: st.DrawFn) -> list[bytes]:
    """0-3 credential headers (repeats allowed), each holding the marker; or the admin token."""
    lines = []
    for name in draw(st.lists(st.sampled_from(CREDENTIAL_NAMES), max_size=3)):
        if draw(st.integers(0, 7)) == 0:
            value = b"Bearer " + ADMIN_TOKEN.encode()
        else:
            scheme = draw(st.sampled_from(SCHEMES))
            suffix = draw(st.sampled_from([b"", b" ", b"\xff", b"\xc3\xa9", b"\t"]))
            value = scheme + MARKER + draw(secret_tokens) + suffix
        lines.append(name + b": " + value)
    return lines


@st.composite
def framings(draw: st.DrawFn, hostile: bool) -> tuple[list[bytes], bytes]:
    """Content-Length / Transfer-Encoding and a body, odd but never promising bytes that are
    not sent (the server would rightly wait for them)."""
    body = draw(st.binary(max_size=32))
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    clean: list[tuple[list[bytes], bytes]] = [
        ([], b""),
        ([b"Content-Length: %d" % len(body)], body),
        ([b"Content-Length: 0"], b""),
        ([b"Content-Length: 21000000"], b""),  # over PROXY_MAX_REQUEST_BYTES: 413, unread
        ([b"Transfer-Encoding: chunked"], chunked),
        ([b"Transfer-Encoding: gzip, chunked"], chunked),
        ([b"Expect: 100-continue", b"Content-Length: %d" % len(body)], body),
    ]
    broken: list[tuple[list[bytes], bytes]] = [
        ([b"Content-Length: abc"], b""),
        ([b"Content-Length: -1"], b""),
        ([b"Content-Length: 99999999999999999999999"], b""),
        ([b"Content-Length: %d" % len(body)] * 2, body),
        ([b"Transfer-Encoding: chunked", b"Content-Length: 5"], chunked),
        ([b"Transfer-Encoding: chunked"], b"zz\r\nboom\r\n0\r\n\r\n"),
        ([b"Transfer-Encoding: identity"], b""),
        ([b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"], chunked),
    ]
    return draw(st.sampled_from([clean[0]] * 4 + clean + (broken if hostile else [])))


@st.composite
def bulk_lines(draw: st.DrawFn) -> list[bytes]:
    """Usually nothing; sometimes a 100 KB value or 500 headers."""
    kind = draw(
        st.sampled_from(["none"] * 8 + ["big-value", "big-credential", "many", "many-same"])
    )
    if kind == "big-value":
        return [b"X-Big: " + b"v" * 100_000]
    if kind == "big-credential":
        return [b"X-API-Key: " + MARKER + b"k" * 100_000]
    if kind == "many":
        return [b"X-Many-%d: %d" % (i, i) for i in range(500)]
    if kind == "many-same":
        name = draw(st.sampled_from([b"X-API-Key", b"Cache-Control", b"If-None-Match", b"X-Dup"]))
        value = MARKER + b"dup" if name == b"X-API-Key" else b"no-cache"
        return [name + b": " + value] * 500
    return []


@st.composite
def raw_requests(draw: st.DrawFn) -> RawRequest:
    hostile = draw(st.sampled_from([False, False, False, True]))
    framing, body = draw(framings(hostile))
    host = [] if draw(st.integers(0, 9)) == 0 else [b"Host: 127.0.0.1"]
    lines = [*host, *draw(header_lines(hostile)), *draw(credential_lines()), *framing]
    lines = draw(st.permutations(lines)) if len(lines) < 12 else lines
    version = b"HTTP/1.1"
    method = draw(st.sampled_from(VALID_METHODS))
    if hostile:
        version = draw(st.sampled_from([version] * 4 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1x"]))
        method = draw(st.one_of(st.just(method), junk_methods))
    return RawRequest(
        method=method,
        path=draw(paths(hostile)),
        query=draw(queries),
        fragment=draw(st.sampled_from([None] * 5 + [b"frag", b"../x", b""])),
        absolute=draw(st.integers(0, 14)) == 0,
        version=version,
        header_lines=lines + draw(bulk_lines()),
        body=body,
    )


# -- the properties --------------------------------------------------------------------------


def check(target: Target, request: RawRequest) -> Answer | None:
    """Send one request and check every property; the answer, if the server answered."""
    data = exchange(target.port, request.encode())
    answer = None
    if not data:
        _count("closed without an answer")
    else:
        answer = parse_answer(data, head=request.method == b"HEAD")
        _count(f"{answer.status}" + (" from the HTTP server" if answer.refused_by_server else ""))
        assert answer.status < 500, f"{answer.status} for a client's request: {data[:600]!r}"
        if answer.status >= 400:
            assert_error_shape(answer, head=request.method == b"HEAD")
        assert MARKER not in data.lower(), f"a credential was echoed: {data[:600]!r}"

    assert healthz(target.port) == 200, "the proxy stopped serving"

    # every request that reached the upstream since the last check, background refreshes too
    reached = target.upstream.requests[target.checked :]
    for recorded in reached:
        forwarded = recorded.raw_path
        assert spec_accepts(forwarded), f"forwarded a path SPEC section 11 refuses: {forwarded!r}"
        assert not is_own_surface(recorded.raw_path), f"forwarded {recorded.raw_path!r}"
        assert not any(ADMIN_TOKEN.encode() in value for _, value in recorded.headers)
    if refused_for_its_headers(request.header_lines):
        assert reached == [], "forwarded the admin token or a hop-by-hop credential"
    target.checked = len(target.upstream.requests)
    return answer


def refused_for_its_headers(header_lines: list[bytes]) -> bool:
    """Does a header carry the admin token, or Connection name a credential header? Such a
    request never goes upstream: Lunary would see the token, or not see the credential that
    scoped the entry."""
    for line in header_lines:
        name, _, value = line.partition(b":")
        if ADMIN_TOKEN.encode() in value:
            return True
        if name.lower() == b"connection":
            named = {token.strip().lower() for token in value.split(b"\r\n")[0].split(b",")}
            if named & {b"authorization", b"x-api-key"}:
                return True
    return False


def _count(outcome: str) -> None:
    """Tally outcomes for `--hypothesis-show-statistics` (a fuzzer that only ever met uvicorn's
    400 would prove little)."""
    if currently_in_test_context():
        event(outcome)


def assert_error_shape(answer: Answer, *, head: bool) -> None:
    """The proxy's JSON `{"error", "message"}` (proxy/web/server.py makes uvicorn's own refusals
    JSON too)."""
    content_type = answer.header(b"content-type") or b""
    assert content_type.startswith(b"application/json"), (answer.status, answer.headers)
    if head and not answer.refused_by_server:
        return
    document = orjson.loads(answer.body)
    assert isinstance(document, dict), answer.body
    assert set(document) == {"error", "message"}, answer.body
    assert all(isinstance(value, str) and value for value in document.values()), answer.body


def healthz(port: int) -> int:
    data = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = parse_answer(data, head=False)
    assert orjson.loads(answer.body) == {"status": "ok"}
    return answer.status


def _request(method: bytes, path: bytes, *lines: bytes, query: bytes | None = None) -> RawRequest:
    return RawRequest(method, path, query, header_lines=[b"Host: 127.0.0.1", *lines])


@FUZZ
@given(request=raw_requests())
@example(request=_request(b"GET", b"/v1/%2e%2e/admin"))
@example(request=_request(b"GET", b"/v1/runs/%7B" + RUNS[0] + b"%7D/related"))
@example(request=_request(b"GET", b"/v1/%252e%252e/x"))
@example(request=_request(b"GET", b"/v1/a%2Fb"))
@example(request=_request(b"GET", b"/v1/a%00b"))
@example(request=_request(b"DELETE", b"/admin/cache/runs/" + RUNS[0], b"Authorization: x"))
@example(request=_request(b"GET", b"/x", b"X-Big: " + b"v" * 100_000))
@example(request=_request(b"GET", b"/v1/runs/" + RUNS[0], b"X-API-Key: " + MARKER + b"k" * 100_000))
@example(request=_request(b"GET", b"/x", *(b"X-Many-%d: v" % i for i in range(500))))
@example(request=_request(b"GET", b"/x", b"X-A: a\r\n folded"))
@example(request=_request(b"GET", b"/x", b"X-A: \xff\xfe"))
def test_no_request_makes_a_5xx_a_crash_an_unsafe_forward_or_an_echo(
    target: Target, request: RawRequest
) -> None:
    check(target, request)


@st.composite
def cached_reads(draw: st.DrawFn) -> RawRequest:
    """Well-formed reads of the cached routes with hostile cache and credential headers, so
    fills, hits, 304s and bypasses all get exercised."""
    names = [b"Cache-Control", b"Pragma", b"If-None-Match", b"X-Request-ID", b"X-Forwarded-For",
             b"Accept-Encoding", b"Cookie", b"Connection"]  # fmt: skip
    lines = [b"Host: 127.0.0.1", *draw(credential_lines())]
    for name in draw(st.lists(st.sampled_from(names), max_size=4)):
        # `*` matches any ETag: 304s too, not only 200s
        extra = [b"*"] * 6 if name == b"If-None-Match" else []
        lines.append(name + b": " + draw(st.sampled_from(HEADER_VALUES[name] + extra)))
    tail = draw(st.sampled_from([b"", b"/related"]))
    return RawRequest(
        method=draw(st.sampled_from([b"GET", b"HEAD"])),
        path=b"/v1/runs/" + draw(uuid_spelling) + tail,
        query=draw(st.sampled_from([None, b"projectId=p1", b"b=2&a=1", b"a=1&b=2", b""])),
        header_lines=lines,
    )


@FUZZ
@given(request=cached_reads())
def test_cached_reads_never_fail_or_echo_a_credential(target: Target, request: RawRequest) -> None:
    answer = check(target, request)

    assert answer is not None, "a well-formed read got no answer"
    # header values that are not UTF-8 cannot be forwarded byte for byte: refused, as a whole;
    # so is a read carrying the admin token or naming a credential in Connection
    refused = not_utf8(request.header_lines) or refused_for_its_headers(request.header_lines)
    expected = (400,) if refused else (200, 304)
    assert answer.status in expected, (answer.status, answer.body)


def not_utf8(header_lines: list[bytes]) -> bool:
    """Does any header value hold bytes that are not UTF-8? (An X-Request-ID that is not a
    short token is replaced by the proxy, not forwarded: it does not count.)"""
    for line in header_lines:
        name, _, value = line.partition(b":")
        if name.lower() == b"x-request-id":
            continue
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return True
    return False


# -- huge heads: uvicorn with httptools sets no limit of its own; proxy/web/server.py does ---------


@pytest.mark.parametrize(
    ("path", "lines", "status"),
    [
        (b"/x", [b"X-Big: " + b"v" * 100_000], 431),
        (b"/x", [b"X-Big: " + b"v" * 1_000_000], 431),
        (b"/v1/runs/" + RUNS[0], [b"Authorization: Bearer " + MARKER + b"k" * 1_000_000], 431),
        (b"/x", [b"X-Many-%d: v" % i for i in range(500)], 200),
        (b"/v1/runs/" + RUNS[1], [b"X-API-Key: " + MARKER + b"dup"] * 500, 200),
        # under the bound; httptools.parse_url would refuse 64 KiB (16-bit offsets)
        (b"/v1/" + b"a" * 60_000, [], 200),
    ],
    ids=[
        "100KB-value",
        "1MB-value",
        "1MB-credential",
        "500-headers",
        "500-credentials",
        "60KB-path",
    ],
)
def test_huge_heads_are_bounded_without_a_5xx(
    target: Target, path: bytes, lines: list[bytes], status: int
) -> None:
    """Heads over 64 KiB get the proxy's own 431 and never reach the upstream (before the
    bound, a 64 MB header was read whole and forwarded, and came back a 504)."""
    before = len(target.upstream.requests)
    answer = check(target, _request(b"GET", path, *lines))

    assert answer is not None
    assert answer.status == status
    assert len(target.upstream.requests) == before + (answer.status == 200)


# -- regressions found by fuzzing ---------------------------------------------------------------


def test_a_websocket_upgrade_is_a_plain_request(target: Target) -> None:
    """It was a 500: uvicorn handed the handshake to the app, which has no WebSocket route."""
    request = _request(
        b"GET",
        b"/v1/template_versions/latest",
        b"Upgrade: websocket",
        b"Connection: Upgrade, close",
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        b"Sec-WebSocket-Version: 13",
    )

    before = len(target.upstream.requests)

    answer = check(target, request)

    assert answer is not None
    assert answer.status == 200
    (forwarded,) = target.upstream.requests[before:]
    assert b"upgrade" not in dict(forwarded.headers)  # hop-by-hop: never forwarded


@pytest.mark.parametrize(
    "header",
    [b"X-Custom: \xff\xfeok", b"Authorization: Bearer lcp-secret-k\xff"],
    ids=["custom", "credential"],
)
def test_header_bytes_that_are_not_utf8_are_refused_not_changed(
    target: Target, header: bytes
) -> None:
    """They reached the upstream changed: aiohttp writes header values as UTF-8 and dropped
    the bytes that were not, so Lunary saw another credential than the one scoped."""
    before = len(target.upstream.requests)

    answer = check(target, _request(b"GET", b"/x", header))

    assert answer is not None
    assert answer.status == 400
    assert orjson.loads(answer.body)["error"] == "bad_request"
    assert target.upstream.requests[before:] == []


def test_an_endless_header_value_is_refused_once_past_the_limit(target: Target) -> None:
    """It was read until the header timeout: httptools buffers a header line whole before the
    protocol's callbacks see it, so the bound now counts the bytes as they arrive."""
    with socket.create_connection(("127.0.0.1", target.port), timeout=3) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"v" * 1_000_000)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            data = b""

    assert data.startswith(b"HTTP/1.1 431 "), data[:100]
