"""The one place that touches the service's state: jobs and schedules in ``seqattn.db``, feature
sets and their promotion log through :class:`pipelines.registry.Registry`.

Everything lives in the one SQLite file (WAL mode) under ``SEQATTN_HOME`` that the registry uses,
so a job's row, a schedule's next run and a promoted version are all in one place, survive a
restart, and can be shared by several service processes on one host. Each write is one
``BEGIN IMMEDIATE`` transaction; the invariants that concurrency could break are enforced inside
them with conditional UPDATEs rather than by reading first and writing later:

- a queued job is claimed by exactly one worker (``UPDATE ... WHERE state = 'queued'``);
- a due schedule is claimed by exactly one instance (its ``next_run_at`` is advanced with a
  compare-and-set, so a second instance's UPDATE matches no row);
- an ``Idempotency-Key`` maps to one job (a UNIQUE column, looked up in the same transaction).

The jobs table is also the queue: workers of any instance take the oldest queued row, so queued
jobs survive a restart and are run by whichever instance is up.

Example::

    >>> import tempfile
    >>> store = Store(tempfile.mkdtemp())
    >>> job, created = store.create_job("job", "ctr", '{"name": "ctr"}')
    >>> created, job.state, store.claim_next_job("me").id == job.id
    (True, 'queued', True)
    >>> store.request_cancel(job.id).cancel_requested
    True
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pipelines.errors import SpecError
from pipelines.registry import PromotionConflict, Registry, VersionRecord, now_iso
from pipelines.spec import FeatureSet
from services.selector_api.errors import Conflict, NotFound, QueueFull

ACTIVE_STATES = ("queued", "running")
FINAL_STATES = ("succeeded", "failed", "cancelled", "interrupted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('job', 'schedule')),
    name TEXT NOT NULL,
    schedule TEXT,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted')),
    spec TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT,
    resubmitted_from TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    heartbeat_at TEXT,
    owner TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    progress TEXT,
    error_field TEXT,
    error_message TEXT,
    fs_version INTEGER,
    fs_decision TEXT,
    fs_reason TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_schedule ON jobs (schedule, state);
CREATE TABLE IF NOT EXISTS schedules (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    created_at TEXT NOT NULL,
    next_run_at TEXT NOT NULL,
    last_run_at TEXT,
    last_job_id TEXT,
    runs INTEGER NOT NULL DEFAULT 0
);
"""
# The promotion log (table ``promotions``) is the registry's: it is written in the transaction
# that changes the promoted version, whoever promotes (this service, ``seqattn pipeline run``).


def request_hash(payload: Any) -> str:
    """A stable digest of a request body (key order does not matter)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def instance_owner() -> str:
    """``host:pid:nonce``: who runs a job, so a restarted service can tell its dead predecessor's jobs."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _owner_is_dead(owner: str | None, host: str) -> bool:
    if not owner:
        return True
    parts = owner.split(":")
    if len(parts) != 3 or parts[0] != host:
        return False  # another host: only its stale heartbeat can tell
    try:
        pid = int(parts[1])
    except ValueError:
        return True
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass(frozen=True)
class JobRow:
    """One job as stored. ``spec`` is the JobSpec JSON (kind ``job``) or the ScheduleSpec JSON."""

    id: str
    kind: str
    name: str
    schedule: str | None
    state: str
    spec: str
    idempotency_key: str | None
    resubmitted_from: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    heartbeat_at: str | None
    owner: str | None
    cancel_requested: bool
    progress: dict[str, Any] | None
    error_field: str | None
    error_message: str | None
    fs_version: int | None
    fs_decision: str | None
    fs_reason: str | None


@dataclass(frozen=True)
class ScheduleRow:
    """One schedule as stored; ``spec`` is the ScheduleSpec JSON."""

    name: str
    spec: str
    created_at: str
    next_run_at: str
    last_run_at: str | None
    last_job_id: str | None
    runs: int


def _job(row: sqlite3.Row) -> JobRow:
    return JobRow(
        id=row["id"], kind=row["kind"], name=row["name"], schedule=row["schedule"], state=row["state"],
        spec=row["spec"], idempotency_key=row["idempotency_key"], resubmitted_from=row["resubmitted_from"],
        created_at=row["created_at"], started_at=row["started_at"], finished_at=row["finished_at"],
        heartbeat_at=row["heartbeat_at"], owner=row["owner"], cancel_requested=bool(row["cancel_requested"]),
        progress=json.loads(row["progress"]) if row["progress"] else None, error_field=row["error_field"],
        error_message=row["error_message"], fs_version=row["fs_version"], fs_decision=row["fs_decision"],
        fs_reason=row["fs_reason"])


