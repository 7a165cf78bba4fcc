"""Section g: Sequential Attention against the field's feature-selection methods, ERASE protocol.

The protocol of the ERASE benchmark (Jia et al., "ERASE: Benchmarking Feature Selection Methods
for Deep Recommender Systems", KDD 2024): each method ranks the fields, then the model is retrained
from scratch on the top ``k`` fields and scored on held-out rows. Here:

* **one model for all.** Ranking and retraining use the product's TorchRec LEM
  (``EmbeddingBagCollection`` under ``DistributedModelParallel``, FBGEMM fused CPU kernels, DCN-v2
  tower), trained by the product's one loop; the retrained model is :func:`bench.lem.train_eval`,
  the same call section c uses.
* **one split per seed.** The seed fixes the train/validation split (80/20) and the initialisation.
  Rankers see only the train split (its first 80 % to train, its last 20 % as held-out search
  data, :func:`bench.field_methods.split_search`); the retrained models train on the whole train
  split and are scored on the validation split, which no ranker has seen (ERASE's test set).
* **the whole curve.** Each ranking is a full order of the fields, so one ranking gives every k;
  the retraining costs one run per k, for every method alike.

Also: embedding memory against AUC for the dimension methods, and how the selection time grows
with the number of candidates and with rows (timing only).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import gate_holdout_for
from bench.datasets import CRITEO, FRAPPE, sample_path
from bench.field_methods import (
    DIM_CHOICES,
    METHODS,
    Ranking,
    Search,
    all_features_model,
    rank_greedy,
    split_search,
    subset_config,
)
from bench.lem import model_config, train_eval
from pipelines.dataset import EncodedDataset, load_dataset
from pipelines.spec import JobSpec, load_spec
from pipelines.stages import batch_source, fit, plan_job, selection_outcome
from pipelines.synth import write_synth
from seqattn_core.dimensions import heuristic_dims

FRACTIONS = (0.25, 0.5, 0.75)
SA_METHODS = ("sa", "sa_crosses", "sa_dims")


@dataclass(frozen=True)
class Problem:
    """One dataset and the training settings every model on it uses."""

    name: str
    path: str
    note: str
    epochs: int
    batch_size: int
    curve: tuple[float, ...]  # fractions of the fields at which the whole curve is retrained


@dataclass(frozen=True)
class FieldBench:
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    procs: int = 2  # problems measured side by side, one process each (each on one torch thread)
    problems: tuple[str, ...] = ("Criteo", "Frappe", "planted")
    methods: tuple[str, ...] = tuple(METHODS)
    full_curve: bool = True  # False: only k = 1, 25 %, 50 %, 75 %, all
    planted_rows: int = 40_000
    planted_noise: int = 25  # 15 planted columns + 25 noise = 40 candidates
    greedy_problems: tuple[str, ...] = ("Frappe",)  # where the wrapper fits in time
    greedy_max_k: int | None = None  # stop the wrapper after this many picks (None: the whole order)
    dim_problems: tuple[str, ...] = ("Criteo", "planted")
    scale_candidates: tuple[int, ...] = (40, 400, 1_000)
    scale_candidate_rows: int = 4_000
    scale_rows: tuple[int, ...] = (10_000, 20_000, 40_000, 80_000)
    scale_large_rows: int = 40_000  # the ~400-candidate run with ~1M distinct ids
    scale_epochs: int = 1
    # Fields for which only the placement (TorchRec's sharding planner + DMP) is tried, in a
    # subprocess stopped after ``placement_timeout_s`` (0 fields: skip).
    placement_probe_fields: int = 4_000
    placement_timeout_s: float = 300.0


CURVE = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0)
SAMPLE_FILES = {"Criteo": CRITEO, "Frappe": FRAPPE}  # the problems read from the sample data


def sample_data(cfg: FieldBench) -> list[str]:
    """The sample files (relative to the sample-data folder) that ``cfg``'s problems read."""
    return [SAMPLE_FILES[name] for name in cfg.problems if name in SAMPLE_FILES]


