"""Log lines: the access line's fast JSON path matches the formatter's shape, and falls back;
`auto` picks plain lines for a terminal and JSON for anything else."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import pty
import select
import sys
from collections.abc import Callable, Iterator

import orjson
import pytest

from proxy.ops import logs


def test_json_lines_carry_time_level_logger_message_then_fields() -> None:
    stream = io.BytesIO()
    lines = logs.JsonLines(stream)
    lines.write("proxy.access", "request", {"path": "/v1/runs/x", "status": 200})
    record = orjson.loads(stream.getvalue())
    assert list(record)[:4] == ["time", "level", "logger", "message"]
    assert record["time"].endswith("Z")
    assert (record["level"], record["logger"], record["message"]) == (
        "info",
        "proxy.access",
        "request",
    )
    assert (record["path"], record["status"]) == ("/v1/runs/x", 200)
    assert stream.getvalue().endswith(b"\n")


def test_a_line_orjson_cannot_encode_goes_through_logging(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.BytesIO()
    monkeypatch.setattr(logs, "_json_lines", logs.JsonLines(stream))
    logger = logging.getLogger("proxy.access")
    with caplog.at_level(logging.INFO, logger="proxy.access"):
        logs.info_line(logger, "request", {"path": "/v1/runs/\udcff"})  # a lone surrogate
    assert stream.getvalue() == b""
    assert [record.getMessage() for record in caplog.records] == ["request"]
    assert caplog.records[0].__dict__["path"] == "/v1/runs/\udcff"


class RecordingStream(io.RawIOBase):
    """A raw, unbuffered stream (as stderr is under PYTHONUNBUFFERED) that keeps each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.writes.append(bytes(data))
        return len(data)


async def test_a_flush_writes_whole_lines_at_most_pipe_buf_bytes_at_a_time() -> None:
    """Several workers share one pipe: writes up to PIPE_BUF bytes never interleave."""
    stream = RecordingStream()
    lines = logs.JsonLines(stream)  # type: ignore[arg-type]
    for number in range(200):  # in the event loop: the lines gather, under FLUSH_AT
        lines.write("proxy.access", "request", {"n": number, "path": "/v1/runs/" + "x" * 40})
    held = list(stream.writes)
    lines.flush()

    assert held == []
    assert len(stream.writes) > 1
    assert len(stream.writes) < 200  # several lines a write, not one each
    assert all(len(write) <= logs.PIPE_BUF and write.endswith(b"\n") for write in stream.writes)
    records = [orjson.loads(line) for line in b"".join(stream.writes).splitlines()]
    assert [record["n"] for record in records] == list(range(200))


async def test_in_the_event_loop_lines_wait_for_one_flush_every_interval() -> None:
    stream = io.BytesIO()
    lines = logs.JsonLines(stream)

    lines.write("proxy.access", "request", {"status": 200})
    lines.write("proxy.access", "request", {"status": 404})
    held = stream.getvalue()
    await asyncio.sleep(logs.FLUSH_EVERY * 1.5)

    assert held == b""  # nothing written per request
    statuses = [orjson.loads(line)["status"] for line in stream.getvalue().splitlines()]
    assert statuses == [200, 404]


async def test_a_full_buffer_is_written_at_once_without_waiting_for_the_interval() -> None:
    stream = RecordingStream()
    lines = logs.JsonLines(stream)  # type: ignore[arg-type]
    held = 0  # bytes written into the buffer before the write that filled it
    number = 0
    while not stream.writes:  # no await: the interval's flush cannot have run
        held = len(lines._pending)
        lines.write("proxy.access", "request", {"n": number, "path": "/v1/runs/" + "x" * 40})
        number += 1
        assert number < 10 * logs.FLUSH_AT // 100, "a full buffer was never written"

    written = b"".join(stream.writes)
    assert held < logs.FLUSH_AT <= len(written)  # written by the line that filled it
    assert lines._pending == b""
    assert all(len(write) <= logs.PIPE_BUF and write.endswith(b"\n") for write in stream.writes)
    records = [orjson.loads(line) for line in written.splitlines()]
    assert [record["n"] for record in records] == list(range(number))


