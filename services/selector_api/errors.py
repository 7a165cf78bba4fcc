"""How the service answers errors: ``{"field": ..., "message": ...}`` with a 4xx, never a traceback.

Bad input anywhere below (spec parsing, dataset checks, the registry) is a
:class:`pipelines.errors.SpecError`, the same error the CLI turns into exit code 2, so a message
reads the same on both surfaces: 422. What only HTTP has (a missing key, an unknown id, a full
queue, a rate limit) is a :class:`ServiceError`, whose subclass is its status. Both carry the
field at fault and the problem. Anything else is logged with its traceback and answered with a
generic 500 body.

Example::

    >>> NotFound("id", "no job 'j-1'").to_dict()
    {'field': 'id', 'message': "no job 'j-1'"}
    >>> status_of(Conflict("name", "exists")), status_of(SpecError("dataset.label", "missing"))
    (409, 422)
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.errors import SpecError
from pipelines.spec import first_problem, loc_to_path

log = logging.getLogger("seqattn.service.errors")


class ServiceError(Exception):
    """An error of the HTTP surface, located like a :class:`SpecError`; ``status`` is its HTTP status."""

    status = 500

    def __init__(self, field: str | None, message: str) -> None:
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}" if field else message)

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "message": self.message}


class BadRequest(ServiceError):
    """Unreadable request (HTTP 400): not JSON, a malformed header."""

    status = 400


class Unauthorized(ServiceError):
    """Missing or wrong API key (HTTP 401)."""

    status = 401


class NotFound(ServiceError):
    """An id or name that does not exist (HTTP 404)."""

    status = 404


class Conflict(ServiceError):
    """A request that contradicts the current state (HTTP 409)."""

    status = 409


class UnsupportedMediaType(ServiceError):
    """A body that is not JSON by its Content-Type (HTTP 415)."""

    status = 415


class TooManyRequests(ServiceError):
    """A client over one of its rate limits (HTTP 429); ``retry_after`` seconds until it may retry."""

    status = 429

    def __init__(self, field: str, message: str, retry_after: int) -> None:
        super().__init__(field, message)
        self.retry_after = retry_after


class QueueFull(ServiceError):
    """Too many queued jobs (HTTP 503): the client should retry later."""

    status = 503


# What a request can be answered with instead of its result: bad input, or a service error.
UserError = (SpecError, ServiceError)


def status_of(exc: SpecError | ServiceError) -> int:
    return exc.status if isinstance(exc, ServiceError) else 422


def error_body(field: str | None, message: str) -> dict[str, Any]:
    return {"field": field, "message": message}


def _field_of(loc: tuple[Any, ...], kind: str = "") -> str:
    if kind == "json_invalid":  # loc is ("body", <offset of the error>): the body is at fault
        return "body"
    where, rest = (loc[0], loc[1:]) if loc and loc[0] in ("body", "path", "query", "header", "cookie") else ("", loc)
    out = loc_to_path(rest)
    if where == "header":
        return out.replace("_", "-").title() if out else "headers"
    return out or (where or "request")


def allowed_methods(request: Request, starlette_allow: str = "") -> list[str]:
    """Every method the API documents at this request's path, with those Starlette named.
    (Starlette's 405 names only the methods of the first route whose path matched, so
    ``OPTIONS /v1/jobs`` said ``Allow: POST`` without ``GET``.) The OpenAPI document is the list of
    what is served; routes outside it (the docs pages, the dashboard) keep Starlette's answer."""
    methods = {m.strip().upper() for m in starlette_allow.split(",") if m.strip()}
    for pattern, documented in _path_patterns(request.app):
        if pattern.fullmatch(request.url.path):
            methods |= documented
    return sorted(methods)


def _path_patterns(app: Any) -> list[tuple[re.Pattern[str], set[str]]]:
    cached = getattr(app.state, "allow_patterns", None)
    if cached is None:
        cached = [(re.compile(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path))),
                   {m.upper() for m in ops if m in _HTTP_METHODS})
                  for path, ops in app.openapi().get("paths", {}).items()]
        app.state.allow_patterns = cached
    return cached


_HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app`` (see the module docstring)."""

    @app.exception_handler(SpecError)
    @app.exception_handler(ServiceError)
    async def user_error(request: Request, exc: SpecError | ServiceError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        if isinstance(exc, QueueFull):
            headers = {"Retry-After": "5"}
        if isinstance(exc, TooManyRequests):
            headers = {"Retry-After": str(exc.retry_after)}
            # Answer late: a client that ignores Retry-After and loops gets one refusal per delay per
            # connection, instead of taking the serving route's CPU with thousands of them a second.
            await asyncio.sleep(request.app.state.service.settings.rate_limit_delay_s)
        return JSONResponse(exc.to_dict(), status_code=status_of(exc), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if not errors:
            return JSONResponse(error_body("request", "is invalid"), status_code=422)
        body_field = getattr(request.scope.get("route"), "body_field", None)
        model = body_field.field_info.annotation if body_field is not None else None
        field, message = first_problem(errors, model if isinstance(model, type) else None,
                                       lambda e: _field_of(tuple(e["loc"]), e.get("type", "")))
        status = 400 if errors[0].get("type") == "json_invalid" else 422
        return JSONResponse(error_body(field, message), status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(getattr(exc, "headers", None) or {})
        if isinstance(exc.detail, dict) and "message" in exc.detail:
            body = exc.detail
        elif exc.status_code == 404:
            body = error_body("path", f"no route {request.url.path!r}; see /docs")
        elif exc.status_code == 405:
            allowed = allowed_methods(request, headers.get("Allow", "") or headers.get("allow", ""))
            headers["Allow"] = ", ".join(allowed)
            body = error_body("method", f"{request.method} is not allowed on {request.url.path!r}; "
                                        f"allowed: {', '.join(allowed)}")
        elif exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
            # FastAPI's own body parsing (a route with a pydantic body) met a JSON nested too deeply.
            body = error_body("body", "is nested too deeply to be read")
        elif exc.status_code == 400 and exc.__cause__ is not None:
            body = error_body("body", "could not be read")
        else:
            body = error_body(None, str(exc.detail))
        return JSONResponse(body, status_code=exc.status_code, headers=headers or None)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc, extra={"method": request.method, "path": request.url.path})
        return JSONResponse(error_body(None, "internal error; the service log has the details"), status_code=500)
