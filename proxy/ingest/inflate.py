"""Inflating an ingest body as Lunary does before it reads it: a bounded stream of pieces.

Lunary's body parser (koa-bodyparser, co-body) inflates `Content-Encoding: gzip` and `deflate`
and refuses more than 20 MiB of inflated JSON (`jsonLimit: "20mb"`, a 413). So a body Lunary
accepted inflates to at most MAX_INFLATED_BYTES, and one that inflates further was not read by
Lunary: the proxy cannot tell what it did and fails safe. The pieces are inflated one at a time
as the reader asks, so a small body that inflates to gigabytes costs one piece of memory and a
bounded amount of CPU, never the whole.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

MAX_INFLATED_BYTES = 20 * 1024 * 1024  # Lunary's jsonLimit, "20mb" (the bytes package: MiB)
PIECE_BYTES = 64 * 1024  # inflated per step, and compressed bytes fed per step
# Lunary's `inflation` (2.1.0) opens both with Node's createUnzip: a gzip member or a zlib
# stream, told apart by their headers (zlib's 32 + window bits); raw deflate fails there too.
# (`br` it inflates with Brotli, which Python has no module for: the caller fails safe.)
AUTO_DETECT = 32 + zlib.MAX_WBITS
ENCODINGS = frozenset({b"gzip", b"deflate"})
GZIP_MAGIC = b"\x1f\x8b"
# gzip members one body may hold: Node reads any number, but each costs a new inflater and may
# inflate to nothing (a million empty ones fit in 20 MiB); no encoder writes more than a few
MAX_MEMBERS = 64


class InflateError(Exception):
    """The body is not what its Content-Encoding says."""


class InflatesTooFar(InflateError):
    """The body inflates past the limit (MAX_INFLATED_BYTES): Lunary would not have read it."""


def known_encoding(encoding: bytes) -> bool:
    """Whether the proxy can inflate a body sent with this Content-Encoding value."""
    return encoding in ENCODINGS


def inflated(body: bytes, encoding: bytes, limit: int = MAX_INFLATED_BYTES) -> Iterator[bytes]:
    """The inflated body, PIECE_BYTES or less at a time; raises InflateError on a corrupt or
    truncated stream, on bytes after its end (Node reads further gzip members, and so does
    this, up to MAX_MEMBERS), or past `limit` inflated bytes. Compressed input is fed a piece at
    a time, so no step copies more than a piece of it."""
    if encoding not in ENCODINGS:
        raise InflateError("an encoding the proxy does not inflate")
    inflater, members = zlib.decompressobj(AUTO_DETECT), 1
    view, fed, total = memoryview(body), 0, 0
    pending = b""  # compressed input the inflater has not taken yet: at most a piece

    def feed() -> bytes:
        nonlocal fed
        more, fed = bytes(view[fed : fed + PIECE_BYTES]), fed + PIECE_BYTES
        return more

    while True:
        if not pending:
            pending = feed()
        try:
            piece = inflater.decompress(pending, PIECE_BYTES)
        except zlib.error as exc:
            raise InflateError(str(exc)) from None
        pending = inflater.unconsumed_tail
        total += len(piece)
        if total > limit:
            raise InflatesTooFar(f"inflates past {limit} bytes")
        if piece:
            yield piece
        if inflater.eof:
            pending = inflater.unused_data + pending
            if len(pending) < len(GZIP_MAGIC):
                pending += feed()
            if not pending:
                return
            if not pending.startswith(GZIP_MAGIC):
                raise InflateError("bytes after the end of the stream")
            members += 1
            if members > MAX_MEMBERS:
                raise InflateError(f"more than {MAX_MEMBERS} gzip members")
            inflater = zlib.decompressobj(AUTO_DETECT)
        elif not piece and not pending and fed >= len(view):
            raise InflateError("the stream ends before its end")
