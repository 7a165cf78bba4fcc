"""The planted truth is what truth.json says: the duplicate is a copy, pair features are useless
alone and strong together, relevant features carry held-out signal and noise does not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.dataset import load_dataset, read_table
from pipelines.spec import DatasetSpec
from pipelines.synth import synth_table, write_partitioned_synth, write_synth

Synth = tuple[Path, dict[str, Any]]


@pytest.fixture(scope="module")
def frame(synth_dir: Synth) -> pd.DataFrame:
    return pq.read_table(synth_dir[0] / "data.parquet").to_pandas()


def dispersion(frame: pd.DataFrame, by: str | list[str]) -> float:
    """Chi-square per degree of freedom of the per-group click rates: ~1 when the grouping
    carries no signal, far above 1 when it does."""
    rate = frame["label"].mean()
    groups = frame.groupby(by, observed=True)["label"].agg(["mean", "size"])
    chi2 = (groups["size"] * (groups["mean"] - rate) ** 2).sum() / (rate * (1 - rate))
    return float(chi2 / max(1, len(groups) - 1))


def held_out_gain(frame: pd.DataFrame, column: str | list[str]) -> float:
    """Log-loss gain on one half of a smoothed per-id click rate fitted on the other half."""
    if isinstance(column, list):  # a cross: one key per combination of ids
        frame = frame.assign(_key=frame.groupby(column, observed=True).ngroup())
        column = "_key"
    half = np.random.default_rng(0).random(len(frame)) < 0.5
    train, test = frame[half], frame[~half]
    prior = train["label"].mean()
    stats = train.groupby(column, observed=True)["label"].agg(["sum", "count"])
    rate = (stats["sum"] + 20 * prior) / (stats["count"] + 20)
    p = test[column].map(rate).astype(float).fillna(prior).clip(1e-6, 1 - 1e-6).to_numpy()
    y = test["label"].to_numpy()

    def logloss(q: np.ndarray) -> float:
        return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))

    return logloss(np.full(len(y), prior)) - logloss(p)


def test_files_and_truth_on_disk(synth_dir: Synth) -> None:
    out, truth = synth_dir
    assert sorted(p.name for p in out.iterdir()) == ["data.parquet", "truth.json"]
    assert json.loads((out / "truth.json").read_text()) == truth
    assert truth["rows"] == 20_000 and truth["params"]["seed"] == 3


def test_every_column_has_exactly_one_role(synth_dir: Synth) -> None:
    out, truth = synth_dir
    features = set(pq.read_schema(out / "data.parquet").names) - {truth["label"]}
    relevant, irrelevant, dups = set(truth["relevant"]), set(truth["irrelevant"]), set(truth["duplicate_of"])
    assert relevant | irrelevant | dups == features
    assert not (relevant & irrelevant) and not (dups & (relevant | irrelevant))
    assert set(truth["dense"]) | set(truth["sparse"]) == features
    for group in ("relevant_alone", "high_cardinality", "low_cardinality", "multi_valued"):
        assert set(truth[group]) <= relevant, group
    assert {f for pair in truth["pairs"] for f in pair} <= relevant
    assert all(f.startswith("noise_") or f.startswith("dense_noise") for f in irrelevant)


def test_default_roles_match_the_truth(synth_dir: Synth) -> None:
    out, truth = synth_dir
    data = load_dataset(DatasetSpec(path=str(out), label="label"))  # truth.json beside it is skipped
    assert set(data.dense_names) == set(truth["dense"]) and set(data.sparse_names) == set(truth["sparse"])
    assert data.multi_valued == frozenset(truth["multi_valued"])
    assert len(data.train) + len(data.valid) == truth["rows"]


def test_duplicate_is_identical(synth_dir: Synth, frame: pd.DataFrame) -> None:
    (dup, original), = synth_dir[1]["duplicate_of"].items()
    assert frame[dup].equals(frame[original]) and dup != original


def test_pair_features_are_useless_alone_and_strong_together(synth_dir: Synth, frame: pd.DataFrame) -> None:
    for a, b in synth_dir[1]["pairs"]:
        assert dispersion(frame, a) < 2.5, a
        assert dispersion(frame, b) < 2.5, b
        assert held_out_gain(frame, a) < 0.001 and held_out_gain(frame, b) < 0.001
        assert dispersion(frame, [a, b]) > 2, (a, b)
        assert held_out_gain(frame, [a, b]) > 0.005, (a, b)


def test_relevant_features_carry_held_out_signal_and_noise_does_not(synth_dir: Synth, frame: pd.DataFrame) -> None:
    truth = synth_dir[1]
    single_valued = [f for f in truth["relevant_alone"] if f in truth["sparse"] and f not in truth["multi_valued"]]
    assert set(single_valued) >= {"rel_0", "rel_1", "high_0", "high_1", "low_0", "low_1"}
    for f in single_valued:
        assert held_out_gain(frame, f) > 0.004, f
    for f in truth["irrelevant"]:
        if f in truth["sparse"]:
            assert held_out_gain(frame, f) < 0.001, f
    for f in ("rel_0", "low_0", "low_1"):
        assert dispersion(frame, f) > 5, f


def test_cardinalities(synth_dir: Synth, frame: pd.DataFrame) -> None:
    truth = synth_dir[1]
    cards = truth["params"]["cardinalities"]
    for f in truth["high_cardinality"]:
        assert cards[f] >= 10_000 and frame[f].nunique() > 2_000, f
    for f in truth["low_cardinality"]:
        assert cards[f] <= 5 and frame[f].nunique() == cards[f], f


def test_column_types_cover_what_users_have(synth_dir: Synth) -> None:
    schema = pq.read_schema(synth_dir[0] / "data.parquet")
    assert pa.types.is_list(schema.field("tags").type)
    assert pa.types.is_dictionary(schema.field("low_0").type)
    assert pa.types.is_string(schema.field("rel_1").type)
    table = pq.read_table(synth_dir[0] / "data.parquet", columns=["tags", "rel_1"])
    lengths = pa.compute.list_value_length(table.column("tags")).to_numpy(zero_copy_only=False)
    assert table.column("tags").null_count > 0 and (lengths == 0).any() and np.nanmax(lengths) > 2
    assert table.column("rel_1").null_count > 0


def test_signal_summary(synth_dir: Synth) -> None:
    truth = synth_dir[1]
    assert 0.85 < truth["oracle_auc"] < 0.95 and 0.2 < truth["base_rate"] < 0.6
    assert all(0.4 < sd < 1.0 for sd in truth["effect_sd"].values())


def test_deterministic_by_seed() -> None:
    a, truth_a = synth_table(500, seed=7, n_noise=2)
    b, truth_b = synth_table(500, seed=7, n_noise=2)
    c, _ = synth_table(500, seed=8, n_noise=2)
    assert a.equals(b) and truth_a == truth_b and not a.equals(c)


def test_several_files(tmp_path: Path) -> None:
    truth = write_synth(tmp_path, rows=1_000, seed=0, n_noise=1, files=3)
    assert truth["files"] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    data = load_dataset(DatasetSpec(path=str(tmp_path), label="label"))
    assert len(data.train) + len(data.valid) == 1_000


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rows"):
        synth_table(0)
    with pytest.raises(ValueError, match="n_noise"):
        write_partitioned_synth("unused", n_noise=2)


def test_partitioned_with_drift(tmp_path: Path) -> None:
    truth = write_partitioned_synth(tmp_path, days=4, rows_per_day=5_000, drift_day=2, seed=1, n_noise=3)
    days = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert days == ["day=2026-01-01", "day=2026-01-02", "day=2026-01-03", "day=2026-01-04"]
    assert all((tmp_path / d / "part.parquet").exists() for d in days)
    assert truth["drift_date"] == "2026-01-03" and json.loads((tmp_path / "truth.json").read_text()) == truth
    before, after = truth["before"], truth["after"]
    assert "rel_0" in before["relevant"] and "rel_0" in after["irrelevant"]
    assert "noise_02" in before["irrelevant"] and "noise_02" in after["relevant"]

    spec = DatasetSpec(path=str(tmp_path), label="label", dense=[], sparse=["rel_0", "noise_02", "day"])
    full = read_table(spec)[0].to_pandas()
    early, late = full[full["day"].astype(str) < "2026-01-03"], full[full["day"].astype(str) >= "2026-01-03"]
    assert dispersion(early, "rel_0") > 3 and dispersion(late, "rel_0") < 2
    assert dispersion(early, "noise_02") < 2 and dispersion(late, "noise_02") > 3

    data = load_dataset(DatasetSpec(path=str(tmp_path), label="label"))
    assert "day" not in data.sparse_names and len(data.train) + len(data.valid) == 20_000


@pytest.mark.parametrize("kwargs, field", [
    ({"days": 0}, "days"),
    ({"rows_per_day": 0}, "rows_per_day"),
    ({"drift_day": -1}, "drift_day"),  # was accepted: every day drifted, and drift_date named the last one
])
def test_partitioned_bad_arguments(tmp_path: Path, kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: must be at least"):
        write_partitioned_synth(tmp_path, **{"days": 2, "rows_per_day": 10, "n_noise": 3, **kwargs})
    assert not list(tmp_path.iterdir())  # refused before anything is written


def test_partitioned_without_drift(tmp_path: Path) -> None:
    truth = write_partitioned_synth(tmp_path, days=2, rows_per_day=200, drift_day=None, n_noise=0)
    assert truth["after"] is None and truth["drift_date"] is None and truth["before"]["rows"] == 200


def test_docstring_examples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import doctest
    import tempfile

    import pipelines.synth

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the examples' mkdtemp() lands here
    assert doctest.testmod(pipelines.synth).failed == 0


def test_entity_and_timestamp_columns_are_opt_in(tmp_path: Path) -> None:
    plain = write_synth(tmp_path / "plain", rows=500, seed=2, n_noise=2)
    keyed = write_synth(tmp_path / "keyed", rows=500, seed=2, n_noise=2, entity="row_id", timestamp="ts")
    a, b = pq.read_table(tmp_path / "plain" / "data.parquet"), pq.read_table(tmp_path / "keyed" / "data.parquet")
    assert "entity" not in plain and keyed["entity"] == "row_id" and keyed["timestamp"] == "ts"
    assert b.column_names == a.column_names + ["row_id", "ts"]
    assert b.select(a.column_names).equals(a)  # the default output is exactly as it was
    assert b.column("row_id").to_pylist() == list(range(500))
    assert str(b.schema.field("ts").type) == "timestamp[us, tz=UTC]"
    with pytest.raises(ValueError, match="entity: column 'label' exists already"):
        write_synth(tmp_path / "bad", rows=10, entity="label")