def problems(cfg: FieldBench, work: Path) -> list[Problem]:
    out = []
    for name in cfg.problems:
        if name == "Criteo":
            out.append(Problem(
                "Criteo", str(sample_path(CRITEO)),
                "the 20,000-row Criteo sample (both shared files pooled), 39 fields: I1-I13 bucketised counts and "
                "C1-C26 category ids, all embedded (the ERASE field layout); 1 epoch, batch 128 (a second epoch "
                "over-fits the 16k training rows)", 1, 128, CURVE))
        elif name == "Frappe":
            out.append(Problem("Frappe", str(sample_path(FRAPPE)),
                               "86,582 rows, 10 fields, not subsampled; 2 epochs, batch 1024 (as section c)", 2, 1024,
                               tuple(i / 10 for i in range(1, 11))))
        elif name == "planted":
            path = work / "field-planted"
            truth = write_synth(path, rows=cfg.planted_rows, seed=0, n_noise=cfg.planted_noise)
            n = len(truth["dense"]) + len(truth["sparse"])
            out.append(Problem("planted", str(path),
                               f"`seqattn synth --rows {cfg.planted_rows} --seed 0`, {cfg.planted_noise} noise "
                               f"columns: {n} candidate fields (3 dense); 2 epochs, batch 256 (at batch 1024 a "
                               "full-order search of 40 fields "
                               "gets barely one step per pick)", 2, 256, CURVE))
        else:
            raise ValueError(f"problems: unknown {name!r}")
    return out


def job_spec(problem: Problem, seed: int) -> JobSpec:
    """The JobSpec of ``problem`` at ``seed``: every field kept, the problem's epochs and batch size."""
    return load_spec({"name": "bench", "dataset": {"path": problem.path, "label": "label"},
                      "selection": {"features": None, "crosses": 0, "embedding_dims": []},
                      "training": {"epochs": problem.epochs, "batch_size": problem.batch_size, "seed": seed}})


def k_at(fraction: float, n: int) -> int:
    """k for a fraction of ``n`` fields, rounded half up, at least 1."""
    return max(1, min(n, math.floor(fraction * n + 0.5)))


def k_grid(problem: Problem, n: int, full_curve: bool) -> list[int]:
    fracs = problem.curve if full_curve else ()
    return sorted({1, n, *(k_at(f, n) for f in FRACTIONS), *(k_at(f, n) for f in fracs)})


def aukc(ks: Sequence[int], aucs: Sequence[float], n: int) -> float:
    """Area under the AUC-versus-k curve over k in [1, n], divided by n - 1: the mean AUC over k
    (trapezoids between the measured k)."""
    ks, aucs = np.asarray(ks, float), np.asarray(aucs, float)
    return float(np.trapezoid(aucs, ks) / (ks[-1] - ks[0])) if len(ks) > 1 else float(aucs[0])


# -- the protocol ---------------------------------------------------------------------------------
class Retrainer:
    """Retrains (and caches) the LEM on a field set for one seed's split; identical configurations
    give identical models (the seed and the configuration fix everything), so each trains once."""

    def __init__(self, data: EncodedDataset, spec: JobSpec) -> None:
        self.data, self.spec = data, spec
        self.cache: dict[Any, dict[str, float]] = {}
        self.runs = 0

    def __call__(self, fields: list[str], ranking: Ranking) -> dict[str, float]:
        kept = set(fields)
        crosses = tuple(c for c in ranking.crosses if c.a in kept and c.b in kept)
        dims = {t: d for t, d in ranking.dims.items() if t in kept or t in {c.name for c in crosses}}
        key = (frozenset(kept), crosses, tuple(sorted(dims.items())))
        if key not in self.cache:
            config = subset_config(self.data, fields, crosses, dims, self.spec.training.embedding_dim)
            self.cache[key] = {**train_eval(self.data, self.spec, config), "crosses": len(crosses)}
            self.runs += 1
        return self.cache[key]


