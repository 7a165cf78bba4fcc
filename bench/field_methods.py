"""The feature-selection methods of the recommender-systems literature, each ranking the fields of
one dataset on the product's own TorchRec LEM (section g, :mod:`bench.field`).

Every method is a function ``rank(search) -> Ranking``: the fields best first, the wall time of
the ranking, and how many training runs of the model it cost. ``search`` holds the search split
only (the first 80 % of the train split trains, the last 20 % is the held-out search data): no
method sees the validation rows on which the retrained models are scored (the ERASE protocol's
test set).

The gated methods (AutoField, AdaFS, ShuffleGate, group lasso, and the all-features model scored
by SHARK and by permutation) train :class:`GatedLEM`: the product's ``LargeEmbeddingModel`` (same
tables, DCN-v2 tower, FBGEMM fused kernels under ``DistributedModelParallel``) with one
:class:`FieldGate` between the pooled embeddings and the tower, placed by
:func:`pipelines.engine.place` and trained by the product's one loop
(:func:`seqattn_core.training.train`). Sequential Attention and one-shot attention are the job's own
gated run (:func:`pipelines.stages.plan_job` + :func:`pipelines.stages.fit`).
"""

from __future__ import annotations

import itertools
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import torch
from sklearn.feature_selection import mutual_info_classif
from sklearn.inspection import permutation_importance
from sklearn.metrics import roc_auc_score
from torch import nn

from bench import gate_holdout_for
from bench.lem import model_config, train_eval
from pipelines.dataset import EncodedDataset, EncodedSplit, take_jagged
from pipelines.engine import Placed, place
from pipelines.spec import JobSpec
from pipelines.stages import batch_source, fit, plan_job, selection_outcome
from seqattn_core.batches import BatchSource, first_ids
from seqattn_core.crosses import CrossFeature
from seqattn_core.lem import LargeEmbeddingModel, LEMConfig
from seqattn_core.training import StepEvent, predict, train

EVAL_BATCH = 8192
DIM_CHOICES = (4, 8, 16, 32)


@dataclass(frozen=True)
class Search:
    """What a ranker sees: ``data.train`` (the search-train rows), ``data.valid`` (the held-out
    search rows), the job settings (epochs, batch size, seed) and how the job is asked to search."""

    data: EncodedDataset
    spec: JobSpec
    crosses: int = 3

    @property
    def fields(self) -> list[str]:
        return list(self.data.dense_names) + list(self.data.sparse_names)


@dataclass(frozen=True)
class Ranking:
    """A method's output: fields best first, plus what the retrained model may add on top of them."""

    order: list[str]
    seconds: float
    train_runs: float  # full training runs of the model spent on the ranking (0 for a filter)
    crosses: tuple[CrossFeature, ...] = ()  # in pick order; kept when both fields are kept
    dims: dict[str, int] = field(default_factory=dict)  # per table; empty = the fixed width
    note: str = ""


def split_search(data: EncodedDataset, holdout: float = 0.2) -> EncodedDataset:
    """The search view of ``data``: train = the first 1 - ``holdout`` of the train rows, valid = the
    rest (rows were shuffled when the split was made, so a slice is a random sample)."""
    n = len(data.train)
    cut = n - max(1, int(round(n * holdout)))
    return replace(data, train=_rows(data.train, np.arange(cut)), valid=_rows(data.train, np.arange(cut, n)))


def _rows(split: EncodedSplit, rows: np.ndarray) -> EncodedSplit:
    sparse = {k: take_jagged(v, lens, rows) for k, (v, lens) in split.sparse.items()}
    return EncodedSplit(np.ascontiguousarray(split.dense[rows]), sparse, split.labels[rows], split.row_index[rows])


def _all_sources(data: EncodedDataset, config: LEMConfig) -> tuple[BatchSource, BatchSource]:
    sparse = tuple(f.name for f in config.sparse)
    return (batch_source(data.train, data, config.dense, sparse, ()),
            batch_source(data.valid, data, config.dense, sparse, ()))


