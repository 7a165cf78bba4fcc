"""The ``seqattn`` command line. Exit codes: 0 success, 2 bad input (one line naming the field), 3 the
server could not start (uvicorn's code, e.g. its port is taken), 1 else.

    seqattn synth --out DIR [--rows N] [--seed S]
    seqattn select SPEC.yaml [--out FS.json]
    seqattn export FS.json --format torchrec|feast [--out FILE]
    seqattn demo [--rows N]
    seqattn pipeline run SCHEDULE.yaml [--as-of VALUE] [--home DIR]
    seqattn serve [--host 127.0.0.1] [--port 8000]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipelines.errors import SpecError

DEMO_ROWS = 100_000


class _Progress:
    """A tqdm bar per training stage: phase, picks so far, loss."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.stage = ""

    def __call__(self, event: dict[str, Any]) -> None:
        if event["kind"] == "resumed":
            tqdm.write(f"[resumed from the checkpoint after {event['stage']} epoch {event['epoch'] + 1}]", file=sys.stderr)
            return
        if event["kind"] not in ("stage", "progress"):  # Ray's worker, plan and checkpoint events
            return
        if event["kind"] == "stage":
            self.close()
            if event["stage"] not in ("selection", "retrain", "reference"):
                tqdm.write(f"[{event['stage']}]", file=sys.stderr)
            return
        if event["stage"] != self.stage or self.bar is None:
            self.close()
            self.stage = event["stage"]
            self.bar = tqdm(total=event["total_steps"], desc=self.stage, unit="step", file=sys.stderr, leave=True)
        self.bar.n = event["step"]
        parts = []  # the cross pre-screen reports steps only: no epoch, loss or picks
        if event.get("loss") is not None:
            parts += [f"epoch={event['epoch'] + 1}", f"loss={event['loss']:.4f}"]
        parts += [f"{k}={v}" for k, v in (event.get("picks") or {}).items()]
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


def _summary(fs: Any) -> str:
    m = fs.metrics
    lines = [f"feature set '{fs.name}': {len(fs.features)} features, {len(fs.crosses)} crosses"]
    for f in fs.features:
        dim = f" dim={f.embedding_dim}" if f.embedding_dim else ""
        lines.append(f"  {f.rank:>3}. {f.name:<24} {f.kind:<6} score={f.score:.3f}{dim}")
    for c in fs.crosses:
        lines.append(f"  x{c.rank:>2}. {' x '.join(c.features):<24} cross  score={c.score:.3f} buckets={c.buckets} dim={c.embedding_dim}")
    lines.append(f"  val AUC {m.val_auc:.4f} (all features {m.val_auc_all_features:.4f}); "
                 f"embeddings {m.embedding_mb:.2f} MB (all features {m.embedding_mb_all_features:.2f} MB); "
                 f"inference {m.inference_ms:.2f} ms / 1,024 rows")
    if fs.latency is not None:
        t = fs.latency
        removed = [*t.removed_features, *(" x ".join(c) for c in t.removed_crosses)]
        lines.append(f"  latency budget {t.budget_ms:g} ms: {t.ms_before:.2f} ms before, {t.ms_after:.2f} ms after; "
                     + (f"removed {', '.join(removed)}" if removed else "nothing removed"))
    lines.append("  timings: " + ", ".join(f"{k}={v:.1f}s" for k, v in fs.timings.items()))
    return "\n".join(lines)


def cmd_synth(args: argparse.Namespace) -> int:
    from pipelines.synth import write_synth

    truth = write_synth(args.out, rows=args.rows, seed=args.seed)
    print(f"wrote {truth['rows']} rows to {args.out} (truth in {Path(args.out) / 'truth.json'})")
    return 0


def _select(spec: Any, out: str | None) -> int:
    from pipelines.job import run_job

    progress = _Progress()
    try:
        fs = run_job(spec, on_event=progress)
    finally:
        progress.close()
    text = fs.model_dump_json(indent=2)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(out).with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(out)  # atomic: a reader never sees half a file
    print(_summary(fs))
    if out:
        print(f"wrote {out}")
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from pipelines.spec import load_spec

    return _select(load_spec(args.spec), args.out)


