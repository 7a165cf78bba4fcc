"""The dashboard's pages: server-rendered HTML over the same store and serving cache as ``/v1``.

Every page reads through :class:`~services.selector_api.store.Store` (jobs, schedules, the
registry's index, the promotion log) and :class:`~services.selector_api.serving.FeatureSetCache`
(a version's FeatureSet bytes, cached because versions are immutable); there is no second way
into SQLite. The pages never write: promote, rollback and job submission are done by the page's
script calling the ``/v1`` routes with the API key the user typed, so the API's checks and messages
apply unchanged.

- ``/dashboard``: every feature-set name, its promoted version, age, AUC against all features, budget use.
- ``/dashboard/feature-sets/{name}``: history (AUC and kept count per version), diffs (features, crosses,
  embedding dims), promote/rollback (and why rollback is unavailable when it is).
- ``/dashboard/feature-sets/{name}/versions/{v}``: the data window, kept features (rank and score), crosses and
  their inputs, dimensions, budgets, what the latency stage removed, the rest.
- ``/dashboard/jobs``: queued, running (polled each second from ``/dashboard/jobs/live``), done, failed; a JobSpec form.
- ``/dashboard/schedules``: cadence, last run, next run, last outcome.

Example (with httpx)::

    client.get("/dashboard").text            # HTML; an empty state that says what to do when there is no data
    client.get("/dashboard/feature-sets/nope").status_code   # 404, with the API's message on the page
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Path as PathParam, Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from pipelines.spec import FeatureSet
from services.selector_api.dashboard import charts
from services.selector_api.deps import Service, check_name
from services.selector_api.errors import NotFound, UserError, status_of
from services.selector_api.models import JobOut, VersionOut
from services.selector_api.store import JobRow

HERE = Path(__file__).parent
# The pages load only their own CSS and script; the charts are inline SVG.
CSP = ("default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
JOBS_SHOWN = 100  # the newest; older ones are at GET /v1/jobs
DONE_STATES = ("succeeded",)
FAILED_STATES = ("failed", "cancelled", "interrupted")
EXAMPLE_SPEC = {"name": "ctr-main", "dataset": {"path": "synth", "label": "label"},
                "selection": {"features": 4, "crosses": 1, "embedding_dims": [4, 8, 16]},
                "constraints": {"max_embedding_mb": 8}, "training": {"epochs": 1, "batch_size": 4096}}

router = APIRouter(prefix="/dashboard", include_in_schema=False)
templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                        trim_blocks=True, lstrip_blocks=True)
Version = Annotated[int, PathParam(ge=1, le=2**31)]


# -- formatting, shared by the templates -----------------------------------------------------------
def parse_time(text: str | None) -> datetime | None:
    """The store's and the registry's ISO times (``...Z`` or ``+00:00``) as aware UTC datetimes."""
    if not text:
        return None
    at = datetime.fromisoformat(text)  # far cheaper than strptime; the jobs list parses hundreds
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def relative(text: str | None, now: datetime | None = None) -> str:
    """``3 min ago``, ``in 2 h``; ``never`` for no time."""
    at = parse_time(text)
    if at is None:
        return "never"
    seconds = ((now or datetime.now(timezone.utc)) - at).total_seconds()
    past, s = seconds >= 0, abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            span = f"{s / size:.0f} {unit}"
            break
    else:
        span = f"{s:.0f} s"
    return f"{span} ago" if past else f"in {span}"


def ago(text: str | None) -> Markup:
    """A ``<time>`` showing :func:`relative`; the page's script keeps it current (same wording), so
    an unchanged jobs list need not be rendered again to move its clocks."""
    at = parse_time(text)
    if at is None:
        return Markup("never")
    # Both parts are made here from a parsed datetime (no user text), so nothing needs escaping;
    # the script adds the exact time as a tooltip. (Markup.format cost the jobs list 40% of its time.)
    return Markup(f'<time datetime="{at.isoformat()}">{relative(text)}</time>')


def exact(text: str | None) -> str:
    at = parse_time(text)
    return at.strftime("%Y-%m-%d %H:%M:%S UTC") if at else ""


def num(value: float | None, fmt: str = "{:.4f}") -> str:
    return "—" if value is None else fmt.format(value)


def pct(share: float) -> str:
    """A budget share: ``75%``, ``0.1%``, ``<0.1%``."""
    if 0 < share < 0.001:
        return "<0.1%"
    return f"{share:.0%}" if share >= 0.1 or share == 0 else f"{share:.1%}"


def took(job: JobOut) -> str:
    """A job's run time, started to finished."""
    start, end = parse_time(job.started_at), parse_time(job.finished_at)
    return f"{(end - start).total_seconds():.1f} s" if start and end else "—"