def _schedule(row: sqlite3.Row) -> ScheduleRow:
    return ScheduleRow(**{k: row[k] for k in row.keys()})


class Store:
    """Jobs and schedules in ``{home}/seqattn.db``; feature sets and promotions via :attr:`registry`."""

    def __init__(self, home: str | os.PathLike[str]) -> None:
        self.registry = Registry(home)
        self.home = self.registry.home
        self.host = socket.gethostname()
        with self.registry.connect() as db:
            db.executescript(_SCHEMA)

    # -- jobs ------------------------------------------------------------------------------------
    def create_job(self, kind: str, name: str, spec_json: str, *, idempotency_key: str | None = None,
                   body_hash: str | None = None, schedule: str | None = None, resubmitted_from: str | None = None,
                   max_queued: int | None = None) -> tuple[JobRow, bool]:
        """Queue a job; returns (job, created). With an ``idempotency_key`` already used for the
        same body, the existing job comes back with ``created=False``; for another body, :class:`Conflict`."""
        with self.registry.transaction() as db:
            if idempotency_key is not None:
                row = db.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
                if row is not None:
                    if row["request_hash"] != body_hash:
                        raise Conflict("Idempotency-Key", f"key {idempotency_key!r} was used for job {row['id']} "
                                       "with a different request body; use a new key for a new job")
                    return _job(row), False
            if max_queued is not None:
                queued = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
                if queued >= max_queued:
                    raise QueueFull("jobs", f"{queued} jobs are already queued (limit {max_queued}); retry later")
            job_id = f"j-{uuid.uuid4().hex[:16]}"
            db.execute("INSERT INTO jobs (id, kind, name, schedule, state, spec, idempotency_key, request_hash, "
                       "resubmitted_from, created_at) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                       (job_id, kind, name, schedule, spec_json, idempotency_key, body_hash, resubmitted_from,
                        now_iso()))
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row), True

    def get_job(self, job_id: str) -> JobRow:
        with self.registry.connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound("id", f"no job {job_id!r}")
        return _job(row)

    def list_jobs(self, state: str | None = None, name: str | None = None, limit: int = 100,
                  cursor: str | None = None) -> list[JobRow]:
        """Newest first; with ``cursor`` (a job id), only the jobs queued before that one (paging)."""
        where, args = [], []
        for column, value in (("state", state), ("name", name)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if cursor is not None:
            where.append("seq < COALESCE((SELECT seq FROM jobs WHERE id = ?), 0)")
            args.append(cursor)
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seq DESC LIMIT ?"
        with self.registry.connect() as db:
            return [_job(r) for r in db.execute(sql, (*args, limit))]

    def count_jobs_by_state(self) -> dict[str, int]:
        with self.registry.connect() as db:
            counts = dict(db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        return {s: int(counts.get(s, 0)) for s in (*ACTIVE_STATES, *FINAL_STATES)}

    def claim_next_job(self, owner: str) -> JobRow | None:
        """Take the oldest queued job for ``owner`` (state -> running), or None when none waits."""
        with self.registry.transaction() as db:
            now = now_iso()
            row = db.execute(
                "UPDATE jobs SET state = 'running', owner = ?, started_at = ?, heartbeat_at = ? "
                "WHERE seq = (SELECT seq FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1) AND state = 'queued' "
                "RETURNING *", (owner, now, now)).fetchone()
        return _job(row) if row is not None else None

    def set_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        with self.registry.transaction() as db:
            db.execute("UPDATE jobs SET progress = ?, heartbeat_at = ? WHERE id = ? AND state = 'running'",
                       (json.dumps(progress), now_iso(), job_id))

    def heartbeat(self, job_ids: list[str]) -> set[str]:
        """Mark ``job_ids`` alive; return those whose cancellation was requested (by any instance)."""
        if not job_ids:
            return set()
        marks = ",".join("?" * len(job_ids))
        with self.registry.transaction() as db:
            db.execute(f"UPDATE jobs SET heartbeat_at = ? WHERE state = 'running' AND id IN ({marks})",
                       (now_iso(), *job_ids))
            rows = db.execute(f"SELECT id FROM jobs WHERE cancel_requested = 1 AND id IN ({marks})", job_ids)
            return {r["id"] for r in rows}

    def finish_job(self, job_id: str, state: str, *, error: SpecError | None = None,
                   error_message: str | None = None, record: VersionRecord | None = None) -> bool:
        """Record a running job's end; False when it was no longer running (e.g. marked interrupted)."""
        assert state in FINAL_STATES
        field = error.field if error is not None else None
        message = error.message if error is not None else error_message
        with self.registry.transaction() as db:
            cur = db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, error_field = ?, error_message = ?, fs_version = ?, "
                "fs_decision = ?, fs_reason = ? WHERE id = ? AND state = 'running'",
                (state, now_iso(), field, message, record.version if record else None,
                 record.decision if record else None, record.reason if record else None, job_id))
            return cur.rowcount == 1

    def request_cancel(self, job_id: str) -> JobRow:
        """Cancel a queued job at once; flag a running one (its worker stops at its next event)."""
        with self.registry.transaction() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound("id", f"no job {job_id!r}")
            if row["state"] == "queued":
                db.execute("UPDATE jobs SET state = 'cancelled', cancel_requested = 1, finished_at = ?, "
                           "error_message = 'cancelled before it started' WHERE id = ?", (now_iso(), job_id))
            elif row["state"] == "running":
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            else:
                raise Conflict("id", f"job {job_id!r} is already {row['state']}; only queued or running jobs can be "
                               "cancelled")
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row)

    def interrupt_orphans(self, stale_after_s: float) -> list[str]:
        """Mark running jobs interrupted when their process is gone: a dead pid on this host, or no
        heartbeat for ``stale_after_s`` (another host). Returns their ids."""
        cutoff = now_iso(datetime.now(timezone.utc) - timedelta(seconds=stale_after_s))
        with self.registry.transaction() as db:
            rows = db.execute("SELECT id, owner, heartbeat_at FROM jobs WHERE state = 'running'").fetchall()
            dead = [r["id"] for r in rows
                    if _owner_is_dead(r["owner"], self.host) or (r["heartbeat_at"] or "") < cutoff]
            for job_id in dead:
                db.execute("UPDATE jobs SET state = 'interrupted', finished_at = ?, error_message = ? "
                           "WHERE id = ? AND state = 'running'",
                           (now_iso(), "the service stopped while this job ran; resubmit it", job_id))
        return dead

    # -- schedules -------------------------------------------------------------------------------
    def create_schedule(self, name: str, spec_json: str, next_run_at: datetime) -> ScheduleRow:
        with self.registry.transaction() as db:
            if db.execute("SELECT 1 FROM schedules WHERE name = ?", (name,)).fetchone():
                raise Conflict("name", f"schedule {name!r} already exists; delete it first to replace it")
            db.execute("INSERT INTO schedules (name, spec, created_at, next_run_at) VALUES (?, ?, ?, ?)",
                       (name, spec_json, now_iso(), now_iso(next_run_at)))
            row = db.execute("SELECT * FROM schedules WHERE name = ?", (name,)).fetchone()
        return _schedule(row)

    def get_schedule(self, name: str) -> ScheduleRow:
        with self.registry.connect() as db:
            row = db.execute("SELECT * FROM schedules WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound("name", f"no schedule {name!r}")
        return _schedule(row)

    def list_schedules(self) -> list[ScheduleRow]:
        with self.registry.connect() as db:
            return [_schedule(r) for r in db.execute("SELECT * FROM schedules ORDER BY name")]

    def delete_schedule(self, name: str) -> None:
        with self.registry.transaction() as db:
            if db.execute("DELETE FROM schedules WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound("name", f"no schedule {name!r}")

    def queue_schedule_run(self, name: str) -> JobRow:
        """Queue one run of schedule ``name`` now; :class:`Conflict` while one is queued or running."""
        with self.registry.transaction() as db:
            row = db.execute("SELECT * FROM schedules WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFound("name", f"no schedule {name!r}")
            if db.execute("SELECT 1 FROM jobs WHERE schedule = ? AND state IN ('queued', 'running')",
                          (name,)).fetchone():
                raise Conflict("name", f"schedule {name!r} already has a run queued or running")
            job_id, stamp = f"j-{uuid.uuid4().hex[:16]}", now_iso()
            db.execute("INSERT INTO jobs (id, kind, name, schedule, state, spec, created_at) "
                       "VALUES (?, 'schedule', ?, ?, 'queued', ?, ?)",
                       (job_id, json.loads(row["spec"])["job"]["name"], name, row["spec"], stamp))
            db.execute("UPDATE schedules SET last_run_at = ?, last_job_id = ?, runs = runs + 1 WHERE name = ?",
                       (stamp, job_id, name))
            return _job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def claim_due_schedules(self, now: datetime, next_run: Callable[[str, datetime], datetime]) -> list[JobRow]:
        """Queue one job per due schedule; returns the jobs queued by THIS call.

        ``next_run(spec_json, now)`` gives a schedule's next run time. The claim advances
        ``next_run_at`` with a compare-and-set inside one write transaction, so when two instances
        tick at once exactly one queues the run. A schedule whose previous run is still queued or
        running skips this slot rather than piling up runs.
        """
        stamp = now_iso(now)
        with self.registry.connect() as db:
            due = db.execute("SELECT * FROM schedules WHERE next_run_at <= ? ORDER BY next_run_at", (stamp,)).fetchall()
        queued: list[JobRow] = []
        for row in due:
            new_next = now_iso(next_run(row["spec"], now))
            with self.registry.transaction() as db:
                busy = db.execute("SELECT 1 FROM jobs WHERE schedule = ? AND state IN ('queued', 'running')",
                                  (row["name"],)).fetchone()
                job_id = None if busy else f"j-{uuid.uuid4().hex[:16]}"
                claimed = db.execute(
                    "UPDATE schedules SET next_run_at = ?, "
                    "last_run_at = CASE WHEN ? IS NULL THEN last_run_at ELSE ? END, "
                    "last_job_id = COALESCE(?, last_job_id), runs = runs + (? IS NOT NULL) "
                    "WHERE name = ? AND next_run_at = ?",
                    (new_next, job_id, stamp, job_id, job_id, row["name"], row["next_run_at"])).rowcount == 1
                if not claimed or job_id is None:
                    continue
                spec = json.loads(row["spec"])
                db.execute("INSERT INTO jobs (id, kind, name, schedule, state, spec, created_at) "
                           "VALUES (?, 'schedule', ?, ?, 'queued', ?, ?)",
                           (job_id, spec["job"]["name"], row["name"], row["spec"], stamp))
                queued.append(_job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()))
        return queued

    # -- feature sets ----------------------------------------------------------------------------
    def publish(self, fs: FeatureSet, *, source: str = "job", artifacts: Path | None = None) -> VersionRecord:
        """Publish through the registry: its promotion policy decides, and logs a promotion as by
        ``source``; ``artifacts`` (the run's export artifacts) are published with the version."""
        return self.registry.publish(fs, promoted_by=source, artifacts=artifacts)

    def promote(self, name: str, version: int, *, expected: int | None = None, source: str = "manual") -> VersionRecord:
        """Make ``version`` the served one. ``expected``: only if the promoted version is still that
        (a compare-and-set for clients that read before they write; one transaction in the registry)."""
        self.require_name(name)
        try:
            return self.registry.promote(name, version, expected=expected, promoted_by=source)
        except PromotionConflict as exc:
            raise Conflict(exc.field, exc.message) from None

    def rollback(self, name: str) -> VersionRecord:
        """Promote again the version that the current one replaced, whoever promoted either of them
        (the registry's promotion log); :class:`Conflict` saying why when there is none."""
        self.require_name(name)
        try:
            return self.registry.rollback(name)
        except PromotionConflict as exc:
            raise Conflict(exc.field, exc.message) from None

    def promotions(self, name: str) -> list[dict[str, Any]]:
        """The registry's promotion log of ``name``, oldest first."""
        return self.registry.promotions(name)

    def require_name(self, name: str) -> list[VersionRecord]:
        versions = self.registry.versions(name)
        if not versions:
            raise NotFound("name", f"no feature set {name!r}")
        return versions

    def promoted_version(self, name: str) -> int | None:
        return self.registry.promoted_version(name)

    def artifact_path(self, record: VersionRecord) -> Path:
        return self.home / record.path