def test_a_buffered_line_is_written_before_any_other_log_line() -> None:
    stream = io.BytesIO()
    lines = logs.JsonLines(stream)
    lines._pending += b'{"message":"request"}\n'  # as written in the loop, not yet flushed
    text = io.StringIO()
    handler = logs._AfterAccessLines(text)
    handler.setFormatter(logs.JsonFormatter())
    saved, logs._json_lines = logs._json_lines, lines
    try:
        handler.emit(logging.makeLogRecord({"msg": "later", "levelname": "WARNING"}))
    finally:
        logs._json_lines = saved

    assert stream.getvalue() == b'{"message":"request"}\n'
    assert orjson.loads(text.getvalue())["message"] == "later"


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """configure() rewires the root logger and the access-line path: put both back."""
    root = logging.getLogger()
    handlers, level, lines = root.handlers[:], root.level, logs._json_lines
    yield
    if logs._json_lines is not None:
        logs._json_lines.flush()
    root.handlers[:], logs._json_lines = handlers, lines
    root.setLevel(level)


@contextlib.contextmanager
def stderr_on(kind: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], str]]:
    """sys.stderr on a terminal (a pty) or a pipe; yields a reader of what was written."""
    read_fd, write_fd = pty.openpty() if kind == "terminal" else os.pipe()
    stream = os.fdopen(write_fd, "w", buffering=1)
    monkeypatch.setattr(sys, "stderr", stream)

    def written() -> str:
        """All that is there: a pty hands written lines over in pieces, so read until a
        quiet moment rather than once."""
        stream.flush()
        chunks = []
        while select.select([read_fd], [], [], 0.2)[0]:
            chunks.append(os.read(read_fd, 65536))
        return b"".join(chunks).decode()

    try:
        yield written
    finally:
        monkeypatch.undo()
        stream.close()
        os.close(read_fd)


@pytest.mark.parametrize(("kind", "expected"), [("terminal", "console"), ("pipe", "json")])
def test_auto_is_console_on_a_terminal_and_json_otherwise(
    kind: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with stderr_on(kind, monkeypatch):
        assert logs.resolve_format("auto") == expected
        # a format that was set decides, whatever stderr is
        assert logs.resolve_format("json") == "json"
        assert logs.resolve_format("console") == "console"


@pytest.mark.usefixtures("restored_logging")
def test_auto_logs_plain_lines_to_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    with stderr_on("terminal", monkeypatch) as written:
        logs.configure("info", "auto")
        logging.getLogger("proxy").warning("store down", extra={"store": "redis"})
        logs.info_line(logging.getLogger("proxy.access"), "request", {"status": 200})
        text = written()

    lines = text.splitlines()
    assert len(lines) == 2, text
    assert "WARNING proxy: store down store='redis'" in lines[0]
    assert "INFO proxy.access: request status=200" in lines[1]
    assert "{" not in text


@pytest.mark.usefixtures("restored_logging")
def test_auto_logs_json_lines_to_a_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    with stderr_on("pipe", monkeypatch) as written:
        logs.configure("info", "auto")
        logging.getLogger("proxy").warning("store down", extra={"store": "redis"})
        logs.info_line(logging.getLogger("proxy.access"), "request", {"status": 200})
        assert logs._json_lines is not None  # the access lines' fast path is on
        logs._json_lines.flush()
        text = written()

    records = [orjson.loads(line) for line in text.splitlines()]
    assert [(r["level"], r["message"]) for r in records] == [
        ("warning", "store down"),
        ("info", "request"),
    ]
    assert (records[0]["store"], records[1]["status"]) == ("redis", 200)
