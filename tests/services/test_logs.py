"""Structured logs: one JSON object per line with the call's extra fields."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
from live_server import ServerProcess

from services.cli import serve_urls
from services.selector_api.logs import JsonFormatter


def test_a_record_becomes_one_json_line_with_its_fields() -> None:
    record = logging.LogRecord("seqattn.service.jobs", logging.INFO, __file__, 1, "job %s", ("started",), None)
    record.job_id = "j-1"
    line = JsonFormatter().format(record)
    data = json.loads(line)
    assert "\n" not in line
    assert data["message"] == "job started" and data["job_id"] == "j-1" and data["level"] == "INFO"
    assert data["ts"].endswith("Z")


def test_uvicorns_color_message_is_dropped_and_no_ansi_escape_is_left() -> None:
    # What uvicorn logs at start: its message, and the same with ANSI colours in ``color_message``.
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1,
                               "Uvicorn running on %s (Press CTRL+C to quit)", ("http://127.0.0.1:8000",), None)
    record.color_message = "Uvicorn running on \x1b[1m%s\x1b[0m (Press CTRL+C to quit)"
    record.status = "\x1b[32m200 OK\x1b[0m"  # a coloured extra field
    record.where = ["\x1b]8;;http://x\x07link\x1b]8;;\x07"]
    line = JsonFormatter().format(record)
    data = json.loads(line)
    assert "color_message" not in data
    assert data["message"] == "Uvicorn running on http://127.0.0.1:8000 (Press CTRL+C to quit)"
    assert data["status"] == "200 OK" and data["where"] == ["link"]
    assert "\x1b" not in line and "\\u001b" not in line


def test_a_real_servers_log_lines_carry_no_colour(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "home", [tmp_path]).start()
    try:
        httpx.get(f"{server.url}/v1/nothing-here")
    finally:
        server.stop()
    # The log file holds stdout too, where serve prints its URLs for people (test_cli checks those).
    banner = set(serve_urls("127.0.0.1", server.port))
    lines = [line for line in server.log_path.read_text().splitlines() if line.strip() and line not in banner]
    records = [json.loads(line) for line in lines]  # every other line is one JSON object
    assert any(r["logger"] == "uvicorn.error" and "Application startup complete" in r["message"]
               for r in records), lines
    assert not any("color_message" in r for r in records)
    assert not any("\x1b" in line or "\\u001b" in line for line in lines)