templates.filters.update(ago=ago, exact=exact, num=num, pct=pct, took=took)
templates.globals.update(charts=charts)


def html_of(template: str, **context: Any) -> str:
    return templates.get_template(template).render(**context)


def respond(html: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(html, status_code=status, headers={"Content-Security-Policy": CSP,
                                                           "Cache-Control": "no-store"})


def render(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    return respond(html_of(template, **context), status)


def page(fn: Callable[..., Response]) -> Callable[..., Response]:
    """Bad input (an unknown name, an invalid one) becomes an HTML page with the API's status and
    message, not the API's JSON."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            return render("error.html", status=status_of(exc), error=exc)

    return wrapper


def service_of(request: Request) -> Service:
    return request.app.state.service


class Memo:
    """A small thread-safe LRU for values that cannot go stale under their key: parsed versions
    (immutable) and HTML rendered from exactly the state its key names. Page views then cost a
    lookup, which keeps their CPU time, and the serving route's wait for the GIL, short (bench e)."""

    def __init__(self, size: int) -> None:
        self.size, self._items, self._lock = size, OrderedDict[Any, Any](), threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key: Any, value: Any) -> Any:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


_parsed, _rendered = Memo(256), Memo(64)


def feature_set(service: Service, name: str, version: int) -> FeatureSet:
    """A version's FeatureSet, parsed from the bytes the serving cache holds (those ``/v1`` serves)."""
    key = (str(service.store.home), name, version)
    fs = _parsed.get(key)
    if fs is None:
        try:
            fs = _parsed.put(key, FeatureSet.model_validate_json(service.cache.version(name, version).body))
        except UserError as exc:
            raise NotFound(exc.field, exc.message) from None
    return fs


def budget_use(fs: FeatureSet) -> list[dict[str, Any]]:
    """Memory and latency against the spec's budgets (a share when a budget is set)."""
    m, c = fs.metrics, fs.spec.constraints
    extra = fs.metrics.model_extra or {}
    return [
        {"what": "embedding memory", "unit": "MB", "actual": m.embedding_mb, "limit": c.max_embedding_mb,
         "reference": m.embedding_mb_all_features,
         "share": m.embedding_mb / c.max_embedding_mb if m.embedding_mb is not None and c.max_embedding_mb else None},
        {"what": "inference time per 1,024 examples", "unit": "ms", "actual": m.inference_ms,
         "limit": c.max_inference_ms, "reference": extra.get("inference_ms_all_features"),
         "share": m.inference_ms / c.max_inference_ms if m.inference_ms is not None and c.max_inference_ms else None},
    ]


# -- what the version and history pages derive from a FeatureSet -------------------------------------
def cross_label(features: Sequence[str]) -> str:
    """``a × b``: how the pages name a cross."""
    return " × ".join(features)


def cross_candidate(features: Sequence[str]) -> str:
    """A cross's name among the candidates (``seqattn_core.crosses.CrossFeature.name``, not imported
    here: that would import the model code into every page)."""
    return "_X_".join(features)


@dataclass(frozen=True)
class NotKept:
    """A candidate the final model does not have as a feature of its own, and why: ``status`` is
    ``lost`` (an ordinary loser of the race) or ``latency`` (picked, then removed by the latency
    stage); ``note`` is the text the page shows."""

    name: str
    kind: str
    score: float
    status: str
    note: str

    @property
    def css(self) -> str:
        return "latency-bar" if self.status == "latency" else "muted-bar"


@dataclass(frozen=True)
class CrossInput:
    """A feature not kept on its own whose ids a kept cross hashes: not dropped from the data."""

    name: str
    score: float | None
    crosses: list[str]


def cross_inputs(fs: FeatureSet) -> list[CrossInput]:
    """The inputs of kept crosses that are not kept features, in the crosses' order."""
    kept = {f.name for f in fs.features}
    scores = {c.name: c.score for c in fs.candidates if c.kind in ("dense", "sparse")}
    feeds: dict[str, list[str]] = {}
    for cross in sorted(fs.crosses, key=lambda c: c.rank):
        for name in cross.features:
            if name not in kept:
                feeds.setdefault(name, []).append(cross_label(cross.features))
    return [CrossInput(name, scores.get(name), labels) for name, labels in feeds.items()]


def not_kept(fs: FeatureSet) -> list[NotKept]:
    """Every candidate that is neither a kept feature nor a kept cross nor a kept cross's input,
    highest score first; those the latency stage removed say so."""
    kept = {f.name for f in fs.features} | {cross_candidate(c.features) for c in fs.crosses}
    kept |= {i.name for i in cross_inputs(fs)}
    trim = fs.latency
    removed = set(trim.removed_features) | {cross_candidate(p) for p in trim.removed_crosses} if trim else set()
    rows = [NotKept(c.name, c.kind, c.score, "latency" if c.name in removed else "lost",
                    "removed by the latency budget" if c.name in removed else "not kept")
            for c in fs.candidates if not c.selected and c.name not in kept]
    return sorted(rows, key=lambda r: -r.score)


@dataclass(frozen=True)
class LatencyView:
    """What the latency stage did, for the version page."""

    budget_ms: float
    ms_before: float
    ms_after: float
    features: list[tuple[str, float | None]]  # removed features and their scores
    crosses: list[tuple[str, float | None]]  # removed crosses (``a × b``) and their scores

    @property
    def removed(self) -> bool:
        return bool(self.features or self.crosses)


def latency_view(fs: FeatureSet) -> LatencyView | None:
    """The latency stage's record with each removed candidate's score; None when there was no stage."""
    trim = fs.latency
    if trim is None:
        return None
    scores = {c.name: c.score for c in fs.candidates}
    return LatencyView(trim.budget_ms, trim.ms_before, trim.ms_after,
                       [(n, scores.get(n)) for n in trim.removed_features],
                       [(cross_label(p), scores.get(cross_candidate(p))) for p in trim.removed_crosses])


@dataclass(frozen=True)
class DataWindow:
    """The data a version was trained on: the dataset path and rows as the job split them, and for
    a continual pipeline's run the schedule and its window (``day=2026-01-01 … 2026-01-07 (7 partitions)``)."""

    path: str
    train_rows: int | None
    valid_rows: int | None
    schedule: str | None = None
    window: str = ""
    warm_start_from: int | None = None


def _rows(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _span(values: Sequence[str]) -> str:
    return values[0] if len(values) == 1 else f"{values[0]} … {values[-1]}"


def data_window(fs: FeatureSet, source: Mapping[str, Any] | None, home: Path) -> DataWindow:
    """Where ``fs``'s examples came from. A schedule's run records its window in the version's
    ``source`` (``pipelines.continual.run_step``); a version without one whose dataset path is a
    window folder (``$SEQATTN_HOME/windows/{schedule}/{first}_{last}``) is read from the path."""
    extra = fs.metrics.model_extra or {}
    path = fs.spec.dataset.path
    rows = _rows(extra.get("train_rows")), _rows(extra.get("valid_rows"))
    source = source or {}
    values = source.get("window")
    if source.get("schedule") and isinstance(values, list) and values:
        key = f"{source['partition']}=" if source.get("partition") else ""
        window = f"{key}{_span([str(v) for v in values])} ({len(values)} partition{'s' if len(values) != 1 else ''})"
        warm = source.get("warm_start_from")
        return DataWindow(path, *rows, str(source["schedule"]), window, warm if isinstance(warm, int) else None)
    try:
        parts = Path(path).resolve().relative_to((home / "windows").resolve()).parts
    except (ValueError, OSError):
        return DataWindow(path, *rows)
    if len(parts) != 2:
        return DataWindow(path, *rows)
    # {first}_{last}; a value with "_" of its own makes the split ambiguous: the folder's name then.
    ends = parts[1].split("_")
    window = _span(ends if ends[0] != ends[-1] else ends[:1]) if len(ends) == 2 else parts[1]
    return DataWindow(path, *rows, parts[0], window)


def _dims(fs: FeatureSet) -> dict[str, int | None]:
    dims: dict[str, int | None] = {f.name: f.embedding_dim for f in fs.features}
    dims.update({cross_label(c.features): c.embedding_dim for c in fs.crosses})
    return dims


@dataclass(frozen=True)
class Diff:
    """One version against the one before: features and crosses added and removed, and the
    embedding dimension of each feature or cross both kept with a different width."""

    added: list[str]
    removed: list[str]
    crosses_added: list[str]
    crosses_removed: list[str]
    dims: list[tuple[str, int | None, int | None]]  # (feature or cross, before, now)


def diff(new: FeatureSet, old: FeatureSet | None) -> Diff | None:
    """``new`` against ``old`` (None: nothing to compare, the first version)."""
    if old is None:
        return None
    kept = [f.name for f in sorted(new.features, key=lambda f: f.rank)]
    crosses = [cross_label(c.features) for c in sorted(new.crosses, key=lambda c: c.rank)]
    old_kept = {f.name for f in old.features}
    old_crosses = [cross_label(c.features) for c in sorted(old.crosses, key=lambda c: c.rank)]
    before, now = _dims(old), _dims(new)
    return Diff([n for n in kept if n not in old_kept], sorted(old_kept - set(kept)),
                [c for c in crosses if c not in old_crosses], [c for c in old_crosses if c not in crosses],
                [(n, before[n], now[n]) for n in kept + crosses if n in before and before[n] != now[n]])


# -- pages -------------------------------------------------------------------------------------------
@router.get("", response_class=HTMLResponse)
@page
def feature_sets_page(request: Request) -> HTMLResponse:
    """Every name with its promoted version's age, AUC against all features, and budget use."""
    service = service_of(request)
    rows = []
    for name in service.store.registry.names():
        versions = service.store.registry.versions(name)
        promoted = next((v for v in versions if v.promoted), None)
        fs = feature_set(service, name, promoted.version) if promoted else None
        rows.append({"name": name, "versions": versions, "promoted": promoted, "fs": fs,
                     "budgets": budget_use(fs) if fs else []})
    return render("feature_sets.html", rows=rows, active="feature-sets")


@router.get("/feature-sets/{name}", response_class=HTMLResponse)
@page
def history_page(request: Request, name: str) -> HTMLResponse:
    """AUC and kept-feature count over versions, each version's diff with the one before, actions."""
    service = service_of(request)
    check_name(name)
    versions = service.store.require_name(name)
    sets = {v.version: feature_set(service, name, v.version) for v in versions}
    rows = [{"record": v, "fs": sets[v.version], "kept": sets[v.version].features,
             "diff": diff(sets[v.version], sets.get(v.version - 1)), "jaccard": v.jaccard} for v in versions]
    chart = charts.line_chart(
        [v.version for v in versions],
        [("validation AUC", [sets[v.version].metrics.val_auc for v in versions], "{:.3f}"),
         ("kept features", [float(len(sets[v.version].features)) for v in versions], "{:.0f}")],
        marks=[v.decision for v in versions], title=f"{name}: validation AUC and kept features per version")
    promoted = next((v.version for v in versions if v.promoted), None)
    promotions = service.store.promotions(name)
    back_to, rollback_why = service.store.registry.rollback_target(name)
    return render("history.html", name=name, rows=list(reversed(rows)), chart=chart, promoted=promoted,
                  back_to=back_to, rollback_why=rollback_why, promotions=list(reversed(promotions)),
                  active="feature-sets")


@router.get("/feature-sets/{name}/versions/{version}", response_class=HTMLResponse)
@page
def version_page(request: Request, name: str, version: Version) -> HTMLResponse:
    """One version: what was kept and why (scores), crosses, dimensions, budgets, the rest, the job."""
    service = service_of(request)
    check_name(name)
    # The page is a function of the immutable version, its job (once ended) and which version is
    # served; the serving cache knows the last in microseconds.
    served = service.cache.promoted(name)
    key = ("version", str(service.store.home), name, version, served.version if served else None)
    cached = _rendered.get(key)
    if cached is not None:
        return respond(cached)
    versions = service.store.require_name(name)
    record = next((v for v in versions if v.version == version), None)
    if record is None:
        raise NotFound("version", f"feature set {name!r} has no version {version}; versions are "
                       f"{', '.join(str(v.version) for v in versions)}")
    fs = feature_set(service, name, version)
    kept = sorted(fs.features, key=lambda f: f.rank)
    crosses = sorted(fs.crosses, key=lambda c: c.rank)
    inputs, others = cross_inputs(fs), not_kept(fs)
    features_raced = {c.name for c in fs.candidates if c.kind in ("dense", "sparse")} | {f.name for f in kept}
    top = max([f.score for f in kept] + [c.score for c in others] + [c.score for c in crosses] + [1e-12])
    dims = [(f.name, float(f.embedding_dim)) for f in kept if f.embedding_dim]
    dims += [(cross_label(c.features), float(c.embedding_dim)) for c in crosses if c.embedding_dim]
    job = _job(service, fs.job_id)
    out = VersionOut.of(record)
    html = html_of(
        "version.html", name=name, record=out, fs=fs, kept=kept, crosses=crosses, inputs=inputs,
        others=others, features_raced=len(features_raced), budgets=budget_use(fs), latency=latency_view(fs),
        data=data_window(fs, out.source, service.store.home), job=job,
        spec_json=json.dumps(fs.spec.model_dump(mode="json"), indent=2),
        kept_chart=charts.bars([(f"{f.rank}. {f.name}", f.score) for f in kept], scale_max=top,
                               title="attention score of each kept feature, in selection order"),
        others_chart=charts.bars([(c.name, c.score) for c in others], scale_max=top, css=[c.css for c in others],
                                 notes=[c.note for c in others], title="attention score of each candidate not kept"),
        dims_chart=charts.bars(dims, fmt="{:.0f}", title="embedding dimensions per feature") if dims else None,
        active="feature-sets")
    if job is None or job.state not in ("queued", "running"):
        _rendered.put(key, html)
    return respond(html)


def _job(service: Service, job_id: str | None) -> JobOut | None:
    if not job_id or not job_id.startswith("j-"):
        return None
    try:
        return JobOut.of(service.store.get_job(job_id))
    except UserError:
        return None


def _job_groups(rows: list[JobRow]) -> dict[str, list[JobOut]]:
    jobs = [JobOut.of(j) for j in rows]
    return {"queued": [j for j in jobs if j.state == "queued"],
            "running": [j for j in jobs if j.state == "running"],
            "done": [j for j in jobs if j.state in DONE_STATES],
            "failed": [j for j in jobs if j.state in FAILED_STATES]}


def _jobs(service: Service) -> list[JobRow]:
    return service.store.list_jobs(limit=JOBS_SHOWN)


def _jobs_fragment(rows: list[JobRow]) -> tuple[str, Markup]:
    """The jobs lists' ETag and HTML; the HTML is rendered once per distinct ETag."""
    etag = _jobs_etag(rows)
    html = _rendered.get(("jobs", etag))
    if html is None:
        html = _rendered.put(("jobs", etag), Markup(html_of("_jobs.html", groups=_job_groups(rows))))
    return etag, html


def _jobs_etag(rows: list[JobRow]) -> str:
    """Changes when any listed job's state, progress, error or result does (not with the clock)."""
    digest = hashlib.sha256(repr([(j.id, j.state, j.progress, j.error_message, j.fs_version, j.fs_decision,
                                   j.cancel_requested) for j in rows]).encode()).hexdigest()[:20]
    return f'"jobs-{digest}"'


@router.get("/jobs", response_class=HTMLResponse)
@page
def jobs_page(request: Request) -> HTMLResponse:
    """Jobs by state (the live part is re-fetched each second by the page's script) and the form."""
    return render("jobs.html", jobs_html=_jobs_fragment(_jobs(service_of(request)))[1], active="jobs",
                  example=json.dumps(EXAMPLE_SPEC, indent=2))


@router.get("/jobs/live", response_class=HTMLResponse)
@page
def jobs_live(request: Request) -> Response:
    """The jobs lists alone: what the jobs page polls each second. With the ETag of the last answer
    in ``If-None-Match``, an unchanged list is a bodiless 304 (one indexed read, no rendering)."""
    rows = _jobs(service_of(request))
    etag = _jobs_etag(rows)
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": "no-cache"})
    response = respond(_jobs_fragment(rows)[1])
    response.headers.update({"ETag": etag, "Cache-Control": "no-cache"})
    return response


@router.get("/schedules", response_class=HTMLResponse)
@page
def schedules_page(request: Request) -> HTMLResponse:
    """Each schedule's cadence, window, last run, next run and last outcome."""
    service = service_of(request)
    rows = []
    for row in service.store.list_schedules():
        spec = json.loads(row.spec)
        cadence = spec.get("cadence") or {}
        last: JobRow | None = None
        if row.last_job_id:
            try:
                last = service.store.get_job(row.last_job_id)
            except UserError:
                last = None
        rows.append({"row": row, "spec": spec, "last": JobOut.of(last) if last else None,
                     "cadence": (f"cron {cadence['cron']}" if cadence.get("cron")
                                 else f"every {cadence.get('interval')}")})
    return render("schedules.html", rows=rows, known=set(service.store.registry.names()),
                  active="schedules")
