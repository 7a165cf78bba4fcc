"""The FastAPI application: ``create_app(settings)`` wires the store, the serving cache, the job
workers and the scheduler, the routes by resource, the error handlers and two ASGI middlewares
(request metrics, body size limit). OpenAPI at ``/openapi.json``, rendered at ``/docs`` (Swagger UI)
and ``/redoc``, both from files served by this process (the ``fastapi-offline`` package's copies of
Swagger UI 5 and ReDoc), since hosts without internet cannot reach FastAPI's default CDN.

Run it with ``seqattn serve --host 127.0.0.1 --port 8000`` or any ASGI server::

    uvicorn services.selector_api.app:create_app --factory --host 127.0.0.1 --port 8000

Example::

    >>> import tempfile
    >>> app = create_app(Settings(home=tempfile.mkdtemp(), scheduler_enabled=False))
    >>> sorted(p for p in app.openapi()["paths"] if p.startswith("/v1/jobs"))
    ['/v1/jobs', '/v1/jobs/{job_id}', '/v1/jobs/{job_id}/resubmit']
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

from pipelines.roots import DataRoots
from services.selector_api.body_limit import BodySizeLimit
from services.selector_api.dashboard import install_dashboard
from services.selector_api.deps import Service
from services.selector_api.errors import install_error_handlers
from services.selector_api.metrics import JobMetrics, RequestMetrics, service_registry
from services.selector_api.routes import feature_sets, jobs, ops, schedules
from services.selector_api.scheduler import ServiceScheduler
from services.selector_api.security_headers import SecurityHeaders
from services.selector_api.serving import FeatureSetCache, ServePromoted
from services.selector_api.settings import Settings
from services.selector_api.store import Store
from services.selector_api.worker import JobWorkers

log = logging.getLogger("seqattn.service")

DESCRIPTION = """Sequential Attention feature selection as a service: submit selection jobs (JobSpec),
follow their progress, read and promote versioned FeatureSets, run continual schedules.

Mutating routes need `Authorization: Bearer <SEQATTN_API_KEY>` when the key is set. Errors are
`{"field": ..., "message": ...}` with a 4xx status."""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service (threads start with the ASGI lifespan, so building is cheap)."""
    settings = settings or Settings()
    store = Store(settings.home)
    cache = FeatureSetCache(store.registry)
    metrics = service_registry(store)
    workers = JobWorkers(store, settings.job_concurrency, on_published=lambda name: cache.invalidate(),
                         metrics=JobMetrics(metrics), roots=DataRoots.of(settings.roots()), limits=settings.limits(),
                         max_memory_bytes=settings.job_memory_bytes())
    scheduler = ServiceScheduler(store, workers, tick_s=settings.schedule_tick_s, heartbeat_s=settings.heartbeat_s,
                                 stale_after_s=settings.stale_after_s, schedules_enabled=settings.scheduler_enabled)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.key() is None:
            log.warning("SEQATTN_API_KEY is not set: mutating routes are open to anyone who can reach this port")
        interrupted = store.interrupt_orphans(settings.stale_after_s)
        if interrupted:
            log.warning("jobs interrupted by the previous stop", extra={"job_ids": interrupted})
        workers.start()
        scheduler.start()
        log.info("service started", extra={"home": str(store.home), "data_roots": [str(r) for r in settings.roots()],
                                           "job_concurrency": settings.job_concurrency})
        try:
            yield
        finally:
            scheduler.stop()
            workers.stop()
            cache.close()

    app = FastAPI(title="seqattn selector API", version="1", description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # FastAPI's pages load their JS and CSS from a CDN
                  generate_unique_id_function=operation_id,
                  separate_input_output_schemas=False)  # one JobSpec schema, whether sent or received
    install_docs(app)
    app.state.service = Service(settings, store, cache, workers, scheduler)
    app.state.metrics = metrics
    install_error_handlers(app)
    for module in (jobs, feature_sets, schedules, ops):
        app.include_router(module.router)
    install_dashboard(app)
    # Added last = outermost: metrics see everything, the body limit runs before any route.
    app.add_middleware(ServePromoted, cache=cache)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, registry=app.state.metrics)
    app.add_middleware(SecurityHeaders)  # outermost: every answer, the fast path's and the 413s too
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


DOCS_ASSETS = "/docs-assets"
# The pages' own inline scripts and styles, and our files; nothing from elsewhere (ReDoc would
# fetch its "powered by" logo from cdn.redoc.ly; this makes the browser skip it).
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: blob:; worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'")


def docs_assets_dir() -> Path:
    """Swagger UI 5 (``swagger-ui-bundle.js``, ``swagger-ui.css``), ReDoc and a favicon, as the
    ``fastapi-offline`` package ships them. (``swagger-ui-bundle`` on PyPI ships Swagger UI 4.15,
    which cannot render FastAPI's OpenAPI 3.1 document: it shows no operation at all.)"""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def install_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI), ``/docs/oauth2-redirect`` and ``/redoc``, with every asset served
    from :data:`DOCS_ASSETS` by this process: no page references another host."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=docs_assets_dir()), name="docs-assets")
    favicon = f"{DOCS_ASSETS}/favicon.png"

    def own_files_only(page: HTMLResponse) -> HTMLResponse:
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return own_files_only(get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json",
                                   title=f"{app.title} - Swagger UI", oauth2_redirect_url="/docs/oauth2-redirect",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css", swagger_favicon_url=favicon,
                                   # No badge: it would send the document to validator.swagger.io.
                                   swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None}))

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return own_files_only(get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - ReDoc",
            redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js", redoc_favicon_url=favicon, with_google_fonts=False))


def operation_id(route: APIRoute) -> str:
    """A readable operationId for a route without an explicit one: its function's name in camelCase
    (``submit_job`` -> ``submitJob``), rather than FastAPI's ``submit_job_v1_jobs_post``."""
    head, *rest = route.name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """OpenAPI with the name rule of JobSpec, ScheduleSpec and FeatureSet declared.

    FastAPI adds a 422 with its own ``HTTPValidationError`` body to every route with parameters;
    this service answers validation errors with :class:`~services.selector_api.models.ErrorBody`,
    and only where a parameter can fail, so each route declares its 422 itself and FastAPI's are
    dropped (with their schemas)."""
    if app.openapi_schema:
        return app.openapi_schema
    from services.selector_api.deps import NAME_SCHEMA_PATTERN

    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    # pipelines' Name is checked by a validator, which JSON Schema cannot see: declare its rule.
    for model in ("JobSpec", "ScheduleSpec", "FeatureSet"):
        name = components[model].get("properties", {}).get("name", {})
        if name.get("type") == "string":
            name.setdefault("pattern", NAME_SCHEMA_PATTERN)
    fastapi_422 = {"$ref": "#/components/schemas/HTTPValidationError"}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            body = operation.get("responses", {}).get("422", {}).get("content", {}).get("application/json", {})
            if body.get("schema") == fastapi_422:
                del operation["responses"]["422"]
    if "HTTPValidationError" not in json.dumps(schema.get("paths", {})):
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
    app.openapi_schema = schema
    return schema
