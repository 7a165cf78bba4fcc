"""Fixtures every test package shares."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from bench.datasets import SAMPLE_DATA_ENV, describe, in_ci, sample_path


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module's runs: the models under test are small, and on a busy 2-core
    box torch's spinning OpenMP threads made a run up to 20x slower (a 300-step loop went from ~1 s
    to ~25 s). Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _shared_data(relative_path: str) -> Path:
    __tracebackhide__ = True  # a skip or failure is reported at the calling test's line
    path = sample_path(relative_path)
    if path.exists():
        return path
    if in_ci():
        pytest.fail(f"needs {describe(relative_path)} (the sample data), which is missing: under CI=true the "
                    f"sample data must be there (set {SAMPLE_DATA_ENV} to its folder)", pytrace=False)
    pytest.skip(f"needs {describe(relative_path)} (the sample data; CI has it)")


@pytest.fixture(scope="session")
def shared_data() -> Callable[[str], Path]:
    """``shared_data("frappe/frappe.parquet")``: a file of the sample data that sits beside the
    repository (``../shared/data``, or ``$SEQATTN_SAMPLE_DATA``; bench.datasets reads the location).
    Where it is missing, as on a fresh clone, the calling test skips with a reason that names the
    file; under ``CI=true`` it fails instead, since CI has the data."""
    return _shared_data
