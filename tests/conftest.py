"""Fixtures every test package shares."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module's runs: the models under test are small, and on a busy 2-core
    box torch's spinning OpenMP threads made a run up to 20x slower (a 300-step loop went from ~1 s
    to ~25 s). Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
