"""Memory and throughput against rows: peak RSS of ``seqattn select`` at 1M to 32M rows, the
selection stage's rows/s, and a plain TorchRec anchor; writes docs/scale.md (+ docs/scale_rss.png).

    python -m bench.scale                          # 1M, 4M, 16M, 32M rows, in process (hours)
    python -m bench.scale --rows 1M,4M             # some row counts only
    python -m bench.scale --ray                    # also on Ray with 2 workers
    python -m bench.scale --quick                  # 10k and 40k rows: about a minute (the tests)

What one run measures, for every row count and variant:

* **Data.** ``seqattn synth --rows N`` (35 feature columns: 32 sparse, 3 dense) in a subprocess,
  into ``--work`` (default ``/tmp/seqattn-scale``), reused by later runs when its ``truth.json``
  has the same row count. The CLI builds the whole table in memory (about 0.8 GB per million rows),
  so above :data:`CLI_SYNTH_MAX_ROWS` the same generator (the same planted parameters, chunks of
  :data:`SYNTH_CHUNK_ROWS` rows with their own draws) writes one Parquet file per chunk instead.
* **The job.** ``seqattn select`` in a subprocess on a spec written here (:func:`job_spec`: 8
  features, 2 crosses, dims [4, 8, 16], one epoch, batch :data:`JOB_BATCH`). A thread samples the
  process tree every :data:`SAMPLE_S` s with psutil: the sum of the RSS of the CLI process and of
  every process that descended from it (a process seen once stays counted while it lives, so Ray's
  processes count even after they are re-parented), the CLI (driver) process's own RSS, and each
  descendant's peak, by name: on Ray the local cluster is started by the driver
  (:func:`pipelines.cluster.connect`), its workers are the descendants whose command line starts
  with ``ray::`` (``ray::RayTrainWorker`` are the Ray Train workers), the rest (GCS, raylet,
  agents) are Ray's own processes. A tree past ``--max-rss-gb`` is killed (every tracked process by
  its pid, and the CLI's process group) and recorded as stopped by the memory guard: a finding, not
  an error.
* **Timings.** From the FeatureSet JSON the job writes: ``timings`` (``load_s``, ``prescreen_s``,
  ``selection_s``, ``retrain_s``, ``reference_s``, ``total_s``; on Ray also ``read_s``,
  ``encode_s``, ``shard_s``) and ``metrics.train_rows``. Selection rows/s = train rows x epochs /
  ``selection_s``.
* **Anchor.** Plain TorchRec: ``torchrec.models.dlrm.DLRM_DCN`` over the same 32 sparse tables at 16
  dims and the 3 dense columns, sharded by ``DistributedModelParallel`` (a gloo world of one),
  Adagrad fused into the backward pass for the tables (FBGEMM's CPU kernels) and Adagrad for the
  rest, batch :data:`ANCHOR_BATCH`, on the product's own encoding of the data of the rate row count;
  in a subprocess of its own.

Variants (:data:`VARIANTS`) are the one place where a data plane or an engine is added: a name, the
engine, extra environment variables and JobSpec overrides. Every variant runs on the same data.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.datasets import REPO_ROOT
from bench.scale_report import (
    ANCHOR_BATCH,
    ANCHOR_DIM,
    ANCHOR_LR,
    GB,
    JOB_BATCH,
    JOB_SELECTION,
    SAMPLE_S,
    AnchorResult,
    DataInfo,
    JobResult,
    Report,
    Variant,
    load_earlier,
    save,
)
from pipelines.synth import write_synth_chunks

FULL_ROWS = (1_000_000, 4_000_000, 16_000_000, 32_000_000)
QUICK_ROWS = (10_000, 40_000)
RATE_ROWS = 4_000_000  # the selection stage's rows/s is reported at this row count (quick: the largest)
DEFAULT_WORK = Path(tempfile.gettempdir()) / "seqattn-scale"
MAX_RSS_GB = 20.0
RUN_TIMEOUT_S = 6 * 3600.0
CLI_SYNTH_MAX_ROWS = 16_000_000  # `seqattn synth` peaks near 0.8 GB per million rows: 32M would not fit in 24 GiB
SYNTH_CHUNK_ROWS = 4_000_000
ANCHOR_BATCHES, ANCHOR_BATCHES_QUICK = 200, 8
ANCHOR_WARMUP = 5


# Add a data plane here: a local variant and its Ray twin (e.g. "streamed" and "streamed on Ray");
# `--variants` picks them by name, and every table, plot and finding takes them in.
VARIANTS: tuple[Variant, ...] = (
    Variant("streamed", "local", "`dataset.reader: stream`: Parquet read in bounded batches for every pass, "
            "vocabularies from one pass, a hash split, a bounded train sample for the pre-screen",
            spec={"dataset": {"reader": "stream"}}),
    Variant("in-memory", "local", "`dataset.reader: memory`: the whole table read and encoded in the CLI process",
            spec={"dataset": {"reader": "memory"}}, max_rows=4_000_000),
    Variant("streamed on Ray", "ray", "`dataset.reader: stream` on Ray, 2 workers: the statistics pass in Ray tasks "
            "(merged on the driver), each Ray Train worker reading its own half of the train rows and every "
            "validation row from the files", spec={"training": {"num_workers": 2}, "dataset": {"reader": "stream"}}),
    Variant("in-memory on Ray", "ray", "`dataset.reader: memory` on Ray, 2 workers: Ray Data read, driver encoding, "
            "Ray Train workers", spec={"training": {"num_workers": 2}, "dataset": {"reader": "memory"}},
            max_rows=4_000_000),
)


@dataclass
class ProcPeak:
    pid: int
    name: str
    peak_rss: int = 0

    @property
    def kind(self) -> str:
        if "RayTrainWorker" in self.name:
            return "train worker"
        return "ray worker" if self.name.startswith("ray::") else "other"


@dataclass
class Measured:
    """One measured subprocess: exit code, wall seconds, peaks in bytes, and why it was stopped."""

    rc: int | None
    wall_s: float
    peak_tree: int
    peak_driver: int
    procs: list[ProcPeak]
    stopped: str | None = None  # "out of memory guard", "timeout", or None when it ran to its end
    samples: int = 0


def _name(proc: psutil.Process) -> str:
    try:
        cmd = " ".join(proc.cmdline()).strip()
    except (psutil.Error, OSError):
        cmd = ""
    if cmd.startswith("ray::"):
        return cmd.split()[0]
    try:
        return proc.name()
    except (psutil.Error, OSError):
        return "?"


class TreeSampler:
    """Peak RSS of a process and all its descendants, sampled every ``interval`` s in a thread.

    A descendant seen once is tracked by (pid, create time) until it exits, even when its parent
    dies and it is re-parented. :meth:`kill` sends SIGKILL to every tracked process, each by its pid.
    """

    def __init__(self, pid: int, interval: float = SAMPLE_S,
                 on_sample: Callable[[int], None] | None = None) -> None:
        self.root = psutil.Process(pid)
        self.interval, self.on_sample = interval, on_sample
        self.tracked: dict[int, tuple[psutil.Process, ProcPeak]] = {pid: (self.root, ProcPeak(pid, _name(self.root)))}
        self.peak_tree = self.peak_driver = self.samples = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> TreeSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            total = self.sample()
            if self.on_sample is not None:
                self.on_sample(total)
            self._stop.wait(self.interval)

    def sample(self) -> int:
        with self._lock:
            try:
                for child in self.root.children(recursive=True):
                    if child.pid not in self.tracked:
                        self.tracked[child.pid] = (child, ProcPeak(child.pid, _name(child)))
            except (psutil.Error, OSError):
                pass
            total = 0
            for pid, (proc, peak) in list(self.tracked.items()):
                try:
                    if not proc.is_running():  # is_running compares the create time: a reused pid is not ours
                        continue
                    rss = proc.memory_info().rss
                    if self.samples % 5 == 0 and peak.kind != "train worker":  # a Ray worker takes its actor's name
                        peak.name = _name(proc)
                except (psutil.Error, OSError):
                    continue
                total += rss
                peak.peak_rss = max(peak.peak_rss, rss)
                if pid == self.root.pid:
                    self.peak_driver = max(self.peak_driver, rss)
            self.peak_tree = max(self.peak_tree, total)
            self.samples += 1
            return total

    def alive(self) -> list[psutil.Process]:
        out = []
        with self._lock:
            for proc, _ in self.tracked.values():
                try:
                    if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                        out.append(proc)
                except (psutil.Error, OSError):
                    pass
        return out

    def kill(self) -> None:
        """SIGKILL to the root's process group (it was started in a session of its own) and to every
        tracked process, each by its pid."""
        try:
            os.killpg(self.root.pid, signal.SIGKILL)
        except OSError:
            pass
        for proc in self.alive():
            try:
                proc.send_signal(signal.SIGKILL)  # psutil checks the create time first: never a reused pid
            except (psutil.Error, OSError):
                pass

    def peaks(self) -> list[ProcPeak]:
        with self._lock:
            return [peak for _, peak in self.tracked.values()]


def run_measured(cmd: Sequence[str], *, env: Mapping[str, str] | None = None, log: Path | None = None,
                 max_rss: float = MAX_RSS_GB * GB, timeout: float = RUN_TIMEOUT_S, interval: float = SAMPLE_S,
                 cwd: Path = REPO_ROOT) -> Measured:
    """Run ``cmd`` in a session of its own, sampling its process tree's RSS; kill the tree once its
    RSS passes ``max_rss`` bytes or the run passes ``timeout`` seconds."""
    stopped: list[str] = []
    out = open(log, "wb") if log is not None else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=dict(env) if env is not None else None, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        sampler = TreeSampler(proc.pid, interval)

        def guard(total: int) -> None:
            if stopped:
                return
            if total > max_rss:
                stopped.append(f"out of memory guard at {total / GB:.1f} GB")
            elif time.perf_counter() - t0 > timeout:
                stopped.append(f"timeout after {timeout:.0f} s")
            else:
                return
            sampler.kill()

        sampler.on_sample = guard
        sampler.start()
        rc = proc.wait()
        wall = time.perf_counter() - t0
        sampler.stop()
        # What the run left behind (a Ray process whose driver died): give it a moment, then stop it.
        deadline = time.perf_counter() + 10
        while sampler.alive() and time.perf_counter() < deadline:
            time.sleep(0.5)
        if sampler.alive():
            sampler.kill()
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]
    return Measured(rc, wall, sampler.peak_tree, sampler.peak_driver, sampler.peaks(),
                    stopped[0] if stopped else None, sampler.samples)


# --- data ----------------------------------------------------------------------------------------


def _data_info(path: Path, rows: int, how: str, m: Measured | None) -> DataInfo:
    files = sorted(path.glob("*.parquet"))
    return DataInfo(rows, str(path), how, len(files), sum(f.stat().st_size for f in files),
                    m.wall_s if m else None, m.peak_tree if m else None)


def ensure_data(work: Path, rows: int, max_rss: float, log: Callable[[str], None]) -> DataInfo:
    """The synth data of ``rows`` rows under ``work``: reused when its truth.json says so, else
    written in a subprocess (measured like a job)."""
    path = work / f"synth-{rows}"
    truth = path / "truth.json"
    if truth.exists():
        try:
            meta = json.loads(truth.read_text())
            if meta.get("rows") == rows and all((path / f).exists() for f in meta.get("files", [])):
                return _data_info(path, rows, f"{meta.get('written_by', 'seqattn synth')} (reused)", None)
        except (OSError, ValueError):
            pass
    if path.exists():
        for f in path.iterdir():
            f.unlink()
    path.mkdir(parents=True, exist_ok=True)
    if rows <= CLI_SYNTH_MAX_ROWS:
        how = "seqattn synth"
        cmd = [sys.executable, "-m", "services.cli", "synth", "--out", str(path), "--rows", str(rows)]
    else:
        how = "chunked"
        cmd = [sys.executable, "-m", "bench.scale", "_synth", str(path), str(rows)]
    log(f"writing {rows:,} rows to {path} ({how})")
    m = run_measured(cmd, log=work / "logs" / f"synth-{rows}.log", max_rss=max_rss)
    if m.rc != 0 or m.stopped:
        raise RuntimeError(f"synth of {rows:,} rows failed ({m.stopped or f'exit code {m.rc}'}); "
                           f"see {work / 'logs' / f'synth-{rows}.log'}")
    log(f"  {rows:,} rows written in {m.wall_s:.0f} s, peak RSS {m.peak_tree / GB:.2f} GB")
    return _data_info(path, rows, how, m)


# --- the job -------------------------------------------------------------------------------------


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, Mapping) else value
    return out


def job_spec(data: Path, variant: Variant) -> dict[str, Any]:
    """The issue's job on ``data``: 8 features, 2 crosses, dims [4, 8, 16], one epoch."""
    spec = {"name": "bench-scale", "dataset": {"path": str(data), "label": "label"}, "selection": dict(JOB_SELECTION),
            "training": {"epochs": 1, "batch_size": JOB_BATCH}}
    return _merge(spec, variant.spec)


