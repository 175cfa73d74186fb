"""An independent reading of SPEC section 11's path rule, for the tests that hold the proxy to it:
the property test of `check_path` and the fuzzer's check of every path that reached Lunary."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes


def spec_accepts(raw_path: bytes) -> bool:
    """SPEC section 11, read literally, over the raw request path as the client sent it.

    Refused: a path not starting with '/'; a dot segment (`.` or `..`, in any `%2e`/`%2E`
    spelling: a segment that is `.` or `..` once percent-decoded); an encoded slash (a `/` that
    appears only after decoding); a NUL or other control character (C0 or DEL), raw or
    percent-encoded; a percent-encoding that does not decode to valid UTF-8 (an overlong
    `%c0%ae`, a surrogate, a sequence cut short). The path is decoded once only: `%252e` is
    `%2e` after it, not a dot. Beyond the SPEC's letter: a backslash, raw or `%5C`, is refused
    too, since WHATWG URL parsers (and some of Node's) read it as a slash, so `/a/..\\b` holds a
    dot segment for them; and a raw byte above 0x7F, which a request-target may not hold
    (RFC 3986: it must be percent-encoded; uvicorn refuses it before the app).
    """
    if not raw_path.startswith(b"/") or not raw_path.isascii():
        return False
    decoded = unquote_to_bytes(raw_path)
    if any(byte < 0x20 or byte == 0x7F for byte in decoded):
        return False
    if decoded.count(b"/") != raw_path.count(b"/"):
        return False
    if b"\\" in decoded:
        return False
    try:
        decoded.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not any(unquote_to_bytes(s) in (b".", b"..") for s in raw_path.split(b"/"))
