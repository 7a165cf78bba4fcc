"""Benchmarks that write docs/benchmarks.md: run with ``python -m bench.run [--quick]``.

Shared by the sections: the method labels, the markdown table writer and the selection timer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
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


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"