def job_env(variant: Variant, work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}  # a local cluster, under the driver
    env.update({"SEQATTN_ENGINE": variant.engine, "SEQATTN_HOME": str(work / "home"), "PYTHONUNBUFFERED": "1"})
    env.update(variant.env)
    return env


def run_job(variant: Variant, data: DataInfo, work: Path, max_rss: float, timeout: float,
            log: Callable[[str], None]) -> JobResult:
    tag = f"{re.sub(r'[^a-z0-9]+', '-', variant.name.lower())}-{data.rows}"
    spec_path, fs_path = work / "specs" / f"{tag}.json", work / "out" / f"{tag}.json"
    log_path = work / "logs" / f"{tag}.log"
    for p in (spec_path, fs_path, log_path):
        p.parent.mkdir(parents=True, exist_ok=True)
    fs_path.unlink(missing_ok=True)
    spec = job_spec(Path(data.path), variant)
    # JSON is YAML: the CLI reads either with load_spec.
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")
    cmd = [sys.executable, "-m", "services.cli", "select", str(spec_path), "--out", str(fs_path)]
    log(f"{variant.name}: {data.rows:,} rows ...")
    m = run_measured(cmd, env=job_env(variant, work), log=log_path, max_rss=max_rss, timeout=timeout)
    res = JobResult(variant.name, data.rows, m.wall_s, m.peak_tree, m.peak_driver, m.stopped, m.rc, log=str(log_path))
    res.epochs = spec["training"]["epochs"]
    if variant.engine == "ray":
        workers = [p for p in m.procs if p.pid != m.procs[0].pid]
        res.train_workers = sorted((p.peak_rss for p in workers if p.kind == "train worker"), reverse=True)
        res.max_ray_worker = max((p.peak_rss for p in workers if p.kind == "ray worker"), default=0)
        res.ray_system = sum(p.peak_rss for p in workers if p.kind == "other")
    if m.stopped is None and m.rc == 0 and fs_path.exists():
        fs = json.loads(fs_path.read_text())
        res.timings = {k: float(v) for k, v in fs.get("timings", {}).items()}
        res.train_rows = fs.get("metrics", {}).get("train_rows")
        res.val_auc = fs.get("metrics", {}).get("val_auc")
        res.features = [f["name"] for f in fs.get("features", [])]
        res.crosses = [" x ".join(c["features"]) for c in fs.get("crosses", [])]
    elif m.stopped is None:
        res.stopped = f"failed (exit code {m.rc}; see {log_path})"
    what = res.stopped or f"selection {res.timings.get('selection_s', 0):.1f} s"
    log(f"  {variant.name}: {data.rows:,} rows: {m.wall_s:.0f} s, peak tree {m.peak_tree / GB:.2f} GB, "
        f"driver {m.peak_driver / GB:.2f} GB; {what}")
    return res


