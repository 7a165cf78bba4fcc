"""``/v1/schedules``: continual pipelines (docs/jobspec.md) that re-run a job on the newest data window.

The body of ``POST /v1/schedules`` is a schedule as ``seqattn pipeline run`` reads it, with the
job inline (the API never reads spec files from the server's disk) and a ``window.path`` under the
data roots. The scheduler queues a run when ``next_run_at`` passes; ``POST .../run`` queues one now.

Example (with httpx)::

    client.post("/v1/schedules", headers=auth, json={
        "name": "ctr-daily", "job": {"name": "ctr", "dataset": {"path": "-", "label": "label"}},
        "window": {"path": "ctr/", "size": 7}, "cadence": {"cron": "0 3 * * *"}})
    client.post("/v1/schedules/ctr-daily/run", headers=auth)    # 202 with the queued job
"""

from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Depends, Response
from fastapi.concurrency import run_in_threadpool

from pipelines.continual import ScheduleSpec, partitions
from pipelines.errors import SpecError
from services.selector_api.data_roots import check_path
from services.selector_api.deps import (
    JsonBody,
    ListBudget,
    NamePath,
    ServiceDep,
    check_name,
    limit_submissions,
    require_api_key,
)
from services.selector_api.models import JobOut, ScheduleList, ScheduleOut, error_responses, header_doc

router = APIRouter(prefix="/v1/schedules", tags=["schedules"], strict_content_type=False)

CREATED = {201: {"description": "Created", "headers": {"Location": header_doc("/v1/schedules/{name}")}}}


@router.post("", status_code=201, response_model=ScheduleOut,
             responses={**CREATED, **error_responses(400, 401, 409, 413, 415, 422, 429)},
             dependencies=[Depends(require_api_key), Depends(limit_submissions)], operation_id="createSchedule")
async def create_schedule(schedule: ScheduleSpec, _: JsonBody, response: Response,
                          service: ServiceDep) -> ScheduleOut:
    """Create a schedule; its first run is one cadence from now (``POST .../run`` to run at once)."""

    def create() -> ScheduleOut:
        try:
            service.settings.limits().check(schedule.job)
        except SpecError as exc:  # the job is the schedule's "job" field
            raise SpecError(f"job.{exc.field}", exc.message) from None
        real = check_path(schedule.window.path, service.settings.roots(), "window.path")
        placed = schedule.model_copy(update={"window": schedule.window.model_copy(update={"path": real})})
        partitions(placed.window)  # the folder must hold key=value partitions now, not at 3 a.m.
        now = datetime.now(timezone.utc)
        row = service.store.create_schedule(placed.name, placed.model_dump_json(), placed.cadence.next_run(now))
        return ScheduleOut.of(row)

    out = await run_in_threadpool(create)
    response.headers["Location"] = f"/v1/schedules/{out.name}"
    return out


@router.get("", response_model=ScheduleList, responses=error_responses(429), operation_id="listSchedules")
def list_schedules(service: ServiceDep, charge: ListBudget) -> ScheduleList:
    rows = service.store.list_schedules()
    charge(len(rows))
    return ScheduleList(schedules=[ScheduleOut.of(r) for r in rows])


@router.get("/{name}", response_model=ScheduleOut, responses=error_responses(404, 422), operation_id="getSchedule")
def get_schedule(name: NamePath, service: ServiceDep) -> ScheduleOut:
    return ScheduleOut.of(service.store.get_schedule(check_name(name)))


@router.delete("/{name}", status_code=204, responses=error_responses(401, 404, 422, 429),
               dependencies=[Depends(require_api_key)], operation_id="deleteSchedule")
def delete_schedule(name: NamePath, service: ServiceDep) -> Response:
    """Delete the schedule; a run already queued or running goes on (cancel it as a job)."""
    service.store.delete_schedule(check_name(name))
    return Response(status_code=204)


@router.post("/{name}/run", status_code=202, response_model=JobOut, responses=error_responses(401, 404, 409, 422, 429),
             dependencies=[Depends(require_api_key), Depends(limit_submissions)], operation_id="runSchedule")
def run_schedule(name: NamePath, service: ServiceDep) -> JobOut:
    """Queue one run now (409 while a run of this schedule is queued or running)."""
    job = service.store.queue_schedule_run(check_name(name))
    service.workers.wake()
    return JobOut.of(job)
