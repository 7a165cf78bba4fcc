"""The ``seqattn`` command line. Exit codes: 0 success, 2 bad input (one line ``error: <field>:
<problem>`` on stderr), 3 the server could not start (its address is taken or cannot be bound, or
the app's startup failed), 1 else.

    seqattn synth --out DIR [--rows N] [--seed S] [--noise K] [--days N [--drift-day D] [--start DATE]]
    seqattn select SPEC.yaml [--out FS.json]
    seqattn export FS.json --format torchrec|feast [--out DIR] [--entity COL --timestamp COL]
    seqattn demo [--rows N]
    seqattn pipeline run SCHEDULE.yaml [--as-of VALUE] [--home DIR]
    seqattn serve [--host 127.0.0.1] [--port 8000]

``seqattn <command> --help`` describes every argument with its default; ``serve --help`` also lists
the ``SEQATTN_*`` environment variables the service reads (generated from its settings model).

A continual pipeline on planted daily data, end to end::

    seqattn synth --out data/daily --days 3 --rows 20000    # data/daily/day=2026-01-01/ ... 3 x 20,000 rows
    seqattn pipeline run schedule.yaml                      # window: {path: data/daily, partition: day}
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shutil
import socket
import sys
import tempfile
import textwrap
import warnings
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipelines.errors import SpecError
from pipelines.events import Event, Progress, Resumed, StageStarted, WindowChosen
from services.cli_export import cmd_export

DEMO_ROWS = 100_000
SYNTH_ROWS = 200_000  # one dataset
SYNTH_ROWS_PER_DAY = 20_000  # each daily partition (--days)
SYNTH_START = date(2026, 1, 1)
MAX_DAYS = 3660  # ten years of daily partitions; more is a typo


class ServerStartError(Exception):
    """``seqattn serve`` could not start (exit code 3): ``field`` names the argument to change."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


