"""Parquet reading, column roles, every user error, and the split/encoding against a plain-Python
reference."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.dataset import OOV_ID, Columns, encode_table, load_dataset, read_table, resolve_columns
from pipelines.errors import SpecError
from pipelines.spec import DatasetSpec

WriteParquet = Callable[..., str]


def mixed_table(n: int = 200, seed: int = 0) -> pa.Table:
    """Every supported column kind, with nulls where they are allowed."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 4, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    tag_values = pa.array(rng.integers(0, 30, offsets[-1]), mask=rng.random(offsets[-1]) < 0.1)
    return pa.table({
        "click": pa.array(rng.integers(0, 2, n), pa.int8()),
        "price": rng.normal(size=n),
        "rate": pa.array(rng.random(n), pa.float32()),
        "user": pa.array(rng.integers(0, 50, n), mask=rng.random(n) < 0.1),
        "city": pa.array([f"c{i}" for i in rng.integers(0, 20, n)]),
        "device": pa.array(rng.choice(["ios", "android", "web"], n)).dictionary_encode(),
        "is_new": pa.array(rng.random(n) < 0.3),
        "tags": pa.ListArray.from_arrays(pa.array(offsets), tag_values, mask=pa.array(rng.random(n) < 0.05)),
        "words": pa.array([[f"w{j}" for j in rng.integers(0, 5, k)] for k in rng.integers(0, 3, n)]),
        "ts": pa.array(np.arange(n).astype("datetime64[s]")),
    })


# --- column roles --------------------------------------------------------------------------------


def test_default_roles() -> None:
    columns = resolve_columns(mixed_table().schema, DatasetSpec(path="-", label="click"))
    assert columns == Columns(
        label="click",
        dense=("price", "rate"),
        sparse=("user", "city", "device", "is_new", "tags", "words"),
        ignored=("ts",),
    )


def test_explicit_lists_are_used_as_given() -> None:
    spec = DatasetSpec(path="-", label="click", dense=["user"], sparse=["city"])
    columns = resolve_columns(mixed_table().schema, spec)
    assert (columns.dense, columns.sparse) == (("user",), ("city",))
    assert "price" in columns.ignored


def test_explicit_sparse_leaves_other_columns_out_of_default_dense() -> None:
    columns = resolve_columns(mixed_table().schema, DatasetSpec(path="-", label="click", sparse=["user"]))
    assert columns.dense == ("price", "rate") and columns.sparse == ("user",)


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        (dict(label="clicked"), "dataset.label", "column 'clicked' not found; columns are: click, price, rate"),
        (dict(label="click", dense=["nope"]), "dataset.dense", "column 'nope' not found; columns are: click,"),
        (dict(label="click", sparse=["nope"]), "dataset.sparse", "column 'nope' not found"),
        (dict(label="click", dense=["city"]), "dataset.dense", "has type string; dense columns must be numeric"),
        (dict(label="click", dense=["tags"]), "dataset.dense", "dense columns must be numeric"),
        (dict(label="click", sparse=["price"]), "dataset.sparse", "cast it to integer, or list it under dataset.dense"),
        (dict(label="click", sparse=["ts"]), "dataset.sparse", "has type timestamp"),
        (dict(label="click", dense=[], sparse=[]), "dataset", "no feature columns"),
    ],
)
def test_column_errors(spec: dict, field: str, words: str) -> None:
    schema = mixed_table().schema
    with pytest.raises(SpecError) as info:
        resolve_columns(schema, DatasetSpec(path="-", **spec))
    assert info.value.field == field and words in info.value.message


def test_roles_rechecked_for_an_unvalidated_spec() -> None:
    # model_copy(update=...) skips validation, so resolve_columns checks the overlap itself.
    schema = pa.schema({"y": pa.int8(), "x": pa.int64()})
    spec = DatasetSpec(path="-", label="y", dense=["x"]).model_copy(update={"sparse": ["x"]})
    with pytest.raises(SpecError, match="dataset.sparse: column 'x' is both dense and sparse"):
        resolve_columns(schema, spec)


# --- reading -----------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_dataset(DatasetSpec(path=str(tmp_path / "nope"), label="y"))
    assert info.value.field == "dataset.path" and "not found" in info.value.message