# --- the TorchRec anchor -------------------------------------------------------------------------


def anchor_rows_per_s(data_path: str, batches: int, batch_size: int = ANCHOR_BATCH) -> dict[str, Any]:
    """Train ``DLRM_DCN`` (DMP, fused Adagrad) for ``batches`` steps on the product's encoding of
    ``data_path``; rows/s over the steps after :data:`ANCHOR_WARMUP`."""
    import torch
    import torch.distributed as dist
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
    from torchrec.models.dlrm import DLRM_DCN
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

    from pipelines.dataset import load_dataset
    from pipelines.engine import ensure_process_group, sharding_types
    from pipelines.spec import DatasetSpec
    from pipelines.stages import batch_source

    t0 = time.perf_counter()
    data = load_dataset(DatasetSpec(path=data_path, label="label"))
    load_s = time.perf_counter() - t0
    tables = [EmbeddingBagConfig(name=f"t_{n}", embedding_dim=ANCHOR_DIM, num_embeddings=data.cardinalities[n],
                                 feature_names=[n]) for n in data.sparse_names]
    model = DLRM_DCN(EmbeddingBagCollection(tables=tables, device=torch.device("meta")),
                     dense_in_features=len(data.dense_names), dense_arch_layer_sizes=[64, ANCHOR_DIM],
                     over_arch_layer_sizes=[256, 64, 1], dcn_num_layers=3, dcn_low_rank_dim=64,
                     dense_device=torch.device("cpu"))
    apply_optimizer_in_backward(torch.optim.Adagrad, model.sparse_arch.parameters(), {"lr": ANCHOR_LR})
    ensure_process_group()
    constraints = {t.name: ParameterConstraints(sharding_types=sharding_types("cpu")) for t in tables}
    planner = EmbeddingShardingPlanner(topology=Topology(world_size=1, compute_device="cpu"), constraints=constraints)
    plan = planner.collective_plan(model, pg=dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan)
    kernels = sorted({p.compute_kernel for m in plan.plan.values() for p in m.values()})  # type: ignore[attr-defined]
    dense = [p for n, p in dmp.named_parameters() if "sparse_arch" not in n]
    opt = torch.optim.Adagrad(dense, lr=ANCHOR_LR)
    src = batch_source(data.train, data, data.dense_names, data.sparse_names, ())
    loss_fn = torch.nn.BCEWithLogitsLoss()
    n_batches = min(batches + ANCHOR_WARMUP, src.num_batches(batch_size))
    warmup = min(ANCHOR_WARMUP, n_batches // 2)  # small (quick) data: time half of what there is
    rows, start, losses = 0, time.perf_counter(), []
    for i in range(n_batches):
        if i == warmup:
            rows, start = 0, time.perf_counter()
        b = src.batch(i * batch_size, min((i + 1) * batch_size, len(src)))
        opt.zero_grad()
        loss = loss_fn(dmp(b.dense, b.sparse).squeeze(-1), b.labels)
        loss.backward()
        opt.step()
        rows += len(b)
        losses.append(float(loss))
    seconds = time.perf_counter() - start
    return {"rows_per_s": rows / seconds, "rows": rows, "seconds": seconds, "load_s": load_s,
            "steps": n_batches - warmup, "warmup": warmup, "tables": len(tables), "dense": len(data.dense_names),
            "kernels": kernels, "first_loss": losses[0], "last_loss": losses[-1], "threads": torch.get_num_threads()}


def run_anchor(data: DataInfo, work: Path, batches: int, max_rss: float, log: Callable[[str], None]) -> AnchorResult:
    out = work / "out" / f"anchor-{data.rows}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "bench.scale", "_anchor", data.path, str(batches), str(out)]
    log(f"TorchRec anchor (DLRM_DCN) on {data.rows:,} rows, {batches} steps of {ANCHOR_BATCH:,} ...")
    m = run_measured(cmd, log=work / "logs" / f"anchor-{data.rows}.log", max_rss=max_rss)
    if m.stopped or m.rc != 0 or not out.exists():
        stopped = m.stopped or f"failed (exit code {m.rc}; see {work / 'logs' / f'anchor-{data.rows}.log'})"
        log(f"  anchor {stopped}")
        return AnchorResult(data.rows, None, {}, m.peak_tree, m.wall_s, stopped)
    detail = json.loads(out.read_text())
    log(f"  anchor: {detail['rows_per_s']:,.0f} rows/s")
    return AnchorResult(data.rows, detail["rows_per_s"], detail, m.peak_tree, m.wall_s)


# --- the report ----------------------------------------------------------------------------------


def parse_rows(text: str) -> tuple[int, ...]:
    """``"1M,4M,500k,2000"`` -> ``(1000000, 4000000, 500000, 2000)``."""
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", part)
        if not m:
            raise ValueError(f"--rows: {part!r} is not a row count (e.g. 1M, 500k, 20000)")
        n = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[m.group(2).lower()]
        if n < 1 or n != int(n):
            raise ValueError(f"--rows: {part!r} is not a whole number of rows")
        out.append(int(n))
    return tuple(sorted(set(out)))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_synth"]:  # internal: the chunked writer, in a subprocess of its own
        write_synth_chunks(Path(argv[1]), int(argv[2]), chunk=SYNTH_CHUNK_ROWS)
        return 0
    if argv[:1] == ["_anchor"]:  # internal: the anchor, in a subprocess of its own
        Path(argv[3]).write_text(json.dumps(anchor_rows_per_s(argv[1], int(argv[2]))) + "\n")
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", help="row counts, e.g. 1M,4M,16M,32M (the default; --quick: 10k,40k)")
    parser.add_argument("--ray", action="store_true", help="also run the Ray variants (2 workers)")
    parser.add_argument("--variants", help=f"variants by name, comma-separated (default: the local ones; --ray adds "
                                           f"the Ray ones); known: {', '.join(v.name for v in VARIANTS)}")
    parser.add_argument("--quick", action="store_true", help="10k and 40k rows, a short anchor: about a minute")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "scale.md")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"data and logs (default {DEFAULT_WORK}); "
                                                                        "data of the same row count is reused")
    parser.add_argument("--max-rss-gb", type=float, default=MAX_RSS_GB, help="the memory guard (default 20)")
    parser.add_argument("--timeout", type=float, default=RUN_TIMEOUT_S, help="seconds per job before it is stopped")
    parser.add_argument("--keep", action="store_true", help="keep the earlier runs' results (the work folder's "
                                                             "results.json) that this run does not redo")
    parser.add_argument("--report", action="store_true", help="measure nothing: rewrite the report from the work "
                                                               "folder's results.json")
    parser.add_argument("--anchor-batches", type=int, help=f"anchor steps (default {ANCHOR_BATCHES}; --quick "
                                                           f"{ANCHOR_BATCHES_QUICK}); 0: no anchor")
    args = parser.parse_args(argv)
    try:
        rows = parse_rows(args.rows) if args.rows else (QUICK_ROWS if args.quick else FULL_ROWS)
    except ValueError as exc:
        parser.error(str(exc))
    by_name = {v.name: v for v in VARIANTS}
    if args.variants:
        names = [n.strip() for n in args.variants.split(",") if n.strip()]
        unknown = [n for n in names if n not in by_name]
        if unknown:
            parser.error(f"--variants: unknown {', '.join(unknown)}; known: {', '.join(by_name)}")
        variants = [by_name[n] for n in names]
    else:
        variants = [v for v in VARIANTS if v.engine == "local" or args.ray]
    if args.report:
        rows, variants, args.keep = (), [], True
    anchor_batches = args.anchor_batches if args.anchor_batches is not None else (
        ANCHOR_BATCHES_QUICK if args.quick else ANCHOR_BATCHES)
    command = "python -m bench.scale" + " ".join(
        [""] + (["--quick"] if args.quick else []) + ([f"--rows {args.rows}"] if args.rows else [])
        + (["--ray"] if args.ray else []) + ([f"--variants '{args.variants}'"] if args.variants else [])
        + (["--report"] if args.report else ["--keep"] if args.keep else []))
    max_rss = args.max_rss_gb * GB
    work = args.work.resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    kept_data, kept_jobs, kept_anchor = load_earlier(work) if args.keep else ([], [], None)
    kept_jobs = [j for j in kept_jobs if j.variant not in {v.name for v in variants} or j.rows not in rows]
    shown_rows = tuple(sorted({*rows, *(j.rows for j in kept_jobs)}))
    if not shown_rows:
        parser.error(f"--report: {work / 'results.json'} holds no results")
    shown = [v for v in VARIANTS if v in variants or any(j.variant == v.name for j in kept_jobs)]
    rate_rows = max(shown_rows) if args.quick else min(shown_rows, key=lambda n: abs(n - RATE_ROWS))
    rep = Report(command, shown_rows, shown, max_rss, rate_rows, data={d.rows: d for d in kept_data},
                 jobs=kept_jobs, anchor=kept_anchor)
    start = rep.started

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f}s] {msg}", file=sys.stderr, flush=True)

    out = args.out.resolve()
    for n in rows:
        rep.data[n] = ensure_data(work, n, max_rss, log)
        for v in variants:
            if v.max_rows is not None and n > v.max_rows:
                log(f"{v.name}: {n:,} rows not run (this variant runs up to {v.max_rows:,})")
                continue
            rep.jobs.append(run_job(v, rep.data[n], work, max_rss, args.timeout, log))
            save(rep, out, work)  # after every run, so a stopped benchmark keeps what it finished
        if n == rate_rows and anchor_batches > 0:
            rep.anchor = run_anchor(rep.data[n], work, anchor_batches, max_rss, log)
            save(rep, out, work)
    save(rep, out, work)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
