"""The trained final model of a run, written for the export: architecture, weights, reference rows.

:class:`KeepFinalModel` is a :class:`~pipelines.stages.StageHooks` that keeps the retrained model
(the one whose metrics the FeatureSet reports); :func:`write_model` writes into ``folder/model``::

    model.json          the architecture (interaction, widths, tower), the KJT key order it trained
                        on, and the order its sharded collection concatenated the pooled embeddings
    weights.pt          a plain state_dict (no sharding, pruned layers folded to their effective
                        weights) for ``pipelines.export_runtime.RankingModel``
    reference.parquet   up to 1,024 validation rows: their position in the dataset as read
                        (``row``), the label, every KJT key's ids and the model's probability

The reference lets a consumer check that its own pipeline reproduces the model: encode those rows
of the dataset with the export and compare (tests/pipelines/test_export_torchrec.py does it in a
process that imports nothing of seqattn).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec import KeyedJaggedTensor

from pipelines.dataset import EncodedDataset, EncodedSplit
from pipelines.engine import Placed
from pipelines.spec import FeatureSet
from pipelines.stages import StageHooks, batch_source
from seqattn_core.batches import BatchSource
from seqattn_core.crosses import CrossFeature
from seqattn_core.lem import LargeEmbeddingModel
from seqattn_core.pruning import BlockSparseLinear
from seqattn_core.training import predict

__all__ = ["KeepFinalModel", "REFERENCE_ROWS", "write_model"]

REFERENCE_ROWS = 1024


class KeepFinalModel(StageHooks):
    """The in-process hooks, plus a reference to the model of stage ``retrain`` once it trained."""

    def __init__(self) -> None:
        self.placed: Placed | None = None

    def epoch_end(self, stage: str, placed: Placed, epoch: int) -> None:
        if stage == "retrain":
            self.placed = placed


def _full(t: Any) -> torch.Tensor:
    """A whole tensor from a local one or a ShardedTensor whose shards are all in this process."""
    if isinstance(t, ShardedTensor):
        out = torch.zeros(tuple(t.size()), dtype=t.dtype)
        covered = 0
        for s in t.local_shards():
            o, n = s.metadata.shard_offsets, s.metadata.shard_sizes
            out[o[0] : o[0] + n[0], o[1] : o[1] + n[1]] = s.tensor.detach().cpu()
            covered += s.tensor.numel()
        if covered != out.numel():
            raise ValueError("weights: a table is sharded over several processes; export from a world of one")
        return out
    if hasattr(t, "full_tensor"):  # a DTensor
        return t.full_tensor().detach().cpu().clone()
    return torch.as_tensor(t).detach().cpu().clone()


def _plain_state(model: LargeEmbeddingModel) -> dict[str, torch.Tensor]:
    """The runtime model's state_dict from a trained LargeEmbeddingModel (sharded tables gathered,
    the MLP's pruned layers as their effective weights)."""
    state: dict[str, torch.Tensor] = {}
    ebc = model.ebc
    if ebc is not None:
        for key, value in ebc.state_dict().items():
            if key.endswith(".weight"):
                state[f"ebc.{key}"] = _full(value)
    for part in ("dense_proj", "cross", "interaction"):
        module = getattr(model, part, None)
        if module is not None:
            state.update({f"{part}.{k}": v.detach().cpu().clone() for k, v in module.state_dict().items()})
    for i, layer in enumerate(model.mlp):
        if isinstance(layer, BlockSparseLinear):
            state[f"mlp.{i}.weight"] = layer.effective_weight().detach().cpu().clone()
            if layer.linear.bias is not None:
                state[f"mlp.{i}.bias"] = layer.linear.bias.detach().cpu().clone()
        elif isinstance(layer, nn.Linear):
            state[f"mlp.{i}.weight"] = layer.weight.detach().cpu().clone()
            if layer.bias is not None:
                state[f"mlp.{i}.bias"] = layer.bias.detach().cpu().clone()
    return state


def _choice(fs: FeatureSet, data: EncodedDataset) -> tuple[tuple[str, ...], tuple[str, ...], tuple[CrossFeature, ...]]:
    dense = tuple(f.name for f in fs.features if f.kind == "dense")
    sparse = tuple(f.name for f in fs.features if f.kind == "sparse")
    crosses = tuple(CrossFeature(c.features[0], c.features[1], c.buckets) for c in fs.crosses)
    return dense, sparse, crosses


def write_model(folder: Path, placed: Placed, data: EncodedDataset, fs: FeatureSet) -> None:
    """Write the trained final model of ``fs`` (``placed``, kept by :class:`KeepFinalModel`) into
    ``folder/model`` (layout in the module docstring)."""
    model = placed.model
    cfg = model.config
    dense, sparse, crosses = _choice(fs, data)
    # The KJT keys in the order training fed them (a sharded collection fixes that order on its
    # first batch): the kept features in the dataset's column order, then the crosses.
    keys = [n for n in data.sparse_names if n in sparse] + [c.name for c in crosses]
    order: list[str] = []
    if model.ebc is not None:
        probe = KeyedJaggedTensor.from_lengths_sync(keys=keys, values=torch.zeros(len(keys), dtype=torch.long),
                                                    lengths=torch.ones(len(keys), dtype=torch.int32))
        with torch.no_grad():
            order = list(model.ebc(probe).keys())
    arch = {"interaction": cfg.interaction, "dense_dim": cfg.dense_dim, "hidden": list(cfg.hidden),
            "cross_layers": cfg.cross_layers, "cross_rank": cfg.cross_rank, "attention_heads": cfg.attention_heads,
            "head_dim": cfg.head_dim, "dense": list(dense), "kjt_keys": keys, "embedding_order": order,
            "tables": [{"name": t.name, "feature_names": list(t.feature_names), "num_embeddings": t.num_embeddings,
                        "embedding_dim": t.embedding_dim, "pooling": t.pooling.name} for t in cfg.table_configs()]}
    out = Path(folder) / "model"
    out.mkdir(parents=True, exist_ok=True)
    torch.save(_plain_state(model), out / ".weights.pt.tmp")
    os.replace(out / ".weights.pt.tmp", out / "weights.pt")
    if isinstance(data.valid, EncodedSplit):
        _write_reference(out / "reference.parquet", placed, data, dense, sparse, crosses, keys)
    (out / ".model.json.tmp").write_text(json.dumps(arch, indent=2) + "\n")
    os.replace(out / ".model.json.tmp", out / "model.json")


def _write_reference(path: Path, placed: Placed, data: EncodedDataset, dense: tuple[str, ...],
                     sparse: tuple[str, ...], crosses: tuple[CrossFeature, ...], keys: list[str]) -> None:
    """The model's probabilities and ids on the first validation rows, with their dataset positions."""
    valid = data.valid
    assert isinstance(valid, EncodedSplit)
    n = min(REFERENCE_ROWS, len(valid))
    source = batch_source(valid, data, dense, sparse, crosses)
    assert isinstance(source, BatchSource)  # a split in memory is sliced from arrays
    batch = source.batch(0, n)
    probs, labels = predict(placed.forward, [batch])
    columns: dict[str, pa.Array] = {"row": pa.array(valid.row_index[:n].astype(np.int64)),
                                    "label": pa.array(labels.astype(np.float32)),
                                    "prediction": pa.array(probs.astype(np.float32))}
    for key in keys:
        jt = batch.sparse[key]
        offsets = np.concatenate([[0], np.cumsum(jt.lengths().numpy())]).astype(np.int32)
        columns[f"ids.{key}"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(jt.values().numpy()))
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.table(columns), tmp)
    os.replace(tmp, path)
