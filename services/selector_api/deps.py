"""What routes share: the service's state, the API-key check, and the checks of a JSON body.

Routes declare their body as its pydantic model (FastAPI validates it and documents it); the
error handler words its validation errors with the CLI's own function, so the API's messages are
the CLI's, word for word. :data:`JsonBody` checks the request itself first (media type, empty,
nesting, an object) and gives the raw JSON where a route needs it.

Example::

    @router.post("/v1/things", dependencies=[Depends(require_api_key)])
    async def create(thing: ThingSpec, payload: JsonBody, service: ServiceDep) -> ...:
        ...
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import TypeAdapter, ValidationError

from pipelines.errors import SpecError
from pipelines.spec import NAME_PATTERN, Name, as_spec_error
from services.selector_api.errors import BadRequest, Unauthorized, UnsupportedMediaType
from services.selector_api.ratelimit import RateLimits
from services.selector_api.scheduler import ServiceScheduler
from services.selector_api.serving import FeatureSetCache
from services.selector_api.settings import Settings
from services.selector_api.store import Store
from services.selector_api.worker import JobWorkers

log = logging.getLogger("seqattn.service")
_NAME = TypeAdapter(Name)
# JSON Schema patterns are searched, not matched: anchored, this is the name rule itself.
NAME_SCHEMA_PATTERN = f"^{NAME_PATTERN.pattern}$"
_NAME_DOC = ("A feature-set or schedule name: 1-63 characters from a-z, 0-9, '_' and '-', "
             "starting with a letter or digit")
# The name rule is declared in OpenAPI (so clients and schema-driven tests send valid names) but
# checked by :func:`check_name`, whose message is the CLI's.
NamePath = Annotated[str, Path(description=_NAME_DOC, json_schema_extra={"pattern": NAME_SCHEMA_PATTERN})]
NameQuery = Annotated[str | None, Query(description=_NAME_DOC, json_schema_extra={"pattern": NAME_SCHEMA_PATTERN})]
# Deeper than any JobSpec or schedule (4 levels); a deeper body is refused before anything walks it.
MAX_JSON_DEPTH = 32


@dataclass
class Service:
    """Everything a request may need, built once by ``create_app``."""

    settings: Settings
    store: Store
    cache: FeatureSetCache
    workers: JobWorkers
    scheduler: ServiceScheduler
    limits: RateLimits | None = None  # None: built from the settings' SEQATTN_RATE_LIMIT_*

    def __post_init__(self) -> None:
        if self.limits is None:
            self.limits = RateLimits(submit=self.settings.rate_limit_submit, lists=self.settings.rate_limit_list_rows,
                                     auth_failures=self.settings.rate_limit_auth_failures)


def service(request: Request) -> Service:
    return request.app.state.service


def client_of(request: Request) -> str:
    """The client's address, as the rate limits key it (uvicorn applies trusted X-Forwarded-For)."""
    return request.client.host if request.client else "unknown"


def _limits(request: Request) -> RateLimits:
    limits = request.app.state.service.limits
    assert limits is not None
    return limits


def limit_submissions(request: Request) -> None:
    """Routes that queue a job or scan data: one of the client's ``SEQATTN_RATE_LIMIT_SUBMIT``."""
    _limits(request).hit("submit", client_of(request))


def list_budget(request: Request) -> Callable[[int], None]:
    """List routes: 429 when the client's ``SEQATTN_RATE_LIMIT_LIST_ROWS`` is spent; else a
    function the route calls with the number of rows it returns, to charge them."""
    limits, client = _limits(request), client_of(request)
    limits.check("list", client)
    return lambda rows: limits.charge("list", client, max(1, rows))


ListBudget = Annotated[Callable[[int], None], Depends(list_budget)]


ServiceDep = Annotated[Service, Depends(service)]


# Declares the scheme in OpenAPI (components.securitySchemes and each mutating operation's
# ``security``); it never answers by itself (auto_error=False): require_api_key checks the header,
# so that a missing or malformed one gets the service's own 401 body.
bearer = HTTPBearer(scheme_name="bearer", auto_error=False,
                    description="`Authorization: Bearer <SEQATTN_API_KEY>`; needed when the service has a key")


def require_api_key(request: Request,
                    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None) -> None:
    """Mutating routes: ``Authorization: Bearer <SEQATTN_API_KEY>`` when a key is set. Each 401
    uses one of the client's ``SEQATTN_RATE_LIMIT_AUTH_FAILURES``; with none left, the client gets
    429 (with ``Retry-After``) before its key is even looked at."""
    key = request.app.state.service.settings.key()
    if key is None:
        return
    limits, client = _limits(request), client_of(request)
    limits.check("auth_failures", client)
    try:
        _check_key(request.headers.get("authorization"), key)
    except Unauthorized:
        limits.charge("auth_failures", client, 1)
        raise


def _check_key(header: str | None, key: str) -> None:
    if not header:
        raise Unauthorized("Authorization", "missing; send 'Authorization: Bearer <SEQATTN_API_KEY>'")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization", "must be 'Bearer <SEQATTN_API_KEY>'")
    if not secrets.compare_digest(token.strip().encode(), key.encode()):
        raise Unauthorized("Authorization", "the API key is wrong")


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object, checked before a typed body's validation errors are answered:
    415 when the Content-Type is not JSON, 400 (naming ``body``) when it is empty, not JSON, nested
    deeper than :data:`MAX_JSON_DEPTH` or not an object. Routes declare their body as the pydantic
    model and take this too (``payload: JsonBody``) for what needs the raw JSON (the idempotency
    hash); Starlette parses the body once for both."""
    ctype = request.headers.get("content-type", "")
    if ctype and "json" not in ctype.lower():
        raise UnsupportedMediaType("Content-Type", f"{ctype!r} is not supported; send application/json")
    if not (await request.body()).strip():
        raise BadRequest("body", "is empty; send a JSON object")
    try:
        payload = await request.json()
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest("body", f"is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("body", f"is nested too deeply; the limit is {MAX_JSON_DEPTH} levels") from None
    depth = json_depth(payload)
    if depth > MAX_JSON_DEPTH:
        raise BadRequest("body", f"is nested {depth} levels deep; the limit is {MAX_JSON_DEPTH}")
    if not isinstance(payload, dict):
        raise BadRequest("body", f"must be a JSON object, got {type(payload).__name__}")
    return payload


JsonBody = Annotated[dict[str, Any], Depends(json_body)]


def json_depth(value: Any) -> int:
    """How deeply ``value``'s lists and objects nest (a scalar is 0), counted without recursion, so
    that no later step (hashing the body, validating it, formatting an error) can hit Python's
    recursion limit on a hostile body.

    Example::

        >>> json_depth({"a": [1, {"b": 2}]}), json_depth(3)
        (3, 0)
    """
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def check_name(name: str, field: str = "name") -> str:
    """A feature-set or schedule name (``[a-z0-9][a-z0-9_-]{0,62}``), with the JobSpec's message."""
    try:
        return _NAME.validate_python(name)
    except ValidationError as exc:
        raise SpecError(field, as_spec_error(exc).message) from None
