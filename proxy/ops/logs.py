"""Logging set-up: JSON lines for machines, plain lines for people; by default, whichever
stderr is (a terminal or not)."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import sys
import time
from collections.abc import Iterable
from typing import IO, Any

import orjson

# attributes every LogRecord has; anything else was passed in `extra=` and belongs in the line
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's ANSI-coloured duplicate of the message
}


class UtcTimestamps:
    """`2026-11-23T01:02:03.456Z` from a time.time() reading; formatting the date is the dear
    part, so it is done once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._second_text = ""

    def __call__(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int((now - second) * 1000):03d}Z"


def json_line(
    timestamp: str, level: str, logger: str, message: str, fields: Iterable[tuple[str, Any]]
) -> dict[str, Any]:
    """The one layout of a JSON log line: time, level, logger, message, then the fields."""
    line: dict[str, Any] = {"time": timestamp, "level": level, "logger": logger, "message": message}
    line.update(fields)
    return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the `extra` fields."""

    def __init__(self) -> None:
        super().__init__()
        self._timestamps = UtcTimestamps()

    def format(self, record: logging.LogRecord) -> str:
        extra = ((k, v) for k, v in record.__dict__.items() if k not in _STANDARD)
        line = json_line(
            self._timestamps(record.created),
            record.levelname.lower(),
            record.name,
            record.getMessage(),
            extra,
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
FLUSH_AT = 64 * 1024
PIPE_BUF = 4096  # writes up to this size to a pipe are never interleaved with other writers


class JsonLines:
    """The access line's fast path: the JsonFormatter's line, written without a LogRecord.

    One line per request through `logging` costs a record, a formatter pass and a write system
    call of its own. Here lines gather in a buffer of our own (stderr's may be unbuffered, as
    with PYTHONUNBUFFERED), and one flush every FLUSH_EVERY seconds (sooner when the buffer
    holds FLUSH_AT bytes, before any other log line, and at exit) writes them out: whole lines,
    at most PIPE_BUF bytes a write, so lines from several workers sharing a pipe never mix. A
    process killed outright loses at most that interval's lines.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._pending = bytearray()
        self._flush_loop: asyncio.AbstractEventLoop | None = None
        self._timestamps = UtcTimestamps()

    def write(self, logger: str, message: str, fields: dict[str, Any]) -> None:
        line = json_line(self._timestamps(time.time()), "info", logger, message, fields.items())
        self._pending += orjson.dumps(line, default=str, option=orjson.OPT_APPEND_NEWLINE)
        if len(self._pending) >= FLUSH_AT:
            self.flush()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: write through
            self.flush()
            return
        if self._flush_loop is not loop:  # none scheduled on this loop (a closed one's is moot)
            loop.call_later(FLUSH_EVERY, self.flush)
            self._flush_loop = loop

    def flush(self) -> None:
        self._flush_loop = None
        data, self._pending = bytes(self._pending), bytearray()
        start = 0
        while start < len(data):
            end = len(data)
            if end - start > PIPE_BUF:
                cut = data.rfind(b"\n", start, start + PIPE_BUF)
                end = cut + 1 if cut >= start else data.find(b"\n", start) + 1 or len(data)
            self._write_all(memoryview(data)[start:end])
            start = end

    def _write_all(self, chunk: memoryview) -> None:
        with contextlib.suppress(OSError, ValueError):  # a closed or broken stream: lines lost
            while chunk:
                written = self._stream.write(chunk)
                if not written:  # would block: drop rather than stall the event loop
                    return
                chunk = chunk[written:]
            self._stream.flush()


_json_lines: JsonLines | None = None


@atexit.register
def _flush_at_exit() -> None:
    if _json_lines is not None:
        _json_lines.flush()


def info_line(logger: logging.Logger, message: str, fields: dict[str, Any]) -> None:
    """Log `message` with `fields` at INFO: straight to the stream in JSON, else via logging."""
    if _json_lines is not None:
        try:
            _json_lines.write(logger.name, message, fields)
            return
        except TypeError:  # orjson's JSONEncodeError: e.g. a lone surrogate in a path
            pass
    logger.info(message, extra=fields)


class _AfterAccessLines(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes buffered access lines first, so every line keeps its place in time."""

    def emit(self, record: logging.LogRecord) -> None:
        if _json_lines is not None:
            _json_lines.flush()
        super().emit(record)


def resolve_format(fmt: str) -> str:
    """`auto` is `console` when stderr is a terminal (a person), else `json` (a collector)."""
    if fmt != "auto":
        return fmt
    try:
        return "console" if sys.stderr.isatty() else "json"
    except (AttributeError, ValueError):  # no stderr, or a closed one: nobody is watching
        return "json"


def configure(level: str, fmt: str) -> None:
    """Route every logger (uvicorn's included) to stderr in the chosen format (`json`,
    `console`, or `auto`: see resolve_format)."""
    global _json_lines
    fmt = resolve_format(fmt)
    handler = _AfterAccessLines(sys.stderr)
    if _json_lines is not None:
        _json_lines.flush()
    _json_lines = None
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
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
