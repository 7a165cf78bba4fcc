"""Every baseline returns k distinct valid columns and finds the planted ones on an easy problem."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import OrthogonalMatchingPursuit
from threadpoolctl import threadpool_limits

from seqattn_core.baselines import BASELINES, rank_features

ATTENTION = {"seqattn", "oneshot"}
# Small and fast settings for the attention selector: the problem below is easy.
ATTENTION_OPTIONS = {"epochs": 20, "batch_size": 128}
INFORMATIVE = [1, 3, 7]


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    # The greedy wrapper makes hundreds of tiny fits; on a busy 2-core box multi-threaded BLAS
    # spins and makes them ~15x slower (measured 10 s vs 0.6 s for one test).
    with threadpool_limits(limits=1):
        yield


def _options(method: str) -> dict:
    return dict(ATTENTION_OPTIONS) if method in ATTENTION else {}


@pytest.fixture(scope="module")
def easy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((800, 12))
    logit = 2.5 * X[:, 1] - 2.0 * X[:, 7] + 1.5 * X[:, 3]
    return X, (logit + 0.3 * rng.standard_normal(800) > 0).astype(np.int64)


@pytest.mark.parametrize("method", list(BASELINES))
def test_returns_k_distinct_valid_indices(method: str, easy: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = easy
    picked = rank_features(method, X, y, 5, random_state=1, **_options(method))
    assert picked.shape == (5,)
    assert picked.dtype.kind == "i"
    assert len(set(picked.tolist())) == 5
    assert ((0 <= picked) & (picked < X.shape[1])).all()


@pytest.mark.parametrize("method", [m for m in BASELINES if m != "random"])
def test_finds_the_planted_columns(method: str, easy: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = easy
    picked = rank_features(method, X, y, 3, random_state=0, **_options(method))
    assert sorted(picked.tolist()) == INFORMATIVE


@pytest.mark.parametrize("method", ["omp", "lasso"])
def test_ordered_methods_pick_the_strongest_column_first(method: str, easy) -> None:
    X, y = easy
    assert BASELINES[method].ordered
    assert rank_features(method, X, y, 3)[0] == 1


def test_omp_matches_scikit_learn_on_regression() -> None:
    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 20))
    y = X[:, [2, 9, 14, 5]] @ np.array([3.0, -2.0, 1.5, 1.0]) + 0.05 * rng.standard_normal(300)
    ours = rank_features("omp", X, y, 4, task="regression")
    Xn = (X - X.mean(0)) / np.linalg.norm(X - X.mean(0), axis=0)
    theirs = OrthogonalMatchingPursuit(n_nonzero_coefs=4).fit(Xn, y - y.mean())
    assert set(ours.tolist()) == set(np.flatnonzero(theirs.coef_).tolist()) == {2, 5, 9, 14}
    assert ours[0] == 2  # the largest coefficient enters first


@pytest.mark.parametrize("method", ["omp", "lasso", "mi"])
def test_multiclass_shares_one_support(method: str) -> None:
    # Each class is driven by its own column; a shared support must hold all three.
    rng = np.random.default_rng(2)
    X = rng.standard_normal((900, 15))
    y = np.argmax(X[:, [4, 8, 11]] * 3 + 0.3 * rng.standard_normal((900, 3)), axis=1)
    assert sorted(rank_features(method, X, y, 3).tolist()) == [4, 8, 11]


def test_a_duplicate_column_is_not_picked_twice_by_omp() -> None:
    rng = np.random.default_rng(3)
    X = rng.standard_normal((500, 8))
    X[:, 5] = X[:, 0]
    y = (2 * X[:, 0] + X[:, 2] > 0).astype(int)
    picked = rank_features("omp", X, y, 2).tolist()
    assert 2 in picked and len({0, 5} & set(picked)) == 1


def test_greedy_returns_every_column_when_k_is_all(easy) -> None:
    X, y = easy
    assert rank_features("greedy", X[:, :3], y, 3).tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"method": "nope"}, "method"), ({"k": 0}, "k"), ({"k": 13}, "k"), ({"task": "ranking"}, "task")],
)
def test_bad_input_names_the_field(kwargs: dict, field: str, easy) -> None:
    X, y = easy
    args = {"method": "omp", "X": X, "y": y, "k": 2, **kwargs}
    with pytest.raises(ValueError, match=f"^{field}:"):
        rank_features(**args)


def test_an_unknown_option_is_an_error(easy) -> None:
    X, y = easy
    with pytest.raises(ValueError, match="^options: omp takes none, got epoch"):
        rank_features("omp", X, y, 2, epoch=3)