class _Progress:
    """A tqdm bar per training stage: phase, picks so far, loss."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.stage = ""

    def __call__(self, event: Event) -> None:
        match event:
            case Resumed(stage=stage, epoch=epoch):
                tqdm.write(f"[resumed from the checkpoint after {stage} epoch {epoch + 1}]", file=sys.stderr)
            case WindowChosen(window=window, warm_start_from=warm):
                tqdm.write(f"[window] {window}" + (f", warm start from version {warm}" if warm else ""),
                           file=sys.stderr)
            case StageStarted(stage=stage):
                self.close()
                if stage not in ("selection", "retrain", "reference"):
                    tqdm.write(f"[{stage}]", file=sys.stderr)
            case Progress():
                self.step(event)
            # Ray's worker, plan and checkpoint events are for the service and the logs

    def step(self, event: Progress) -> None:
        if event.stage != self.stage or self.bar is None:
            self.close()
            self.stage = event.stage
            self.bar = tqdm(total=event.total_steps, desc=self.stage, unit="step", file=sys.stderr, leave=True)
        self.bar.n = event.step
        parts = []  # the cross pre-screen reports steps only: no epoch, loss or picks
        if event.loss is not None and event.epoch is not None:
            parts += [f"epoch={event.epoch + 1}", f"loss={event.loss:.4f}"]
        parts += [f"{k}={v}" for k, v in event.picks.items()]
        self.bar.set_postfix_str(" ".join(parts))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.stage = ""


def _quiet() -> None:
    """TorchRec's planner and torch.fx log at WARNING about things users cannot act on."""
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.ERROR)
    for name in ("torchrec", "torch", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _num(value: float | None, fmt: str) -> str:
    """``value`` formatted, or ``n/a``: every metric of a FeatureSet is optional."""
    return "n/a" if value is None else format(value, fmt)


def _summary(fs: Any) -> str:
    """What a job kept, its metrics, the latency stage (when a budget was set) and the timings."""
    m = fs.metrics
    lines = [f"feature set '{fs.name}': {len(fs.features)} features, {len(fs.crosses)} crosses"]
    for f in fs.features:
        dim = f" dim={f.embedding_dim}" if f.embedding_dim else ""
        lines.append(f"  {f.rank:>3}. {f.name:<24} {f.kind:<6} score={f.score:.3f}{dim}")
    for c in fs.crosses:
        lines.append(f"  x{c.rank:>2}. {' x '.join(c.features):<24} cross  score={c.score:.3f} buckets={c.buckets} "
                     f"dim={c.embedding_dim}")
    lines.append(f"  val AUC {_num(m.val_auc, '.4f')} (all features {_num(m.val_auc_all_features, '.4f')}); "
                 f"embeddings {_num(m.embedding_mb, '.2f')} MB "
                 f"(all features {_num(m.embedding_mb_all_features, '.2f')} "
                 f"MB); inference {_num(m.inference_ms, '.2f')} ms / 1,024 rows")
    if fs.latency is not None:
        t = fs.latency
        removed = [*t.removed_features, *(" x ".join(c) for c in t.removed_crosses)]
        lines.append(f"  latency budget {t.budget_ms:g} ms: {t.ms_before:.2f} ms before, {t.ms_after:.2f} ms after; "
                     + (f"removed {', '.join(removed)}" if removed else "nothing removed"))
    lines.append("  timings: " + ", ".join(f"{k}={v:.1f}s" for k, v in fs.timings.items()))
    return "\n".join(lines)


def cmd_synth(args: argparse.Namespace) -> int:
    """Planted-truth data: one dataset, or with ``--days`` one hive partition per day
    (``OUT/day=YYYY-MM-DD/part.parquet``) that a schedule's window (``partition: day``) reads as is.
    ``--rows`` is per day then, so a window of 7 days holds the same rows however many days exist."""
    from pipelines.synth import DRIFT_GAINER, write_partitioned_synth, write_synth

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SpecError("--out", f"{args.out!r} is a file; give a folder to write into")
    if args.days is None:
        for flag, value in (("--drift-day", args.drift_day), ("--start", args.start)):
            if value is not None:
                raise SpecError(flag, "needs --days (it describes daily partitions)")
        try:
            truth = write_synth(out, rows=args.rows or SYNTH_ROWS, seed=args.seed, n_noise=args.noise,
                                entity=args.entity, timestamp=args.timestamp)
        except ValueError as exc:  # a key column's name taken by a planted column
            field, _, message = str(exc).partition(": ")
            raise SpecError(f"--{field}", message) from None
        keys = [f"{k} column {truth[k]!r}" for k in ("entity", "timestamp") if truth.get(k)]
        print(f"wrote {truth['rows']:,} rows to {out} (truth in {out / 'truth.json'})"
              + (f"; with {' and '.join(keys)}" if keys else ""))
        return 0
    for flag, value in (("--entity", args.entity), ("--timestamp", args.timestamp)):
        if value is not None:
            raise SpecError(flag, "is for one dataset, not daily partitions (--days); leave it out or drop --days")
    if args.drift_day is not None:
        if args.drift_day >= args.days:
            raise SpecError("--drift-day", f"must be less than --days ({args.days}): it is the 0-based index of the "
                            f"first drifted day, got {args.drift_day}")
        if args.noise < 3:
            raise SpecError("--noise", f"the drift makes {DRIFT_GAINER} relevant, so --drift-day needs --noise 3 "
                            f"or more, got {args.noise}")
    start = args.start or SYNTH_START
    if (date.max - start).days < args.days - 1:
        raise SpecError("--start", f"{start} + {args.days} days passes the last date there is, {date.max}")
    rows = args.rows or SYNTH_ROWS_PER_DAY
    summary = write_partitioned_synth(out, days=args.days, rows_per_day=rows, drift_day=args.drift_day, seed=args.seed,
                                      n_noise=args.noise, start=start)
    days = summary["days"]
    stale = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name.startswith("day=") and p.name[4:] not in days)
    if stale:
        print(f"warning: --out: {args.out!r} also holds {len(stale)} partition(s) this run did not write "
              f"({stale[0]} ...); a schedule's window reads them too", file=sys.stderr)
    print(f"wrote {len(days)} daily partition(s) of {rows:,} rows ({len(days) * rows:,} in all), day={days[0]}"
          f"..{days[-1]}, to {out} (truth in {out / 'truth.json'})")
    if summary["drift_date"] is not None:
        print(f"drift from day={summary['drift_date']} on: rel_0 stops mattering, {DRIFT_GAINER} starts")
    return 0


