"""Benchmarks that write docs/benchmarks.md: run with ``python -m bench.run [--quick]``.

Shared by the sections: the method labels, the markdown table writer and the selection timer; and by
the tuning studies beside them (``python -m bench.embedding_lr``, ``bench.warmup``,
``bench.pruning_ablation``): their options and their process pool.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from seqattn_core.baselines import rank_features

METHOD_LABELS = {
    "seqattn": "Sequential Attention",
    "oneshot": "one-shot attention",
    "omp": "OMP",
    "lasso": "lasso path",
    "mi": "MI filter",
    "greedy": "greedy wrapper (SFS)",
    "random": "random",
}

# Methods whose output does not depend on the seed: run once and reuse for every seed.
DETERMINISTIC = frozenset({"omp", "lasso", "greedy"})


def timed_selection(method: str, X: np.ndarray, y: np.ndarray, k: int, seed: int,
                    **options: Any) -> tuple[np.ndarray, float]:
    """The picked columns and the wall time of the selection alone (no retraining)."""
    start = time.perf_counter()
    picked = rank_features(method, X, y, k, random_state=seed, **options)
    return picked, time.perf_counter() - start


def paired(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, str]:
    """Mean and standard deviation (n - 1) of ``a - b`` over paired seeds, and the verdict the
    acceptance bar reads: at or above, within one paired sd below, or behind.

        >>> paired([0.70, 0.72, 0.71], [0.70, 0.71, 0.72])
        (0.0, 0.01, 'at or above')
    """
    d = np.asarray(a, float) - np.asarray(b, float)
    mean, sd = round(float(d.mean()), 12), float(d.std(ddof=1)) if len(d) > 1 else 0.0
    verdict = "at or above" if mean >= 0 else ("within one paired sd" if -mean <= sd else "behind")
    return mean, round(sd, 12), verdict


def gate_holdout_for(epochs: int) -> float:
    """The held-out share of section g's Sequential Attention rows: none in one epoch, else 20 %.

    In a single pass every batch is new to the model when its loss trains the gates, so the
    training loss already measures what a candidate adds on unseen rows, and holding rows out
    would only take them from the weights. From the second pass on the tables have fitted the
    training rows, and gates trained on them favour the tables that memorise. Section g of
    ``docs/benchmarks.md`` (ERASE protocol, 5 seeds): held-out gates won on the planted data
    (2 epochs), tied on Frappe (2 epochs) and trailed on Criteo (1 epoch). A job's default stays
    the paper's gates (``selection.gate_holdout: 0``): on the Ray tests' smaller planted data held-out
    gates missed a planted feature (``docs/jobspec.md``).

        >>> gate_holdout_for(1), gate_holdout_for(2)
        (0.0, 0.2)
    """
    return 0.0 if epochs == 1 else 0.2


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def study_parser(doc: str, report: str, seeds: int) -> argparse.ArgumentParser:
    """The options of a tuning study: worker processes, seeds, and its report (``docs/<report>``)."""
    from bench.datasets import REPO_ROOT

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seeds", type=int, default=seeds)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / report)
    return parser


def pool_map(fn: Callable[[Any], Any], cells: Sequence[Any], procs: int) -> tuple[list[Any], float]:
    """``fn`` over independent cells in ``procs`` spawned processes: (results in order, wall seconds)."""
    start = time.perf_counter()
    with get_context("spawn").Pool(procs) as pool:
        out = pool.map(fn, cells)
    return out, time.perf_counter() - start
