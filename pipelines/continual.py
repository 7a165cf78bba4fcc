"""Continual pipelines: a schedule re-runs a job on the newest window of a partitioned dataset.

A schedule (YAML) names a JobSpec, a hive-partitioned dataset and the window to take from it, a
cadence and the promotion policy::

    name: ctr-daily
    job: ctr-main.yaml            # a JobSpec file (relative to this file) or an inline mapping
    window:
      path: data/ctr              # holds day=2026-01-01/, day=2026-01-02/, ...
      partition: day              # the partition key (default: the only one there is)
      size: 7                     # the last 7 partitions
    cadence:
      cron: "0 3 * * *"           # or  interval: 24h
    promotion:
      epsilon: 0.001              # promote when val AUC >= promoted - epsilon and budgets hold
    warm_start:
      mode: candidates            # none (default) | candidates
      explore: 0.5

One step (:func:`run_step`, ``seqattn pipeline run SCHEDULE.yaml``, a Kubernetes CronJob's
command, or the API's scheduler) picks the window ending at the newest partition (or at
``as_of``), links its files into ``$SEQATTN_HOME/windows/{schedule}/{first}_{last}/`` (hard
links: the window stays readable, and reproducible, after the source is pruned), runs
:func:`pipelines.job.run_job` on it and publishes the result to the :class:`~pipelines.registry.Registry`,
which applies the promotion policy and records the Jaccard of the kept features and the rank
correlation against the previous version.

Warm start ``candidates`` cuts the gate race to the previous version's kept features plus the
``explore`` fraction of the others with the best previous scores. It is cheaper (fewer tables to
train), at a price: a feature that was useless before and becomes useful is only seen if it is in
the explored fraction, so drift is caught only up to ``explore``.

Example::

    schedule = load_schedule("schedules/ctr-daily.yaml")
    step = run_step(schedule, as_of="2026-01-07")
    step.record.version, step.record.decision, step.record.jaccard
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator

from pipelines.errors import SpecError
from pipelines.events import OnEvent, WindowChosen, emit
from pipelines.limits import JobLimits
from pipelines.registry import DEFAULT_EPSILON, Registry, VersionRecord
from pipelines.roots import DataRoots
from pipelines.spec import FeatureSet, JobSpec, Name, StrictModel, as_spec_error, load_spec

INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_INTERVAL_S = 3650 * 86400  # ten years: longer is a typo, and datetime arithmetic overflows far above it


def _check_cron(value: str) -> str:
    from apscheduler.triggers.cron import CronTrigger

    try:
        trigger = CronTrigger.from_crontab(value, timezone=timezone.utc)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a cron expression (minute hour day month weekday): {exc}") from None
    if trigger.get_next_fire_time(None, datetime.now(timezone.utc)) is None:
        raise ValueError(f"{value!r} never fires: no date matches it (for example the 30th of February)")
    return value


def _check_interval(value: str) -> str:
    m = INTERVAL.match(value)
    if not m or float(m.group(1)) <= 0:
        shown = value if len(value) <= 40 else value[:37] + "..."
        raise ValueError(f"{shown!r} is not an interval; write a positive number and a unit: 90s, 30m, 6h, 1d")
    if float(m.group(1)) * UNIT_SECONDS[m.group(2)] > MAX_INTERVAL_S:
        raise ValueError(f"{m.group(1)[:20]}{m.group(2)} is longer than the longest interval, "
                         f"{MAX_INTERVAL_S // 86400}d")
    return value


class WindowSpec(StrictModel):
    """The last ``size`` partitions of ``path`` by the ``partition`` key's value."""

    path: str
    partition: str | None = None
    size: int = Field(7, ge=1)


