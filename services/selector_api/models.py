"""Request and response bodies of the ``/v1`` API (the JobSpec and ScheduleSpec are pipelines' own).

Example::

    >>> PromoteRequest(version=2).expected_version is None
    True
    >>> ErrorBody(field="dataset.label", message="column 'click' not found").field
    'dataset.label'
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipelines.registry import VersionInfo, VersionRecord
from services.selector_api.store import JobRow, ScheduleRow

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: the field at fault (a dotted path, a header or ``null``) and the problem."""

    field: str | None
    message: str


_ERROR_DOC: dict[int, dict[str, Any]] = {
    400: {"description": "Unreadable request: not JSON, not a JSON object, or a malformed header"},
    401: {"description": "Missing or wrong API key (when the service has one)",
          "headers": {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}}},
    404: {"description": "No such job, feature set, version or schedule"},
    409: {"description": "Contradicts the current state"},
    413: {"description": "The body is larger than SEQATTN_MAX_BODY_BYTES"},
    415: {"description": "The body is not JSON by its Content-Type"},
    422: {"description": "Invalid input; `field` names it"},
    429: {"description": "This client is over a rate limit (SEQATTN_RATE_LIMIT_*); retry later",
          "headers": {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}},
    503: {"description": "Too many queued jobs; retry later",
          "headers": {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}},
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of the error statuses a route can return, each with :class:`ErrorBody`.

    Example::

        >>> sorted(error_responses(404, 422))
        [404, 422]
    """
    return {code: {"model": ErrorBody, **_ERROR_DOC[code]} for code in codes}


def header_doc(description: str, kind: str = "string") -> dict[str, Any]:
    """One OpenAPI response header."""
    return {"description": description, "schema": {"type": kind}}


class JobError(BaseModel):
    field: str | None = None
    message: str


class FeatureSetRef(BaseModel):
    """What a finished job published: the version and the registry's promotion decision."""

    name: str
    version: int
    decision: str | None
    reason: str | None
    href: str


class JobOut(BaseModel):
    """A job: its state, live progress (stage, epoch, step of total_steps, loss, picks so far),
    its error, and the feature-set version it published."""

    id: str
    kind: Literal["job", "schedule"]
    name: str
    schedule: str | None
    state: JobState
    created_at: str
    started_at: str | None
    finished_at: str | None
    cancel_requested: bool
    resubmitted_from: str | None
    progress: dict[str, Any] | None
    error: JobError | None
    feature_set: FeatureSetRef | None
    spec: dict[str, Any]

    @classmethod
    def of(cls, row: JobRow) -> JobOut:
        error = JobError(field=row.error_field, message=row.error_message) if row.error_message else None
        ref = None
        if row.fs_version is not None:
            ref = FeatureSetRef(name=row.name, version=row.fs_version, decision=row.fs_decision, reason=row.fs_reason,
                                href=f"/v1/feature-sets/{row.name}/versions/{row.fs_version}")
        return cls(id=row.id, kind=row.kind, name=row.name, schedule=row.schedule, state=row.state,
                   created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at,
                   cancel_requested=row.cancel_requested, resubmitted_from=row.resubmitted_from,
                   progress=row.progress, error=error, feature_set=ref, spec=json.loads(row.spec))


class JobList(BaseModel):
    """One page of jobs, newest first. ``next`` is the link to the following (older) page, with the
    same filters and ``limit``; ``null`` on the last page."""

    jobs: list[JobOut]
    next_cursor: str | None = Field(
        None, description="The `cursor` of the next page (the id of this page's last job); null on the last page")
    next: str | None = Field(None, description="The next page's URL (path and query); null on the last page")


class VersionOut(VersionInfo):
    """One published version as the registry indexes it (the FeatureSet itself is at ``href``)."""

    source: dict[str, Any] | None = Field(
        description="Where the version came from, as the publisher recorded it: for a schedule's run "
                    "{schedule, partition, window, warm_start_from}; free text that is not a JSON object "
                    "comes as {\"text\": ...}")
    href: str

    @classmethod
    def of(cls, record: VersionRecord) -> VersionOut:
        return cls(**record.model_dump(exclude={"path", "source"}), source=_source(record.source),
                   href=f"/v1/feature-sets/{record.name}/versions/{record.version}")


def _source(text: str | None) -> dict[str, Any] | None:
    """The registry keeps ``source`` as text (a JSON document for a schedule's run); clients get an
    object, not a JSON document inside a string."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return {"text": text}
    return value if isinstance(value, dict) else {"text": text}


class VersionList(BaseModel):
    """One page of versions, oldest first; ``next`` links the following (newer) page."""

    name: str
    promoted_version: int | None
    versions: list[VersionOut]
    next: str | None = Field(None, description="The next page's URL (path and query); null on the last page")


class FeatureSetSummary(BaseModel):
    name: str
    promoted_version: int | None
    latest_version: int
    versions: int
    href: str


class FeatureSetList(BaseModel):
    """One page of feature sets, by name; ``next`` links the following page."""

    feature_sets: list[FeatureSetSummary]
    next: str | None = Field(None, description="The next page's URL (path and query); null on the last page")


class PromoteRequest(BaseModel):
    """Promote ``version``; with ``expected_version``, only if that is still the promoted one."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=2**31)
    expected_version: int | None = Field(None, ge=1, le=2**31)


class PromotionEntry(BaseModel):
    """One line of the promotion log (not ``pipelines.continual.Promotion``, a schedule's
    promotion policy: OpenAPI components are named after their class, so the names must differ)."""

    version: int
    previous_version: int | None
    source: str
    at: str


class PromotionOut(BaseModel):
    """The promoted version after a promote or rollback, and the promotion history."""

    name: str
    promoted_version: int
    previous_version: int | None
    record: VersionOut
    history: list[PromotionEntry]


class ScheduleOut(BaseModel):
    name: str
    spec: dict[str, Any]
    created_at: str
    next_run_at: str
    last_run_at: str | None
    last_job_id: str | None
    runs: int

    @classmethod
    def of(cls, row: ScheduleRow) -> ScheduleOut:
        return cls(name=row.name, spec=json.loads(row.spec), created_at=row.created_at, next_run_at=row.next_run_at,
                   last_run_at=row.last_run_at, last_job_id=row.last_job_id, runs=row.runs)


class ScheduleList(BaseModel):
    schedules: list[ScheduleOut]


class Health(BaseModel):
    status: Literal["ok"]
    jobs_running_here: int
    auth: Literal["api-key", "open"]
