"""The scale benchmark's results and its report: what :mod:`bench.scale` measured, rendered as
docs/scale.md (tables, findings, where the next limit is) and docs/scale_rss.png.

Kept apart from the runs so that the report can be rewritten from a ``results.json`` without
measuring again, and runs of different days merged (``python -m bench.scale --keep``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench import markdown_table

GB = 1e9
SAMPLE_S = 0.2
JOB_BATCH = 4096  # the anchor's batch, so that the two rows/s compare steps of the same size
JOB_SELECTION = {"features": 8, "crosses": 2, "embedding_dims": [4, 8, 16]}
ANCHOR_BATCH = 4096
ANCHOR_DIM = 16
ANCHOR_LR = 0.02
GOAL_RATIO = 1.3  # the issue: peak at 16M rows at most 1.3x the peak at 1M rows


def _stamp(t: float | None = None) -> str:
    moment = dt.datetime.now(dt.timezone.utc) if t is None else dt.datetime.fromtimestamp(t, dt.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


RUN_STAMP = _stamp()  # this run's start: every result it measures carries it


@dataclass(frozen=True)
class Variant:
    """One way to run the same job: ``engine`` ``local`` (in the CLI process) or ``ray`` (Ray Train
    workers, a local cluster started by the driver), extra environment variables for the CLI, and
    JobSpec overrides merged into :func:`job_spec`'s spec (nested dicts merge key by key)."""

    name: str
    engine: str
    about: str
    env: Mapping[str, str] = field(default_factory=dict)
    spec: Mapping[str, Any] = field(default_factory=dict)
    max_rows: int | None = None  # larger row counts are not run (e.g. the in-memory path past 4M: hours, ~1 GB/M rows)


@dataclass
class DataInfo:
    rows: int
    path: str
    how: str  # "seqattn synth", "chunked", with "(reused)" when the files were there
    files: int
    bytes: int
    wall_s: float | None = None
    peak_rss: int | None = None


@dataclass
class JobResult:
    variant: str
    rows: int
    wall_s: float
    peak_tree: int
    peak_driver: int
    stopped: str | None = None
    rc: int | None = 0
    train_workers: list[int] = field(default_factory=list)  # peak RSS of each Ray Train worker
    max_ray_worker: int | None = None  # the largest other ray:: process (Ray Data tasks, idle workers)
    ray_system: int | None = None  # the sum of the peaks of Ray's own processes (GCS, raylet, agents)
    timings: dict[str, float] = field(default_factory=dict)
    train_rows: int | None = None
    epochs: int = 1
    features: list[str] = field(default_factory=list)
    crosses: list[str] = field(default_factory=list)
    val_auc: float | None = None
    log: str = ""
    run: str = RUN_STAMP  # the run that measured it (its start, UTC): --keep merges runs

    @property
    def selection_rows_s(self) -> float | None:
        sel = self.timings.get("selection_s")
        return self.train_rows * self.epochs / sel if sel and self.train_rows else None


@dataclass
class AnchorResult:
    rows: int  # of the data it ran on
    rows_per_s: float | None
    detail: dict[str, Any]
    peak_tree: int
    wall_s: float
    stopped: str | None = None
    run: str = RUN_STAMP


