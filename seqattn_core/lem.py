"""The large embedding model (LEM) with Sequential Attention gates in three candidate spaces.

Sparse features (and crosses) go through one TorchRec ``EmbeddingBagCollection`` fed by a
``KeyedJaggedTensor``; tables may have different widths, which FBGEMM's table-batched kernels
handle natively, so mixed dimensions cost no padding. Dense columns are gated one by one, then
projected. The interaction is a low-rank DCN-v2 cross network on the concatenation (the default),
or AutoInt's multi-head self-attention over the fields; then an MLP, which SequentialAttention++
can prune into block-sparse layers (:mod:`seqattn_core.pruning`).

Why DCN rather than DLRM's dot interaction: the dot product needs every table at one common width,
which defeats per-feature dimensions; a cross network works on the concatenation of any widths and
models pairwise products of any two coordinates.

The gates (all :class:`~seqattn_core.attention.SequentialAttention`):

1. features: one gate per dense column and per sparse feature's pooled embedding;
2. crosses: one gate per cross candidate's embedding;
3. dimensions: one gate per optional block of each table (:class:`DimensionBlocks`), in prefix order;
4. heads (AutoInt only): one gate per attention head's output.

All three train inside ONE run. Features and crosses are selected during the first ``dims_start``
of training; the dimension race then runs, over the kept tables only, for the rest.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, KeyedTensor
from torchrec.modules.embedding_configs import PoolingType

from seqattn_core.attention import SequentialAttention
from seqattn_core.crosses import CrossFeature
from seqattn_core.dimensions import BYTES_PER_FLOAT, DimensionBlocks
from seqattn_core.pruning import BlockSparsifier, PruningConfig

# TorchRec's KeyedJaggedTensor asks torch.fx.is_fx_tracing(), which logs a note meant for torch's
# own developers on every run; drop that one message and nothing else.
logging.getLogger("torch.fx._symbolic_trace").addFilter(lambda r: "is_fx_tracing" not in r.getMessage())


@dataclass(frozen=True)
class SparseFeature:
    """One sparse input: ids in ``[0, num_embeddings)``, one or several per row."""

    name: str
    num_embeddings: int
    multi_valued: bool = False


def warmup_for(epochs: int) -> float:
    """The races' warm-up, as a fraction of the selection run: half of a one-epoch run, else 10 %.

    During the warm-up every gate is 1 and the whole model trains. In a single pass an id's
    embedding trains only when a row holding it comes by, so a short warm-up leaves the large
    tables untrained and hands the first picks to small ones; with more passes a longer warm-up
    only leaves fewer steps per pick. The measurements behind both values: ``docs/warmup.md``.

    Example::

        >>> warmup_for(1), warmup_for(2)
        (0.5, 0.1)
    """
    return 0.5 if epochs == 1 else 0.1


@dataclass(frozen=True)
class SelectionConfig:
    """What the gates search for.

    ``features=None`` keeps every feature unless ``max_embedding_bytes`` forces a choice, in which
    case as many features are taken as fit. ``dim_choices=()`` keeps one fixed width.
    """

    features: int | None
    crosses: int = 0
    dim_choices: tuple[int, ...] = ()
    per_step: int = 1
    warmup: float = 0.1  # of the feature, cross and head races (the job sets it by warmup_for)
    max_embedding_bytes: float | None = None
    dims_start: float = 0.6
    dims_warmup: float = 0.1  # of the dimension race's own span: its tables trained through the feature race
    reference_dim: int | None = None  # without a memory budget, dims re-spend kept tables x this
    keep_heads: int | None = None  # attention heads to keep (needs LEMConfig.interaction == "autoint")
    # Fraction of the rows (by content hash, seqattn_core.batches.holdout_rows) whose loss trains the
    # gate logits, and only them: the weights never fit those rows. 0: the paper's variant, where the
    # logits train on the training loss with the weights.
    gate_holdout: float = 0.0


@dataclass(frozen=True)
class LEMConfig:
    """Architecture of a LEM. ``embedding_dims`` maps a table (feature or cross name) to its width;
    tables missing from it get ``embedding_dim``.

    Example::

        >>> cfg = LEMConfig(dense=("price",), sparse=(SparseFeature("user", 100),), embedding_dim=8)
        >>> cfg.table_dims()
        {'user': 8}
    """

    dense: tuple[str, ...]
    sparse: tuple[SparseFeature, ...]
    crosses: tuple[CrossFeature, ...] = ()
    embedding_dim: int = 16
    embedding_dims: Mapping[str, int] = field(default_factory=dict)
    dense_dim: int = 16
    hidden: tuple[int, ...] = (256, 128)
    cross_layers: int = 2
    cross_rank: int = 32
    interaction: str = "dcn"  # "dcn" (low-rank DCN-v2) or "autoint" (multi-head self-attention over fields)
    attention_heads: int = 4
    head_dim: int = 8

    def table_rows(self) -> dict[str, int]:
        rows = {f.name: f.num_embeddings for f in self.sparse}
        rows.update({c.name: c.buckets for c in self.crosses})
        return rows

    def table_dims(self) -> dict[str, int]:
        return {t: int(self.embedding_dims.get(t, self.embedding_dim)) for t in self.table_rows()}

    def embedding_bytes(self) -> int:
        dims = self.table_dims()
        return sum(r * dims[t] * BYTES_PER_FLOAT for t, r in self.table_rows().items())

    def table_configs(self) -> list[EmbeddingBagConfig]:
        """The ``EmbeddingBagConfig`` list of this model: one table per feature and per cross."""
        multi = {f.name for f in self.sparse if f.multi_valued}
        dims = self.table_dims()
        return [
            EmbeddingBagConfig(
                name=f"t_{t}",
                embedding_dim=dims[t],
                num_embeddings=rows,
                feature_names=[t],
                pooling=PoolingType.MEAN if t in multi else PoolingType.SUM,
            )
            for t, rows in self.table_rows().items()
        ]


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
    """AutoInt's interaction (Song et al., CIKM 2019): every field is a token, projected to
    ``heads * head_dim`` (fields may have different widths), mixed by one multi-head self-attention
    layer with a residual, and flattened. ``head_gates`` scales each head's output, which is how
    Sequential Attention chooses the heads to keep.

    Example::

        >>> layer = FieldSelfAttention([4, 8, 16], heads=2, head_dim=4)
        >>> layer([torch.ones(5, 4), torch.ones(5, 8), torch.ones(5, 16)]).shape   # 3 fields x 2 heads x 4
        torch.Size([5, 24])
    """

    def __init__(self, widths: Sequence[int], heads: int, head_dim: int) -> None:
        super().__init__()
        if heads < 1 or head_dim < 1:
            raise ValueError(f"heads, head_dim: must be >= 1, got {heads}, {head_dim}")
        self.heads, self.head_dim = heads, head_dim
        d = heads * head_dim
        self.proj = nn.ModuleList(nn.Linear(w, d) for w in widths)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.residual = nn.Linear(d, d, bias=False)

    def forward(self, fields: Sequence[torch.Tensor], head_gates: torch.Tensor | None = None) -> torch.Tensor:
        x = torch.stack([p(f) for p, f in zip(self.proj, fields)], dim=1)  # (B, T, d)
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # (B, H, T, head_dim)
        if head_gates is not None:
            out = out * head_gates.view(1, -1, 1, 1)
        out = out.transpose(1, 2).reshape(b, t, d)
        return torch.relu(out + self.residual(x)).flatten(1)


class LargeEmbeddingModel(nn.Module):
    """A CTR model over dense columns and a ``KeyedJaggedTensor`` of sparse ids, optionally gated.

    Args:
        config: the architecture (tables, widths, tower sizes).
        selection: what to search; ``None`` builds a plain model (the retrained final model and the
            all-features reference).
        device: ``torch.device("meta")`` when ``DistributedModelParallel`` will materialise the
            tables on their shards.
        pruning: block-sparse pruning of the MLP tower (SequentialAttention++ or block magnitude),
            driven by the same training progress as the gates.

    Example::

        >>> cfg = LEMConfig(dense=("price",), sparse=(SparseFeature("user", 10), SparseFeature("item", 5)),
        ...                 embedding_dim=8, hidden=(16,))
        >>> model = LargeEmbeddingModel(cfg, SelectionConfig(features=1))
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(
        ...     keys=["user", "item"], values=torch.tensor([1, 2, 3, 4]), lengths=torch.tensor([1, 1, 1, 1]))
        >>> model.embeddings(kjt).keys()            # KeyedJaggedTensor in, gated KeyedTensor out
        ['user', 'item']
        >>> model(torch.rand(2, 1), kjt).shape       # one logit per row
        torch.Size([2])
    """

    # Buffers (register_buffer in __init__), declared for the type checker.
    stage: torch.Tensor

    def __init__(
        self,
        config: LEMConfig,
        selection: SelectionConfig | None = None,
        device: torch.device | None = None,
        pruning: PruningConfig | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.selection = selection
        self.n_dense = len(config.dense)
        self.tables = list(config.table_rows())
        self.n_features = self.n_dense + len(config.sparse)
        dims = config.table_dims()
        tables = config.table_configs()
        # A latency budget can trim a model down to dense columns only: then there is no collection.
        self.ebc = EmbeddingBagCollection(tables=tables, device=device) if tables else None
        self.dense_proj = nn.Linear(self.n_dense, config.dense_dim) if self.n_dense else None
        width = (config.dense_dim if self.n_dense else 0) + sum(dims.values())
        self.cross: LowRankCross | None = None
        self.interaction: FieldSelfAttention | None = None
        if config.interaction == "autoint":
            token_widths = ([config.dense_dim] if self.n_dense else []) + [dims[t] for t in self.tables]
            self.interaction = FieldSelfAttention(token_widths, config.attention_heads, config.head_dim)
            width = len(token_widths) * config.attention_heads * config.head_dim
        elif config.interaction == "dcn":
            self.cross = LowRankCross(width, config.cross_layers, config.cross_rank)
        else:
            raise ValueError(f"interaction: must be 'dcn' or 'autoint', got {config.interaction!r}")
        layers: list[nn.Module] = []
        for h in config.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))
        self.pruner = BlockSparsifier.wrap(self.mlp, pruning) if pruning is not None else None

        self._col_maps: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.feature_attention: SequentialAttention | None = None
        self.cross_attention: SequentialAttention | None = None
        self.dim_attention: SequentialAttention | None = None
        self.head_attention: SequentialAttention | None = None
        self.blocks: DimensionBlocks | None = None
        if selection is not None:
            self._build_gates(selection, dims)

    # -- gates -----------------------------------------------------------------------------------
    def _build_gates(self, s: SelectionConfig, dims: Mapping[str, int]) -> None:
        cfg = self.config
        rows = cfg.table_rows()
        first = s.dim_choices[0] if s.dim_choices else cfg.embedding_dim
        budget = s.max_embedding_bytes
        feature_costs = [float(BYTES_PER_FLOAT)] * self.n_dense + [
            float(f.num_embeddings * first * BYTES_PER_FLOAT) for f in cfg.sparse
        ]
        # Keeping every feature needs no race when they all fit; otherwise take as many as fit.
        self.fixed_feature_bytes = sum(feature_costs) if s.features is None else 0.0
        if s.features is not None or (budget is not None and self.fixed_feature_bytes > budget):
            self.fixed_feature_bytes = 0.0
            k = self.n_features if s.features is None else s.features
            self.feature_attention = SequentialAttention(
                self.n_features, k, s.per_step, s.warmup, costs=feature_costs, budget=budget
            )
        if s.crosses and cfg.crosses:
            costs = [float(c.buckets * first * BYTES_PER_FLOAT) for c in cfg.crosses]
            self.cross_attention = SequentialAttention(
                len(cfg.crosses), s.crosses, 1, s.warmup, costs=costs, budget=budget
            )
        if s.dim_choices and len(s.dim_choices) > 1:
            if any(d != s.dim_choices[-1] for d in dims.values()):
                raise ValueError("embedding_dim: a dimension search needs every table at the largest choice")
            self.blocks = DimensionBlocks(rows, s.dim_choices)
            # Enough phases to react to the scores, few enough that each phase trains a while.
            per_step = max(1, math.ceil(len(self.blocks) / 8))
            self.dim_attention = SequentialAttention(
                len(self.blocks), len(self.blocks), per_step, s.dims_warmup,
                costs=self.blocks.costs(), prerequisites=self.blocks.prerequisites(), rank_by_cost=True,
            )
        if s.keep_heads is not None:
            if self.interaction is None:
                raise ValueError("keep_heads: choosing attention heads needs interaction='autoint'")
            self.head_attention = SequentialAttention(cfg.attention_heads, s.keep_heads, 1, s.warmup)
        # 0 = features/crosses racing, 1 = dimension race running (kept in state_dict for resumes).
        self.register_buffer("stage", torch.zeros((), dtype=torch.long))

    def gate_modules(self) -> list[SequentialAttention]:
        races = (self.feature_attention, self.cross_attention, self.dim_attention, self.head_attention)
        return [m for m in races if m is not None]

    def _entity_gates(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(dense column gates, per-table gates) from the feature and cross races."""
        n_sparse = len(self.config.sparse)
        dense_g = table_g = None
        if self.feature_attention is not None:
            g = self.feature_attention()
            dense_g, table_g = g[: self.n_dense], g[self.n_dense :]
        if self.cross_attention is not None:
            cg = self.cross_attention()
            base = table_g if table_g is not None else cg.new_ones(n_sparse)
            table_g = torch.cat([base, cg])
        elif table_g is not None and len(self.tables) > n_sparse:
            table_g = torch.cat([table_g, table_g.new_ones(len(self.tables) - n_sparse)])
        return dense_g, table_g

    # -- forward ---------------------------------------------------------------------------------
    def embeddings(self, sparse: KeyedJaggedTensor) -> KeyedTensor:
        """Pooled embeddings of every table, each scaled by its feature/cross and block gates."""
        assert self.ebc is not None, "a model without sparse features has no embeddings"
        kt = self.ebc(sparse)
        _, table_g = self._entity_gates()
        col_entity, col_block = self._column_maps(kt)
        mult = None
        if table_g is not None:
            mult = table_g[col_entity]
        if self.dim_attention is not None:
            dg = torch.cat([self.dim_attention(), self.dim_attention.logits.new_ones(1)])[col_block]
            # Before its stage the dimension race is idle (gates 1) but stays in the graph for DDP.
            dg = torch.where(self.stage >= 1, dg, torch.ones_like(dg))
            mult = dg if mult is None else mult * dg
        if mult is None:
            return kt
        return KeyedTensor(keys=kt.keys(), length_per_key=kt.length_per_key(), values=kt.values() * mult)

    def _column_maps(self, kt: KeyedTensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Gate index of every output column: its table, and its dimension block (or the constant-1
        slot for the mandatory first block). Built from the output's own key order, because a
        sharded collection returns its keys grouped by sharding type, not in config order."""
        keys = tuple(kt.keys())
        if keys not in self._col_maps:
            widths = kt.length_per_key()
            entity = [self.tables.index(k) for k, w in zip(keys, widths) for _ in range(w)]
            block = None
            if self.blocks is not None:
                first, slot, cols = self.blocks.choices[0], len(self.blocks), []
                for k in keys:
                    cols += [slot] * first
                    for b, w in zip(self.blocks.blocks_of(k), self.blocks.widths):
                        cols += [b] * w
                block = torch.tensor(cols, dtype=torch.long, device=kt.values().device)
            self._col_maps[keys] = (torch.tensor(entity, dtype=torch.long, device=kt.values().device), block)
        return self._col_maps[keys]

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        parts = []
        if self.dense_proj is not None:
            dense_g, _ = self._entity_gates()
            parts.append(self.dense_proj(dense if dense_g is None else dense * dense_g))
        if self.interaction is not None:
            if self.ebc is not None:
                by_table = self.embeddings(sparse).to_dict()
                parts += [by_table[t] for t in self.tables]  # config order, whatever the sharding's order
            gates = self.head_attention() if self.head_attention is not None else None
            return self.mlp(self.interaction(parts, gates)).squeeze(-1)
        if self.ebc is not None:
            parts.append(self.embeddings(sparse).values())
        z = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        assert self.cross is not None  # interaction "dcn"
        return self.mlp(self.cross(z)).squeeze(-1)

    # -- selection -------------------------------------------------------------------------------
    @torch.no_grad()
    def update_selection(self, progress: float) -> dict[str, list[int]]:
        """Advance every race (and the pruning schedule) to ``progress`` in [0, 1] of the whole run;
        return new picks by space (``"pruning"``: the index of a pruning phase that just began)."""
        if not self.training:
            return {}
        picks: dict[str, list[int]] = {}
        if self.pruner is not None and self.pruner.update(progress):
            picks["pruning"] = [int(self.pruner.phase)]
        if self.selection is None:
            return picks
        s = self.selection
        has_dims = self.dim_attention is not None
        p1 = min(1.0, progress / s.dims_start) if has_dims else progress
        for name, m in (("features", self.feature_attention), ("crosses", self.cross_attention),
                        ("heads", self.head_attention)):
            if m is not None and s.max_embedding_bytes is not None and name != "heads":
                m.set_budget(s.max_embedding_bytes - self._entity_bytes(excluding=m))
            if m is not None and (new := m.update(p1)):
                picks[name] = new
        if has_dims and progress >= s.dims_start:
            assert self.dim_attention is not None
            if int(self.stage) == 0:
                self._start_dimension_race()
            p2 = (progress - s.dims_start) / (1.0 - s.dims_start)
            if new := self.dim_attention.update(p2):
                picks["dims"] = new
        return picks

    def _entity_bytes(self, excluding: SequentialAttention | None = None) -> float:
        """Bytes the feature and cross races have committed (at the smallest width), leaving out
        ``excluding``'s own picks: the two races share one memory budget."""
        spent = self.fixed_feature_bytes
        for m in (self.feature_attention, self.cross_attention):
            if m is not None and m is not excluding:
                spent += m.spent
        return spent

    def _start_dimension_race(self) -> None:
        """Exclude the blocks of dropped tables and size the block budget from what is left."""
        assert self.blocks is not None and self.dim_attention is not None and self.selection is not None
        kept = set(self.kept_tables())
        self.dim_attention.exclude([b for t in self.tables if t not in kept for b in self.blocks.blocks_of(t)])
        mandatory = self.blocks.mandatory_bytes(sorted(kept)) if kept else 0.0
        # Spend what the kept tables would take at the fixed width, so the search re-allocates the
        # same memory toward the tables that use it; a memory budget caps that only where it binds.
        rows = self.config.table_rows()
        ref = self.selection.reference_dim or self.config.embedding_dim
        budget = sum(rows[t] for t in kept) * ref * BYTES_PER_FLOAT - mandatory
        if self.selection.max_embedding_bytes is not None:
            budget = min(budget, self.selection.max_embedding_bytes - mandatory)
        self.dim_attention.set_budget(max(budget, 1e-9))
        self.stage.fill_(1)

    def finish_selection(self) -> None:
        """Run any remaining phase ends (as if training had reached progress 1.0)."""
        was = self.training
        self.train(True)
        self.update_selection(1.0)
        self.train(was)

    def kept_features(self) -> list[int]:
        """Indices (dense first, then sparse) of the kept features, in selection order."""
        if self.feature_attention is None:
            return list(range(self.n_features))
        return self.feature_attention.selection_order()

    def kept_heads(self) -> list[int]:
        """Indices of the kept attention heads in selection order (every head without a head race)."""
        if self.head_attention is None:
            return list(range(self.config.attention_heads)) if self.interaction is not None else []
        return self.head_attention.selection_order()

    def kept_crosses(self) -> list[int]:
        if self.cross_attention is None:
            return []
        return self.cross_attention.selection_order()

    def kept_tables(self) -> list[str]:
        sparse = [self.config.sparse[i - self.n_dense].name for i in self.kept_features() if i >= self.n_dense]
        return sparse + [self.config.crosses[i].name for i in self.kept_crosses()]

    def chosen_dims(self) -> dict[str, int]:
        """Width per kept table: from the dimension race, else the fixed width."""
        kept = self.kept_tables()
        if self.dim_attention is None or self.blocks is None:
            dims = self.config.table_dims()
            return {t: dims[t] for t in kept}
        dims = self.blocks.dims_from_selection(self.dim_attention.selection_order())
        return {t: dims[t] for t in kept}
