"""``/healthz`` and ``/metrics`` (Prometheus text format)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.selector_api.deps import ServiceDep
from services.selector_api.models import Health

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, operation_id="getHealth")
def healthz(service: ServiceDep) -> Health:
    """Up, and the database answers."""
    service.store.count_jobs_by_state()
    return Health(status="ok", jobs_running_here=len(service.workers.running()),
                  auth="api-key" if service.settings.key() else "open")


@router.get("/metrics", response_class=Response, operation_id="getMetrics",
            responses={200: {"description": "Prometheus text exposition format",
                             "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}})
def metrics(request: Request) -> Response:
    """Request latency histogram per route, jobs by state, the jobs this process ran (counter and
    duration by final state), and the process (``process_resident_memory_bytes``, CPU, open files)."""
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
