"""The preprocessing of a run, written beside its FeatureSet: how a raw row becomes the model's input.

A FeatureSet names features; a production pipeline also needs the ids they were encoded to. One
rule holds for the in-memory read (:func:`pipelines.dataset.load_dataset`) and the streamed one
(:func:`pipelines.stream.stream_dataset`): **the id of a value is its row in the vocabulary plus
one, and 0 (out of vocabulary) for any other value**; a null value is dropped, so a null single
value is an empty row. The two reads order a vocabulary alike (descending train count) and break
ties differently (first seen in the table; ascending value), so the order is not re-derivable
from the data: the vocabulary file *is* the encoding, and it is exported as written.

:func:`write_preprocessing` writes into ``folder``::

    preprocessing.json          label, dense names with the train split's mean and std, every
                                exported sparse feature (cardinality, list or not, pooling, file),
                                the crosses (features, buckets, both cardinalities, hash rule)
    vocabularies/{name}.parquet value (the raw value of id row+1), count (train occurrences, when known)

Written for the kept sparse features and the crosses' two inputs (a cross reads its inputs' ids
even when they are not kept themselves). The in-process job writes it (``run_job(...,
artifacts=...)``), and the Ray driver, which holds the vocabularies, calls the same function.

Example::

    >>> import tempfile, numpy as np, pyarrow as pa
    >>> from pipelines.dataset import Columns, encode_table
    >>> from pipelines.spec import FeatureSet, JobSpec, SelectedFeature
    >>> t = pa.table({"y": [0, 1] * 20, "c": ["a", "b", "a", "c"] * 10, "x": np.arange(40.0)})
    >>> data = encode_table(t, Columns("y", ("x",), ("c",)), seed=0)
    >>> fs = FeatureSet(name="ctr", spec=JobSpec(name="ctr", dataset={"path": "d", "label": "y"}),
    ...                 features=[SelectedFeature(name="c", kind="sparse", rank=1, score=1.0, embedding_dim=4)])
    >>> out = Path(tempfile.mkdtemp())
    >>> write_preprocessing(out, data, fs)
    >>> read_preprocessing(out)["sparse"]["c"]["cardinality"], vocabulary(out, "c").column("value").to_pylist()
    (4, ['a', 'b', 'c'])
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.dataset import EncodedDataset, EncodedSplit
from pipelines.spec import FeatureSet
from seqattn_core.crosses import HASH_RULE

__all__ = ["ID_RULE", "PREPROCESSING_FILE", "read_preprocessing", "vocabulary", "write_preprocessing"]

PREPROCESSING_FILE = "preprocessing.json"
ID_RULE = ("id = 1 + the value's row in vocabularies/{name}.parquet; 0 for a value outside it (out of "
           "vocabulary); a null value is dropped (a null single value is an empty row)")


def _file_name(name: str, taken: set[str]) -> str:
    """A file name for feature ``name``: itself when it is a plain name, else a sanitised one."""
    base = name if re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", name) and not name.startswith(".") else \
        "f_" + re.sub(r"[^A-Za-z0-9_-]", "_", name)[:80]
    candidate, k = base, 1
    while candidate.lower() in taken:
        candidate, k = f"{base}_{k}", k + 1
    taken.add(candidate.lower())
    return f"vocabularies/{candidate}.parquet"


def _train_counts(data: EncodedDataset, name: str) -> np.ndarray | None:
    """Train occurrences of each vocabulary entry, where the run knows them: counted from the
    train ids in memory, or the streamed scan's counts; None otherwise."""
    size = len(data.vocabularies[name])
    if isinstance(data.train, EncodedSplit):
        if not len(data.train):  # the rows went elsewhere (Ray workers): no counts to give
            return None
        ids = data.train.sparse[name][0]
        return np.bincount(ids, minlength=size + 1)[1 : size + 1].astype(np.int64)
    counts = getattr(getattr(data.train, "stats", None), "vocabulary_counts", None)
    if counts is not None and name in counts and len(counts[name]) == size:
        return np.asarray(counts[name], dtype=np.int64)
    return None


def _write_parquet(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def write_preprocessing(folder: Path, data: EncodedDataset, fs: FeatureSet) -> None:
    """Write the vocabularies of ``fs``'s kept sparse features and its crosses' inputs, the dense
    preprocessing and the label of ``data`` into ``folder`` (layout in the module docstring).

    ``data`` is the run's encoded dataset (it holds the vocabularies, the train moments and the
    label); ``fs`` the FeatureSet it produced. Each file is written to a temporary name and
    renamed; the folder as a whole is published atomically by whoever owns it (the registry,
    ``seqattn select --out``).
    """
    folder = Path(folder)
    sparse_kept = [f.name for f in fs.features if f.kind == "sparse"]
    inputs = [n for c in fs.crosses for n in c.features]
    names = list(dict.fromkeys(sparse_kept + inputs))
    missing = [n for n in names if n not in data.vocabularies]
    if missing:
        raise ValueError(f"vocabularies: the run has none for {', '.join(missing)}")
    taken: set[str] = set()
    sparse: dict[str, Any] = {}
    for name in names:
        vocab = data.vocabularies[name]
        values = pa.array(vocab) if not isinstance(vocab, pa.Array) else vocab
        if pa.types.is_dictionary(values.type):
            values = values.cast(values.type.value_type)
        columns: dict[str, Any] = {"value": values}
        counts = _train_counts(data, name)
        if counts is not None:
            columns["count"] = pa.array(counts, pa.int64())
        file = _file_name(name, taken)
        _write_parquet(pa.table(columns), folder / file)
        multi = name in data.multi_valued
        sparse[name] = {"cardinality": int(data.cardinalities[name]), "multi_valued": multi,
                        "pooling": "MEAN" if multi else "SUM", "vocabulary": file, "value_type": str(values.type),
                        "kept": name in sparse_kept, "counts": counts is not None}
    dense_kept = [f.name for f in fs.features if f.kind == "dense"]
    index = {n: i for i, n in enumerate(data.dense_names)}
    body = {
        "format": 1,
        "feature_set": {"name": fs.name, "version": fs.version, "job_id": fs.job_id},
        "label": data.label,
        "id_rule": ID_RULE,
        "dense": {"names": dense_kept,
                  "mean": [float(data.dense_mean[index[n]]) for n in dense_kept],
                  "std": [float(data.dense_std[index[n]]) for n in dense_kept],
                  "rule": "x = (float32(value) - mean) / std, with the train split's mean and std (float32); "
                          "a std of 0 is stored as 1"},
        "sparse": sparse,
        "crosses": [{"name": f"{c.features[0]}_X_{c.features[1]}", "features": list(c.features),
                     "buckets": int(c.buckets), "card_a": int(data.cardinalities[c.features[0]]),
                     "card_b": int(data.cardinalities[c.features[1]]), "hash": HASH_RULE} for c in fs.crosses],
    }
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{PREPROCESSING_FILE}.tmp"
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    os.replace(tmp, folder / PREPROCESSING_FILE)


def read_preprocessing(folder: Path) -> dict[str, Any]:
    """``folder``'s preprocessing.json; a ``FileNotFoundError`` naming it when there is none."""
    path = Path(folder) / PREPROCESSING_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    return dict(json.loads(path.read_text()))


def vocabulary(folder: Path, name: str) -> pa.Table:
    """The vocabulary table (value, count) of feature ``name`` in ``folder``."""
    return pq.read_table(Path(folder) / read_preprocessing(folder)["sparse"][name]["vocabulary"])