# -- the gated model ------------------------------------------------------------------------------
class FieldGate(nn.Module):
    """Maps (dense columns, pooled embedding columns, field index of each embedding column) to the
    same shapes. Field ``i`` is dense column ``i`` for ``i < n_dense``, else sparse table ``i - n_dense``.
    Subclasses hold their trainable gate in ``logits`` so that :func:`pipelines.engine.place` gives
    it the gate learning rate (parameters named ``*attention.logits``)."""

    def __init__(self, n_fields: int, n_dense: int) -> None:
        super().__init__()
        self.n_fields, self.n_dense = n_fields, n_dense

    def forward(self, dense: torch.Tensor, values: torch.Tensor,
                col: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return dense, values

    def scale(self, dense: torch.Tensor, values: torch.Tensor, col: torch.Tensor,
              g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Multiply every field by its gate; ``g`` is (n_fields,) or (batch, n_fields)."""
        gd, gs = g[..., : self.n_dense], g[..., self.n_dense:]
        return dense * gd, values * gs[..., col]


class GatedLEM(LargeEmbeddingModel):
    """The product's LEM (all fields, one width, DCN-v2 tower) with a :class:`FieldGate` applied to
    the dense columns and the pooled embeddings before the tower.

    Example::

        >>> from seqattn_core.lem import SparseFeature
        >>> from torchrec import KeyedJaggedTensor
        >>> cfg = LEMConfig(dense=(), sparse=(SparseFeature("a", 5), SparseFeature("b", 3)), embedding_dim=4,
        ...                 hidden=(8,))
        >>> model = GatedLEM(cfg, ShuffleGate(2, 0))
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(keys=["a", "b"], values=torch.tensor([1, 2, 0, 1]),
        ...                                           lengths=torch.tensor([1, 1, 1, 1]))
        >>> model(torch.zeros(2, 0), kjt).shape
        torch.Size([2])
    """

    def __init__(self, config: LEMConfig, gate: FieldGate, device: torch.device | None = None) -> None:
        super().__init__(config, None, device=device)
        if config.crosses or config.interaction != "dcn":
            raise ValueError("GatedLEM: fields only (no crosses) and the DCN interaction")
        self.field_attention = gate

    def forward(self, dense: torch.Tensor, sparse: Any) -> torch.Tensor:
        kt = self.ebc(sparse)
        col = self._column_maps(kt)[0]
        dense, values = self.field_attention(dense, kt.values(), col)
        parts = ([self.dense_proj(dense)] if self.dense_proj is not None else []) + [values]
        z = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return self.mlp(self.cross(z)).squeeze(-1)


class _AddGrad(torch.autograd.Function):
    """Identity forward; backward adds a fixed tensor to the gradient. Adds a regulariser's gradient
    without touching the product's loss (the training loop minimises the log-loss only)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(extra)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (extra,) = ctx.saved_tensors
        return grad + extra, None


class AutoFieldGate(FieldGate):
    """AutoField (Wang et al., "AutoField: Automating Feature Selection in Deep Recommender
    Systems", WWW 2022): two architecture logits per field (drop, keep); during the search each
    field is scaled by the keep weight of a Gumbel-softmax sample, and the architecture logits are
    trained DARTS-style (first-order bi-level): the model's weights on training batches, the logits
    on held-out batches. Fields are ranked by their keep probability."""

    def __init__(self, n_fields: int, n_dense: int, tau: float = 1.0) -> None:
        super().__init__(n_fields, n_dense)
        # Not a registered parameter: the weights' optimizer and DDP never see it; the held-out
        # steps update it with their own optimizer.
        self.alpha = torch.zeros(n_fields, 2, requires_grad=True)
        self.tau = tau
        self.arch_step = False

    def forward(self, dense: torch.Tensor, values: torch.Tensor,
                col: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.alpha if self.arch_step else self.alpha.detach()
        if self.training:
            keep = nn.functional.gumbel_softmax(alpha, tau=self.tau, hard=False)[:, 1]
        else:
            keep = torch.softmax(alpha, dim=1)[:, 1]
        return self.scale(dense, values, col, keep)

    def importance(self) -> np.ndarray:
        return torch.softmax(self.alpha.detach(), dim=1)[:, 1].numpy()


class AdaFSGate(FieldGate):
    """AdaFS (Lin et al., "AdaFS: Adaptive Feature Selection in Deep Recommender System", KDD 2022),
    soft variant: a controller (batch norm, one hidden layer, softmax over fields) reads every
    field's embedding and weighs each field per example; trained jointly with the model. The
    weights are multiplied by the number of fields, so the average field keeps its scale. Fields are
    ranked by their mean weight over the held-out rows."""

    def __init__(self, n_fields: int, n_dense: int, width: int, hidden: int = 64) -> None:
        super().__init__(n_fields, n_dense)
        self.controller = nn.Sequential(nn.BatchNorm1d(width), nn.Linear(width, hidden), nn.ReLU(),
                                        nn.Linear(hidden, n_fields))
        self.record: list[torch.Tensor] | None = None

    def forward(self, dense: torch.Tensor, values: torch.Tensor,
                col: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.softmax(self.controller(torch.cat([dense, values], dim=1)), dim=1)
        if self.record is not None:
            self.record.append(w.detach())
        return self.scale(dense, values, col, w * self.n_fields)


class ShuffleGate(FieldGate):
    """ShuffleGate (arXiv:2503.09315): each field's input becomes ``g * e + (1 - g) * shuffle(e)``
    with ``g = sigmoid(logit)`` and ``shuffle`` a random permutation of that field across the batch,
    so a gate trades the field's signal for same-distribution noise; an L1 penalty ``lam * sum(g)``
    pushes gates down, and the gates polarise (useful fields to 1, useless to 0). Ranked by gate.
    ``lam = 1e-4``: with the gates' Adam step (lr 0.1) a constant penalty gradient above ~1e-3
    outweighs the loss gradient of every field and all gates collapse to 0 together (measured on
    the planted data: 0.05 and 0.005 left at most two fields open)."""

    def __init__(self, n_fields: int, n_dense: int, lam: float = 1e-4) -> None:
        super().__init__(n_fields, n_dense)
        self.logits = nn.Parameter(torch.zeros(n_fields))
        self.lam = lam

    def forward(self, dense: torch.Tensor, values: torch.Tensor,
                col: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.sigmoid(self.logits)
        if not self.training:
            return self.scale(dense, values, col, g)  # not used for ranking; eval = expected input
        g = _AddGrad.apply(g, torch.full_like(g, self.lam))
        b = values.shape[0]
        perms = torch.argsort(torch.rand(self.n_fields, b), dim=1)  # one permutation per field
        shuffled_values = torch.gather(values, 0, perms[self.n_dense + col].T)
        shuffled_dense = torch.gather(dense, 0, perms[: self.n_dense].T) if self.n_dense else dense
        gd, gs = g[: self.n_dense], g[self.n_dense:][col]
        return gd * dense + (1 - gd) * shuffled_dense, gs * values + (1 - gs) * shuffled_values

    def importance(self) -> np.ndarray:
        # The logits, not the gates: polarised gates saturate to ties in float32.
        return self.logits.detach().numpy().copy()


class GroupLassoGate(FieldGate):
    """Group lasso (Yuan & Lin, "Model selection and estimation in regression with grouped
    variables", JRSS-B 2006) on the field embeddings: the training gradient gets the subgradient of
    ``lam * sum_f sqrt(mean_b ||e_{f,b}||^2)`` (one group per field, over the pooled embedding the
    tower reads, or the dense column). The penalty reaches the embedding rows through the fused
    backward pass. Fields are ranked by the RMS norm of their embedding on the held-out rows."""

    def __init__(self, n_fields: int, n_dense: int, lam: float = 0.02) -> None:
        super().__init__(n_fields, n_dense)
        self.lam = lam
        self.record: list[torch.Tensor] | None = None

    def _norms(self, dense: torch.Tensor, values: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        sq = torch.zeros(self.n_fields - self.n_dense, dtype=values.dtype).index_add_(0, col, (values ** 2).sum(0))
        return torch.cat([(dense ** 2).sum(0), sq]) / max(1, values.shape[0])  # mean_b ||e_fb||^2

    def forward(self, dense: torch.Tensor, values: torch.Tensor,
                col: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            ms = self._norms(dense, values, col)
            if self.record is not None:
                self.record.append(ms)
        if self.training:
            b = max(1, values.shape[0])
            inv = self.lam / (b * ms.clamp_min(1e-12).sqrt())
            values = _AddGrad.apply(values, values.detach() * inv[self.n_dense:][col])
            if self.n_dense:
                dense = _AddGrad.apply(dense, dense.detach() * inv[: self.n_dense])
        return dense, values


class ProbeGate(FieldGate):
    """No gate while training (the plain all-features model); for scoring, ``probe`` holds a gate
    of ones that requires grad, so ``d loss / d gate_f = mean_b e_{f,b} . d loss / d e_{f,b}``."""

    def __init__(self, n_fields: int, n_dense: int) -> None:
        super().__init__(n_fields, n_dense)
        self.probe: torch.Tensor | None = None

    def forward(self, dense: torch.Tensor, values: torch.Tensor,
                col: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.probe is None:
            return dense, values
        return self.scale(dense, values, col, self.probe)


def _seed(spec: JobSpec, stage: str) -> None:
    """Seed torch from the run's seed and the method's stage, so a method's numbers do not depend on
    which methods ran before it in the process."""
    torch.manual_seed(spec.training.seed * 1_000_003 + zlib.crc32(stage.encode()))


def fit_gated(gate: FieldGate, data: EncodedDataset, spec: JobSpec, stage: str,
              on_step: Callable[[Placed, StepEvent], None] | None = None) -> tuple[Placed, float]:
    """Place and train a :class:`GatedLEM` of every field on ``data.train``: the same placement,
    optimizers, seeding and loop as :func:`pipelines.stages.fit`; ``on_step`` runs after every step."""
    t = spec.training
    _seed(spec, stage)
    config = model_config(data, embedding_dim=t.embedding_dim)
    model = GatedLEM(config, gate, device=torch.device("meta"))
    placed = place(model, t.learning_rate)
    src = _all_sources(data, config)[0]
    steps = src.num_batches(t.batch_size)

    def step_hook(ev: StepEvent) -> None:
        if on_step is not None and not ev.epoch_end:
            on_step(placed, ev)

    start = time.perf_counter()
    train(placed.forward, placed.model, placed.optimizer, lambda e: src.batches(t.batch_size, seed=t.seed * 1000 + e),
          steps, t.epochs, stage=stage, on_step=step_hook)
    return placed, time.perf_counter() - start


def _ranked(fields: list[str], scores: np.ndarray) -> list[str]:
    return [fields[i] for i in np.argsort(-np.asarray(scores), kind="stable")]


# -- the rankers ----------------------------------------------------------------------------------
def _job_spec(search: Search, **selection: Any) -> JobSpec:
    return search.spec.model_copy(update={"selection": search.spec.selection.model_copy(update=selection)})


def sequential_ranking(search: Search, crosses: bool, dims: bool, one_shot: bool = False,
                       **overrides: Any) -> Ranking:
    """Sequential Attention's job: ONE gated run selects every field in order (``features`` = all),
    and optionally crosses and dimension blocks in the same run; ``one_shot`` takes the whole order
    at once from a single phase with no warm-up (the top-k of the trained gates); ``overrides``
    replace fields of the job's :class:`~seqattn_core.lem.SelectionConfig` (``warmup`` for
    :mod:`bench.warmup`, ``gate_holdout`` for the paper's variant)."""
    data, n = search.data, len(search.fields)
    spec = _job_spec(search, features=n, crosses=search.crosses if crosses else 0,
                     embedding_dims=list(DIM_CHOICES) if dims else [])
    start = time.perf_counter()
    plan = plan_job(spec, data)
    selection = replace(plan.selection, per_step=n, warmup=0.0) if one_shot else plan.selection
    held_out = gate_holdout_for(spec.training.epochs)  # section g's Sequential Attention, unless overridden
    selection = replace(selection, **{"gate_holdout": held_out, **overrides})
    train_src = batch_source(data.train, data, plan.search.dense, tuple(data.sparse_names), plan.crosses)
    placed, _ = fit(plan.search, selection, train_src, spec, "selection", None)
    outcome = selection_outcome(placed.model, 0.0)
    seconds = time.perf_counter() - start
    order = [search.fields[i] for i in outcome.kept]
    order += [f for f in search.fields if f not in order]  # only if a budget stopped the race early
    picked = tuple(plan.crosses[i] for i in outcome.kept_crosses)
    return Ranking(order, seconds, 1.0, crosses=picked, dims=dict(outcome.dims) if dims else {})


def rank_autofield(search: Search) -> Ranking:
    data, t = search.data, search.spec.training
    gate = AutoFieldGate(len(search.fields), len(data.dense_names))
    arch_opt = torch.optim.Adam([gate.alpha], lr=t.learning_rate * 10)
    src = _all_sources(data, model_config(data, embedding_dim=t.embedding_dim))[1]
    held_out = (b for epoch in itertools.count() for b in src.batches(t.batch_size, seed=t.seed + epoch))

    def arch_step(placed: Placed, ev: StepEvent) -> None:
        # First-order DARTS: one step of the architecture logits on a held-out batch. The unwrapped
        # model is called (no DDP hooks) and only the logits' gradient is asked for, so the fused
        # embedding update in the backward pass never runs on held-out rows.
        batch = next(held_out)
        gate.arch_step = True
        try:
            loss = nn.functional.binary_cross_entropy_with_logits(placed.model(batch.dense, batch.sparse), batch.labels)
            (grad,) = torch.autograd.grad(loss, [gate.alpha])
        finally:
            gate.arch_step = False
        gate.alpha.grad = grad
        arch_opt.step()
        gate.alpha.grad = None

    start = time.perf_counter()
    fit_gated(gate, data, search.spec, "autofield", on_step=arch_step)
    return Ranking(_ranked(search.fields, gate.importance()), time.perf_counter() - start, 1.0,
                   note="each step adds one held-out batch (forward + gate gradient)")


def _mean_over_held_out(placed: Placed, data: EncodedDataset, config: LEMConfig) -> None:
    predict(placed.forward, _all_sources(data, config)[1].batches(EVAL_BATCH))


def rank_adafs(search: Search) -> Ranking:
    data, t = search.data, search.spec.training
    config = model_config(data, embedding_dim=t.embedding_dim)
    width = len(data.dense_names) + sum(config.table_dims().values())
    _seed(search.spec, "adafs-controller")  # the controller's initial weights, drawn before fit_gated seeds the model
    gate = AdaFSGate(len(search.fields), len(data.dense_names), width)
    start = time.perf_counter()
    placed, _ = fit_gated(gate, data, search.spec, "adafs")
    gate.record = []
    _mean_over_held_out(placed, data, config)
    weights = torch.cat(gate.record).mean(0).numpy()
    gate.record = None
    return Ranking(_ranked(search.fields, weights), time.perf_counter() - start, 1.0)


def rank_shufflegate(search: Search) -> Ranking:
    gate = ShuffleGate(len(search.fields), len(search.data.dense_names))
    start = time.perf_counter()
    fit_gated(gate, search.data, search.spec, "shufflegate")
    return Ranking(_ranked(search.fields, gate.importance()), time.perf_counter() - start, 1.0)


def rank_group_lasso(search: Search) -> Ranking:
    data, t = search.data, search.spec.training
    gate = GroupLassoGate(len(search.fields), len(data.dense_names))
    start = time.perf_counter()
    placed, _ = fit_gated(gate, data, search.spec, "group_lasso")
    gate.record = []
    _mean_over_held_out(placed, data, model_config(data, embedding_dim=t.embedding_dim))
    norms = torch.stack(gate.record).mean(0).sqrt().numpy()
    gate.record = None
    return Ranking(_ranked(search.fields, norms), time.perf_counter() - start, 1.0)


@dataclass
class AllFeaturesModel:
    """The all-features model trained once on the search rows, shared by SHARK and permutation
    importance (each reports the training run as its own cost)."""

    placed: Placed
    gate: ProbeGate
    config: LEMConfig
    train_seconds: float


_TRAINED: dict[int, AllFeaturesModel] = {}


def all_features_model(search: Search) -> AllFeaturesModel:
    """The all-features model of ``search``, trained on first use and kept for the next caller
    (one search's data at a time)."""
    key = id(search.data)
    if key not in _TRAINED:
        _TRAINED.clear()
        gate = ProbeGate(len(search.fields), len(search.data.dense_names))
        start = time.perf_counter()
        placed, _ = fit_gated(gate, search.data, search.spec, "all_features")
        seconds = time.perf_counter() - start  # wall time with placement, like every ranking's wall time
        config = model_config(search.data, embedding_dim=search.spec.training.embedding_dim)
        _TRAINED[key] = AllFeaturesModel(placed, gate, config, seconds)
    return _TRAINED[key]


def rank_shark(search: Search) -> Ranking:
    """SHARK (Zhang et al., "SHARK: A Lightweight Model Compression Approach for Large-scale
    Recommender Systems", CIKM 2023), feature pruning: a field's importance is the first-order
    Taylor estimate of the loss change when its embedding is zeroed, ``|sum_b e_f . dL/de_f|``,
    accumulated over held-out batches of the trained all-features model."""
    trained = all_features_model(search)
    start = time.perf_counter()
    model, t = trained.placed.model, search.spec.training
    model.eval()  # no dropout/batch norm in the LEM; eval only stops any selection bookkeeping
    total = np.zeros(len(search.fields))
    for batch in _all_sources(search.data, trained.config)[1].batches(t.batch_size):
        trained.gate.probe = torch.ones(len(search.fields), requires_grad=True)
        loss = nn.functional.binary_cross_entropy_with_logits(model(batch.dense, batch.sparse), batch.labels,
                                                              reduction="sum")
        (grad,) = torch.autograd.grad(loss, [trained.gate.probe])
        total += grad.numpy()
    trained.gate.probe = None
    seconds = trained.train_seconds + time.perf_counter() - start
    return Ranking(_ranked(search.fields, np.abs(total)), seconds, 1.0,
                   note="shares its trained model with permutation")


class _FieldIndexModel:
    """scikit-learn's view of the trained model: ``X[:, f]`` holds, for each row, the index of the
    row whose value field ``f`` takes; permuting column ``f`` permutes field ``f`` alone (jagged
    fields included), which is what :func:`sklearn.inspection.permutation_importance` does."""

    def __init__(self, trained: AllFeaturesModel, split: EncodedSplit, data: EncodedDataset) -> None:
        self.trained, self.split, self.data = trained, split, data

    def fit(self, X: np.ndarray, y: np.ndarray) -> _FieldIndexModel:
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        n_dense = len(self.data.dense_names)
        dense = np.stack([self.split.dense[X[:, j], j] for j in range(n_dense)], axis=1) if n_dense else \
            np.zeros((len(X), 0), np.float32)
        sparse = {name: take_jagged(*self.split.sparse[name], X[:, n_dense + i])
                  for i, name in enumerate(self.data.sparse_names)}
        split = EncodedSplit(dense, sparse, self.split.labels, self.split.row_index)
        cfg = self.trained.config
        src = batch_source(split, self.data, cfg.dense, tuple(f.name for f in cfg.sparse), ())
        probs, _ = predict(self.trained.placed.forward, src.batches(EVAL_BATCH))
        return probs


def rank_permutation(search: Search, n_repeats: int = 5) -> Ranking:
    """Permutation importance (Breiman, "Random Forests", Machine Learning 2001) of the trained
    all-features model on the held-out rows: the drop in AUC when one field is shuffled, by
    :func:`sklearn.inspection.permutation_importance` (``n_repeats`` shuffles per field)."""
    trained = all_features_model(search)
    start = time.perf_counter()
    split = search.data.valid
    X = np.tile(np.arange(len(split))[:, None], (1, len(search.fields)))
    result = permutation_importance(
        _FieldIndexModel(trained, split, search.data), X, split.labels,
        scoring=lambda est, X_, y_: roc_auc_score(y_, est.predict(X_)), n_repeats=n_repeats,
        random_state=search.spec.training.seed)
    seconds = trained.train_seconds + time.perf_counter() - start
    return Ranking(_ranked(search.fields, result.importances_mean), seconds, 1.0,
                   note=f"{n_repeats} shuffles per field; shares its trained model with SHARK")


def rank_mutual_info(search: Search) -> Ranking:
    """Mutual-information filter: :func:`sklearn.feature_selection.mutual_info_classif` between the
    label and each field (ids as discrete values, the first id of a list field; dense columns by
    the k-NN estimator), on the search-train rows."""
    data = search.data
    start = time.perf_counter()
    cols = [data.train.dense[:, j] for j in range(len(data.dense_names))]
    cols += [first_ids(*data.train.sparse[n]).astype(np.float64) for n in data.sparse_names]
    discrete = np.array([False] * len(data.dense_names) + [True] * len(data.sparse_names))
    mi = mutual_info_classif(np.stack(cols, axis=1), data.train.labels.astype(int), discrete_features=discrete,
                             random_state=search.spec.training.seed)
    return Ranking(_ranked(search.fields, mi), time.perf_counter() - start, 0.0)


def rank_greedy(search: Search, max_k: int | None = None) -> Ranking:
    """Greedy forward selection with retraining: at each step train the LEM once per remaining
    field (search-train rows) and keep the field whose model scores the best held-out AUC. The
    expensive wrapper that Sequential Attention approximates; ``max_k`` stops early (the rest of the
    order is then left unranked, in column order)."""
    fields, data, spec = search.fields, search.data, search.spec
    max_k = len(fields) - 1 if max_k is None else min(max_k, len(fields) - 1)
    chosen: list[str] = []
    runs = 0
    start = time.perf_counter()
    while len(chosen) < max_k:
        best, best_auc = None, -math.inf
        for f in fields:
            if f in chosen:
                continue
            auc = train_eval(data, spec,
                             subset_config(data, chosen + [f], embedding_dim=spec.training.embedding_dim))["auc"]
            runs += 1
            if auc > best_auc:
                best, best_auc = f, auc
        chosen.append(best)
    rest = [f for f in fields if f not in chosen]
    if len(rest) == 1:
        chosen += rest
    note = "" if len(chosen) == len(fields) else f"stopped after {len(chosen)} picks"
    return Ranking(chosen + [f for f in fields if f not in chosen], time.perf_counter() - start, float(runs),
                   note=note)


def rank_random(search: Search) -> Ranking:
    rng = np.random.default_rng(search.spec.training.seed)
    return Ranking([search.fields[i] for i in rng.permutation(len(search.fields))], 0.0, 0.0)


def subset_config(data: EncodedDataset, fields: list[str], crosses: tuple[CrossFeature, ...] = (),
                  dims: dict[str, int] | None = None, embedding_dim: int = 16) -> LEMConfig:
    """The LEM of exactly ``fields`` (+ ``crosses``), in the dataset's column order."""
    base = model_config(data, crosses=crosses, dims=dims, embedding_dim=embedding_dim)
    keep = set(fields)
    return replace(base, dense=tuple(d for d in base.dense if d in keep),
                   sparse=tuple(s for s in base.sparse if s.name in keep))


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    rank: Callable[[Search], Ranking]
    cite: str


METHODS: dict[str, Method] = {m.name: m for m in (
    # Held-out gates (bench.gate_holdout_for: 20 % from two epochs on); see sequential_ranking.
    Method("sa", "Sequential Attention: features", partial(sequential_ranking, crosses=False, dims=False),
           "Yasuda et al., ICLR 2023"),
    # The paper's variant and the job's default: the gates train on the training loss with the weights.
    Method("sa_paper", "Sequential Attention, paper's gates (no held-out rows)",
           partial(sequential_ranking, crosses=False, dims=False, gate_holdout=0.0), "Yasuda et al., ICLR 2023"),
    Method("sa_crosses", "Sequential Attention: features + crosses",
           partial(sequential_ranking, crosses=True, dims=False), "Yasuda et al., ICLR 2023"),
    Method("sa_dims", "Sequential Attention: features + crosses + dims",
           partial(sequential_ranking, crosses=True, dims=True), "Yasuda et al., ICLR 2023"),
    Method("oneshot", "one-shot attention", partial(sequential_ranking, crosses=False, dims=False, one_shot=True),
           "same gates, one phase, no warm-up"),
    Method("autofield", "AutoField (DARTS)", rank_autofield, "Wang et al., WWW 2022"),
    Method("adafs", "AdaFS (soft)", rank_adafs, "Lin et al., KDD 2022"),
    Method("shufflegate", "ShuffleGate", rank_shufflegate, "arXiv:2503.09315"),
    Method("shark", "SHARK (Taylor)", rank_shark, "Zhang et al., CIKM 2023"),
    Method("permutation", "permutation importance", rank_permutation, "Breiman 2001; scikit-learn"),
    Method("group_lasso", "group lasso", rank_group_lasso, "Yuan & Lin 2006"),
    Method("mi", "mutual-information filter", rank_mutual_info, "scikit-learn mutual_info_classif"),
    Method("greedy", "greedy forward (retrain)", rank_greedy, "wrapper; Sequential Attention approximates it"),
    Method("random", "random", rank_random, ""),
)}
