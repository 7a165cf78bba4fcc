"""Sequential Attention as a scikit-learn feature selector: ``fit`` trains once, ``transform`` keeps
the picked columns.

The estimator trains a small torch model whose input columns are gated by one
:class:`~seqattn_core.attention.SequentialAttention` module (one candidate per column): an MLP
(``model="mlp"``, the paper's experiments) or the regularised linear model whose picks equal
Orthogonal Matching Pursuit (``model="linear"``, :mod:`seqattn_core.linear`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, _fit_context
from sklearn.feature_selection import SelectorMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, RealNotInt, StrOptions
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from seqattn_core.attention import SequentialAttention, reset_optimizer_state
from seqattn_core.linear import fit_linear_attention

#: Every phase gets at least this many optimizer steps, whatever ``epochs``. A pick reflects the
#: marginal gain of a column only once the weights have re-fitted around the previous picks: on
#: the duplicate-column and XOR-pair problems of the tests (800 rows, 5 epochs), ~20 steps per
#: phase failed half the runs, 32 failed 1 in 24 and 48 none.
MIN_STEPS_PER_PHASE = 48

#: Default step sizes: Adam on the MLP (on scikit-learn's digits, k=5..20, 30 epochs, 3 seeds,
#: 3e-3 and 1e-2 picked columns worth up to 4 points more downstream accuracy than 1e-3); plain
#: gradient descent on the normalised profiled loss of the linear model (O(1) logit gradients).
#: The MLP's defaults as a whole (rate, width, warm-up, epochs, held-out rows) were then re-chosen on
#: Mice Protein and ISOLET and checked on MNIST and COIL-20: no single change beat them by more than
#: its paired spread over 5 seeds (``python -m bench.selector_defaults``, docs/selector_defaults.md).
DEFAULT_LEARNING_RATE = {"mlp": 3e-3, "linear": 1.0}


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch ops on ``n`` intra-op threads, then restore the previous setting.

    The models here are tiny (one small matmul per layer and batch), so threading gains little,
    and when other jobs share a 2-core box torch's OpenMP threads spin against them: one
    256x784x64 forward/backward measured 55 ms on 2 threads versus 1.2 ms on one.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class GatedMLP(nn.Module):
    """An MLP whose input columns are scaled by Sequential Attention gates.

    Example::

        >>> g = torch.Generator().manual_seed(0)
        >>> net = GatedMLP(SequentialAttention(5, 2), hidden=(8,), n_outputs=3, generator=g)
        >>> net(torch.randn(4, 5)).shape        # (batch, columns) -> (batch, outputs)
        torch.Size([4, 3])
    """

    def __init__(
        self, attention: SequentialAttention, hidden: Sequence[int], n_outputs: int, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.attention = attention
        widths = [attention.num_candidates, *hidden, n_outputs]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        for layer in self.layers:
            assert isinstance(layer, nn.Linear)
            # torch's default init, drawn from our generator so that fits are reproducible
            # without touching the global torch seed.
            bound = 1.0 / math.sqrt(layer.in_features)
            with torch.no_grad():
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attention(x)
        for layer in self.layers[:-1]:
            h = torch.relu(layer(h))
        return self.layers[-1](h)


def total_steps(
    attention: SequentialAttention, epochs: int, steps_per_epoch: int, per_phase: int = MIN_STEPS_PER_PHASE
) -> int:
    """``epochs`` epochs of steps, or more if that leaves a phase fewer than ``per_phase`` steps."""
    schedule = attention.schedule
    floor = math.ceil(per_phase * schedule.num_phases / (1.0 - schedule.warmup)) + 1
    return max(epochs * steps_per_epoch, floor)


class SequentialAttentionSelector(SelectorMixin, BaseEstimator):
    """Feature selection by Sequential Attention (Yasuda et al., ICLR 2023).

    A differentiable version of greedy forward selection in a single training run: every
    unselected column is scaled by a softmax gate; after a warm-up, training is cut into
    ``ceil(k / per_step)`` phases and at the end of each one the column(s) with the largest gate
    are selected (their gate becomes 1) and the remaining logits restart from zero. Because the
    gates are re-trained with the picked columns already in the model, each pick reflects the
    *marginal* gain of a column given the earlier ones: a duplicate of a picked column is not
    picked, and a column useful only together with a picked one can be.

    Parameters
    ----------
    n_features_to_select : int, float or None, default=None
        Number of columns to select. A float in (0, 1] is a fraction of the columns; None selects
        half of them (at least one).
    model : {"mlp", "linear"}, default="mlp"
        ``"mlp"``: an MLP trained with Adam on minibatches (cross-entropy for classification,
        squared error for regression). ``"linear"``: the regularised linear model of the paper,
        weights profiled out in closed form, whose picks equal Orthogonal Matching Pursuit on the
        centred (not rescaled) columns; classes are then one-hot least-squares targets.
    task : {"auto", "classification", "regression"}, default="auto"
        ``"auto"`` treats continuous ``y`` as regression and anything else as class labels.
    hidden_layer_sizes : sequence of int, default=(64,)
        Widths of the MLP's hidden layers (``model="mlp"`` only).
    epochs : int, default=30
        Passes over the data for the MLP; full-batch gradient steps for ``model="linear"``. Raised
        when needed so that every phase gets at least 48 optimizer steps (MLP; 2 for the linear
        model), since each pick needs the weights re-fitted around the previous ones.
    batch_size : int, default=256
        Minibatch size of the MLP.
    learning_rate : float or None, default=None
        Adam's step size for the MLP (None: 3e-3); gradient-descent step on the normalised logit
        loss for the linear model (None: 1.0).
    warmup : float, default=0.1
        Fraction of training with every gate at 1, before the first phase.
    per_step : int, default=1
        Columns picked at the end of each phase. ``per_step=n_features_to_select`` with
        ``warmup=0`` is one-shot attention: one phase over all training, top-k gates at once.
    gate_holdout : float, default=0.0
        Fraction of the rows held out for the attention logits (MLP only): the weights train on
        the other rows, and after each step the logits take their gradient from a minibatch of
        held-out rows instead (first-order bilevel training, as in DARTS), so a column scores by
        what it adds on rows the weights never fit. 0 trains both on the same rows (the paper).
    random_state : int, RandomState instance or None, default=None
        Seeds the weight initialisation and minibatch order (through a ``torch.Generator``).

    Attributes
    ----------
    n_features_to_select_ : int
        Number of columns selected.
    support_ : ndarray of shape (n_features_in_,), dtype=bool
        Mask of the selected columns.
    selection_order_ : ndarray of shape (n_features_to_select_,), dtype=int64
        Selected column indices, in the order they were picked.
    scores_ : ndarray of shape (n_features_in_,)
        Attention score of every column: for a picked column its gate when picked, for the others
        their gate at the last pick. Comparable within a phase, not across phases.
    task_ : {"classification", "regression"}
        The task that was trained.
    n_features_in_ : int
        Number of columns seen during ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names seen during ``fit``, when ``X`` is a DataFrame with string column names.

    See Also
    --------
    sklearn.linear_model.OrthogonalMatchingPursuit : greedy least-squares selection; equal to
        ``model="linear"``.
    sklearn.feature_selection.SequentialFeatureSelector : greedy forward selection that retrains
        the model for every candidate column at every step (the wrapper this approximates).
    sklearn.feature_selection.mutual_info_classif : univariate mutual-information filter.
    sklearn.linear_model.Lasso : L1-penalised linear model; select by entry along the path.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((500, 6))
    >>> y = (2 * X[:, 4] - X[:, 1] > 0).astype(int)
    >>> selector = SequentialAttentionSelector(n_features_to_select=2, random_state=0).fit(X, y)
    >>> sorted(selector.selection_order_.tolist())
    [1, 4]
    >>> selector.transform(X).shape
    (500, 2)
    """

    _parameter_constraints: dict = {
        "n_features_to_select": [
            None,
            Interval(RealNotInt, 0, 1, closed="right"),
            Interval(Integral, 1, None, closed="left"),
        ],
        "model": [StrOptions({"mlp", "linear"})],
        "task": [StrOptions({"auto", "classification", "regression"})],
        "hidden_layer_sizes": ["array-like"],
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [None, Interval(Real, 0, None, closed="neither")],
        "warmup": [Interval(Real, 0, 1, closed="left")],
        "per_step": [Interval(Integral, 1, None, closed="left")],
        "gate_holdout": [Interval(Real, 0, 1, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        n_features_to_select: int | float | None = None,
        *,
        model: str = "mlp",
        task: str = "auto",
        hidden_layer_sizes: Sequence[int] = (64,),
        epochs: int = 30,
        batch_size: int = 256,
        learning_rate: float | None = None,
        warmup: float = 0.1,
        per_step: int = 1,
        gate_holdout: float = 0.0,
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.n_features_to_select = n_features_to_select
        self.model = model
        self.task = task
        self.hidden_layer_sizes = hidden_layer_sizes
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.warmup = warmup
        self.per_step = per_step
        self.gate_holdout = gate_holdout
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y) -> SequentialAttentionSelector:
        """Train the gated model on ``(X, y)`` and select ``n_features_to_select_`` columns.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, n_features)
            Numeric features. Standardised internally for the MLP. Training runs on one torch
            thread (the model is too small to gain from more), restored afterwards.
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            Class labels, or real targets (several columns only for regression).

        Returns
        -------
        self : SequentialAttentionSelector
        """
        X, y = validate_data(self, X, y, dtype=np.float64, multi_output=True, y_numeric=False)
        n_features = X.shape[1]
        self.n_features_to_select_ = self._resolve_k(n_features)
        hidden = [int(h) for h in np.atleast_1d(np.asarray(self.hidden_layer_sizes))]
        if self.model == "mlp" and any(h < 1 for h in hidden):
            raise ValueError(f"hidden_layer_sizes: widths must be >= 1, got {list(hidden)}")
        self.task_ = self._resolve_task(y)
        targets = self._encode_targets(y)

        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        generator = torch.Generator().manual_seed(seed)
        learning_rate = self.learning_rate or DEFAULT_LEARNING_RATE[self.model]
        attention = SequentialAttention(
            n_features, self.n_features_to_select_, per_step=min(self.per_step, self.n_features_to_select_),
            warmup=self.warmup,
        )
        with torch_threads(1):
            if self.model == "linear":
                # One step per phase already yields OMP's pick (see seqattn_core.linear); two
                # leave a margin, and each step costs a (n_features x n_features) solve.
                steps = total_steps(attention, self.epochs, steps_per_epoch=1, per_phase=2)
                fit_linear_attention(X, targets, attention.double(), steps, learning_rate)
            else:
                self._fit_mlp(X, targets, attention, hidden, learning_rate, generator)

        order = np.asarray(attention.selection_order(), dtype=np.int64)
        self.selection_order_ = order
        self.support_ = np.zeros(n_features, dtype=bool)
        self.support_[order] = True
        self.scores_ = attention.scores.detach().cpu().numpy().astype(np.float64)
        return self

    def _get_support_mask(self) -> np.ndarray:
        check_is_fitted(self)
        return self.support_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags

    # -- fit, step by step -----------------------------------------------------------------------
    def _resolve_k(self, n_features: int) -> int:
        k = self.n_features_to_select
        if k is None:
            return max(1, n_features // 2)
        if isinstance(k, Integral):
            if k > n_features:
                raise ValueError(f"n_features_to_select: {k} is more than the {n_features} features of X")
            return int(k)
        return max(1, int(k * n_features))

    def _resolve_task(self, y: np.ndarray) -> str:
        task = self.task
        if task == "auto":
            task = "regression" if type_of_target(y).startswith("continuous") else "classification"
        if task == "classification":
            if y.ndim == 2 and y.shape[1] > 1:
                raise ValueError("y: multi-output targets are supported for task='regression' only")
            check_classification_targets(y)
        return task

    def _encode_targets(self, y: np.ndarray) -> np.ndarray:
        """Class indices (MLP) or one-hot columns (linear) for classification; float columns
        for regression, standardised so that one learning rate suits every target scale."""
        if self.task_ == "classification":
            codes = LabelEncoder().fit_transform(y.ravel())
            n_classes = int(codes.max()) + 1
            if n_classes < 2:
                raise ValueError("y: classification needs at least two classes, got 1 class")
            if self.model == "linear":
                # Least squares on one-hot targets; binary needs one column only.
                onehot = np.eye(n_classes)[codes]
                return onehot[:, 1:] if n_classes == 2 else onehot
            return codes
        Y = np.asarray(y, dtype=np.float64).reshape(y.shape[0], -1)
        if self.model == "linear":
            return Y  # OMP works on the raw (centred) target
        scale = Y.std(axis=0)
        return (Y - Y.mean(axis=0)) / np.where(scale > 0, scale, 1.0)

    def _fit_mlp(
        self,
        X: np.ndarray,
        targets: np.ndarray,
        attention: SequentialAttention,
        hidden: list[int],
        learning_rate: float,
        generator: torch.Generator,
    ) -> None:
        scale = X.std(axis=0)
        Xt = torch.as_tensor((X - X.mean(axis=0)) / np.where(scale > 0, scale, 1.0), dtype=torch.float32)
        loss_fn: Callable[..., torch.Tensor]
        if self.task_ == "classification":
            Yt = torch.as_tensor(targets, dtype=torch.long)
            n_outputs, loss_fn = int(Yt.max()) + 1, nn.functional.cross_entropy
        else:
            Yt = torch.as_tensor(targets, dtype=torch.float32)
            n_outputs, loss_fn = Yt.shape[1], nn.functional.mse_loss
        net = GatedMLP(attention, hidden, n_outputs, generator)
        optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)

        rows = torch.randperm(Xt.shape[0], generator=generator)
        n_held = min(len(rows) - 1, round(self.gate_holdout * len(rows)))
        held, rows = rows[:n_held], rows[n_held:]
        n = len(rows)
        n_batches = math.ceil(n / min(self.batch_size, n))
        held_batch = min(self.batch_size, n)
        steps = total_steps(attention, self.epochs, n_batches)
        net.train()
        step = 0
        while step < steps:
            # Balanced minibatches: no tiny last batch whose noisy gradient would move the logits.
            for idx in torch.tensor_split(rows[torch.randperm(n, generator=generator)], n_batches):
                loss = loss_fn(net(Xt[idx]), Yt[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if n_held:
                    h = held[torch.randint(n_held, (held_batch,), generator=generator)]
                    (attention.logits.grad,) = torch.autograd.grad(loss_fn(net(Xt[h]), Yt[h]), [attention.logits])
                optimizer.step()
                step += 1
                if attention.update(step / steps):
                    reset_optimizer_state(optimizer, [attention.logits])
                if step == steps:
                    break