class Cadence(StrictModel):
    """When the schedule runs: a cron expression (UTC) or a fixed interval; exactly one."""

    cron: Annotated[str, AfterValidator(_check_cron)] | None = None
    interval: Annotated[str, AfterValidator(_check_interval)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Cadence:
        if (self.cron is None) == (self.interval is None):
            raise ValueError("give exactly one of cadence.cron and cadence.interval")
        return self

    def next_run(self, after: datetime) -> datetime:
        """The first run time strictly after ``after`` (timezone-aware, UTC)."""
        after = after if after.tzinfo else after.replace(tzinfo=timezone.utc)
        if self.interval is not None:
            m = INTERVAL.match(self.interval)
            assert m is not None
            return after + timedelta(seconds=float(m.group(1)) * UNIT_SECONDS[m.group(2)])
        from apscheduler.triggers.cron import CronTrigger

        fire = CronTrigger.from_crontab(self.cron, timezone=timezone.utc).get_next_fire_time(
            None, after + timedelta(seconds=1))
        if fire is None:  # checked when the schedule was made; a cron can still run out of dates
            raise SpecError("cadence.cron", f"{self.cron!r} has no run time after {after.isoformat()}")
        return fire


class Promotion(StrictModel):
    epsilon: float = Field(DEFAULT_EPSILON, ge=0)


class WarmStart(StrictModel):
    mode: Literal["none", "candidates"] = "none"
    explore: float = Field(0.5, ge=0, le=1)


class ScheduleSpec(StrictModel):
    """A continual pipeline. ``job`` is the JobSpec (a file is read by :func:`load_schedule`);
    its ``dataset.path`` is replaced by each run's window.

    Example::

        >>> s = ScheduleSpec(name="daily", job={"name": "ctr", "dataset": {"path": "-", "label": "y"}},
        ...                  window={"path": "data", "size": 2}, cadence={"interval": "1d"})
        >>> s.window.size, s.promotion.epsilon, s.cadence.next_run(datetime(2026, 1, 1, tzinfo=timezone.utc)).day
        (2, 0.001, 2)
    """

    name: Name
    job: JobSpec
    window: WindowSpec
    cadence: Cadence
    promotion: Promotion = Field(default_factory=Promotion)
    warm_start: WarmStart = Field(default_factory=WarmStart)

    @field_validator("job", mode="before")
    @classmethod
    def _inline_job(cls, value: Any) -> Any:
        if isinstance(value, (str, os.PathLike)):  # load_schedule reads a file; a mapping alone cannot
            raise ValueError("must be an inline JobSpec mapping; a spec file is read only from a schedule file")
        return value

    @field_validator("promotion", "warm_start", mode="before")
    @classmethod
    def _empty_means_defaults(cls, value: Any) -> Any:
        return {} if value is None else value


def load_schedule(source: str | os.PathLike[str] | Mapping[str, Any]) -> ScheduleSpec:
    """A :class:`ScheduleSpec` from a YAML file or a mapping; one :class:`SpecError` naming the field.

    ``job`` may be a path (relative to the schedule file) or an inline JobSpec mapping; errors in
    it are reported as ``job.<field>``.
    """
    base = Path(".")
    if isinstance(source, Mapping):
        data: Any = dict(source)
    else:
        path = Path(source)
        base = path.parent
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise SpecError("schedule", f"file {str(path)!r} not found") from None
        except yaml.YAMLError as exc:
            raise SpecError("schedule", f"{str(path)!r} is not valid YAML: {exc}") from None
        if not isinstance(data, Mapping):
            raise SpecError("schedule", f"{str(path)!r} must hold a mapping (name:, job:, window:, cadence:)")
        data = dict(data)
    job = data.get("job")
    try:
        if isinstance(job, (str, os.PathLike)):
            job_path = Path(job) if Path(job).is_absolute() else base / job
            data["job"] = load_spec(job_path)
        elif isinstance(job, Mapping):
            data["job"] = load_spec(job)
    except SpecError as exc:
        raise SpecError(f"job.{exc.field}" if exc.field != "spec" else "job", exc.message) from None
    try:
        return ScheduleSpec.model_validate(data)
    except ValidationError as exc:
        raise as_spec_error(exc, ScheduleSpec) from None


# --- windows -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """The partitions one run reads, oldest first, and the folder that holds just them."""

    key: str
    values: tuple[str, ...]
    path: Path

    def describe(self) -> str:
        return f"{self.key}={self.values[0]}..{self.values[-1]} ({len(self.values)} partitions)"


def _sort_key(value: str) -> tuple[int, float | str]:
    try:
        return (0, float(value))
    except ValueError:
        return (1, value)


def partitions(window: WindowSpec) -> tuple[str, list[str]]:
    """(partition key, its values under ``window.path`` in order)."""
    root = Path(window.path)
    if not root.is_dir():
        raise SpecError("window.path", f"{window.path!r} is not a directory of hive partitions (key=value folders)")
    found: dict[str, list[str]] = {}
    for child in root.iterdir():
        if child.is_dir() and "=" in child.name and not child.name.startswith((".", "_")):
            key, value = child.name.split("=", 1)
            found.setdefault(key, []).append(value)
    if not found:
        raise SpecError("window.path", f"{window.path!r} has no hive partitions (folders named key=value)")
    if window.partition is None:
        if len(found) > 1:
            raise SpecError("window.partition", f"{window.path!r} is partitioned by {sorted(found)}; name one")
        key = next(iter(found))
    else:
        key = window.partition
        if key not in found:
            raise SpecError("window.partition", f"no {key}=... folders in {window.path!r}; keys are {sorted(found)}")
    return key, sorted(found[key], key=_sort_key)


def select_window(window: WindowSpec, as_of: str | None = None) -> tuple[str, list[str]]:
    """The last ``window.size`` partition values up to ``as_of`` (inclusive; None: the newest)."""
    key, values = partitions(window)
    if as_of is not None:
        values = [v for v in values if _sort_key(v) <= _sort_key(as_of)]
        if not values:
            raise SpecError("as_of", f"no {key} partition at or before {as_of!r}")
    return key, values[-window.size:]


def materialize_window(root: str | os.PathLike[str], key: str, values: list[str], out: Path,
                       roots: DataRoots | None = None) -> Path:
    """Link the window's files into ``out/{key}={value}/...``; returns ``out``. Idempotent.

    With ``roots`` (a service's data roots) each file's real location is checked as it is linked, so a
    partition symlinked in from outside the roots after the schedule was created is refused. The
    links are hard links where the filesystem allows: the window then holds the checked files
    themselves, which a later swap of the source path cannot change."""
    out.mkdir(parents=True, exist_ok=True)
    for value in values:
        src = Path(root) / f"{key}={value}"
        for f in sorted(src.rglob("*")):
            if not f.is_file():
                continue
            if roots is not None and not roots.contains(f):
                raise SpecError("window.path", f"{str(f)!r} resolves (through a symlink) to a place outside the data "
                                f"roots ({', '.join(roots.roots)})")
            dst = out / f"{key}={value}" / f.relative_to(src)
            if dst.exists():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f, dst)
            except OSError:  # another filesystem: a link to the file still keeps the layout
                os.symlink(f.resolve(), dst)
    return out


