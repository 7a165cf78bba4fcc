"""Structured logs: one JSON object per line with the call's extra fields."""

from __future__ import annotations

import json
import logging

from services.selector_api.logs import JsonFormatter


def test_a_record_becomes_one_json_line_with_its_fields() -> None:
    record = logging.LogRecord("seqattn.service.jobs", logging.INFO, __file__, 1, "job %s", ("started",), None)
    record.job_id = "j-1"
    line = JsonFormatter().format(record)
    data = json.loads(line)
    assert "\n" not in line
    assert data["message"] == "job started" and data["job_id"] == "j-1" and data["level"] == "INFO"
    assert data["ts"].endswith("Z")
