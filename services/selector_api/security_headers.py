"""Headers every answer of the service carries: no MIME sniffing and no framing by other sites.

- ``X-Content-Type-Options: nosniff``: a browser takes ``application/json`` (or an export's
  ``text/x-python``) as what it says, never as HTML or script;
- ``X-Frame-Options: DENY`` and, where the answer has no Content-Security-Policy of its own,
  ``Content-Security-Policy: frame-ancestors 'none'``: no page of another site can frame ``/docs``,
  the dashboard or an API answer (clickjacking the dashboard's promote button). The docs pages
  set their own policy, which has ``frame-ancestors 'none'`` too (``app.DOCS_CSP``).

A pure ASGI middleware (no per-request task or body copy), outermost, so the body-limit's and the
serving fast path's answers carry the headers too. A header the app already set is left alone.

Example::

    app = SecurityHeaders(app)
"""

from __future__ import annotations

from typing import Any

HEADERS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"))
FRAME_POLICY = (b"content-security-policy", b"frame-ancestors 'none'")


class SecurityHeaders:
    """Wrap an ASGI app; see the module docstring."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers += [h for h in HEADERS if h[0] not in present]
                if FRAME_POLICY[0] not in present:
                    headers.append(FRAME_POLICY)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
