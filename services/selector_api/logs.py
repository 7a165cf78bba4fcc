"""Structured logs: one JSON object per line, with the ``extra=`` fields a log call passes.

Example::

    configure_logging("INFO")
    logging.getLogger("seqattn.service.jobs").info("job started", extra={"job_id": "j-1"})
    # {"ts": "2026-11-26T07:00:00.000Z", "level": "INFO", "logger": "seqattn.service.jobs",
    #  "message": "job started", "job_id": "j-1"}

Log lines are for machines (a log shipper, ``jq``), so they carry no terminal colours: uvicorn's
``color_message`` (its message again, with ANSI codes, for its own coloured formatter) is dropped,
and ANSI escape sequences are stripped from every text in the line (a message, an extra field, a
traceback from a library that colours its output).
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

# Attributes every record has, and uvicorn's ``color_message`` (the message with ANSI colours).
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}
# CSI sequences (colours, cursor moves), OSC sequences (titles, links) and two-byte escapes; then any ESC left.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])|\x1b")


def strip_ansi(value: Any) -> Any:
    """``value`` with ANSI escape sequences removed from its text (inside lists and dicts too).

    Example::

        >>> strip_ansi({"m": "\x1b[1mbold\x1b[0m", "n": [1, "\x1b]8;;http://x\x07link"]})
        {'m': 'bold', 'n': [1, 'link']}
    """
    if isinstance(value, str):
        return _ANSI.sub("", value)
    if isinstance(value, dict):
        return {strip_ansi(k): strip_ansi(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strip_ansi(v) for v in value]
    return value


class JsonFormatter(logging.Formatter):
    """Renders a record as JSON; exceptions go in ``exc`` as text (logs only, never responses)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(strip_ansi(out), default=lambda v: strip_ansi(str(v)))


def configure_logging(level: str = "INFO") -> None:
    """JSON lines on stderr for the service's loggers (``seqattn.*``) and uvicorn's."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    for name in ("seqattn", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level)
        logger.propagate = False