def run_problem(problem: Problem, cfg: FieldBench, log: Callable[[str], None]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per method x seed x k: the retrained model's metrics; one row per method x seed: the ranking)."""
    rows, rankings = [], []
    for seed in cfg.seeds:
        spec = job_spec(problem, seed)
        data = load_dataset(spec.dataset, seed=seed)
        search = Search(split_search(data), spec)
        fields = search.fields
        n = len(fields)
        ks = k_grid(problem, n, cfg.full_curve)
        retrain = Retrainer(data, spec)
        # One plain run: the all-features LEM trained on the search rows (SHARK and permutation reuse it).
        plain_s = all_features_model(search).train_seconds
        for name in cfg.methods:
            if name == "greedy" and problem.name not in cfg.greedy_problems:
                continue
            log(f"g: {problem.name} seed {seed}: {name}")
            if name == "greedy":
                ranking = rank_greedy(search, max_k=cfg.greedy_max_k)
            else:
                ranking = METHODS[name].rank(search)
            rankings.append({"problem": problem.name, "seed": seed, "method": name, "seconds": ranking.seconds,
                             "train_runs": ranking.train_runs, "order": ranking.order, "note": ranking.note,
                             "crosses": [c.name for c in ranking.crosses], "dims": ranking.dims, "n": n,
                             "epochs": problem.epochs,
                             "plain_s": plain_s})
            for k in ks:
                metrics = retrain(ranking.order[:k], ranking)
                rows.append({"problem": problem.name, "seed": seed, "method": name, "k": k, "n": n, **metrics})
        log(f"g: {problem.name} seed {seed}: {retrain.runs} retrained models")
    return pd.DataFrame(rows), pd.DataFrame(rankings)


# -- embedding dimensions -------------------------------------------------------------------------
def dimensions(problem: Problem, seeds: Sequence[int], log: Callable[[str], None]) -> pd.DataFrame:
    """Memory and AUC of one fixed width, Ginart et al.'s power law, and Sequential Attention's
    blocks under memory budgets; every field kept (a budget may make the blocks drop some)."""
    rows = []
    for seed in seeds:
        spec = job_spec(problem, seed)
        data = load_dataset(spec.dataset, seed=seed)
        log(f"g: {problem.name} seed {seed}: dimensions")
        cards = {n: data.cardinalities[n] for n in data.sparse_names}
        for width in DIM_CHOICES:
            rows.append({"seed": seed, "variant": "fixed", "setting": f"{width}",
                         **train_eval(data, spec, model_config(data, embedding_dim=width))})
        law_bytes = {}
        for base in DIM_CHOICES[1:]:
            dims = heuristic_dims("power_law", cards, tuple(d for d in DIM_CHOICES if d <= base))
            config = model_config(data, dims=dims)
            law_bytes[base] = config.embedding_bytes()
            rows.append({"seed": seed, "variant": "power law (Ginart)", "setting": f"base {base}",
                         **train_eval(data, spec, config)})
        search = split_search(data)
        for base, budget in law_bytes.items():  # the race at each power-law model's memory
            sel_spec = spec.model_copy(update={
                "selection": spec.selection.model_copy(update={
                    "embedding_dims": list(DIM_CHOICES), "gate_holdout": gate_holdout_for(spec.training.epochs)}),
                "constraints": spec.constraints.model_copy(update={"max_embedding_mb": budget / 2**20})})
            start = time.perf_counter()
            plan = plan_job(sel_spec, search)
            src = batch_source(search.train, search, plan.search.dense, tuple(search.sparse_names), ())
            placed, _ = fit(plan.search, plan.selection, src, sel_spec, "selection", None)
            outcome = selection_outcome(placed.model, 0.0)
            names = list(search.dense_names) + list(search.sparse_names)
            kept = [names[i] for i in outcome.kept]
            config = subset_config(data, kept, dims=dict(outcome.dims))
            metrics = train_eval(data, spec, config)
            rows.append({"seed": seed, "variant": "Sequential Attention blocks",
                         "setting": f"at power law base {base}",
                         **metrics, "select_s": time.perf_counter() - start - metrics["seconds"],
                         "fields": len(kept)})
    return pd.DataFrame([{**r, "problem": problem.name} for r in rows])


# -- scale ----------------------------------------------------------------------------------------
def scale(cfg: FieldBench, work: Path, log: Callable[[str], None]) -> pd.DataFrame:
    """Wall time of one Sequential Attention selection run, one plain training run and the MI
    filter, against the number of candidate fields and against rows (planted data, timing only)."""
    from bench.field_methods import rank_mutual_info

    rows = []
    points = [("candidates", c, cfg.scale_candidate_rows) for c in cfg.scale_candidates]
    points += [("rows", cfg.scale_candidates[0], r) for r in cfg.scale_rows]
    if cfg.scale_large_rows:
        points.append(("large", 400, cfg.scale_large_rows))
    for axis, n_fields, n_rows in points:
        path = work / f"field-scale-{n_fields}-{n_rows}"
        if not path.exists():
            write_synth(path, rows=n_rows, seed=0, n_noise=n_fields - 15)
        problem = Problem("scale", str(path), "", cfg.scale_epochs, 512, ())
        spec = job_spec(problem, 0)
        log(f"g: scale {n_fields} fields x {n_rows:,} rows")
        data = load_dataset(spec.dataset, seed=0)
        search = Search(split_search(data), spec)
        k = max(1, n_fields // 10)
        sel_spec = spec.model_copy(update={"selection": spec.selection.model_copy(update={"features": k})})
        start = time.perf_counter()
        plan = plan_job(sel_spec, search.data)
        src = batch_source(search.data.train, search.data, plan.search.dense, tuple(search.data.sparse_names), ())
        _, fit_s = fit(plan.search, plan.selection, src, sel_spec, "selection", None)
        select_s = time.perf_counter() - start
        start = time.perf_counter()
        _, plain_s = fit(plan.base, None, src, spec, "plain", None)
        plain_wall = time.perf_counter() - start
        mi_s = rank_mutual_info(search).seconds
        rows.append({"axis": axis, "fields": n_fields, "rows": n_rows, "train_rows": len(search.data.train),
                     "ids": int(sum(data.cardinalities.values())), "k": k, "select_s": select_s,
                     "select_train_s": fit_s, "plain_s": plain_wall, "plain_train_s": plain_s, "mi_s": mi_s})
    return pd.DataFrame(rows)


PLACEMENT_PROBE = """
import sys, time, torch
torch.set_num_threads(1)
from bench.lem import model_config
from pipelines.dataset import load_dataset
from pipelines.engine import place
from pipelines.spec import DatasetSpec
from seqattn_core.lem import LargeEmbeddingModel
data = load_dataset(DatasetSpec(path=sys.argv[1], label="label"), seed=0)
model = LargeEmbeddingModel(model_config(data), None, device=torch.device("meta"))
start = time.perf_counter()
place(model, 0.01)
print("PLACED", time.perf_counter() - start, len(data.sparse_names), sum(data.cardinalities.values()), flush=True)
"""


def placement_probe(n_fields: int, rows: int, timeout_s: float, work: Path) -> dict[str, Any]:
    """Time the placement alone (TorchRec's planner + DMP) of an all-features LEM over ``n_fields``
    planted fields, in a subprocess that is stopped after ``timeout_s``."""
    import subprocess
    import sys

    path = work / f"field-scale-{n_fields}-{rows}"
    if not path.exists():
        write_synth(path, rows=rows, seed=0, n_noise=n_fields - 15)
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", PLACEMENT_PROBE, str(path)], capture_output=True, text=True,
                              timeout=timeout_s, cwd=Path(__file__).resolve().parent.parent)
    except subprocess.TimeoutExpired:
        return {"fields": n_fields, "rows": rows, "placed": False, "seconds": time.perf_counter() - start}
    line = [x for x in done.stdout.splitlines() if x.startswith("PLACED")]
    if not line:
        return {"fields": n_fields, "rows": rows, "placed": False, "seconds": time.perf_counter() - start,
                "error": done.stderr.strip().splitlines()[-1:] or ["no output"]}
    _, secs, tables, ids = line[0].split()
    return {"fields": n_fields, "rows": rows, "placed": True, "seconds": float(secs), "tables": int(tables),
            "ids": int(ids)}
