"""``/v1/jobs``: submit a selection job, watch its progress, cancel it, resubmit it.

The body of ``POST /v1/jobs`` is a JobSpec (the CLI's YAML, as JSON), declared as pipelines'
model; its validation errors are worded by the same function as the CLI's. Its dataset path must
lie under the data roots, and its columns are checked against the Parquet footers before the job
is queued.

Example (with httpx)::

    r = client.post("/v1/jobs", json=spec, headers={"Authorization": "Bearer KEY", "Idempotency-Key": "k1"})
    job_id = r.json()["id"]                      # 202; the same key again returns this job (200)
    client.get(f"/v1/jobs/{job_id}").json()["progress"]   # {"stage": "selection", "step": 40, ...}
    client.delete(f"/v1/jobs/{job_id}", headers=...)      # stops it at its next training step
"""

from __future__ import annotations

import json
import re
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Header, Path, Query, Response
from fastapi.concurrency import run_in_threadpool

from pipelines.spec import JobSpec, load_spec
from services.selector_api.data_roots import checked_spec
from services.selector_api.deps import (
    JsonBody,
    ListBudget,
    NameQuery,
    ServiceDep,
    check_name,
    limit_submissions,
    require_api_key,
)
from services.selector_api.errors import BadRequest, Conflict, NotFound
from services.selector_api.models import JobList, JobOut, JobState, error_responses, header_doc
from services.selector_api.store import JobRow, request_hash

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], strict_content_type=False)

JOB_ID = re.compile(r"j-[0-9a-f]{16}")
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
MAX_PAGE = 200  # jobs per page of GET /v1/jobs (a job with its spec is ~1 KB of JSON)
JobIdPath = Annotated[str, Path(description="A job id, `j-` and 16 hex digits",
                                json_schema_extra={"pattern": f"^{JOB_ID.pattern}$"})]
SUBMITTED = {
    202: {"description": "Queued", "headers": {"Location": header_doc("/v1/jobs/{id}")}},
    200: {"description": "Replayed: the Idempotency-Key was used for this same body; the job it made",
          "model": JobOut, "headers": {"Location": header_doc("/v1/jobs/{id}"),
                                       "Idempotent-Replayed": header_doc("`true`")}},
}


def _job_id(job_id: str) -> str:
    if not JOB_ID.fullmatch(job_id):
        raise NotFound("id", f"no job {job_id[:80]!r} (job ids look like j-0123456789abcdef)")
    return job_id


@router.post("", status_code=202, response_model=JobOut,
             responses={**SUBMITTED, **error_responses(400, 401, 409, 413, 415, 422, 429, 503)},
             dependencies=[Depends(require_api_key), Depends(limit_submissions)], operation_id="submitJob")
async def submit_job(spec: JobSpec, payload: JsonBody, response: Response, service: ServiceDep,
                     idempotency_key: Annotated[str | None, Header(
                         alias="Idempotency-Key", description="1-255 visible ASCII characters; a retry with the same "
                         "key and body returns the first job (200) instead of queueing another",
                         json_schema_extra={"pattern": f"^{IDEMPOTENCY_KEY.pattern}$"})] = None) -> JobOut:
    """Queue a selection job (a JobSpec). 202 with the job; with an ``Idempotency-Key`` already used
    for the same body, 200 with that job and no new one; for another body, 409."""
    if idempotency_key is not None and not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        raise BadRequest("Idempotency-Key", "must be 1-255 visible ASCII characters")

    def submit() -> tuple[JobRow, bool]:
        checked = checked_spec(spec, service.settings.roots(), service.settings.limits())
        return service.store.create_job("job", checked.name, checked.model_dump_json(),
                                        idempotency_key=idempotency_key, body_hash=request_hash(payload),
                                        max_queued=service.settings.max_queued_jobs)

    job, created = await run_in_threadpool(submit)
    if created:
        service.workers.wake()
    else:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobOut.of(job)


@router.get("", response_model=JobList, responses=error_responses(422, 429), operation_id="listJobs")
def list_jobs(service: ServiceDep, charge: ListBudget, state: JobState | None = None, name: NameQuery = None,
              limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"Jobs per page, at most {MAX_PAGE}")] = 100,
              cursor: Annotated[str | None, Query(
                  pattern=f"^{JOB_ID.pattern}$",
                  description="Where the page starts: the previous page's `next_cursor` (its last job's id)")] = None,
              ) -> JobList:
    """Jobs, newest first, a page at a time; filter by ``state`` or feature-set ``name``. The
    answer's ``next`` is the URL of the next page (``null`` on the last one)."""
    if name is not None:
        check_name(name)
    rows = service.store.list_jobs(state, name, limit + 1, cursor)
    more, rows = len(rows) > limit, rows[:limit]
    charge(len(rows))
    if not more:
        return JobList(jobs=[JobOut.of(j) for j in rows])
    query = {"limit": limit, "cursor": rows[-1].id, **({"state": state} if state else {}),
             **({"name": name} if name else {})}
    return JobList(jobs=[JobOut.of(j) for j in rows], next_cursor=rows[-1].id, next=f"/v1/jobs?{urlencode(query)}")


@router.get("/{job_id}", response_model=JobOut, responses=error_responses(404), operation_id="getJob")
def get_job(job_id: JobIdPath, service: ServiceDep) -> JobOut:
    """A job with its live progress, its error, and the feature-set version it published."""
    return JobOut.of(service.store.get_job(_job_id(job_id)))


@router.delete("/{job_id}", status_code=202, response_model=JobOut, responses=error_responses(401, 404, 409, 429),
               dependencies=[Depends(require_api_key)], operation_id="cancelJob")
def cancel_job(job_id: JobIdPath, service: ServiceDep) -> JobOut:
    """Cancel: a queued job is cancelled at once; a running one stops at its next training step
    (poll until ``state`` is ``cancelled``). 409 when the job has already ended."""
    job = service.store.request_cancel(_job_id(job_id))
    service.workers.cancel(job.id)
    return JobOut.of(job)


@router.post("/{job_id}/resubmit", status_code=202, response_model=JobOut,
             responses=error_responses(401, 404, 409, 422, 429, 503),
             dependencies=[Depends(require_api_key), Depends(limit_submissions)], operation_id="resubmitJob")
def resubmit_job(job_id: JobIdPath, service: ServiceDep) -> JobOut:
    """Queue a new job with the spec of an ended (interrupted, failed, cancelled) one."""
    old = service.store.get_job(_job_id(job_id))
    if old.state in ("queued", "running"):
        raise Conflict("id", f"job {job_id!r} is {old.state}; only an ended job can be resubmitted")
    spec_json = old.spec
    if old.kind == "job":  # the data roots may have changed since
        spec_json = checked_spec(load_spec(json.loads(old.spec)), service.settings.roots(),
                                 service.settings.limits()).model_dump_json()
    job, _ = service.store.create_job(old.kind, old.name, spec_json, schedule=old.schedule, resubmitted_from=old.id,
                                      max_queued=service.settings.max_queued_jobs)
    service.workers.wake()
    return JobOut.of(job)
