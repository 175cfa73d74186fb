"""Passthrough request bodies, read whole before the upstream request starts.

As nginx's `proxy_request_buffering on`: a client that uploads slowly, or stops half-way, holds
its own socket and buffer only, never one of the upstream connections every client shares, and
an upload never finished never reaches Lunary. A body is kept in memory up to
PROXY_REQUEST_BUFFER_BYTES, and bodies in memory together within MEMORY_BODIES times that (so
many connections cannot each hold a full buffer); past either it goes to an unlinked temporary
file (under TMPDIR, else /tmp), and the files of all requests in flight together stay within
PROXY_REQUEST_SPOOL_BYTES, so a burst of large uploads is refused with 503 instead of filling
the disk (in Kubernetes, an emptyDir over its sizeLimit gets the pod evicted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from typing import BinaryIO

log = logging.getLogger("proxy")
CHUNK = 64 * 1024
# request bodies in memory at once, across the process, in PROXY_REQUEST_BUFFER_BYTES
MEMORY_BODIES = 64
# spooled bodies read back into memory at once (for the ingest reader), up to 20 MiB each
READ_BACKS_AT_ONCE = 2


class RequestTooLarge(Exception):
    """The request body exceeds PROXY_MAX_REQUEST_BYTES."""


class SpoolUnavailable(Exception):
    """The body cannot be spooled now: the spool budget is spent, or the disk refused."""


class ByteBudget:
    """Bytes of request bodies held at once (on disk, or in memory), across the process."""

    def __init__(self, limit: int) -> None:
        self._free = limit

    def take(self, size: int) -> None:
        if not self.try_take(size):
            raise SpoolUnavailable("the request spool budget is spent")

    def try_take(self, size: int) -> bool:
        if size > self._free:
            return False
        self._free -= size
        return True

    def give(self, size: int) -> None:
        self._free += size


class _Spool:
    """An unlinked temporary file (nothing is left behind, even by a crash), charged to the
    budget for every byte written, until closed.

    Its reads and writes block the event loop: they go to the page cache, microseconds per
    64 KiB, cheaper than a thread hop each.
    """

    def __init__(self, budget: ByteBudget) -> None:
        self._budget = budget
        self._charged = 0
        try:
            self._file: BinaryIO = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise _unwritable(exc) from exc

    def write(self, data: bytes) -> None:
        self._budget.take(len(data))
        self._charged += len(data)
        try:
            self._file.write(data)
        except OSError as exc:
            raise _unwritable(exc) from exc

    def finish(self) -> None:
        """The body is whole: out of the write buffer, so reads by offset see all of it."""
        try:
            self._file.flush()
        except OSError as exc:
            raise _unwritable(exc) from exc

    def read_at(self, offset: int, size: int) -> bytes:
        """By offset, never moving a shared position: the upload and the ingest parser may
        read at once (an upstream can answer before it has read the whole body)."""
        return os.pread(self._file.fileno(), size, offset)

    def close(self) -> None:
        self._file.close()
        self._budget.give(self._charged)
        self._charged = 0


def _unwritable(exc: OSError) -> SpoolUnavailable:
    # (no usable temporary directory at all is an OSError too: not named here, never asked)
    log.warning(
        "cannot spool a request body: is TMPDIR (else /tmp) writable, with room?",
        extra={"error": type(exc).__name__},
    )
    return SpoolUnavailable("the temporary directory refused the body")


class RequestBody:
    """A whole request body: bytes in memory, or a spool file. Close it once the exchange is
    over, to drop the file and give its bytes back to the budget."""

    def __init__(self, size: int, memory: bytes, spool: _Spool | None, owner: BodyBuffer) -> None:
        self.size = size
        self._memory = memory
        self._spool = spool
        self._owner = owner

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[bytes]:
        """The body as bytes while the caller reads it (the ingest reader): a spooled one is
        read back READ_BACKS_AT_ONCE at a time across the process, so memory holds no more
        than that many of them besides the bodies kept in memory."""
        if self._spool is None:
            yield self._memory
            return
        async with self._owner.read_backs:
            yield await self.whole()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body from its start, for the upstream request."""
        if self._spool is None:
            if self._memory:
                yield self._memory
            return
        offset = 0
        while block := self._spool.read_at(offset, CHUNK):
            offset += len(block)
            yield block

    async def whole(self) -> bytes:
        """The body as one bytes object: the buffer itself when in memory, no copy; a spooled
        one is read back in a worker thread (20 MiB took the loop 11-19 ms)."""
        if self._spool is None:
            return self._memory
        return await asyncio.to_thread(self._read_back)

    def _read_back(self) -> bytes:
        assert self._spool is not None
        parts, offset = [], 0
        while offset < self.size and (block := self._spool.read_at(offset, self.size - offset)):
            parts.append(block)
            offset += len(block)
        return b"".join(parts)

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
        self._owner.memory_budget.give(len(self._memory))
        self._memory = b""


class BodyBuffer:
    """Reads request bodies whole within the request limit, the memory bound and the budget."""

    def __init__(self, max_bytes: int, memory_bytes: int, spool_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.memory_bytes = memory_bytes  # one body's
        self.spool_budget = ByteBudget(spool_bytes)
        self.memory_budget = ByteBudget(MEMORY_BODIES * memory_bytes)
        self.read_backs = asyncio.Semaphore(READ_BACKS_AT_ONCE)

    async def read(self, chunks: AsyncIterator[bytes]) -> RequestBody:
        """Raises RequestTooLarge, SpoolUnavailable, or what `chunks` raises (client gone)."""
        body = _Arriving(self)
        try:
            async for chunk in chunks:
                body.add(chunk)
            return body.whole()
        except BaseException:
            body.drop()
            raise


class _Arriving:
    """A body as it arrives: parts in memory, all moved to a spool once past the bound."""

    def __init__(self, owner: BodyBuffer) -> None:
        self._owner = owner
        self._size = 0
        self._parts: list[bytes] = []  # charged to the owner's memory budget
        self._spool: _Spool | None = None

    def add(self, chunk: bytes) -> None:
        owner = self._owner
        self._size += len(chunk)
        if self._size > owner.max_bytes:
            raise RequestTooLarge
        if (
            self._spool is None
            and self._size <= owner.memory_bytes
            and owner.memory_budget.try_take(len(chunk))
        ):
            self._parts.append(chunk)
            return
        if self._spool is None:
            self._spool = _Spool(owner.spool_budget)
            for part in self._parts:
                self._spool.write(part)
            self._give_memory_back()
        self._spool.write(chunk)

    def drop(self) -> None:
        if self._spool is not None:
            self._spool.close()
        self._give_memory_back()

    def _give_memory_back(self) -> None:
        self._owner.memory_budget.give(sum(map(len, self._parts)))
        self._parts.clear()

    def whole(self) -> RequestBody:
        if self._spool is not None:
            self._spool.finish()
        return RequestBody(self._size, b"".join(self._parts), self._spool, self._owner)
