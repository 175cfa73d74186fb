"""Logging set-up: JSON lines for machines (default) or plain lines for people."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import sys
import time
from typing import IO, Any

import orjson

# attributes every LogRecord has; anything else was passed in `extra=` and belongs in the line
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's ANSI-coloured duplicate of the message
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(
            (name, value) for name, value in record.__dict__.items() if name not in _STANDARD
        )
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    """`time level logger: message key=value ...` for a person at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        # repr() keeps a client-chosen value (a path with an encoded newline) on one line
        extras = " ".join(
            f"{name}={value!r}" if isinstance(value, str) else f"{name}={value}"
            for name, value in record.__dict__.items()
            if name not in _STANDARD
        )
        base = super().format(record)
        return f"{base} {extras}" if extras else base


# How long an access line may wait in the buffer: one write for all lines of that interval.
FLUSH_EVERY = 0.1


class JsonLines:
    """The access line's fast path: the JsonFormatter's line, written without a LogRecord.

    One line per request through `logging` costs a record, a formatter pass and a write system
    call of its own. Here the line goes into the stream's byte buffer, and one write every
    FLUSH_EVERY seconds (or whenever the buffer fills, and at exit) sends them all: a process
    killed outright loses at most that interval's lines.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._flush_pending = False
        self._second = -1
        self._second_text = b""
        atexit.register(self.flush)

    def write(self, logger: str, message: str, fields: dict[str, Any]) -> None:
        line = {
            "time": self._timestamp(time.time()),
            "level": "info",
            "logger": logger,
            "message": message,
            **fields,
        }
        self._stream.write(orjson.dumps(line, default=str) + b"\n")
        if self._flush_pending:
            return
        try:
            asyncio.get_running_loop().call_later(FLUSH_EVERY, self.flush)
            self._flush_pending = True
        except RuntimeError:  # no loop: write through
            self.flush()

    def flush(self) -> None:
        self._flush_pending = False
        with contextlib.suppress(OSError, ValueError):  # a closed or broken stream: lines lost
            self._stream.flush()

    def _timestamp(self, now: float) -> str:
        second = int(now)
        if second != self._second:  # formatting a date is the dear part: once a second
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        return f"{self._second_text.decode()}.{int((now - second) * 1000):03d}Z"


_json_lines: JsonLines | None = None


def info_line(logger: logging.Logger, message: str, fields: dict[str, Any]) -> None:
    """Log `message` with `fields` at INFO: straight to the stream in JSON, else via logging."""
    if _json_lines is not None:
        try:
            _json_lines.write(logger.name, message, fields)
            return
        except (TypeError, orjson.JSONEncodeError):  # e.g. a lone surrogate in a path
            pass
    logger.info(message, extra=fields)


def configure(level: str, fmt: str) -> None:
    """Route every logger (uvicorn's included) to stderr in the chosen format."""
    global _json_lines
    handler = logging.StreamHandler(sys.stderr)
    _json_lines = None
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
        buffer = getattr(sys.stderr, "buffer", None)
        if buffer is not None:
            _json_lines = JsonLines(buffer)
    else:
        formatter = ConsoleFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