# --- warm start ---------------------------------------------------------------------------------


def warm_start_spec(spec: JobSpec, previous: FeatureSet, explore: float) -> JobSpec:
    """``spec`` whose candidates are ``previous``'s kept features plus the best ``explore`` fraction
    of its other candidates (by score); dense and sparse lists become explicit.

    Example::

        >>> from pipelines.spec import Candidate, SelectedFeature
        >>> spec = JobSpec(name="x", dataset={"path": "d", "label": "y"})
        >>> prev = FeatureSet(name="x", spec=spec, features=[SelectedFeature(name="a", kind="sparse", rank=1, score=1)],
        ...     candidates=[Candidate(name=n, kind=k, score=s, selected=n == "a")
        ...                 for n, k, s in [("a", "sparse", 1), ("b", "sparse", .5), ("c", "dense", .1),
        ...                                 ("d", "sparse", 0)]])
        >>> ws = warm_start_spec(spec, prev, explore=0.5)
        >>> ws.dataset.sparse, ws.dataset.dense
        (['a', 'b'], ['c'])
    """
    kept = [f.name for f in sorted(previous.features, key=lambda f: f.rank)]
    kinds = {c.name: c.kind for c in previous.candidates if c.kind in ("dense", "sparse")}
    kinds.update({f.name: f.kind for f in previous.features})
    others = sorted((c for c in previous.candidates if c.kind in ("dense", "sparse") and c.name not in set(kept)),
                    key=lambda c: -c.score)
    explored = [c.name for c in others[: math.ceil(explore * len(others))]]
    chosen = set(kept) | set(explored)
    allowed_dense = set(spec.dataset.dense) if spec.dataset.dense is not None else None
    allowed_sparse = set(spec.dataset.sparse) if spec.dataset.sparse is not None else None
    dense = [n for n in kinds if n in chosen and kinds[n] == "dense" and (allowed_dense is None or n in allowed_dense)]
    sparse = [n for n in kinds if n in chosen and kinds[n] == "sparse"
              and (allowed_sparse is None or n in allowed_sparse)]
    features = spec.selection.features
    if features is not None and features > len(dense) + len(sparse):
        features = len(dense) + len(sparse)
    return spec.model_copy(update={
        "dataset": spec.dataset.model_copy(update={"dense": dense, "sparse": sparse}),
        "selection": spec.selection.model_copy(update={"features": features}),
    })


