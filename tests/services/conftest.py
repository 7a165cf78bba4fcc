"""Fixtures for the service tests: planted data and servers stopped at the end of each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live_server import ServerProcess

from pipelines.synth import write_synth


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding ``synth/`` (20k planted rows) for the jobs."""
    root = tmp_path_factory.mktemp("data")
    write_synth(root / "synth", rows=20_000, seed=3, n_noise=6)
    return root


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Any]:
    """``server_factory(home, data_roots, **settings)``: started servers are stopped at the end."""
    started: list[ServerProcess] = []

    def start(home: Path, data_roots: list[Path], **kw: Any) -> ServerProcess:
        server = ServerProcess(home, data_roots, **kw).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
