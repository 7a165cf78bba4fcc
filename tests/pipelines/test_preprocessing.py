"""write_preprocessing: the vocabulary files are the encoding, for the in-memory and the streamed read alike."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipelines.preprocessing
from pipelines.dataset import load_dataset
from pipelines.export_runtime import encode_ids
from pipelines.preprocessing import read_preprocessing, vocabulary, write_preprocessing
from pipelines.spec import DatasetSpec, FeatureSet, JobSpec, SelectedCross, SelectedFeature
from pipelines.stream import stream_dataset


def _fs() -> FeatureSet:
    return FeatureSet(name="p", spec=JobSpec(name="p", dataset={"path": "d", "label": "y"}),
                      features=[SelectedFeature(name="tags", kind="sparse", rank=1, score=1.0, embedding_dim=4),
                                SelectedFeature(name="x", kind="dense", rank=2, score=0.5)],
                      crosses=[SelectedCross(features=("c/1", "d"), rank=1, score=0.1, buckets=40, embedding_dim=4)])


@pytest.fixture
def parquet(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    n = 3000
    c = [None if k == 0 else f"v{k}" for k in rng.integers(0, 30, n)]  # ties and nulls
    tags = [[int(t) for t in rng.integers(0, 12, rng.integers(0, 4))] for _ in range(n)]
    table = pa.table({"y": rng.integers(0, 2, n), "c/1": c, "d": rng.integers(0, 5, n).astype(np.int32),
                      "tags": tags, "x": rng.normal(3.0, 2.0, n), "unused": rng.integers(0, 9, n)})
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize("reader", ["memory", "stream"])
def test_the_vocabulary_files_reproduce_the_training_ids(tmp_path: Path, parquet: Path, reader: str) -> None:
    spec = DatasetSpec(path=str(parquet), label="y", reader=reader)
    data = load_dataset(spec, seed=0) if reader == "memory" else stream_dataset(spec, seed=0)
    out = tmp_path / reader
    write_preprocessing(out, data, _fs())
    prep = read_preprocessing(out)
    assert sorted(prep["sparse"]) == ["c/1", "d", "tags"]  # kept features and the cross's inputs, no more
    assert prep["sparse"]["c/1"]["vocabulary"] == "vocabularies/f_c_1.parquet" and not prep["sparse"]["c/1"]["kept"]
    assert prep["sparse"]["tags"]["pooling"] == "MEAN" and prep["sparse"]["d"]["pooling"] == "SUM"
    assert prep["dense"]["names"] == ["x"] and prep["label"] == "y"
    [cross] = prep["crosses"]
    assert (cross["card_a"], cross["card_b"]) == (data.cardinalities["c/1"], data.cardinalities["d"])
    table = pq.read_table(parquet)
    for name in ("c/1", "d", "tags"):
        vocab = vocabulary(out, name)
        assert prep["sparse"][name]["cardinality"] == vocab.num_rows + 1
        counts = vocab.column("count").to_numpy()
        assert (np.diff(counts) <= 0).all() and counts.min() >= 1  # by descending train count
        values, lengths = encode_ids(table.column(name), vocab.column("value").combine_chunks())
        if reader == "memory":  # every row's ids, against the training split's own
            split = data.valid
            starts = np.concatenate([[0], np.cumsum(lengths)])
            want_values, want_lengths = split.sparse[name]
            rows = split.row_index
            assert lengths[rows].tolist() == want_lengths.tolist()
            assert np.concatenate([values[starts[r]:starts[r + 1]] for r in rows]).tolist() == want_values.tolist()
    assert json.loads((out / "preprocessing.json").read_text())["id_rule"].startswith("id = 1 + the value's row")


def test_docstring_examples() -> None:
    assert doctest.testmod(pipelines.preprocessing).failed == 0