# --- one step -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepResult:
    """What one run of a schedule did."""

    schedule: str
    window: Window
    record: VersionRecord
    feature_set: FeatureSet
    warm_started_from: int | None


def run_step(schedule: ScheduleSpec, as_of: str | None = None, registry: Registry | None = None,
             on_event: OnEvent | None = None, roots: DataRoots | None = None,
             limits: JobLimits | None = None) -> StepResult:
    """Run the schedule once on its newest window (or the one ending at ``as_of``) and publish.

    A service passes its data ``roots`` (each partition file is checked as it is linked into the
    window, and the job reads only the roots and that window) and its job size ``limits``."""
    registry = registry or Registry()
    key, values = select_window(schedule.window, as_of)
    folder = registry.home / "windows" / schedule.name / f"{values[0]}_{values[-1]}"
    window = Window(key, tuple(values), materialize_window(schedule.window.path, key, values, folder, roots))
    if roots is not None:
        roots = DataRoots.of([*roots.roots, folder])
    spec = schedule.job.model_copy(
        update={"dataset": schedule.job.dataset.model_copy(update={"path": str(window.path)})})
    warm_from = None
    if schedule.warm_start.mode == "candidates":
        previous = registry.versions(spec.name)
        promoted = [r for r in previous if r.promoted]
        if promoted:
            warm_from = promoted[-1].version
            spec = warm_start_spec(spec, registry.get(spec.name, warm_from), schedule.warm_start.explore)
    emit(on_event, WindowChosen(window.describe(), warm_from))
    from pipelines.job import run_job  # here, not at the top: the service reads schedules without torch

    job_id = f"{schedule.name}-{values[-1]}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}"
    # The run's export artifacts (vocabularies, model) are published with the version, then dropped.
    staging = registry.home / "staging" / job_id
    try:
        fs = run_job(spec, on_event=on_event, job_id=job_id, roots=roots, limits=limits, artifacts=staging)
        source = json.dumps({"schedule": schedule.name, "partition": key, "window": list(values),
                             "warm_start_from": warm_from})
        record = registry.publish(fs, epsilon=schedule.promotion.epsilon, source=source,
                                  promoted_by=f"schedule:{schedule.name}",
                                  artifacts=staging if (staging / "preprocessing.json").is_file() else None)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return StepResult(schedule.name, window, record, registry.get(spec.name, record.version), warm_from)
