"""uvicorn's HTTP/1.1 protocols with a bound on the request head and JSON answers to unparsable requests.

uvicorn answers a request its parser rejects (a malformed ``Content-Length`` or
``Transfer-Encoding``, a bad request line) itself, before the app sees it, with a ``text/plain``
400. And with httptools (the parser ``seqattn serve`` uses, for the serving route's latency)
there is no limit on the request line and headers at all: three 128 MB headers are buffered and
answered. The subclasses here change only that:

- the request line plus headers may be at most ``h11_max_incomplete_event_size`` bytes (uvicorn's
  own setting, which only its h11 protocol honours; here both do): larger gets a 431 and the
  connection is closed, after at most one more read from the socket;
- every answer the protocol itself gives is the service's error body,
  ``{"field": ..., "message": ...}`` as ``application/json``, naming the header at fault when the
  parser says which (``Content-Length``, ``Transfer-Encoding``).

:func:`server_options` gives the keyword arguments for ``uvicorn.Config``/``uvicorn.run``::

    uvicorn.run(app, host="127.0.0.1", port=8000, **server_options(settings))
"""

from __future__ import annotations

import http
import json
import logging
import sys
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("seqattn.service")

# Header names the parsers mention in their messages, and the field each one names.
_FIELDS = (("content-length", "Content-Length"), ("transfer-encoding", "Transfer-Encoding"), ("chunk", "body"),
           ("header", "headers"), ("url", "path"), ("method", "method"), ("version", "request"))


def field_of(reason: str) -> str:
    """The request part a parser's message is about (``"Invalid character in Content-Length"`` ->
    ``Content-Length``), or ``request``.

    Example::

        >>> field_of("Content-Length can't be present with Transfer-Encoding")
        'Content-Length'
        >>> field_of("Invalid method encountered")
        'method'
    """
    low = reason.lower()
    return next((field for word, field in _FIELDS if word in low), "request")


def error_response(status: int, field: str, message: str) -> bytes:
    """A whole HTTP/1.1 response with the service's error body; the connection is closed after it."""
    body = json.dumps({"field": field, "message": message}).encode()
    phrase = http.HTTPStatus(status).phrase
    head = (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode("ascii") + body


def _too_large(limit: int) -> tuple[int, str, str]:
    return 431, "headers", (f"the request line and headers are over the limit of {limit} bytes "
                            "(SEQATTN_MAX_HEADER_BYTES)")


def _head_limit(config: Any) -> int:
    return config.h11_max_incomplete_event_size or h11._connection.DEFAULT_MAX_INCOMPLETE_EVENT_SIZE


def _refuse(transport: Any, status: int, field: str, message: str) -> None:
    log.warning("refused an unparsable request", extra={"status": status, "field": field, "reason": message})
    if transport is not None and not transport.is_closing():
        transport.write(error_response(status, field, message))
        transport.close()


def _parser_refusal(config: Any, fallback: str) -> tuple[int, str, str]:
    """Status, field and message for the parser error being handled. uvicorn calls
    ``send_400_response`` inside its ``except`` block for the parser's exception (and passes only
    a fixed text), so the exception itself is ``sys.exc_info()``'s."""
    exc = sys.exc_info()[1]
    reason = str(exc) if exc is not None and str(exc) else fallback
    if isinstance(exc, h11.RemoteProtocolError) and exc.error_status_hint == 431:
        return _too_large(_head_limit(config))
    return 400, field_of(reason), f"is not valid HTTP/1.1: {reason}"


class JsonH11Protocol(H11Protocol):
    """uvicorn's h11 protocol: h11 already bounds the head (``h11_max_incomplete_event_size``);
    its refusals become JSON (431 for a head over the limit, 400 else)."""

    def send_400_response(self, msg: str) -> None:
        _refuse(self.transport, *_parser_refusal(self.config, msg))


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is a dependency; h11 is uvicorn's fallback
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


if HttpToolsProtocol is not None:

    class JsonHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc,valid-type]
        """uvicorn's httptools protocol with a bound on the request head and JSON refusals.

        The head is counted from the bytes read while a request's line and headers are still
        incomplete (the read in which a request begins is not counted), so a client cannot make
        the parser buffer more than the limit plus one socket read."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.max_head = _head_limit(self.config)
            self._in_head = False
            self._head_bytes = 0

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head, self._head_bytes = True, 0

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def data_received(self, data: bytes) -> None:
            if self.transport is None or self.transport.is_closing():
                return  # refused already: the rest of what the client sent is dropped
            if self._in_head:
                self._head_bytes += len(data)
                if self._head_bytes > self.max_head:
                    self._in_head = False
                    _refuse(self.transport, *_too_large(self.max_head))
                    return
            super().data_received(data)

        def send_400_response(self, msg: str) -> None:
            _refuse(self.transport, *_parser_refusal(self.config, msg))


def http_protocol() -> type:
    """The protocol ``seqattn serve`` runs: httptools' (faster) when installed, else h11's."""
    return JsonHttpToolsProtocol if HttpToolsProtocol is not None else JsonH11Protocol


def server_options(max_header_bytes: int) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config``/``uvicorn.run``: the protocol above and the head
    limit (``SEQATTN_MAX_HEADER_BYTES``)."""
    return {"http": http_protocol(), "h11_max_incomplete_event_size": max_header_bytes}
