"""Loaders for the shared benchmark data (read in place, never copied) and the planted problem.

The shared folder sits beside the repository (``../shared/data``); ``SEQATTN_BENCH_DATA`` overrides
it. Several licences there forbid redistribution, so nothing here writes data anywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ROOT = Path(os.environ.get("SEQATTN_BENCH_DATA", REPO_ROOT.parent / "shared" / "data"))

FRAPPE_FIELDS = (
    "user", "item", "daytime", "weekday", "isweekend",
    "homework", "cost", "weather", "country", "city",
)


@dataclass(frozen=True)
class Dataset:
    """A feature matrix with integer class labels and what the benchmark should say about it."""

    name: str
    X: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    fidelity: str  # how close this is to the paper's data: "exact data", "approximate (subset)", ...
    note: str = ""
    truth: dict[str, list[int]] = field(default_factory=dict)  # planted data only


def _path(*parts: str) -> Path:
    path = DATA_ROOT.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: the benchmarks read the shared data in place "
            f"(set SEQATTN_BENCH_DATA to the folder that holds frappe/ and paper/)"
        )
    return path


def load_frappe() -> pd.DataFrame:
    """Frappe: ``label`` plus 10 categorical fields coded 0..card-1 (86,582 rows)."""
    return pd.read_parquet(_path("frappe", "frappe.parquet"))


def _labels(values: pd.Series | np.ndarray) -> np.ndarray:
    return np.unique(np.asarray(values), return_inverse=True)[1].astype(np.int64)


def load_mice() -> Dataset:
    """Mice Protein: 77 protein columns, 8 classes; missing cells get the column mean.

    The mean is taken over the whole file (as the paper's loader does); it only fills 1,396 of
    83,160 cells, so the leak into the test split is negligible.
    """
    df = pd.read_csv(_path("paper", "mice_protein.csv"))
    y = _labels(df["class"])
    X = df.drop(columns=["MouseID", "Genotype", "Treatment", "Behavior", "class"])
    X = X.fillna(X.mean())
    # Protein levels differ in scale by orders of magnitude: z-score so the linear baselines
    # (OMP, lasso) compare columns fairly; the paper's loader standardises too.
    values = X.to_numpy(np.float64)
    values = (values - values.mean(0)) / values.std(0)
    return Dataset("Mice Protein", values, y, list(X.columns), "exact data")


def load_isolet() -> Dataset:
    df = pd.read_csv(_path("paper", "isolet_1560.csv.gz"))
    return Dataset(
        "ISOLET", df.iloc[:, 1:].to_numpy(np.float64), _labels(df.iloc[:, 0]),
        list(df.columns[1:]), "approximate (subset)", "1,560 of the paper's 7,797 rows",
    )


def load_mnist() -> Dataset:
    df = pd.read_csv(_path("paper", "mnist_5k.csv.gz"), header=None)
    return Dataset(
        "MNIST", df.iloc[:, :784].to_numpy(np.float64) / 255.0, _labels(df.iloc[:, 784]),
        [f"px{i}" for i in range(784)], "approximate (subset)", "5,000 of the 60,000 training images",
    )


def load_coil20() -> Dataset:
    df = pd.read_csv(_path("paper", "coil20_20x20.csv.gz"))
    return Dataset(
        "COIL-20", df.iloc[:, 1:].to_numpy(np.float64), _labels(df.iloc[:, 0]),
        list(df.columns[1:]), "approximate (resized)", "resized to 20x20, not pixel-identical",
    )


PAPER_DATASETS = {"Mice Protein": load_mice, "ISOLET": load_isolet, "MNIST": load_mnist, "COIL-20": load_coil20}


def make_planted(n_rows: int = 6000, n_features: int = 40, random_state: int = 0) -> Dataset:
    """A binary problem whose truth is known, built to separate the methods.

    Columns 0-3 carry signal on their own (decreasing strength), column 4 is an exact copy of
    column 0 (picking both wastes a slot), columns 5 and 6 matter only together (the label depends
    on the sign of their product, so each alone has zero correlation and zero mutual information
    with it), and the rest are Gaussian noise.
    """
    rng = np.random.default_rng(random_state)
    X = rng.standard_normal((n_rows, n_features))
    X[:, 4] = X[:, 0]
    logit = 1.6 * X[:, 0] + 1.2 * X[:, 1] + 0.9 * X[:, 2] + 0.6 * X[:, 3]
    logit += 2.5 * np.sign(X[:, 5] * X[:, 6]) * np.minimum(np.abs(X[:, 5] * X[:, 6]), 1.5)
    y = (rng.random(n_rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    names = [f"x{i}" for i in range(n_features)]
    truth = {"single": [0, 1, 2, 3], "duplicate_of_0": [4], "pair": [5, 6]}
    return Dataset("planted", X, y, names, "synthetic", truth=truth)
