"""Log lines: the access line's fast JSON path matches the formatter's shape, and falls back."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from proxy import logs


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
