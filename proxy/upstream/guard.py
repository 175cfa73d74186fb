"""Issue 8's guard: a pooled upstream connection that receives what no request asked for is
closed, never used, so an answer is only ever paired with the request it answers."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.http import RawResponseMessage
from aiohttp.streams import StreamReader

log = logging.getLogger("proxy.upstream.guard")


class AnswersOnly(ResponseHandler):
    """aiohttp's connection protocol, closing a connection that receives what nobody asked for.

    HTTP/1.1 pairs a response with a request by order alone. aiohttp parses whatever an idle
    pooled connection receives and queues it for the next request sent there: one response too
    many from the upstream would answer that request (another credential's) with it, and every
    later one on the connection with the answer to the one before, cached under its scope.
    A request is outstanding from set_response_params (aiohttp calls it once per request, as it
    sends it) until the body of its final (non-1xx) answer has ended. After that, a byte, or a
    second answer parsed from the bytes that ended the first, closes the connection unread.
    (Before its first request a connection keeps aiohttp's own handling: a proxy may answer
    CONNECT before aiohttp calls set_response_params, and aiohttp keeps those bytes for it.)
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._awaiting = False  # a request was sent and its final answer has not come
        self._answer: StreamReader | None = None  # the body of the last request's answer

    def _idle(self) -> bool:
        return not self._awaiting and self._answer is not None and self._answer.is_eof()

    def set_response_params(self, **params: Any) -> None:
        self._awaiting, self._answer = True, None
        super().set_response_params(**params)

    def data_received(self, data: bytes) -> None:
        # (b"" is aiohttp resuming its own parser; an upgraded connection is no longer HTTP)
        if data and self._idle() and not self._upgraded:
            self._unsolicited()
            return
        super().data_received(data)

    def feed_data(self, data: tuple[RawResponseMessage, StreamReader], size: int = 0) -> None:
        if not self._awaiting:  # a second answer, parsed from the bytes that ended the first
            self._unsolicited()
            return
        code = data[0].code
        if not 100 <= code < 200 or code == 101:  # final: other 1xx are interim, it follows
            self._awaiting, self._answer = False, data[1]
        super().feed_data(data, size)

    def is_connected(self) -> bool:
        """aiohttp asks this of a pooled connection before reusing it: one holding input that
        was never read (so never asked for) is not reused."""
        return super().is_connected() and not (self._buffer or self._tail)

    def _unsolicited(self) -> None:
        log.warning("the upstream sent what no request asked for: connection closed")
        self._should_close = True
        self.close()


class GuardedConnector(aiohttp.TCPConnector):
    """aiohttp's TCP connector, its connections on AnswersOnly.

    aiohttp has no public hook for the protocol: this sets the factory it builds them with,
    and fails at start-up rather than run unguarded should a new aiohttp rename it.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if "_factory" not in vars(self):
            raise RuntimeError("aiohttp's connector no longer has a protocol factory to set")
        self._factory = functools.partial(_answers_only, loop=asyncio.get_running_loop())


def _answers_only(loop: asyncio.AbstractEventLoop) -> ResponseHandler:
    return AnswersOnly(loop)
