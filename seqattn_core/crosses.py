"""Pairwise feature crosses: hashing, and the cheap pre-screen that caps the candidate pool.

A cross (a, b) is a new sparse feature. Its id is one fixed function of the two ids and three
constants of the cross (``card_a``, ``card_b``, ``buckets``), never of the batch it is computed in:
``a * card_b + b`` when ``card_a * card_b <= buckets`` (every pair its own id, no collisions), else a
64-bit splitmix of both ids modulo ``buckets``. The same function runs in training, in the export's
runtime (``pipelines/export_runtime.py``) and in the Feast repository's on-demand view, so a
production pipeline computes identical ids (:data:`HASH_RULE` is its text in an export).

With F single-valued sparse features there are F(F-1)/2 pairs: 780 for 40 features, 79,800 for 400.
Gating all of them costs an embedding table each, so the pool is capped by a pre-screen: the
*held-out* log-loss gain of the pair's id over an additive model of all the features. The additive
model is one scikit-learn logistic regression on the one-hot ids of half a row sample; each pair
then gets a smoothed per-id log-odds correction on that half, scored on the other half.

Why against the additive model: a cross is worth a table only for what it adds beyond its two
features, which the LEM already has; and held out, because an in-sample statistic such as mutual
information rewards high-cardinality pairs for memorising noise.

How many buckets (:func:`bucket_budget`): about one per 8 training rows, at most 65,536. A bucket
that training never reaches keeps its random initial embedding, and validation rows that land
there feed that noise to the model. The measurements behind both choices are in
docs/architecture.md ("Crosses") and docs/cross_buckets.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy import sparse
from sklearn.linear_model import LogisticRegression

_MIX1 = np.uint64(0x9E3779B97F4A7C15)
_MIX2 = np.uint64(0xBF58476D1CE4E5B9)


@dataclass(frozen=True)
class CrossFeature:
    """A pair of sparse features crossed into one hashed id space.

    Example::

        >>> c = CrossFeature("user", "item", buckets=12)
        >>> c.name
        'user_X_item'
        >>> c.ids(np.array([1, 2]), np.array([0, 3]), card_a=3, card_b=4).tolist()
        [4, 11]
    """

    a: str
    b: str
    buckets: int

    @property
    def name(self) -> str:
        return f"{self.a}_X_{self.b}"

    def ids(self, a_ids: np.ndarray, b_ids: np.ndarray, card_a: int, card_b: int) -> np.ndarray:
        """Cross ids in [0, buckets) for aligned id arrays of ``a`` and ``b`` (tables of ``card_a``
        and ``card_b`` rows): :func:`cross_ids`."""
        return cross_ids(a_ids, b_ids, card_a, card_b, self.buckets)


def cross_buckets(card_a: int, card_b: int, max_buckets: int) -> int:
    return int(min(card_a * card_b, max_buckets))


MAX_BUCKETS = 1 << 16
ROWS_PER_BUCKET = 8


def bucket_budget(train_rows: int, ceiling: int = MAX_BUCKETS, floor: int = 256) -> int:
    """The most buckets a cross may hash into: one per ``ROWS_PER_BUCKET`` training rows, within
    ``[floor, ceiling]`` (see the module docstring for why).

    Example::

        >>> bucket_budget(48_000), bucket_budget(10_000_000), bucket_budget(100)
        (6000, 65536, 256)
    """
    return int(min(ceiling, max(floor, train_rows // ROWS_PER_BUCKET)))


HASH_RULE = (
    "id = a*card_b + b when card_a*card_b <= buckets; else h = (a*0x9E3779B97F4A7C15 + b)*0xBF58476D1CE4E5B9 "
    "(uint64, wrapping), h ^= h >> 31, id = h mod buckets; a, b are the two features' encoded ids"
)


def cross_ids(a_ids: np.ndarray, b_ids: np.ndarray, card_a: int, card_b: int, buckets: int) -> np.ndarray:
    """The cross id of every row: exact ``a * card_b + b`` when ``card_a * card_b <= buckets``, else a
    splitmix-style hash modulo ``buckets`` (:data:`HASH_RULE`).

    Which of the two applies is decided by the cross's constants alone, so a row gets the same id
    whatever batch it is in (the rule used to look at the batch's largest id, and a batch of small
    ids took the exact branch while the same rows in a larger batch were hashed).

    Example::

        >>> cross_ids(np.array([0, 1, 2]), np.array([3, 0, 1]), card_a=3, card_b=4, buckets=12).tolist()
        [3, 4, 9]
        >>> row = cross_ids(np.array([1]), np.array([1]), 100, 100, 97)
        >>> int(row[0]) == int(cross_ids(np.array([1, 99]), np.array([1, 99]), 100, 100, 97)[0])
        True
    """
    a = np.asarray(a_ids, dtype=np.int64)
    b = np.asarray(b_ids, dtype=np.int64)
    if int(card_a) * int(card_b) <= buckets:
        return a * int(card_b) + b
    with np.errstate(over="ignore"):
        h = (a.astype(np.uint64) * _MIX1 + b.astype(np.uint64)) * _MIX2
        h ^= h >> np.uint64(31)
    return (h % np.uint64(buckets)).astype(np.int64)


def _additive_base(sample: Mapping[str, np.ndarray], cardinalities: Mapping[str, int], y: np.ndarray,
                   fit: np.ndarray) -> np.ndarray:
    """Click probability of every sampled row under a one-hot logistic regression of all features
    (no crosses), fitted on the ``fit`` half: the model a cross has to improve on."""
    offsets = np.cumsum([0] + [int(cardinalities[f]) for f in sample])
    cols = np.stack([sample[f] + off for f, off in zip(sample, offsets)], axis=1)
    rows = np.repeat(np.arange(len(y)), cols.shape[1])
    X = sparse.csr_matrix((np.ones(cols.size), (rows, cols.ravel())), shape=(len(y), int(offsets[-1])))
    if len(np.unique(y[fit])) < 2:
        return np.full(len(y), float(y[fit].mean()) if fit.any() else 0.5)
    model = LogisticRegression(max_iter=200).fit(X[fit], y[fit])
    return model.predict_proba(X)[:, 1]


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _logloss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _heldout_gain(ids: np.ndarray, y: np.ndarray, fit: np.ndarray, base: np.ndarray, smooth: float) -> float:
    """Held-out log-loss gain of correcting ``base`` by a per-id log-odds offset: each id's click
    rate on the fit rows, shrunk toward the base's mean rate on those rows by ``smooth`` pseudo-rows."""
    n_ids = int(ids.max()) + 1
    counts = np.bincount(ids[fit], minlength=n_ids)
    clicks = np.bincount(ids[fit], weights=y[fit], minlength=n_ids)
    expected = np.bincount(ids[fit], weights=base[fit], minlength=n_ids)
    mean_base = (expected + smooth * 0.5) / (counts + smooth)
    shrunk = (clicks + smooth * mean_base) / (counts + smooth)
    offset = _logit(shrunk) - _logit(mean_base)
    held = ~fit
    corrected = 1 / (1 + np.exp(-(_logit(base[held]) + offset[ids[held]])))
    return _logloss(base[held], y[held]) - _logloss(corrected, y[held])


