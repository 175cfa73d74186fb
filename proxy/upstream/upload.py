"""A request body on its way up, with the write timeout aiohttp lacks, and what reading the
body raised kept apart from what the connection did."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass(slots=True)
class Upload:
    """One request's body, for the watchdog to stop when the upstream stops reading."""

    task: asyncio.Task[Any] | None  # the task waiting for the answer
    stall_after: float | None  # the write timeout, per chunk; None: wait for ever
    response: aiohttp.ClientResponse | None = None  # the answer, once it came
    stalled: bool = False
    # what reading the body raised (a buffered body's spool file failing): aiohttp reports it
    # as a connection error, and the caller must answer it for what it is
    failure: Exception | None = None

    def cancelled_by_stall(self) -> bool:
        """After a CancelledError: True when the watchdog alone cancelled the task (the stall
        is then a timeout, and the cancellation is taken back)."""
        return self.stalled and self.task is not None and self.task.uncancel() == 0


async def uploading(chunks: AsyncIterable[bytes], upload: Upload) -> AsyncIterator[bytes]:
    """Pass the client's body on, keeping what it raised, with a write timeout per chunk.

    aiohttp has no write timeout: an upstream that stops reading would hold the request, and a
    pooled connection, for ever. The clock runs only while aiohttp writes a chunk, never while
    the client is slow to send the next one.
    """
    loop = asyncio.get_running_loop()
    try:
        async for chunk in chunks:
            if upload.stall_after is None:
                yield chunk
                continue
            watchdog = loop.call_later(upload.stall_after, _stalled, upload)
            try:
                yield chunk
            finally:
                watchdog.cancel()
    except Exception as exc:
        upload.failure = exc
        raise


def _stalled(upload: Upload) -> None:
    upload.stalled = True
    if upload.response is not None:
        upload.response.close()  # the answer is being relayed: cut the connection under it
    elif upload.task is not None:
        upload.task.cancel()  # still waiting for the answer: stop waiting
