"""A service's job size limits: refused with the field and the setting that raises them."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.errors import SpecError
from pipelines.job import run_job
from pipelines.limits import JobLimits
from pipelines.spec import load_spec

BASE = {"name": "t", "dataset": {"path": "d", "label": "y"}}


@pytest.mark.parametrize(("section", "values", "field", "setting"), [
    ("training", {"epochs": 100_000}, "training.epochs", "SEQATTN_MAX_EPOCHS"),
    ("training", {"embedding_dim": 1_073_741_824}, "training.embedding_dim", "SEQATTN_MAX_EMBEDDING_DIM"),
    ("training", {"batch_size": 10**7}, "training.batch_size", "SEQATTN_MAX_BATCH_SIZE"),
    ("training", {"num_workers": 1000}, "training.num_workers", "SEQATTN_MAX_WORKERS"),
    ("selection", {"embedding_dims": [4, 4096]}, "selection.embedding_dims[1]", "SEQATTN_MAX_EMBEDDING_DIM"),
])
def test_a_spec_over_a_limit_names_the_field_and_the_setting(section, values, field, setting) -> None:
    spec = load_spec({**BASE, section: values})
    with pytest.raises(SpecError) as info:
        JobLimits().check(spec)
    assert info.value.field == field and setting in info.value.message


def test_a_raised_limit_lets_the_spec_through() -> None:
    JobLimits(max_epochs=500).check(load_spec({**BASE, "training": {"epochs": 500}}))


def test_a_table_over_the_row_limit_fails_before_any_training(tmp_path: Path) -> None:
    pq.write_table(pa.table({"y": [0, 1] * 500, "user": list(range(1000)), "x": [float(i) for i in range(1000)]}),
                   tmp_path / "t.parquet")
    spec = load_spec({"name": "t", "dataset": {"path": str(tmp_path), "label": "y"}, "training": {"epochs": 1}})
    start = time.perf_counter()
    with pytest.raises(SpecError) as info:
        run_job(spec, limits=JobLimits(max_table_rows=100))
    assert (info.value.field == "dataset" and "'user'" in info.value.message
            and "SEQATTN_MAX_TABLE_ROWS" in info.value.message)
    assert time.perf_counter() - start < 5