def _rows_label(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1_000 and n % 1_000 == 0:
        return f"{n // 1_000}k"
    return f"{n:,}"


def _gb(x: float | None) -> str:
    return "—" if x is None else f"{x / GB:.2f}"


@dataclass
class Report:
    command: str
    rows: tuple[int, ...]
    variants: list[Variant]
    max_rss: float
    rate_rows: int
    started: float = field(default_factory=time.perf_counter)
    data: dict[int, DataInfo] = field(default_factory=dict)
    jobs: list[JobResult] = field(default_factory=list)
    anchor: AnchorResult | None = None

    def job(self, variant: str, rows: int) -> JobResult | None:
        return next((j for j in self.jobs if j.variant == variant and j.rows == rows), None)


def _ratio(num: float | None, den: float | None) -> str:
    return "—" if not num or not den else f"{num / den:.2f}"


def _variant_table(rep: Report, v: Variant) -> list[str]:
    base_rows = min(rep.rows)
    base = rep.job(v.name, base_rows)
    base_peak = base.peak_tree if base and base.stopped is None else None
    ray = v.engine == "ray"
    header = ["rows", "wall s", "peak tree RSS GB", "driver RSS GB"]
    header += ["Ray Train workers' RSS GB", "other ray:: max GB", "Ray system GB"] if ray else []
    header += ["selection rows/s", f"peak ÷ peak at {_rows_label(base_rows)}", "result", "measured"]
    body = []
    for n in rep.rows:
        j = rep.job(v.name, n)
        if j is None:
            continue
        line = [f"{n:,}", f"{j.wall_s:.0f}", _gb(j.peak_tree), _gb(j.peak_driver)]
        if ray:
            line += [" / ".join(_gb(w) for w in j.train_workers) or "—", _gb(j.max_ray_worker), _gb(j.ray_system)]
        rate = j.selection_rows_s
        line += ["—" if rate is None else f"{rate:,.0f}",
                 _ratio(j.peak_tree, base_peak) + (" (at least)" if j.stopped and base_peak else ""),
                 "finished" if j.stopped is None else f"stopped: {j.stopped}", j.run]
        body.append(line)
    return [markdown_table(header, body)]


def _timings_table(rep: Report) -> list[str]:
    keys = ["load_s", "read_s", "encode_s", "prescreen_s", "shard_s", "selection_s", "retrain_s", "reference_s",
            "total_s"]
    done = [j for j in rep.jobs if j.timings]
    keys = [k for k in keys if any(k in j.timings for j in done)]
    body = [[j.variant, f"{j.rows:,}", *(f"{j.timings[k]:.1f}" if k in j.timings else "—" for k in keys),
             f"{j.val_auc:.4f}" if j.val_auc is not None else "—"] for j in done]
    return [markdown_table(["variant", "rows", *keys, "val AUC"], body)] if body else ["(no run finished)"]


def _findings(rep: Report) -> list[str]:
    out = []
    lo = min(rep.rows)
    for v in rep.variants:
        base = rep.job(v.name, lo)
        if base is None or base.stopped:
            continue
        for n in rep.rows:
            j = rep.job(v.name, n)
            if j is None or n == lo:
                continue
            goal = f" (goal at 16M: at most {GOAL_RATIO}x)" if n == 16_000_000 and lo == 1_000_000 else ""
            if j.stopped:
                out.append(f"- {v.name}, {_rows_label(n)} rows: **{j.stopped}** after {j.wall_s:.0f} s, at least "
                           f"{j.peak_tree / base.peak_tree:.1f}x the tree's peak at {_rows_label(lo)}{goal}.")
                continue
            ratio = j.peak_tree / base.peak_tree
            verdict = ""
            if goal:
                verdict = " — meets the goal" if ratio <= GOAL_RATIO else " — misses the goal"
            per_m = (j.peak_tree - base.peak_tree) / ((n - lo) / 1e6)
            out.append(f"- {v.name}, {_rows_label(n)} rows: peak tree RSS {j.peak_tree / GB:.2f} GB, {ratio:.2f}x "
                       f"the peak at {_rows_label(lo)}{goal}{verdict}; {per_m / 1e6:,.0f} MB more per million rows.")
            if v.engine == "ray":
                parts = [f"driver {j.peak_driver / base.peak_driver:.2f}x"]
                if j.train_workers and base.train_workers:
                    parts.append(f"largest Ray Train worker {j.train_workers[0] / base.train_workers[0]:.2f}x")
                out.append(f"  Against {_rows_label(lo)}: {', '.join(parts)}.")
    for v in rep.variants:
        j = rep.job(v.name, 32_000_000)
        if j is not None:
            out.append(f"- {v.name} at 32M rows on this {psutil.virtual_memory().total / 2**30:.0f} GiB machine: "
                       + ("**finished**." if j.stopped is None else f"**did not finish** ({j.stopped})."))
    if not any(n >= 16_000_000 for n in rep.rows):
        out.append("- 16M and 32M rows were not measured in this run: the goals on them (at most "
                   f"{GOAL_RATIO}x the 1M peak at 16M, finishing at 32M) stay open.")
    memory = rep.job("in-memory", rep.rate_rows)
    for v in rep.variants:
        j = rep.job(v.name, rep.rate_rows)
        if v.name != "in-memory" and j is not None and j.selection_rows_s and memory and memory.selection_rows_s:
            when = "in the same run" if j.run == memory.run else f"measured apart ({j.run}, {memory.run})"
            out.append(f"- Selection stage at {_rows_label(rep.rate_rows)} rows, {v.name} against in-memory {when}: "
                       f"{j.selection_rows_s:,.0f} against {memory.selection_rows_s:,.0f} rows/s, "
                       f"{j.selection_rows_s / memory.selection_rows_s:.2f}x (goal: at least 0.9x).")
    a = rep.anchor
    for v in rep.variants:
        j = rep.job(v.name, rep.rate_rows)
        if j is not None and j.selection_rows_s and a is not None and a.rows_per_s:
            out.append(f"- Selection stage at {_rows_label(rep.rate_rows)} rows, {v.name}: {j.selection_rows_s:,.0f} "
                       f"rows/s, {j.selection_rows_s / a.rows_per_s:.2f}x the plain TorchRec DLRM_DCN's "
                       f"{a.rows_per_s:,.0f} rows/s{'' if j.run == a.run else ' (measured in another run)'} (the gated "
                       "model searches every feature, 2 crosses' candidates and the widest dims, and trains its gates; "
                       "the anchor trains a fixed model).")
    return out


def _limits(rep: Report) -> list[str]:
    """What bounds a streamed job once rows no longer do, from this report's figures where it has them."""
    out = []
    for v in rep.variants:
        done = [j for n in rep.rows if (j := rep.job(v.name, n)) and j.stopped is None]
        if v.name.startswith("streamed") and len(done) >= 2:
            lo, hi = done[0], done[-1]
            slope = (hi.peak_tree - lo.peak_tree) / ((hi.rows - lo.rows) / 1e6)
            total = psutil.virtual_memory().total
            reach = f"{(total - hi.peak_tree) / slope / 1e3 + hi.rows / 1e9:,.1f} billion rows" if slope > 0 else \
                "no row count"
            out.append(f"- Rows: {v.name}, {_rows_label(lo.rows)} to {_rows_label(hi.rows)} rows, the peak grew "
                       f"{slope / 1e6:,.1f} MB per million rows; at that slope this machine's memory lasts to {reach} "
                       "if the vocabularies stop growing as the synth data's do (real columns keep finding new values: "
                       "see the next point); time, not memory, is then the limit, one epoch being linear in rows.")
    out += [
        "- Vocabularies: the statistics pass keeps every distinct train value of every sparse column until the "
        "end of the pass, and each vocabulary is then held by the driver and every worker (Arrow arrays, about the "
        "values' bytes). Tables grow with it: an embedding table is vocabulary x width x 4 bytes, plus as much "
        "again for Adagrad's state. Move it with `dataset.max_vocabulary` (keep the most frequent values) and "
        "`dataset.min_count` (drop rare ones); both map the rest to the out-of-vocabulary id 0.",
        "- The pre-screen sample: cross candidates are scored on a 200,000-row train sample (raw rows, a fixed "
        "bound), held by the driver; crosses that matter only on rarer values need more rows than that.",
        "- The number of tables: the search trains every sparse feature at the widest width and every pre-screened "
        "cross at once, so memory and step time grow with features x widest dim; `selection.embedding_dims` and "
        "`selection.crosses` bound them. On Ray the tables are sharded across the workers, which moves this limit "
        "by the number of workers.",
        "- Shuffling: a pass visits row groups in a seeded order and mixes rows in a buffer of at least 65,536 rows, "
        "so rows sorted by time inside a large row group are mixed only within about that many rows. Writing "
        "smaller row groups (e.g. 128k rows) moves it; reading several row groups at once would too, at one "
        "decoder's memory (tens of MB) per row group.",
        "- On Ray every worker reads every validation row (so that all evaluate the same rows): validation reads "
        "grow with the workers.",
    ]
    return out


def _plot(rep: Report, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, rate_ax) = plt.subplots(1, 2, figsize=(12, 4.4))
    drawn = False
    for v in rep.variants:
        series = [("peak tree RSS", lambda j: j.peak_tree, "-o")]
        if v.engine == "ray":
            series += [("driver", lambda j: j.peak_driver, "--s"),
                       ("largest Ray Train worker", lambda j: j.train_workers[0] if j.train_workers else None, ":^")]
        for label, get, style in series:
            pts = [(j.rows, get(j), j.stopped) for n in rep.rows if (j := rep.job(v.name, n)) and get(j)]
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] / GB for p in pts], style, label=f"{v.name}: {label}")
            for x, y, stopped in pts:
                if stopped:
                    ax.plot([x], [y / GB], "rx", markersize=12)
            drawn = True
        rates = [(j.rows, j.selection_rows_s) for n in rep.rows if (j := rep.job(v.name, n)) and j.selection_rows_s]
        if rates:
            rate_ax.plot([r[0] for r in rates], [r[1] for r in rates], "-o", label=v.name)
    if not drawn:
        plt.close(fig)
        return False
    if rep.anchor is not None and rep.anchor.rows_per_s:
        rate_ax.axhline(rep.anchor.rows_per_s, color="grey", linestyle="--", linewidth=1,
                        label=f"plain TorchRec DLRM_DCN at {_rows_label(rep.anchor.rows)}")
    rate_ax.set_xscale("log")
    rate_ax.set_xticks(list(rep.rows), [_rows_label(n) for n in rep.rows])
    rate_ax.minorticks_off()
    rate_ax.set_ylim(bottom=0)
    rate_ax.set_xlabel("rows (log scale)")
    rate_ax.set_ylabel("selection stage, rows/s")
    rate_ax.set_title("selection stage throughput against rows")
    rate_ax.grid(True, alpha=0.3)
    rate_ax.legend(fontsize=8)
    ax.axhline(rep.max_rss / GB, color="grey", linestyle=":", linewidth=1, label="memory guard")
    ax.set_xscale("log")
    ax.set_xticks(list(rep.rows), [_rows_label(n) for n in rep.rows])
    ax.minorticks_off()
    ax.set_xlabel("rows (log scale)")
    ax.set_ylabel("peak RSS, GB")
    ax.set_title("peak RSS against rows (x: stopped by the memory guard)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def render(rep: Report, out: Path) -> str:
    from bench.run import cpu_model

    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    mem = psutil.virtual_memory().total / 2**30
    lines = ["# Memory and throughput against rows", "",
             f"*Generated by `{rep.command}` on {now} ({(time.perf_counter() - rep.started) / 60:.1f} min).*", "",
             "Peak RSS of `seqattn select` against the rows of its data, the selection stage's rows/s, and a plain "
             "TorchRec model for scale. Rerun all of it with `python -m bench.scale` (1M, 4M, 16M and 32M rows, "
             "hours), a part with `--rows 1M,4M`, the Ray variant too with `--ray`; `--quick` is the tests' "
             "10k/40k-row version. How it measures is in the docstring of `bench/scale.py`.", "",
             f"- Machine: {os.cpu_count()} cores, {cpu_model()}, {mem:.0f} GiB RAM, {platform.system()} "
             f"{platform.machine()}; shared with other jobs, so times are noisy.",
             f"- The job: `seqattn synth --rows N` data (32 sparse and 3 dense feature columns), "
             f"selection {json.dumps(JOB_SELECTION)}, one epoch per stage (selection, retrain, reference) at batch "
             f"{JOB_BATCH:,}, 80/20 split. Each run is `seqattn select` in a subprocess of its own.",
             f"- Memory: the process tree's RSS (the CLI process plus every process descended from it) sampled every "
             f"{SAMPLE_S} s with psutil; driver = the CLI process alone. On Ray: each Ray Train worker "
             "(`ray::RayTrainWorker`), the largest other `ray::` process (Ray Data tasks, idle workers) and the sum "
             "of Ray's own processes (GCS, raylet, agents). RSS counts shared pages in every process that maps "
             "them, so on Ray the tree's sum overstates the memory in use; Ray's object store (shared memory) "
             "counts only where a process maps it.",
             f"- Memory guard: a tree past {rep.max_rss / GB:.0f} GB is killed and reported as stopped.",
             "- Selection rows/s = train rows x epochs / `timings.selection_s` of the FeatureSet the job wrote.", ""]
    for v in rep.variants:
        lines += [f"## {v.name}", "", f"{v.about[0].upper()}{v.about[1:]}.", ""]
        lines += _variant_table(rep, v)
        lines.append("")
    lines += ["## Stage timings (s, from the FeatureSets)", ""] + _timings_table(rep) + [""]
    picks = [j for j in rep.jobs if j.features]
    if picks:
        lines += ["Picks:", ""]
        lines += [f"- {j.variant}, {_rows_label(j.rows)}: {', '.join(j.features)}; crosses "
                  f"{', '.join(j.crosses) or 'none'}" for j in picks]
        lines.append("")
    lines += ["## Plain TorchRec anchor", ""]
    a = rep.anchor
    if a is None:
        lines.append("Not run yet.")
    elif a.rows_per_s is None:
        lines.append(f"`DLRM_DCN` on {a.rows:,} rows: {a.stopped}.")
    else:
        d = a.detail
        lines.append(
            f"`torchrec.models.dlrm.DLRM_DCN` over the same {d['tables']} sparse tables at {ANCHOR_DIM} dims and "
            f"{d['dense']} dense columns (dense arch [64, {ANCHOR_DIM}], 3 low-rank DCN layers of rank 64, over arch "
            f"[256, 64, 1]), `DistributedModelParallel` over gloo (a world of one, compute kernel "
            f"{', '.join(d['kernels'])}), Adagrad fused into backward for the tables and Adagrad for the rest "
            f"(lr {ANCHOR_LR}), batch {ANCHOR_BATCH:,}, {d['threads']} torch threads, on the product's encoding "
            f"of the {a.rows:,}-row data: **{a.rows_per_s:,.0f} rows/s** over {d['steps']} steps after "
            f"{d['warmup']} warm-up steps (log-loss {d['first_loss']:.3f} -> {d['last_loss']:.3f}; loading and "
            f"encoding took {d['load_s']:.0f} s, the process peaked at {a.peak_tree / GB:.2f} GB).")
    lines += ["", "## Findings", ""] + (_findings(rep) or ["- Nothing measured yet."]) + [""]
    lines += ["## Where the next limit is", ""] + _limits(rep) + [""]
    lines += ["## Data", ""]
    body = [[f"{d.rows:,}", d.how, d.files, f"{d.bytes / 1e6:,.0f}", "—" if d.wall_s is None else f"{d.wall_s:.0f}",
             _gb(d.peak_rss)] for _, d in sorted(rep.data.items())]
    columns = ["rows", "written by", "files", "Parquet MB", "write s", "writer's peak RSS GB"]
    lines += [markdown_table(columns, body), ""]
    png = out.with_name(f"{out.stem}_rss.png")
    if _plot(rep, png):
        lines += [f"![peak RSS and selection rows/s against rows]({png.name})", ""]
    return "\n".join(lines)


def save(rep: Report, out: Path, work: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    text = render(rep, out)
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    raw = {"data": [asdict(d) for d in rep.data.values()], "jobs": [asdict(j) for j in rep.jobs],
           "anchor": asdict(rep.anchor) if rep.anchor else None}
    (work / "results.json").write_text(json.dumps(raw, indent=2) + "\n")


def load_earlier(work: Path) -> tuple[list[DataInfo], list[JobResult], AnchorResult | None]:
    """The data, jobs and anchor of the last run's ``results.json`` under ``work`` (for ``--keep``); a
    result written before runs were stamped takes the file's time."""
    path = work / "results.json"
    if not path.exists():
        return [], [], None
    raw, stamp = json.loads(path.read_text()), _stamp(path.stat().st_mtime)
    jobs = [JobResult(**{"run": stamp, **j}) for j in raw.get("jobs", [])]
    anchor = AnchorResult(**{"run": stamp, **raw["anchor"]}) if raw.get("anchor") else None
    return [DataInfo(**d) for d in raw.get("data", [])], jobs, anchor