def cmd_export(args: argparse.Namespace) -> int:
    from pipelines.export import export_feature_set
    from pipelines.spec import FeatureSet

    try:
        fs = FeatureSet.model_validate_json(Path(args.feature_set).read_text())
    except FileNotFoundError:
        raise SpecError("feature_set", f"file {args.feature_set!r} not found") from None
    except ValueError as exc:
        raise SpecError("feature_set", f"{args.feature_set!r} is not a valid FeatureSet: {str(exc).splitlines()[0]}") from None
    text = export_feature_set(fs, args.format)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


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

    def on_event(event: dict[str, Any]) -> None:
        if event.get("stage") == "window":
            tqdm.write(f"[window] {event['window']}" + (f", warm start from version {event['warm_start_from']}"
                                                      if event.get("warm_start_from") else ""), file=sys.stderr)
        elif event.get("kind") in ("stage", "progress"):
            progress(event)

    try:
        step = run_step(schedule, as_of=args.as_of, registry=registry, on_event=on_event)
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


def cmd_serve(args: argparse.Namespace) -> int:
    """The HTTP API in this process (uvicorn, one worker). Without SEQATTN_API_KEY the mutating
    routes are open, so only a loopback address may be bound."""
    import ipaddress

    import uvicorn

    from services.selector_api.app import create_app
    from services.selector_api.logs import configure_logging
    from services.selector_api.settings import Settings

    from pydantic import ValidationError

    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise SpecError(f"SEQATTN_{str(first['loc'][0]).upper()}", first["msg"]) from None
    try:
        loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = False
    if settings.key() is None and not loopback:
        raise SpecError("--host", f"{args.host!r} is not a loopback address and SEQATTN_API_KEY is not set; "
                        "set a key to serve beyond this machine")
    configure_logging(args.log_level.upper())
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_config=None,
                access_log=args.access_log, workers=1)
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seqattn", description="Sequential Attention feature selection for recommender models")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("synth", help="write a planted-truth Parquet dataset and its truth.json")
    s.add_argument("--out", required=True)
    s.add_argument("--rows", type=_bounded_int(1), default=200_000)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_synth)
    s = sub.add_parser("select", help="run one selection job in this process")
    s.add_argument("spec")
    s.add_argument("--out")
    s.set_defaults(func=cmd_select)
    s = sub.add_parser("export", help="write a FeatureSet's configuration for TorchRec or Feast")
    s.add_argument("feature_set")
    s.add_argument("--format", choices=["torchrec", "feast"], default="torchrec")
    s.add_argument("--out")
    s.set_defaults(func=cmd_export)
    s = sub.add_parser("demo", help="run the main job on planted data")
    s.add_argument("--rows", type=_bounded_int(1), default=DEMO_ROWS)
    s.set_defaults(func=cmd_demo)
    s = sub.add_parser("pipeline", help="continual pipelines")
    pipe = s.add_subparsers(dest="pipeline_command", required=True)
    s = pipe.add_parser("run", help="run one step of a schedule (for cron / a Kubernetes CronJob)")
    s.add_argument("schedule", help="schedule YAML (job, window, cadence, promotion)")
    s.add_argument("--as-of", help="end the window at this partition value (default: the newest)")
    s.add_argument("--home", help="registry folder (default: $SEQATTN_HOME or ./.seqattn)")
    s.set_defaults(func=cmd_pipeline_run)
    s = sub.add_parser("serve", help="start the HTTP API (jobs, feature sets, schedules)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=_bounded_int(1, 65535), default=8000)
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument("--access-log", action="store_true", help="log every request (off: /metrics has the latencies)")
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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    except Exception as exc:  # the user gets one line; the traceback goes to the log
        logging.getLogger("seqattn").debug("command failed", exc_info=True)
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
