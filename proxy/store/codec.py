"""The one stored format: a fixed binary header, the content type, then the body bytes verbatim.

Binary rather than JSON so the body is kept byte for byte without base64's 33% overhead.
"""

from __future__ import annotations

import struct

from proxy.model import Entry

MAGIC = b"LCP\x01"
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
    return b"".join((header, etag, content_type, entry.body))


def decode(data: bytes) -> Entry:
    if len(data) < _HEADER.size or not data.startswith(MAGIC):
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
    return Entry(
        status=status,
        content_type=data[start + etag_len : body_start].decode("latin-1"),
        body=data[body_start:],
        etag=etag,
        stored_at=stored_at,
        fresh_for=fresh_for,
        stale_for=stale_for,
        generation=generation,
    )