def test_directory_without_parquet(tmp_path: Path) -> None:
    (tmp_path / "_SUCCESS").write_text("")
    with pytest.raises(SpecError, match="dataset.path: no Parquet files"):
        load_dataset(DatasetSpec(path=str(tmp_path), label="y"))


def test_not_parquet(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("y,x\n1,2\n")
    with pytest.raises(SpecError, match="dataset.path: cannot read .* as Parquet"):
        load_dataset(DatasetSpec(path=str(tmp_path / "data.csv"), label="y"))


def test_empty_table(write_parquet: WriteParquet) -> None:
    path = write_parquet(pa.table({"y": pa.array([], pa.int8()), "c": pa.array([], pa.int64())}))
    with pytest.raises(SpecError) as info:
        load_dataset(DatasetSpec(path=path, label="y"))
    assert info.value.field == "dataset.path" and "no rows" in info.value.message


def test_one_row_cannot_be_split(write_parquet: WriteParquet) -> None:
    with pytest.raises(SpecError, match="dataset.path: needs at least 2 rows"):
        load_dataset(DatasetSpec(path=write_parquet({"y": [1], "c": [3]}), label="y"))


def test_reads_only_needed_columns(write_parquet: WriteParquet) -> None:
    path = write_parquet(mixed_table())
    table, columns = read_table(DatasetSpec(path=path, label="click", dense=["price"], sparse=["user"]))
    assert table.column_names == ["click", "price", "user"]
    assert set(columns.ignored) == {"rate", "city", "device", "is_new", "tags", "words", "ts"}


def test_hive_directory(tmp_path: Path) -> None:
    for k, day in enumerate(["2026-01-01", "2026-01-02", "2026-01-03"]):
        folder = tmp_path / f"day={day}"
        folder.mkdir()
        pq.write_table(mixed_table(50, seed=k), folder / "part-0.parquet")
    (tmp_path / "README.txt").write_text("not data")
    (tmp_path / "_SUCCESS").write_text("")
    data = load_dataset(DatasetSpec(path=str(tmp_path), label="click"))
    assert len(data.train) + len(data.valid) == 150
    assert "day" not in data.sparse_names  # partition keys are layout, not features, by default
    explicit = load_dataset(DatasetSpec(path=str(tmp_path), label="click", sparse=["day"], dense=[]))
    assert explicit.cardinalities["day"] == 4 and explicit.sparse_names == ("day",)


def test_multi_file_dictionaries_are_unified(tmp_path: Path) -> None:
    # Each file has its own dictionary for 'device' with different codes: ids must agree anyway.
    for name, y, device in (("a", [0, 1], ["ios", "web"]), ("b", [1, 0], ["web", "ios"])):
        pq.write_table(pa.table({"y": y, "device": pa.array(device).dictionary_encode()}), tmp_path / f"{name}.parquet")
    data = load_dataset(DatasetSpec(path=str(tmp_path), label="y", validation_fraction=0.25), seed=1)
    vocab = data.vocabularies["device"].to_pylist()
    source = ["ios", "web", "web", "ios"]
    for split in (data.train, data.valid):
        values, _ = split.sparse["device"]
        decoded = [vocab[i - 1] if i else None for i in values]
        expected = [source[r] if source[r] in vocab else None for r in split.row_index]
        assert decoded == expected


# --- values: label and dense ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "words"),
    [
        (pa.array([0, 1, 2, 1]), "must hold 0/1 (or true/false); values seen: 0, 1, 2"),
        (pa.array(["yes", "no", "no", "yes"]), "values seen: 'no', 'yes'"),
        (pa.array([0.0, 0.5, 1.0, 1.0]), "values seen: 0.0, 0.5, 1.0"),
        (pa.array([0, 1, None, 1]), "1 null values"),
    ],
)
def test_bad_labels(write_parquet: WriteParquet, label: pa.Array, words: str) -> None:
    path = write_parquet({"y": label, "c": [1, 2, 3, 4]})
    with pytest.raises(SpecError) as info:
        load_dataset(DatasetSpec(path=path, label="y"))
    assert info.value.field == "dataset.label" and words in info.value.message