def artifacts_path(out: str | os.PathLike[str]) -> Path:
    """Where ``seqattn select --out FS.json`` leaves the run's artifacts: ``FS.artifacts/`` beside
    it, where ``seqattn export FS.json`` looks first (docs/export.md)."""
    return Path(out).with_suffix(".artifacts")


def _select(spec: Any, out: str | None) -> int:
    from pipelines.job import run_job

    progress = _Progress()
    staging = None
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=Path(out).parent, prefix=f".{Path(out).stem}.artifacts-"))
    try:
        fs = run_job(spec, on_event=progress, artifacts=staging)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        progress.close()
    text = fs.model_dump_json(indent=2)
    if out and staging is not None:
        # The artifacts first, then the JSON: a FeatureSet file never names artifacts of another run
        # for long, and each of the two is replaced whole (renames), never half written.
        final = artifacts_path(out)
        os.chmod(staging, 0o755)
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if final.exists():
            os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
        tmp = Path(out).with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(out)  # atomic: a reader never sees half a file
    print(_summary(fs))
    if out:
        print(f"wrote {out} (artifacts for `seqattn export` in {artifacts_path(out)})")
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from pipelines.spec import load_spec

    return _select(load_spec(args.spec), args.out)


def cmd_demo(args: argparse.Namespace) -> int:
    """The README's main job: planted data, features + crosses + dimensions, no cluster needed."""
    from pipelines.spec import load_spec
    from pipelines.synth import write_synth

    home = Path(os.environ.get("SEQATTN_HOME", ".seqattn"))
    data_dir = home / "demo-data"
    truth = write_synth(data_dir, rows=args.rows, seed=0)
    spec = load_spec({
        "name": "demo",
        "dataset": {"path": str(data_dir), "label": "label"},
        "selection": {"features": len(truth["relevant_alone"]), "crosses": len(truth["pairs"] + truth["interactions"]),
                      "embedding_dims": [4, 8, 16, 32]},
        "training": {"epochs": 2, "batch_size": 1024},
    })
    print(f"demo: {args.rows} planted rows in {data_dir}; truth: relevant alone {truth['relevant_alone']}, "
          f"crosses {truth['pairs'] + truth['interactions']}, duplicate {truth['duplicate_of']}")
    return _select(spec, str(home / "demo-featureset.json"))


def cmd_pipeline_run(args: argparse.Namespace) -> int:
    """One step of a continual pipeline (what a Kubernetes CronJob runs): newest window -> job ->
    registry, with the promotion decision and the stability against the previous version."""
    from pipelines.continual import load_schedule, run_step
    from pipelines.registry import Registry

    schedule = load_schedule(args.schedule)
    registry = Registry(args.home) if args.home else Registry()
    progress = _Progress()

    try:
        step = run_step(schedule, as_of=args.as_of, registry=registry, on_event=progress)
    finally:
        progress.close()
    rec = step.record
    print(_summary(step.feature_set))
    stable = ""
    if rec.previous_version is not None:
        rho = "n/a" if rec.rank_correlation is None else f"{rec.rank_correlation:.3f}"
        stable = f"; vs version {rec.previous_version}: jaccard {rec.jaccard:.3f}, rank correlation {rho}"
    print(f"schedule '{schedule.name}': window {step.window.describe()} -> {rec.name} version {rec.version} "
          f"{rec.decision} ({rec.reason}){stable}")
    print(f"wrote {registry.home / rec.path}")
    return 0


