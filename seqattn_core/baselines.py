"""Feature-selection baselines for Sequential Attention, behind one call: :func:`rank_features`.

Every method takes a dense matrix ``X`` (n_samples, n_features), a target ``y`` and a count ``k``
and returns ``k`` distinct column indices, in the order the method picked them where it has one
(:attr:`Baseline.ordered`). scikit-learn does the work wherever it has the method:

========== =========================================================== =========
name       method                                                      ordered
========== =========================================================== =========
seqattn    Sequential Attention (:class:`SequentialAttentionSelector`)  yes
oneshot    one-shot attention: the same model, top-k after one phase    yes (by score)
omp        orthogonal matching pursuit (simultaneous OMP if multiclass) yes
lasso      lasso / multi-task (group) lasso path, by entry alpha        yes
mi         mutual-information filter                                    yes (by MI)
greedy     forward selection with retraining (SequentialFeatureSelector) no
random     k columns at random                                          no
========== =========================================================== =========

Example::

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((300, 8))
    >>> y = (X[:, 2] - X[:, 5] > 0).astype(int)
    >>> sorted(rank_features("omp", X, y, 2).tolist())
    [2, 5]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from sklearn.base import clone
from sklearn.feature_selection import (
    SequentialFeatureSelector,
    mutual_info_classif,
    mutual_info_regression,
)
from sklearn.linear_model import LogisticRegression, Ridge, lasso_path, orthogonal_mp
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

Task = Literal["classification", "regression"]


class FeatureRanker(Protocol):
    """What every baseline implements: ``k`` distinct column indices of ``X``."""

    def __call__(
        self, X: np.ndarray, y: np.ndarray, k: int, *, task: Task, random_state: int, **options: Any
    ) -> np.ndarray: ...


@dataclass(frozen=True)
class Baseline:
    """A registered method: its ranker, whether its output is a pick order, and one line on it."""

    name: str
    rank: FeatureRanker
    ordered: bool
    summary: str


# -- shared preparation ----------------------------------------------------------------------------
def _unit_columns(X: np.ndarray) -> np.ndarray:
    """Centre every column and scale it to unit norm: OMP and the lasso compare columns by their
    correlation with the residual, which is otherwise biased toward large-scale columns."""
    Xc = X - X.mean(axis=0)
    norms = np.linalg.norm(Xc, axis=0)
    norms[norms == 0] = 1.0  # a constant column stays all-zero and is never picked on merit
    return Xc / norms


def _targets(y: np.ndarray, task: Task) -> np.ndarray:
    """Centred regression target(s): the value itself, 0/1 for two classes, one-hot beyond."""
    if task == "regression":
        t = y.astype(np.float64)
    else:
        classes, codes = np.unique(y, return_inverse=True)
        t = codes.astype(np.float64) if len(classes) <= 2 else np.eye(len(classes))[codes]
    return t - t.mean(axis=0)


def _complete(order: list[int], fallback: np.ndarray, k: int) -> np.ndarray:
    """Top ``order`` up to ``k`` indices with the best of ``fallback`` scores (used when a path
    stops early, e.g. OMP on a rank-deficient ``X``)."""
    taken = set(order)
    for i in np.argsort(-fallback, kind="stable"):
        if len(order) >= k:
            break
        if int(i) not in taken:
            order.append(int(i))
            taken.add(int(i))
    return np.asarray(order[:k], dtype=np.int64)


def _no_options(method: str, options: dict[str, Any]) -> None:
    if options:  # a misspelt option must not be dropped silently
        raise ValueError(f"options: {method} takes none, got {', '.join(sorted(options))}")


# -- the methods -----------------------------------------------------------------------------------
def _omp(X: np.ndarray, y: np.ndarray, k: int, *, task: Task, random_state: int, **options: Any) -> np.ndarray:
    _no_options("omp", options)
    Xn, Y = _unit_columns(X), _targets(y, task)
    if Y.ndim == 1:
        path = orthogonal_mp(Xn, Y, n_nonzero_coefs=k, return_path=True)
        path = path.reshape(X.shape[1], -1)
        order: list[int] = []
        for step in range(path.shape[1]):
            order += [int(i) for i in np.flatnonzero(path[:, step]) if int(i) not in order]
        return _complete(order, np.abs(Xn.T @ Y), k)
    # scikit-learn's OMP fits each column of a multi-output target on its own, giving each class
    # its own support. Feature selection needs ONE support shared by all classes: simultaneous OMP
    # (Tropp et al., 2006) picks the column whose correlations with all residuals have the largest
    # norm, then refits every class on the shared support.
    residual, order = Y.copy(), []
    for _ in range(k):
        score = np.linalg.norm(Xn.T @ residual, axis=1)
        score[order] = -np.inf
        if not np.isfinite(score).any() or score.max() <= 1e-12 * np.linalg.norm(Y):
            break  # the residual is explained or orthogonal to everything left
        order.append(int(np.argmax(score)))
        coef, *_ = np.linalg.lstsq(Xn[:, order], Y, rcond=None)
        residual = Y - Xn[:, order] @ coef
    return _complete(order, np.linalg.norm(Xn.T @ Y, axis=1), k)


def _lasso(X: np.ndarray, y: np.ndarray, k: int, *, task: Task, random_state: int,
           n_alphas: int = 60, eps: float = 1e-3, **options: Any) -> np.ndarray:
    """Squared-loss lasso path on the centred target; a multi-output target (multiclass one-hot)
    gives scikit-learn's multi-task lasso, i.e. the group lasso with one group per feature. A
    feature's rank is the first (largest) alpha at which it enters, ties broken by its coefficient
    norm at the end of the path."""
    _no_options("lasso", options)
    Xn, Y = _unit_columns(X), _targets(y, task)
    corr = Xn.T @ Y
    strength = np.abs(corr) if Y.ndim == 1 else np.linalg.norm(corr, axis=1)
    alphas = strength.max() / len(X) * np.geomspace(1.0, eps, n_alphas)
    # Only the head of the path matters (until k features are in), and the small-alpha end is by
    # far the slowest to solve on correlated columns (minutes on ISOLET): walk the path in short
    # warm-started chunks and stop once k features have entered.
    entered = np.full(X.shape[1], n_alphas)
    coef: np.ndarray | None = None
    for start in range(0, n_alphas, 5):
        chunk = alphas[start : start + 5]
        _, coefs, _ = lasso_path(Xn, Y, alphas=chunk, coef_init=coef, max_iter=2000, tol=1e-3)
        active = np.abs(coefs) > 0 if Y.ndim == 1 else (np.abs(coefs) > 0).any(axis=0)
        first = np.where(active.any(axis=1), start + active.argmax(axis=1), n_alphas)
        entered = np.minimum(entered, first)
        coef = coefs[..., -1]
        if (entered < n_alphas).sum() >= k:
            break
    assert coef is not None  # the loop ran at least once
    final = np.abs(coef) if Y.ndim == 1 else np.linalg.norm(coef, axis=0)
    order = np.lexsort((-final, -strength, entered))  # last key sorts first: entry alpha
    in_path = [int(i) for i in order if entered[i] < n_alphas]
    return _complete(in_path, strength, k)


def _mutual_info(X: np.ndarray, y: np.ndarray, k: int, *, task: Task, random_state: int,
                 n_jobs: int | None = None, **options: Any) -> np.ndarray:
    _no_options("mi", options)
    estimate = mutual_info_classif if task == "classification" else mutual_info_regression
    mi = estimate(X, y, random_state=random_state, n_jobs=n_jobs)
    return np.argsort(-mi, kind="stable")[:k].astype(np.int64)


def _greedy(X: np.ndarray, y: np.ndarray, k: int, *, task: Task, random_state: int,
            estimator: Any = None, cv: int = 3, n_jobs: int | None = None, **options: Any) -> np.ndarray:
    """Forward selection that retrains the estimator for every candidate at every step (the
    wrapper Sequential Attention approximates). scikit-learn keeps only the final support, not the
    order of the picks, so the indices come back in column order."""
    _no_options("greedy", options)
    if estimator is None:
        base = LogisticRegression(max_iter=500) if task == "classification" else Ridge()
        estimator = make_pipeline(StandardScaler(), base)
    if k == X.shape[1]:
        return np.arange(k, dtype=np.int64)  # SequentialFeatureSelector refuses k == n_features
    sfs = SequentialFeatureSelector(clone(estimator), n_features_to_select=k, direction="forward",
                                    cv=cv, n_jobs=n_jobs)
    sfs.fit(X, y)
    return np.flatnonzero(sfs.get_support()).astype(np.int64)


def _attention(per_step_all: bool) -> FeatureRanker:
    def rank(X: np.ndarray, y: np.ndarray, k: int, *, task: Task, random_state: int,
             **options: Any) -> np.ndarray:
        # Imported here: the selector pulls in torch, which the linear baselines do not need.
        from seqattn_core.selector import SequentialAttentionSelector

        if per_step_all:  # one phase, no warm-up: top-k of the logits after one training run
            options = {**options, "per_step": k, "warmup": 0.0}
        selector = SequentialAttentionSelector(n_features_to_select=k, task=task,
                                               random_state=random_state, **options)
        selector.fit(X, y)
        return np.asarray(selector.selection_order_, dtype=np.int64)

    return rank


def _random(X: np.ndarray, y: np.ndarray, k: int, *, task: Task, random_state: int,
            **options: Any) -> np.ndarray:
    _no_options("random", options)
    return np.random.default_rng(random_state).permutation(X.shape[1])[:k].astype(np.int64)


BASELINES: dict[str, Baseline] = {
    b.name: b
    for b in (
        Baseline("seqattn", _attention(per_step_all=False), True,
                 "Sequential Attention: one pick per phase, logits re-trained between picks"),
        Baseline("oneshot", _attention(per_step_all=True), True,
                 "one-shot attention: same model, top-k logits after a single phase"),
        Baseline("omp", _omp, True, "orthogonal matching pursuit (simultaneous OMP for multiclass)"),
        Baseline("lasso", _lasso, True, "lasso / group-lasso path, ranked by entry alpha"),
        Baseline("mi", _mutual_info, True, "mutual-information filter, ranked by MI"),
        Baseline("greedy", _greedy, False, "forward selection with retraining (cv=3), no pick order"),
        Baseline("random", _random, False, "k columns chosen uniformly at random"),
    )
}


def rank_features(
    method: str,
    X: np.ndarray,
    y: np.ndarray,
    k: int,
    *,
    task: Task = "classification",
    random_state: int = 0,
    **options: Any,
) -> np.ndarray:
    """Select ``k`` columns of ``X`` with one of the registered methods.

    Parameters
    ----------
    method : str
        A key of :data:`BASELINES`: ``seqattn``, ``oneshot``, ``omp``, ``lasso``, ``mi``,
        ``greedy`` or ``random``.
    X : ndarray of shape (n_samples, n_features)
        Numeric features (encode categorical fields first, e.g. with a target encoder).
    y : ndarray of shape (n_samples,)
        Class labels, or real values for ``task="regression"``.
    k : int
        How many columns to select, ``1 <= k <= n_features``.
    task : {"classification", "regression"}
        Chooses the loss / estimator each method uses.
    random_state : int
        Seed for the methods that draw random numbers.
    **options
        Passed to the method: e.g. ``epochs`` for ``seqattn`` / ``oneshot`` (the
        :class:`~seqattn_core.selector.SequentialAttentionSelector` parameters), ``estimator`` and
        ``cv`` for ``greedy``, ``n_jobs`` for ``mi`` and ``greedy``.

    Returns
    -------
    ndarray of shape (k,)
        Distinct column indices; in pick order when ``BASELINES[method].ordered``.

    See Also
    --------
    seqattn_core.selector.SequentialAttentionSelector : the method these are baselines for.
    sklearn.feature_selection.SequentialFeatureSelector : the greedy wrapper.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((400, 6))
    >>> y = 3 * X[:, 4] + X[:, 1] + 0.1 * rng.standard_normal(400)
    >>> rank_features("lasso", X, y, 2, task="regression").tolist()
    [4, 1]
    """
    if method not in BASELINES:
        raise ValueError(f"method: unknown {method!r}; choose one of {', '.join(BASELINES)}")
    if task not in ("classification", "regression"):
        raise ValueError(f"task: must be 'classification' or 'regression', got {task!r}")
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise ValueError(f"X, y: need X of shape (n, d) and y of shape (n,), got {X.shape} and {y.shape}")
    if not 1 <= k <= X.shape[1]:
        raise ValueError(f"k: must be between 1 and the {X.shape[1]} columns of X, got {k}")
    picked = np.asarray(BASELINES[method].rank(X, y, k, task=task, random_state=random_state, **options))
    if len(picked) != k or len(set(picked.tolist())) != k:  # a broken method must not pass silently
        raise RuntimeError(f"{method} returned {picked.tolist()} for k={k}")
    return picked


__all__ = ["BASELINES", "Baseline", "FeatureRanker", "Task", "rank_features"]