@pytest.mark.parametrize(
    "label", [pa.array([True, False] * 5), pa.array([1.0, 0.0] * 5), pa.array([1, 0] * 5, pa.uint8())]
)
def test_good_labels(write_parquet: WriteParquet, label: pa.Array) -> None:
    data = load_dataset(DatasetSpec(path=write_parquet({"y": label, "c": list(range(10))}), label="y"))
    assert data.train.labels.dtype == np.float32
    assert sorted(np.concatenate([data.train.labels, data.valid.labels]).tolist()) == [0.0] * 5 + [1.0] * 5


@pytest.mark.parametrize(
    "column",
    [
        pa.array([1.0, float("nan"), 2.0, float("nan")]),
        pa.array([1.0, None, None, 2.0]),
        pa.array([1.0, float("inf"), 3.0, np.nan]),
    ],
)
def test_missing_dense_values(write_parquet: WriteParquet, column: pa.Array) -> None:
    path = write_parquet({"y": [0, 1, 0, 1], "x": column})
    with pytest.raises(SpecError) as info:
        load_dataset(DatasetSpec(path=path, label="y"))
    assert info.value.field == "dataset.dense"
    assert "column 'x' has 2 missing or infinite values" in info.value.message


def test_dense_standardised_on_train(write_parquet: WriteParquet) -> None:
    rng = np.random.default_rng(0)
    path = write_parquet({
        "y": rng.integers(0, 2, 500),
        "big": 1000 + 50 * rng.normal(size=500),
        "flat": np.ones(500),
        "n": rng.integers(0, 9, 500),
    })
    data = load_dataset(DatasetSpec(path=path, label="y", dense=["big", "flat", "n"], sparse=[]))
    train = data.train.dense
    assert train.dtype == np.float32 and train.shape == (400, 3)
    np.testing.assert_allclose(train.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(train.std(0), [1, 0, 1], atol=1e-4)
    assert abs(data.dense_mean[0] - 1000) < 10 and data.dense_std[1] == 1.0
    raw = load_dataset(DatasetSpec(path=path, label="y", dense=["big"], sparse=[]), standardize=False)
    assert raw.train.dense.mean() > 900


# --- split and sparse encoding -------------------------------------------------------------------


def reference_decode(data_vocab: list, values: np.ndarray, lengths: np.ndarray) -> list[list]:
    """Rows of raw values from a jagged id pair (OOV id 0 -> None)."""
    out, pos = [], 0
    for k in lengths:
        out.append([data_vocab[i - 1] if i != OOV_ID else None for i in values[pos : pos + k]])
        pos += k
    return out


def test_split_is_deterministic_disjoint_and_covering(write_parquet: WriteParquet) -> None:
    spec = DatasetSpec(path=write_parquet(mixed_table(300)), label="click", validation_fraction=0.3)
    a, b, c = load_dataset(spec, seed=5), load_dataset(spec, seed=5), load_dataset(spec, seed=6)
    assert len(a.valid) == 90 and len(a.train) == 210
    np.testing.assert_array_equal(a.train.row_index, b.train.row_index)
    assert not np.array_equal(a.train.row_index, c.train.row_index)
    rows = np.concatenate([a.train.row_index, a.valid.row_index])
    assert sorted(rows.tolist()) == list(range(300))
    assert a.train.row_index.tolist() != sorted(a.train.row_index.tolist())  # shuffled once, here


def test_encoding_matches_a_plain_python_reference(write_parquet: WriteParquet) -> None:
    table = mixed_table(400, seed=1)
    data = load_dataset(DatasetSpec(path=write_parquet(table), label="click"), seed=2)
    assert data.multi_valued == frozenset({"tags", "words"})
    source = table.to_pydict()
    for name in data.sparse_names:
        rows = [v if isinstance(v, list) else ([] if v is None else [v]) for v in source[name]]
        rows = [[x for x in r if x is not None] for r in rows]  # null values are dropped
        train_counts = Counter(x for r in data.train.row_index for x in rows[r])
        vocab = data.vocabularies[name].to_pylist()
        # The vocabulary is exactly the train values, most frequent first; OOV 0 is reserved.
        assert set(vocab) == set(train_counts) and len(vocab) == len(set(vocab))
        assert [train_counts[v] for v in vocab] == sorted(train_counts.values(), reverse=True)
        assert data.cardinalities[name] == len(vocab) + 1
        for split in (data.train, data.valid):
            values, lengths = split.sparse[name]
            assert values.dtype == np.int64 and lengths.dtype == np.int32 and len(lengths) == len(split)
            assert values.min(initial=0) >= 0 and values.max(initial=0) < data.cardinalities[name]
            expected = [[x if x in train_counts else None for x in rows[r]] for r in split.row_index]
            assert reference_decode(vocab, values, lengths) == expected, name
    labels = np.asarray(source["click"], np.float32)
    np.testing.assert_array_equal(data.valid.labels, labels[data.valid.row_index])
    np.testing.assert_allclose(
        data.valid.dense[:, 0] * data.dense_std[0] + data.dense_mean[0],
        np.asarray(source["price"])[data.valid.row_index], rtol=1e-5, atol=1e-5,
    )


def test_single_valued_lengths_and_nulls(write_parquet: WriteParquet) -> None:
    path = write_parquet({"y": [0, 1] * 10, "c": [1, 2, None, 3] * 5, "d": list(range(20))})
    data = load_dataset(DatasetSpec(path=path, label="y"))
    for split in (data.train, data.valid):
        values, lengths = split.sparse["c"]
        assert set(lengths.tolist()) <= {0, 1} and lengths.sum() == len(values)
        assert (lengths == 0).sum() == sum(1 for r in split.row_index if r % 4 == 2)
        values, lengths = split.sparse["d"]
        assert (lengths == 1).all()
    # 'd' is unique per row: every validation value is unseen in train, so all OOV
    assert (data.valid.sparse["d"][0] == OOV_ID).all() and data.cardinalities["d"] == 17


def test_list_column(write_parquet: WriteParquet) -> None:
    tags = pa.array([[1, 2, 3], [], None, [2, None], [7]] * 4, pa.list_(pa.int32()))
    data = load_dataset(DatasetSpec(path=write_parquet({"y": [0, 1] * 10, "tags": tags}), label="y"))
    assert data.multi_valued == frozenset({"tags"})
    expected_len = {0: 3, 1: 0, 2: 0, 3: 1, 4: 1}
    for split in (data.train, data.valid):
        values, lengths = split.sparse["tags"]
        assert lengths.tolist() == [expected_len[r % 5] for r in split.row_index]
        assert lengths.sum() == len(values)


def test_encode_table_directly() -> None:
    table = pa.table({"y": [0, 1, 1, 0], "c": ["a", "b", "c", "d"]})
    data = encode_table(table, Columns("y", (), ("c",)), validation_fraction=0.5, seed=0)
    assert data.train.dense.shape == (2, 0) and data.dense_mean.shape == (0,)
    assert len(data.train) == 2 and data.cardinalities["c"] <= 3


def test_docstring_examples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import doctest
    import tempfile

    import pipelines.dataset

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the examples' mkdtemp() lands here
    assert doctest.testmod(pipelines.dataset).failed == 0


# --- degenerate data ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1])
def test_a_label_with_one_class_is_refused(tmp_path: Path, value: int) -> None:
    pq.write_table(pa.table({"y": [value] * 50, "c": list(range(50))}), tmp_path / "t.parquet")
    with pytest.raises(SpecError) as info:
        load_dataset(DatasetSpec(path=str(tmp_path), label="y"))
    assert info.value.field == "dataset.label" and f"holds only {value}s" in info.value.message


def test_a_table_of_constant_features_is_refused_with_their_names(tmp_path: Path) -> None:
    pq.write_table(pa.table({"y": [0, 1] * 25, "c": ["a"] * 50, "x": [0.5] * 50}), tmp_path / "t.parquet")
    with pytest.raises(SpecError) as info:
        load_dataset(DatasetSpec(path=str(tmp_path), label="y"))
    assert info.value.field == "dataset" and "every feature column is constant" in info.value.message
    assert "x" in info.value.message and "c" in info.value.message


def test_one_constant_feature_beside_a_useful_one_is_kept(tmp_path: Path) -> None:
    pq.write_table(pa.table({"y": [0, 1] * 25, "c": ["a"] * 50, "x": [float(i) for i in range(50)]}),
                   tmp_path / "t.parquet")
    data = load_dataset(DatasetSpec(path=str(tmp_path), label="y"))
    assert data.sparse_names == ("c",) and data.dense_names == ("x",)