def _address(host: str, port: int) -> str:
    """``host:port`` as a URL writes it (``[::1]:8000`` for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (uvicorn listens on it), bound here so that a taken port is
    reported as one line before the app starts, and no other process can take it in between."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart reuses a TIME_WAIT port
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServerStartError("--port", f"{_address(host, port)} is already in use; stop what listens there "
                                   "or pick another --port") from None
        raise ServerStartError("--host", f"cannot listen on {_address(host, port)}: {exc.strerror or exc}") from None
    return sock


def serve_urls(host: str, port: int) -> list[str]:
    """The lines ``seqattn serve`` prints once it listens: where the dashboard, the API and its docs are.
    A wildcard host (every interface) is shown as loopback, the address that works on this machine.

    Example::

        >>> print("\\n".join(serve_urls("127.0.0.1", 8000)))
        seqattn serve: listening on http://127.0.0.1:8000
          dashboard  http://127.0.0.1:8000/dashboard
          API        http://127.0.0.1:8000/v1/...  (docs: http://127.0.0.1:8000/docs)
    """
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
    base = f"http://{_address(wildcard.get(host, host), port)}"
    where = f"{_address(host or '0.0.0.0', port)} (every interface)" if host in wildcard else base
    return [f"seqattn serve: listening on {where}", f"  dashboard  {base}/dashboard",
            f"  API        {base}/v1/...  (docs: {base}/docs)"]


def _missing_roots(roots: list[Path]) -> list[str]:
    """One warning line per data root that is not a folder: jobs could read nothing under it."""
    lines = []
    for root in roots:
        if not root.exists():
            lines.append(f"warning: SEQATTN_DATA_ROOTS: {str(root)!r} does not exist; no dataset can be read under it")
        elif not root.is_dir():
            lines.append(f"warning: SEQATTN_DATA_ROOTS: {str(root)!r} is not a folder; no dataset can be read under it")
    return lines


def cmd_serve(args: argparse.Namespace) -> int:
    """The HTTP API in this process (uvicorn, one worker). Without SEQATTN_API_KEY the mutating
    routes are open, so only a loopback address may be bound. The address is bound before the app
    starts (a taken port: one line, exit 3); the URLs are printed once it listens."""
    import ipaddress

    import uvicorn
    from pydantic import ValidationError

    from pipelines.spec import first_problem
    from services.selector_api.app import create_app
    from services.selector_api.logs import configure_logging
    from services.selector_api.settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        raise SpecError(*first_problem(exc.errors(include_url=False), Settings,
                                       lambda e: f"SEQATTN_{str(e['loc'][0]).upper()}")) from None
    try:
        loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = False
    if settings.key() is None and not loopback:
        raise SpecError("--host", f"{args.host!r} is not a loopback address and SEQATTN_API_KEY is not set; "
                        "set a key to serve beyond this machine")
    sock = _listen(args.host, args.port)
    try:
        for line in _missing_roots(settings.roots()):
            print(line, file=sys.stderr, flush=True)
        configure_logging(args.log_level.upper())

        class Server(uvicorn.Server):
            async def startup(self, sockets: list[socket.socket] | None = None) -> None:
                await super().startup(sockets)
                if self.started and not self.should_exit:
                    print("\n".join(serve_urls(args.host, args.port)), flush=True)

        from services.selector_api.http_protocol import server_options

        config = uvicorn.Config(create_app(settings), host=args.host, port=args.port, log_config=None,
                                access_log=args.access_log, workers=1,
                                **server_options(settings.max_header_bytes))  # head limit, JSON 400/431
        server = Server(config)
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0 if server.started else 3  # uvicorn.run's code when the app's startup failed


def _bounded_int(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an int in ``[low, high]``, else argparse's one-line usage error (exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


class _Help(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, ``(default: X)`` from the argument's default, unless
    the help states it already (an option whose default is None or depends on another option);
    description and epilog are printed as written (the serve epilog is a table)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or "(default" in text or action.default in (None, argparse.SUPPRESS):
            return text
        if action.default is False and action.nargs == 0:  # store_true
            return f"{text} (default: off)"
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog may be computed when help is shown (``epilog_factory``), so
    that e.g. ``serve``'s list of settings costs nothing on other commands."""

    def __init__(self, *args: Any, epilog_factory: Callable[[], str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)
        self.epilog_factory = epilog_factory

    def format_help(self) -> str:
        if self.epilog_factory is not None and self.epilog is None:
            self.epilog = self.epilog_factory()
        return super().format_help()


# What each setting does, for ``serve --help``; a field's own ``description`` wins. Names and
# defaults always come from the model, so a new setting is listed even before it is described here.
SETTING_HELP = {
    "home": "registry, job store and windows",
    "api_key": "bearer token for the mutating routes; unset: they are open, and serve binds only loopback",
    "data_roots": f"'{os.pathsep}'-separated folders that dataset paths must lie under; unset: the working directory",
    "max_body_bytes": "largest request body",
    "job_concurrency": "jobs that run at once",
    "max_queued_jobs": "jobs that may wait; more get 503",
    "schedule_tick_s": "seconds between looks for due schedules",
    "heartbeat_s": "seconds between a running job's heartbeats",
    "stale_after_s": "a running job whose heartbeat is older is marked interrupted",
    "scheduler_enabled": "run registered schedules on their cadence",
    "max_epochs": "largest training.epochs a job may ask for",
    "max_batch_size": "largest training.batch_size",
    "max_embedding_dim": "largest embedding dimension",
    "max_workers": "largest training.num_workers",
    "max_table_rows": "largest embedding table (rows)",
    "max_features": "most candidate features",
    "job_max_memory_mb": "a job's process is stopped above this resident memory; unset: half this machine's",
}


def settings_help() -> str:
    """The ``SEQATTN_*`` variables ``seqattn serve`` reads, from the settings model's fields (name,
    what it does, default), so the list cannot drift from what the service reads."""
    from pydantic_core import PydanticUndefined

    from services.selector_api.settings import Settings

    prefix = str(Settings.model_config.get("env_prefix", ""))
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = ("required" if default is PydanticUndefined else "unset" if default in (None, "")
                 else str(default).lower() if isinstance(default, bool) else str(default))
        what = field.description or SETTING_HELP.get(name, "")
        default_text = "" if shown == "unset" and "unset:" in what else f"(default: {shown})"  # said already
        rows.append((f"{prefix}{name}".upper(), " ".join(t for t in (what, default_text) if t)))
    width = max(len(env) for env, _ in rows)
    columns = max(80, shutil.get_terminal_size().columns - 2)  # as argparse wraps the options above
    lines = ["environment variables (read when the server starts; a bad value exits 2 naming it):"]
    for env, text in rows:
        lines += textwrap.wrap(text, columns, initial_indent=f"  {env:<{width}}  ", subsequent_indent=" " * (width + 4))
    return "\n".join(lines)


def _day(text: str) -> date:
    """An argparse type: a ``YYYY-MM-DD`` date, else argparse's one-line usage error (exit 2)."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a date YYYY-MM-DD, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The ``seqattn`` parser; every subcommand's ``--help`` states each argument's default."""
    p = _Parser(prog="seqattn", description="Sequential Attention feature selection for recommender models")
    sub = p.add_subparsers(dest="command", required=True)

    def command(parent: Any, name: str, text: str, **kwargs: Any) -> argparse.ArgumentParser:
        return parent.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".", **kwargs)

    s = command(sub, "synth", "write planted-truth Parquet data and its truth.json: one dataset, or daily partitions")
    s.add_argument("--out", required=True, help="folder to write into (created if missing; required)")
    s.add_argument("--rows", type=_bounded_int(1), help=f"rows of the dataset; with --days, rows of EACH day "
                   f"(default: {SYNTH_ROWS:,}; with --days, {SYNTH_ROWS_PER_DAY:,} per day)")
    s.add_argument("--seed", type=int, default=0, help="random seed: the planted effects and the rows")
    s.add_argument("--noise", type=_bounded_int(0), default=20, help="noise columns (noise_00, ...) with no effect")
    s.add_argument("--days", type=_bounded_int(1, MAX_DAYS), help="write this many daily hive partitions, "
                   "OUT/day=YYYY-MM-DD/part.parquet, for a schedule's window (partition: day) "
                   "(default: none, one dataset in OUT/data.parquet)")
    s.add_argument("--drift-day", type=_bounded_int(0), help="0-based index of the first drifted day: from it on "
                   "rel_0 stops mattering and noise_02 starts (truth.json's drift_day); needs --days "
                   "(default: no drift)")
    s.add_argument("--entity", metavar="COLUMN", help="also write a row key column of this name (int64, one per "
                   "row) for a feature store (default: none)")
    s.add_argument("--timestamp", metavar="COLUMN", help="also write an event-time column of this name (UTC, one "
                   "second apart) for a feature store (default: none)")
    s.add_argument("--start", type=_day, help=f"date of the first day; needs --days (default: {SYNTH_START})")
    s.set_defaults(func=cmd_synth)

    s = command(sub, "select", "run one selection job in this process")
    s.add_argument("spec", help="JobSpec YAML or JSON file")
    s.add_argument("--out", help="write the FeatureSet JSON here (default: print only the summary)")
    s.set_defaults(func=cmd_select)

    s = command(sub, "export", "write a FeatureSet as a self-contained TorchRec folder or a Feast repository")
    s.add_argument("feature_set", help="FeatureSet JSON (from select --out, demo, or the registry)")
    s.add_argument("--artifacts", help="the run's artifacts folder (default: FS.artifacts/ beside the JSON, or the "
                   "JSON's own folder in a registry)")
    s.add_argument("--source", help="feast: the Parquet the FileSource reads (default: the spec's dataset.path)")
    s.add_argument("--entity", metavar="COLUMN", help="feast: the key column of the entity (default: none; "
                   "required with --out)")
    s.add_argument("--timestamp", metavar="COLUMN", help="feast: the event-time column (default: none; required "
                   "with --out)")
    s.add_argument("--format", choices=["torchrec", "feast"], default="torchrec",
                   help="torchrec: tables, vocabularies, weights and a runtime; feast: a feature repository")
    s.add_argument("--out", help="the folder to write, new or empty (default: print the torchrec manifest, or the "
                   "feast FeatureService alone)")
    s.set_defaults(func=cmd_export)  # services/cli_export.py

    s = command(sub, "demo", "run the main job on planted data (written to $SEQATTN_HOME/demo-data)")
    s.add_argument("--rows", type=_bounded_int(1), default=DEMO_ROWS, help="planted rows to write and select on")
    s.set_defaults(func=cmd_demo)

    s = command(sub, "pipeline", "continual pipelines")
    pipe = s.add_subparsers(dest="pipeline_command", required=True)
    s = command(pipe, "run", "run one step of a schedule (for cron / a Kubernetes CronJob)")
    s.add_argument("schedule", help="schedule YAML (job, window, cadence, promotion)")
    s.add_argument("--as-of", help="end the window at this partition value (default: the newest)")
    s.add_argument("--home", help="registry folder (default: $SEQATTN_HOME or ./.seqattn)")
    s.set_defaults(func=cmd_pipeline_run)

    s = command(sub, "serve", "start the HTTP API (jobs, feature sets, schedules) and the dashboard",
                epilog_factory=settings_help)
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; other than loopback needs SEQATTN_API_KEY")
    s.add_argument("--port", type=_bounded_int(1, 65535), default=8000, help="TCP port to listen on")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="level of the JSON log lines on stderr")
    s.add_argument("--access-log", action="store_true",
                   help="log every request as a JSON line; /metrics has the latencies either way")
    s.set_defaults(func=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet()
    try:
        return int(args.func(args))
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ServerStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    except Exception as exc:  # the user gets one line; the traceback goes to the log
        logging.getLogger("seqattn").debug("command failed", exc_info=True)
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
