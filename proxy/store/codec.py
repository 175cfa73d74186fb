"""The one stored format: a fixed binary header, the content type, then the body.

Binary rather than JSON so the body is kept byte for byte without base64's 33% overhead. Bodies
that deflate well (run JSON does, 2-4x) are stored deflated: Redis then holds less than the body
itself, and the decompression costs a hit a few microseconds.
"""

from __future__ import annotations

import struct
import zlib

from proxy.core.model import Entry

MAGIC = b"LCP\x01"  # the body follows verbatim
DEFLATED = b"LCP\x02"  # the body follows as raw deflate
# Below this a body is stored verbatim: the header and the key dominate anyway.
COMPRESS_FROM = 512
# Level 1: fills pay ~4x less CPU than the default level for a few percent more bytes.
LEVEL = 1
# A value under our key that inflates past this is not one we wrote (bodies are bounded by
# PROXY_MAX_ENTRY_BYTES when stored): treated as corrupt, never inflated further.
MAX_INFLATED = 64 * 1024 * 1024
# magic, status, generation, stored_at, fresh_for, stale_for, etag length, content-type length
_HEADER = struct.Struct(">4sHQdffBH")


class CorruptEntry(ValueError):
    """The stored bytes are not an entry of this format (foreign, truncated or damaged)."""


def encode(entry: Entry) -> bytes:
    etag = entry.etag.encode("ascii")
    content_type = entry.content_type.encode("latin-1")
    header = _HEADER.pack(
        MAGIC,
        entry.status,
        entry.generation,
        entry.stored_at,
        entry.fresh_for,
        entry.stale_for,
        len(etag),
        len(content_type),
    )
    body = entry.body
    if COMPRESS_FROM <= len(body) <= MAX_INFLATED:  # a larger one could not be inflated back
        deflate = zlib.compressobj(LEVEL, zlib.DEFLATED, -15)
        packed = deflate.compress(body) + deflate.flush()
        if len(packed) <= len(body) - len(body) // 8:  # worth it: saves an eighth or more
            header = DEFLATED + header[len(MAGIC) :]
            body = packed
    return b"".join((header, etag, content_type, body))


def decode(data: bytes) -> Entry:
    if len(data) < _HEADER.size:
        raise CorruptEntry("not an entry of this format")
    magic = data[: len(MAGIC)]
    if magic != MAGIC and magic != DEFLATED:
        raise CorruptEntry("not an entry of this format")
    _, status, generation, stored_at, fresh_for, stale_for, etag_len, type_len = (
        _HEADER.unpack_from(data)
    )
    start = _HEADER.size
    body_start = start + etag_len + type_len
    if body_start > len(data) or not 100 <= status <= 599:
        raise CorruptEntry("truncated or damaged entry")
    try:
        etag = data[start : start + etag_len].decode("ascii")
    except UnicodeDecodeError:
        raise CorruptEntry("damaged etag") from None
    body = data[body_start:]
    if magic == DEFLATED:
        body = _inflate(body)
    return Entry(
        status=status,
        content_type=data[start + etag_len : body_start].decode("latin-1"),
        body=body,
        etag=etag,
        stored_at=stored_at,
        fresh_for=fresh_for,
        stale_for=stale_for,
        generation=generation,
    )


def _inflate(packed: bytes) -> bytes:
    inflate = zlib.decompressobj(-15)
    try:
        body = inflate.decompress(packed, MAX_INFLATED)
    except zlib.error:
        raise CorruptEntry("damaged deflated body") from None
    if inflate.unconsumed_tail or not inflate.eof:
        raise CorruptEntry("deflated body is truncated or too large")
    return body