def prescreen_pairs(
    ids: Mapping[str, np.ndarray],
    cardinalities: Mapping[str, int],
    labels: np.ndarray,
    max_candidates: int,
    max_buckets: int = MAX_BUCKETS,
    sample_rows: int = 200_000,
    seed: int = 0,
    smooth: float = 20.0,
    min_gain: float = 1e-3,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[tuple[CrossFeature, float]]:
    """Rank all pairs of single-valued features by held-out gain over the additive model; keep the best.

    Returns ``(cross, gain)`` pairs, best first, at most ``max_candidates`` of them, and only those
    whose held-out gain exceeds ``min_gain`` nats: a pair that does not beat the additive model on
    held-out rows would only give the LEM a large table to memorise the training rows with. Costs
    one logistic-regression fit (a row sample, capped at about 20M one-hot entries) and one
    ``bincount`` per pair: 780 pairs on 200k rows take a few seconds. ``on_progress(done, total)``
    is called after the fit (step 1) and then about a hundred times over the pairs.

    Example::

        >>> rng = np.random.default_rng(0)
        >>> ids = {k: rng.integers(0, 6, 20_000) for k in ("a", "b", "c")}
        >>> y = ((ids["a"] % 2) ^ (ids["b"] % 2) ^ (rng.random(20_000) < 0.2)).astype(float)
        >>> [c.name for c, _ in prescreen_pairs(ids, {"a": 6, "b": 6, "c": 6}, y, max_candidates=3)]
        ['a_X_b']
    """
    names: Sequence[str] = list(ids)
    n = len(labels)
    rng = np.random.default_rng(seed)
    sample_rows = min(sample_rows, max(20_000, 20_000_000 // max(1, len(names))))
    rows = np.sort(rng.choice(n, size=min(n, sample_rows), replace=False))
    y = np.asarray(labels, dtype=np.float64)[rows]
    fit = rng.random(len(rows)) < 0.5
    sample = {f: np.asarray(ids[f], dtype=np.int64)[rows] for f in names}
    pairs = list(combinations(names, 2))
    total, every = len(pairs) + 1, max(1, len(pairs) // 100)
    report = on_progress or (lambda done, total: None)
    report(0, total)
    base = _additive_base(sample, cardinalities, y, fit)
    report(1, total)
    scored = []
    for i, (a, b) in enumerate(pairs, start=2):
        cross = CrossFeature(a, b, cross_buckets(cardinalities[a], cardinalities[b], max_buckets))
        ids_ab = cross.ids(sample[a], sample[b], cardinalities[a], cardinalities[b])
        gain = _heldout_gain(ids_ab, y, fit, base, smooth)
        scored.append((cross, gain))
        if i % every == 0 or i == total:
            report(i, total)
    scored.sort(key=lambda cg: cg[1], reverse=True)
    return [cg for cg in scored if cg[1] > min_gain][:max_candidates]
