"""The one training loop, shared by the in-process CLI and the Ray Train workers.

It knows nothing of placement: it is handed the module to call (a plain model, or the same model
wrapped by ``DistributedModelParallel``), the unwrapped :class:`LargeEmbeddingModel` whose gates it
advances, and an optimizer. Selection is driven by training progress = step / total steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from sklearn.metrics import log_loss, roc_auc_score
from torch import nn

from seqattn_core.attention import reset_optimizer_state
from seqattn_core.batches import Batch, holdout_rows, split_rows
from seqattn_core.lem import LargeEmbeddingModel


@dataclass
class StepEvent:
    """What the loop reports after each step (and at epoch ends, with ``epoch_end=True``)."""

    stage: str
    epoch: int
    step: int
    total_steps: int
    rows: int
    loss: float
    picks: dict[str, int] = field(default_factory=dict)
    epoch_end: bool = False

    @property
    def progress(self) -> float:
        return self.step / max(1, self.total_steps)


def _count_picks(model: LargeEmbeddingModel) -> dict[str, int]:
    out = {}
    for name, m in (("features", model.feature_attention), ("crosses", model.cross_attention),
                    ("dims", model.dim_attention), ("heads", model.head_attention)):
        if m is not None:
            out[name] = m.num_selected
    return out


def model_device(forward: nn.Module) -> torch.device:
    """Where ``forward`` computes (its parameters' device): the CPU, or the GPU that
    ``DistributedModelParallel`` placed it on."""
    param = next(forward.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def gate_learning_rate(model: LargeEmbeddingModel, total_steps: int, learning_rate: float) -> float:
    """The learning rate of ``model``'s gate logits when trained for ``total_steps`` by :func:`train`.

    Adam moves a logit by about its lr per step: give the shortest race's phase room to move the
    logits by ~3 nats, so short runs (few steps per pick) still separate the candidates. Never
    below ten times the towers' ``learning_rate`` (and exactly that for a model without gates).
    The features' and crosses' races share the first ``dims_start`` of the run when dimension
    blocks are searched, the blocks' race the rest; each race spends its warm-up, then splits what
    is left into its phases.

        >>> from seqattn_core.lem import LEMConfig, SelectionConfig, SparseFeature
        >>> config = LEMConfig(dense=(), sparse=(SparseFeature("a", 10), SparseFeature("b", 10)))
        >>> gate_learning_rate(LargeEmbeddingModel(config), 1000, 0.01)  # no gates: 10 x lr
        0.1
        >>> gated = LargeEmbeddingModel(config, SelectionConfig(features=1, warmup=0.0))
        >>> gate_learning_rate(gated, 20, 0.01)  # 1 phase of 20 steps: 3 nats in 20 steps
        0.15
    """
    floor = learning_rate * 10
    if model.selection is None:
        return floor
    s = model.selection
    spans = []
    for m, frac in ((model.feature_attention, s.dims_start if model.dim_attention else 1.0),
                    (model.cross_attention, s.dims_start if model.dim_attention else 1.0),
                    (model.dim_attention, 1.0 - s.dims_start)):
        if m is not None:
            spans.append(total_steps * frac * (1 - m.schedule.warmup) / m.schedule.num_phases)
    return max(floor, 3.0 / max(1.0, min(spans))) if spans else floor


def train(
    forward: nn.Module,
    model: LargeEmbeddingModel,
    optimizer: torch.optim.Optimizer,
    batches: Callable[[int], Iterable[Batch]],
    steps_per_epoch: int,
    epochs: int,
    gate_optimizer: torch.optim.Optimizer | None = None,
    start_epoch: int = 0,
    stage: str = "train",
    on_step: Callable[[StepEvent], None] | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
) -> float:
    """Train ``epochs`` epochs (resuming at ``start_epoch``); returns the last epoch's mean loss.

    ``batches(epoch)`` yields the epoch's batches. ``gate_optimizer`` is the torch optimizer that
    holds the gate logits: its state for a gate is reset whenever that gate's race picks. With
    ``model.selection.gate_holdout`` > 0 the held-out rows of every batch train the gate logits
    only (:func:`gate_step`) and the weights train on the rest.
    """
    device = model_device(forward)
    holdout = model.selection.gate_holdout if model.selection is not None and model.gate_modules() else 0.0
    total = steps_per_epoch * epochs
    step = start_epoch * steps_per_epoch
    rows = 0
    mean_loss = math.nan
    for epoch in range(start_epoch, epochs):
        forward.train()
        losses = []
        for batch in batches(epoch):
            batch = batch.to(device)
            rows += len(batch)  # every row read, held-out ones included
            held = None
            if holdout > 0 and len(batch) > 1:
                batch, held = split_rows(batch, _both_sides(holdout_rows(batch, holdout)))
            logits = forward(batch.dense, batch.sparse)
            if held is None:
                loss = nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
            else:
                # The two parts' sizes differ between workers: means over the global counts keep a
                # W-worker step equal to a one-worker step over the same rows (DDP averages over W).
                counts = _global_counts(len(batch), len(held))
                loss = nn.functional.binary_cross_entropy_with_logits(
                    logits, batch.labels, reduction="sum") * (_world() / counts[0])
            objective = loss + model.pruner.penalty() if model.pruner is not None else loss
            optimizer.zero_grad()
            objective.backward()
            if held is not None:
                gate_step(model, held, counts[1])
            optimizer.step()
            step += 1
            picks = model.update_selection(min(1.0, step / total))
            if picks and gate_optimizer is not None:
                params = [m.logits for m in model.gate_modules()]
                # ACDC: every pruning phase starts with a fresh optimizer state
                if "pruning" in picks and model.pruner is not None:
                    params += model.pruner.layer_parameters()
                reset_optimizer_state(gate_optimizer, params)
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(StepEvent(stage, epoch, step, total, rows, losses[-1], _count_picks(model)))
        mean_loss = float(np.mean(losses)) if losses else math.nan
        if on_step is not None:
            on_step(StepEvent(stage, epoch, step, total, rows, mean_loss, _count_picks(model), epoch_end=True))
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    model.finish_selection()
    return mean_loss


def _both_sides(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` with at least one row on each side. An empty part would give a NaN loss, and on Ray
    a worker whose held-out part skipped the sharded forward would leave the others waiting in its
    all-to-all; every worker's batch has the same size, so every worker makes the same calls."""
    if not bool(mask.any()):
        mask = mask.clone()
        mask[0] = True
    elif bool(mask.all()):
        mask = mask.clone()
        mask[-1] = False
    return mask


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _global_counts(*counts: int) -> list[float]:
    """``counts`` summed over the workers (one small all-reduce; as given in a single process)."""
    if _world() == 1:
        return [float(c) for c in counts]
    total = torch.tensor(counts, dtype=torch.float64)
    dist.all_reduce(total)
    return total.tolist()


def gate_step(model: LargeEmbeddingModel, held: Batch, held_rows: float | None = None) -> None:
    """Replace the gate logits' gradients with those of the log-loss on ``held``: rows the weights
    never train on, so a gate's score is what its candidate adds on unseen rows, not how well its
    table memorises the training rows (first-order bilevel training, as in DARTS).

    The unwrapped model is called and only the logits' gradients are asked for, so neither the
    fused embedding update inside backward nor DDP's gradient hooks run on the held-out rows. The
    loss is the mean over ``held_rows``, the held-out rows of every worker's batch (this one's by
    default); the gradients are summed over the workers by hand, so every worker's logits stay
    equal and W workers step as one would.
    """
    races = [m for m in model.gate_modules() if not m.done and not bool(m.warming)]
    if not races:
        return
    params = [m.logits for m in races]
    loss = nn.functional.binary_cross_entropy_with_logits(model(held.dense, held.sparse), held.labels,
                                                          reduction="sum") / (held_rows or len(held))
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    for p, g in zip(params, grads):
        g = torch.zeros_like(p) if g is None else g.detach()
        if _world() > 1:
            dist.all_reduce(g)
        p.grad = g


@torch.no_grad()  # on a generator, torch turns gradients off around each step only
def predict_batches(forward: nn.Module, batches: Iterable[Batch]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Probabilities and labels of each of ``batches``, in eval mode (gates never select in eval)."""
    forward.eval()
    device = model_device(forward)
    for batch in batches:
        on = batch.to(device)
        yield torch.sigmoid(forward(on.dense, on.sparse)).cpu().numpy(), batch.labels.numpy()


def predict(forward: nn.Module, batches: Iterable[Batch]) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels over all of ``batches``, concatenated."""
    probs, labels = zip(*predict_batches(forward, batches))
    return np.concatenate(probs), np.concatenate(labels)


def binary_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Validation AUC and log-loss."""
    p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    auc = float(roc_auc_score(labels, p)) if len(np.unique(labels)) == 2 else math.nan
    return {"auc": auc, "logloss": float(log_loss(labels, p, labels=[0, 1]))}


class StreamingBinaryMetrics:
    """AUC and log-loss over predictions seen in batches, in constant memory.

    Log-loss is exact (probabilities clipped to [1e-7, 1 - 1e-7] as ``training.binary_metrics``
    does); AUC counts positives and negatives in ``bins`` equal-width probability bins and counts
    a pair in one bin as a tie (within ~1e-5 of the exact AUC for 2**16 bins).

        >>> m = StreamingBinaryMetrics()
        >>> m.update(np.array([0.9, 0.2]), np.array([1, 0])); m.update(np.array([0.6, 0.4]), np.array([0, 1]))
        >>> auc, logloss = m.compute()
        >>> round(auc, 4), round(logloss, 4)
        (0.75, 0.5403)
    """

    def __init__(self, bins: int = 1 << 16) -> None:
        self.bins = bins
        self.positives = np.zeros(bins, np.int64)
        self.negatives = np.zeros(bins, np.int64)
        self.loss_sum, self.rows = 0.0, 0

    def update(self, probabilities: Any, labels: Any) -> None:
        """Add a batch (numpy arrays, or CPU tensors: ``np.asarray`` is applied)."""
        p = np.clip(np.asarray(probabilities, np.float64).ravel(), 1e-7, 1 - 1e-7)
        y = np.asarray(labels).ravel() > 0.5
        b = np.minimum((p * self.bins).astype(np.int64), self.bins - 1)
        self.positives += np.bincount(b[y], minlength=self.bins)
        self.negatives += np.bincount(b[~y], minlength=self.bins)
        self.loss_sum -= float(np.log(p[y]).sum() + np.log1p(-p[~y]).sum())
        self.rows += len(p)

    def merge(self, other: StreamingBinaryMetrics) -> None:
        """Add another instance's counts (e.g. another worker's)."""
        self.positives += other.positives
        self.negatives += other.negatives
        self.loss_sum, self.rows = self.loss_sum + other.loss_sum, self.rows + other.rows

    def compute(self) -> tuple[float, float]:
        """(AUC, log-loss); AUC is NaN with one class, both are NaN with no rows."""
        pos, neg = self.positives[::-1].astype(np.float64), self.negatives[::-1].astype(np.float64)
        n_pos, n_neg = pos.sum(), neg.sum()
        above = np.cumsum(pos) - pos  # positives in strictly higher bins
        auc = float((neg * (above + 0.5 * pos)).sum() / (n_pos * n_neg)) if n_pos and n_neg else float("nan")
        return auc, self.loss_sum / self.rows if self.rows else float("nan")


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t
