"""What routes share: the service's state, the API-key check, and reading a JSON body ourselves.

Routes that take a JobSpec or a ScheduleSpec read the raw JSON and validate it with pipelines'
own ``load_spec``/``load_schedule``, so the API's messages are the CLI's, word for word.

Example::

    @router.post("/v1/things", dependencies=[Depends(require_api_key)])
    async def create(request: Request, service: ServiceDep) -> ...:
        payload = await json_body(request)
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import TypeAdapter, ValidationError

from pipelines.errors import SpecError
from pipelines.spec import Name, as_spec_error
from services.selector_api.errors import BadRequest, Unauthorized, UnsupportedMediaType
from services.selector_api.scheduler import ServiceScheduler
from services.selector_api.serving import FeatureSetCache
from services.selector_api.settings import Settings
from services.selector_api.store import Store
from services.selector_api.worker import JobWorkers

log = logging.getLogger("seqattn.service")
_NAME = TypeAdapter(Name)


@dataclass
class Service:
    """Everything a request may need, built once by ``create_app``."""

    settings: Settings
    store: Store
    cache: FeatureSetCache
    workers: JobWorkers
    scheduler: ServiceScheduler


def service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(service)]


# Declares the scheme in OpenAPI (components.securitySchemes and each mutating operation's
# ``security``); it never answers by itself (auto_error=False): require_api_key checks the header,
# so that a missing or malformed one gets the service's own 401 body.
bearer = HTTPBearer(scheme_name="bearer", auto_error=False,
                    description="`Authorization: Bearer <SEQATTN_API_KEY>`; needed when the service has a key")


def require_api_key(request: Request,
                    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None) -> None:
    """Mutating routes: ``Authorization: Bearer <SEQATTN_API_KEY>`` when a key is set."""
    key = request.app.state.service.settings.key()
    if key is None:
        return
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("Authorization", "missing; send 'Authorization: Bearer <SEQATTN_API_KEY>'")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization", "must be 'Bearer <SEQATTN_API_KEY>'")
    if not secrets.compare_digest(token.strip().encode(), key.encode()):
        raise Unauthorized("Authorization", "the API key is wrong")


async def json_body(request: Request) -> Any:
    """The request's JSON body; a :class:`BadRequest` naming ``body`` when it is not JSON."""
    ctype = request.headers.get("content-type", "")
    if ctype and "json" not in ctype.lower():
        raise UnsupportedMediaType("Content-Type", f"{ctype!r} is not supported; send application/json")
    raw = await request.body()
    if not raw.strip():
        raise BadRequest("body", "is empty; send a JSON object")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest("body", f"is not valid JSON: {exc}") from None


def check_name(name: str, field: str = "name") -> str:
    """A feature-set or schedule name (``[a-z0-9][a-z0-9_-]{0,62}``), with the JobSpec's message."""
    try:
        return _NAME.validate_python(name)
    except ValidationError as exc:
        raise SpecError(field, as_spec_error(exc).message) from None
