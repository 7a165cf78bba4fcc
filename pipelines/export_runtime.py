"""The runtime of an exported feature set: raw rows in, the selected model's inputs and predictions out.

This module is copied as it is into every TorchRec export folder (as ``seqattn_runtime.py``), so
it imports nothing from seqattn: only numpy, pyarrow, torch and torchrec. A training or serving
pipeline that has the folder needs nothing else (the folder layout is in docs/export.md):

* :func:`load_export` reads ``manifest.json`` and the vocabularies;
* :meth:`Export.embedding_bag_configs` / :meth:`Export.embedding_bag_collection`: the tables of the
  selected configuration (one per kept sparse feature and per cross, each at its chosen width,
  ``MEAN`` pooling for list columns, ``SUM`` for the others, as the model trained);
* :meth:`Export.encode`: a pyarrow batch of raw rows to the ``KeyedJaggedTensor`` and the dense
  tensor the model trained on (the vocabularies, the cross hash, the dense standardisation);
* :func:`build_model` / :func:`load_model`: the model itself (DCN-style, mixed widths), with the
  trained weights when the export carries them (``weights.pt``).

Example (in a fresh process, beside the folder)::

    import pyarrow.parquet as pq
    import seqattn_runtime as rt

    export = rt.load_export("ctr-main-v3")
    kjt, dense = export.encode(pq.read_table("valid.parquet"))
    model = rt.load_model(export)                         # weights.pt loaded, eval mode
    probabilities = torch.sigmoid(model(dense, kjt))
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.modules.embedding_configs import PoolingType

FORMAT = 1  # of manifest.json; a reader refuses a newer one rather than misread it
OOV_ID = 0  # every value outside a vocabulary, and an empty row's first id

_MIX1 = np.uint64(0x9E3779B97F4A7C15)
_MIX2 = np.uint64(0xBF58476D1CE4E5B9)


class ExportError(ValueError):
    """A folder or a batch that cannot be used as the export says: ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def cross_ids(a_ids: np.ndarray, b_ids: np.ndarray, card_a: int, card_b: int, buckets: int) -> np.ndarray:
    """A cross's ids: ``a * card_b + b`` when ``card_a * card_b <= buckets``, else a splitmix-style
    hash of both ids modulo ``buckets``. One fixed function of the two ids and the cross's three
    constants, whatever the batch (the same as ``seqattn_core.crosses.cross_ids``, which training uses).

        >>> cross_ids(np.array([0, 1, 2]), np.array([3, 0, 1]), card_a=3, card_b=4, buckets=12).tolist()
        [3, 4, 9]
    """
    a = np.asarray(a_ids, dtype=np.int64)
    b = np.asarray(b_ids, dtype=np.int64)
    if int(card_a) * int(card_b) <= buckets:
        return a * int(card_b) + b
    with np.errstate(over="ignore"):
        h = (a.astype(np.uint64) * _MIX1 + b.astype(np.uint64)) * _MIX2
        h ^= h >> np.uint64(31)
    return (h % np.uint64(buckets)).astype(np.int64)


