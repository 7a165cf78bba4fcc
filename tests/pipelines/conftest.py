"""Shared fixtures for the pipelines tests: small Parquet files written under ``tmp_path``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.synth import write_synth


@pytest.fixture
def write_parquet(tmp_path: Path) -> Callable[..., str]:
    """``write_parquet(table_or_dict, name="data.parquet") -> path`` of the written file."""

    def write(data: pa.Table | dict[str, Any], name: str = "data.parquet") -> str:
        table = data if isinstance(data, pa.Table) else pa.table(data)
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        return str(path)

    return write


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A planted dataset large enough for marginal statistics (20k rows), written once."""
    out = tmp_path_factory.mktemp("synth")
    return out, write_synth(out, rows=20_000, seed=3, n_noise=6)
