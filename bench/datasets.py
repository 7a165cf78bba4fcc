"""Loaders for the shared benchmark data (read in place, never copied) and the planted problem.

The sample data sits beside the repository (``../shared/data``); ``SEQATTN_SAMPLE_DATA`` overrides
it, for the benchmarks and the tests alike (``tests/conftest.py`` reads it through
:func:`sample_path`). Several licences there forbid redistribution, so nothing here writes data
anywhere. A fresh clone has no sample data: ``bench.run`` then skips the sections that read it and
the tests that read it skip, except under ``CI=true``, where a missing file is an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DATA_ENV = "SEQATTN_SAMPLE_DATA"
DEFAULT_SAMPLE_DATA = REPO_ROOT.parent / "shared" / "data"

# The sample files, relative to the sample-data folder.
FRAPPE = "frappe/frappe.parquet"
CRITEO = "criteo"  # the folder: the job pools the 20k train and test parquet files in it
PAPER_FILES = {
    "Mice Protein": "paper/mice_protein.csv",
    "ISOLET": "paper/isolet_1560.csv.gz",
    "MNIST": "paper/mnist_5k.csv.gz",
    "COIL-20": "paper/coil20_20x20.csv.gz",
}

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


def sample_data_root() -> Path:
    """The sample-data folder: ``$SEQATTN_SAMPLE_DATA``, else ``../shared/data`` beside the repository.
    Read on every call, so that a test can point it elsewhere."""
    return Path(os.environ.get(SAMPLE_DATA_ENV) or DEFAULT_SAMPLE_DATA)


def sample_path(relative: str) -> Path:
    """A sample file (or folder) by its path relative to the sample-data folder; it may not exist."""
    return sample_data_root() / relative


def describe(relative: str) -> str:
    """How messages name a sample file: ``../shared/data/<relative>`` at the default location (the
    path from the repository root), else the full path under ``$SEQATTN_SAMPLE_DATA``."""
    root = sample_data_root()
    return f"../shared/data/{relative}" if root == DEFAULT_SAMPLE_DATA else str(root / relative)


def missing(relatives: Iterable[str]) -> list[str]:
    """Those of ``relatives`` that are not in the sample-data folder, in order."""
    return [r for r in dict.fromkeys(relatives) if not sample_path(r).exists()]


def in_ci() -> bool:
    """Whether this runs in CI (``CI`` set, as CI services do, to anything but empty/0/false/no):
    there, missing sample data is an error instead of a skip."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _path(relative: str) -> Path:
    path = sample_path(relative)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: the benchmarks read the sample data in place "
            f"(set {SAMPLE_DATA_ENV} to the folder that holds frappe/ and paper/)"
        )
    return path


def load_frappe() -> pd.DataFrame:
    """Frappe: ``label`` plus 10 categorical fields coded 0..card-1 (86,582 rows)."""
    return pd.read_parquet(_path(FRAPPE))


def _labels(values: pd.Series | np.ndarray) -> np.ndarray:
    return np.unique(np.asarray(values), return_inverse=True)[1].astype(np.int64)


def load_mice() -> Dataset:
    """Mice Protein: 77 protein columns, 8 classes; missing cells get the column mean.

    The mean is taken over the whole file (as the paper's loader does); it only fills 1,396 of
    83,160 cells, so the leak into the test split is negligible.
    """
    df = pd.read_csv(_path(PAPER_FILES["Mice Protein"]))
    y = _labels(df["class"])
    X = df.drop(columns=["MouseID", "Genotype", "Treatment", "Behavior", "class"])
    X = X.fillna(X.mean())
    # Protein levels differ in scale by orders of magnitude: z-score so the linear baselines
    # (OMP, lasso) compare columns fairly; the paper's loader standardises too.
    values = X.to_numpy(np.float64)
    values = (values - values.mean(0)) / values.std(0)
    return Dataset("Mice Protein", values, y, list(X.columns), "exact data")


def load_isolet() -> Dataset:
    df = pd.read_csv(_path(PAPER_FILES["ISOLET"]))
    return Dataset(
        "ISOLET", df.iloc[:, 1:].to_numpy(np.float64), _labels(df.iloc[:, 0]),
        list(df.columns[1:]), "approximate (subset)", "1,560 of the paper's 7,797 rows",
    )


def load_mnist() -> Dataset:
    df = pd.read_csv(_path(PAPER_FILES["MNIST"]), header=None)
    return Dataset(
        "MNIST", df.iloc[:, :784].to_numpy(np.float64) / 255.0, _labels(df.iloc[:, 784]),
        [f"px{i}" for i in range(784)], "approximate (subset)", "5,000 of the 60,000 training images",
    )


def load_coil20() -> Dataset:
    df = pd.read_csv(_path(PAPER_FILES["COIL-20"]))
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