def _flat(column: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray | None]:
    """(the values, the row of each value; None for a single-valued column), dictionaries decoded."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        return column, None
    values = pc.list_flatten(column)
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    return values, pc.list_parent_indices(column).to_numpy().astype(np.int64)


def encode_ids(column: pa.Array | pa.ChunkedArray, vocabulary: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A raw column's jagged ids ``(values, lengths)``: the id of a value is its row in the
    vocabulary plus one, 0 for a value outside it; a null value is dropped (a null single value
    gives a row of length 0), as in training.

        >>> encode_ids(pa.array(["b", None, "z", "a"]), pa.array(["a", "b"]))
        (array([2, 0, 1]), array([1, 0, 1, 1], dtype=int32))
    """
    n = len(column)
    values, parents = _flat(column)
    if values.type != vocabulary.type:
        try:
            values = values.cast(vocabulary.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ExportError("batch", f"values of type {values.type} cannot be matched with a vocabulary of "
                              f"{vocabulary.type}: {exc}") from None
    ids = pc.fill_null(pc.index_in(values, value_set=vocabulary), -1).to_numpy().astype(np.int64) + 1
    present = pc.is_valid(values).to_numpy(zero_copy_only=False)
    rows = np.arange(n) if parents is None else parents
    return ids[present], np.bincount(rows[present], minlength=n).astype(np.int32)


def first_ids(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """One id per row: the first, or 0 for an empty row (what a cross reads of its two features)."""
    out = np.zeros(len(lengths), dtype=np.int64)
    has = lengths > 0
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    out[has] = values[starts[has]]
    return out


@dataclass(frozen=True)
class Export:
    """An export folder, read: ``manifest`` (manifest.json as written) and the vocabularies."""

    folder: Path
    manifest: dict[str, Any]
    vocabularies: dict[str, pa.Array]

    @property
    def name(self) -> str:
        return str(self.manifest["feature_set"]["name"])

    @property
    def version(self) -> int | None:
        return self.manifest["feature_set"].get("version")

    @property
    def dense_names(self) -> list[str]:
        return list(self.manifest["dense"]["names"])

    @property
    def kjt_keys(self) -> list[str]:
        """The keys of the model's ``KeyedJaggedTensor``, in the order it trained on."""
        return list(self.manifest["kjt_keys"])

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        """One ``EmbeddingBagConfig`` per table, with its rows, width and pooling."""
        pooling = {"SUM": PoolingType.SUM, "MEAN": PoolingType.MEAN}
        return [EmbeddingBagConfig(name=t["name"], embedding_dim=int(t["embedding_dim"]),
                                   num_embeddings=int(t["num_embeddings"]), feature_names=list(t["feature_names"]),
                                   pooling=pooling[t["pooling"]]) for t in self.manifest["tables"]]

    def embedding_bag_collection(self, device: torch.device | None = None) -> EmbeddingBagCollection:
        """A (randomly initialised) ``EmbeddingBagCollection`` of :meth:`embedding_bag_configs`."""
        return EmbeddingBagCollection(tables=self.embedding_bag_configs(), device=device)

    def ids(self, batch: pa.Table | pa.RecordBatch) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Jagged ids ``(values, lengths)`` of every KJT key (features, then crosses) for ``batch``."""
        sparse = {s["name"]: s for s in self.manifest["sparse"]}
        needed = [k for k in sparse if k in self.kjt_keys or any(k in c["features"] for c in self.manifest["crosses"])]
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name in needed:
            if name not in batch.column_names:
                raise ExportError("batch", f"column {name!r} is missing; the model reads {', '.join(needed)}")
            out[name] = encode_ids(batch.column(name), self.vocabularies[name])
        for c in self.manifest["crosses"]:
            a, b = c["features"]
            ids = cross_ids(first_ids(*out[a]), first_ids(*out[b]), c["card_a"], c["card_b"], c["buckets"])
            out[c["name"]] = (ids, np.ones(batch.num_rows, dtype=np.int32))
        return {k: out[k] for k in self.kjt_keys}

    def dense(self, batch: pa.Table | pa.RecordBatch) -> torch.Tensor:
        """The dense columns standardised with the train split's moments, ``(rows, n_dense)`` float32."""
        d = self.manifest["dense"]
        out = np.empty((batch.num_rows, len(d["names"])), dtype=np.float32)
        for j, name in enumerate(d["names"]):
            if name not in batch.column_names:
                raise ExportError("batch", f"dense column {name!r} is missing")
            values = pc.cast(batch.column(name), pa.float64()).to_numpy(zero_copy_only=False)
            if not np.isfinite(values).all():
                raise ExportError("batch", f"dense column {name!r} has missing or infinite values; the model "
                                  "trained on none")
            out[:, j] = values
        return torch.from_numpy((out - np.asarray(d["mean"], np.float32)) / np.asarray(d["std"], np.float32))

    def encode(self, batch: pa.Table | pa.RecordBatch) -> tuple[KeyedJaggedTensor, torch.Tensor]:
        """``batch``'s raw rows as the ``(KeyedJaggedTensor, dense tensor)`` the model trained on."""
        ids = self.ids(batch)
        keys = list(ids)
        values = [ids[k][0] for k in keys]
        lengths = [ids[k][1] for k in keys]
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=keys,
            values=torch.from_numpy(np.concatenate(values)) if values else torch.zeros(0, dtype=torch.long),
            lengths=torch.from_numpy(np.concatenate(lengths)) if lengths else torch.zeros(0, dtype=torch.int32))
        return kjt, self.dense(batch)


def load_export(folder: str | Path) -> Export:
    """Read an export folder (``manifest.json``, ``vocabularies/``); an :class:`ExportError` naming
    the file when one is missing or of a newer format."""
    root = Path(folder)
    path = root / "manifest.json"
    if not path.is_file():
        raise ExportError("folder", f"{str(root)!r} has no manifest.json: not a seqattn TorchRec export")
    manifest = json.loads(path.read_text())
    if int(manifest.get("format", 0)) > FORMAT:
        raise ExportError("manifest.json", f"format {manifest['format']} is newer than this runtime's {FORMAT}")
    vocabularies = {}
    for s in manifest["sparse"]:
        file = root / s["vocabulary"]
        if not file.is_file():
            raise ExportError("vocabularies", f"{s['vocabulary']} (feature {s['name']!r}) is missing from {root}")
        vocabularies[s["name"]] = pq.read_table(file).column("value").combine_chunks()
    return Export(root, manifest, vocabularies)


class LowRankCross(nn.Module):
    """DCN-v2 cross layers with low-rank weights: ``x_{l+1} = x0 * (U (V x_l) + b) + x_l``."""

    def __init__(self, width: int, layers: int, rank: int) -> None:
        super().__init__()
        rank = min(rank, width)
        self.v = nn.ModuleList(nn.Linear(width, rank, bias=False) for _ in range(layers))
        self.u = nn.ModuleList(nn.Linear(rank, width) for _ in range(layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for v, u in zip(self.v, self.u):
            x = x0 * u(v(x)) + x
        return x


class FieldSelfAttention(nn.Module):
    """AutoInt's interaction: each field projected to ``heads * head_dim``, one multi-head
    self-attention layer with a residual, flattened."""

    def __init__(self, widths: Sequence[int], heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        d = heads * head_dim
        self.proj = nn.ModuleList(nn.Linear(w, d) for w in widths)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.residual = nn.Linear(d, d, bias=False)

    def forward(self, fields: Sequence[torch.Tensor]) -> torch.Tensor:
        x = torch.stack([p(f) for p, f in zip(self.proj, fields)], dim=1)
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        return torch.relu(out + self.residual(x)).flatten(1)


class RankingModel(nn.Module):
    """The selected model: an ``EmbeddingBagCollection`` of tables of any widths, the projected dense
    columns, a low-rank DCN-v2 cross network (or AutoInt's self-attention) and an MLP; one logit a row.

    Mixed widths are why it is DCN-style: the cross network works on the concatenation of the pooled
    embeddings, whatever their widths. TorchRec's ``DLRM`` cannot take such a set: its dot interaction
    multiplies every pair of embeddings, which needs one common width (``DLRM`` asserts it). For a
    DLRM, select with one width (``selection.embedding_dims: [16]``) and build it from
    :meth:`Export.embedding_bag_collection`; for mixed widths use this model (or DCN's
    ``torchrec.modules.crossnet``) on the concatenation.
    """

    def __init__(self, export: Export) -> None:
        super().__init__()
        m = export.manifest["model"]
        tables = export.embedding_bag_configs()
        self.ebc = EmbeddingBagCollection(tables=tables) if tables else None
        widths = {t.feature_names[0]: t.embedding_dim for t in tables}
        self.tables = [t.feature_names[0] for t in tables]
        # The order the trained model concatenated its pooled embeddings in (a sharded collection's).
        self.order = list(m.get("embedding_order") or self.tables)
        n_dense = len(export.dense_names)
        self.dense_proj = nn.Linear(n_dense, m["dense_dim"]) if n_dense else None
        self.cross: LowRankCross | None = None
        self.interaction: FieldSelfAttention | None = None
        if m["interaction"] == "autoint":
            tokens = ([m["dense_dim"]] if n_dense else []) + [widths[t] for t in self.tables]
            self.interaction = FieldSelfAttention(tokens, m["attention_heads"], m["head_dim"])
            width = len(tokens) * m["attention_heads"] * m["head_dim"]
        else:
            width = (m["dense_dim"] if n_dense else 0) + sum(widths.values())
            self.cross = LowRankCross(width, m["cross_layers"], m["cross_rank"])
        layers: list[nn.Module] = []
        for h in m["hidden"]:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        parts = [self.dense_proj(dense)] if self.dense_proj is not None else []
        pooled = self.ebc(sparse).to_dict() if self.ebc is not None else {}
        if self.interaction is not None:
            return self.mlp(self.interaction(parts + [pooled[t] for t in self.tables])).squeeze(-1)
        assert self.cross is not None
        z = torch.cat(parts + [pooled[t] for t in self.order], dim=1)
        return self.mlp(self.cross(z)).squeeze(-1)


def build_model(export: Export) -> RankingModel:
    """The selected model's architecture, randomly initialised (to train it again from scratch)."""
    if not export.manifest.get("model"):
        raise ExportError("model", "this export has no model architecture (the run that made it kept no model)")
    return RankingModel(export)


def load_model(export: Export | str | Path) -> RankingModel:
    """The selected model with the trained weights of the run (``weights.pt``), in eval mode."""
    export = export if isinstance(export, Export) else load_export(export)
    model = build_model(export)
    path = export.folder / "weights.pt"
    if not path.is_file():
        raise ExportError("weights.pt", f"missing from {export.folder}: the export has the architecture only")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


@torch.no_grad()
def predict(export: Export | str | Path, batch: pa.Table | pa.RecordBatch,
            model: nn.Module | None = None) -> np.ndarray:
    """Click probabilities of ``batch``'s raw rows under the exported model."""
    export = export if isinstance(export, Export) else load_export(export)
    model = model if model is not None else load_model(export)
    kjt, dense = export.encode(batch)
    return torch.sigmoid(model(dense, kjt)).numpy()


def describe(export: Export) -> Mapping[str, Any]:
    """What the export holds, as plain data (names, version, tables, crosses, label)."""
    m = export.manifest
    return {"feature_set": m["feature_set"], "label": m["label"], "dense": export.dense_names,
            "tables": [(t["name"], t["num_embeddings"], t["embedding_dim"], t["pooling"]) for t in m["tables"]],
            "crosses": [c["name"] for c in m["crosses"]]}
