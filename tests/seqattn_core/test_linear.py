"""Regularised linear Sequential Attention picks exactly what Orthogonal Matching Pursuit picks
(Yasuda et al., ICLR 2023, the equivalence theorem), in the same order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import toeplitz
from sklearn.linear_model import OrthogonalMatchingPursuit, orthogonal_mp

from seqattn_core.attention import SequentialAttention
from seqattn_core.linear import ProfiledLinearAttention, fit_linear_attention
from seqattn_core.selector import SequentialAttentionSelector

N, D, K = 400, 120, 10


pytestmark = pytest.mark.usefixtures("one_thread")


def correlated_design(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Toeplitz-correlated Gaussian columns (corr 0.5^|i-j|) on unequal scales, 15 true
    coefficients, noise. The unequal scales make the test fail for an implementation that
    standardises the columns: OMP compares raw |X_j^T r|."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, D)) @ np.linalg.cholesky(toeplitz(0.5 ** np.arange(D))).T
    X *= rng.uniform(0.5, 2.0, D)
    beta = np.zeros(D)
    support = rng.choice(D, 15, replace=False)
    beta[support] = rng.choice([-1.0, 1.0], 15) * rng.uniform(0.5, 2.0, 15)
    return X, X @ beta + 0.5 * rng.standard_normal(N)


def omp_order(X: np.ndarray, y: np.ndarray, k: int) -> list[int]:
    """scikit-learn's OMP pick order: the step at which each coefficient first becomes nonzero.
    Centred as ``OrthogonalMatchingPursuit(fit_intercept=True)`` does."""
    path = orthogonal_mp(X - X.mean(0), y - y.mean(), n_nonzero_coefs=k, return_path=True)
    order: list[int] = []
    for step in range(path.shape[1]):
        order += [int(j) for j in np.flatnonzero(path[:, step]) if j not in order]
    return order


@pytest.mark.parametrize("seed", range(6))
def test_selection_order_equals_orthogonal_matching_pursuit(seed: int) -> None:
    X, y = correlated_design(seed)
    reference = omp_order(X, y, K)
    # The estimator selects the same set too.
    omp = OrthogonalMatchingPursuit(n_nonzero_coefs=K).fit(X, y)
    assert sorted(reference) == np.flatnonzero(omp.coef_).tolist()

    selector = SequentialAttentionSelector(K, model="linear", task="regression").fit(X, y)
    assert selector.selection_order_.tolist() == reference
    assert np.flatnonzero(selector.support_).tolist() == sorted(reference)


def test_order_is_not_trivial_a_weak_ridge_departs_from_omp() -> None:
    # Control: the equivalence holds in the lam -> inf limit. With a ridge far smaller than
    # ||X||^2 the gated ridge model ranks differently, so the test above can tell them apart.
    differs = 0
    for seed in range(3):
        X, y = correlated_design(seed)
        sa = SequentialAttention(D, K, warmup=0.1).double()
        order = fit_linear_attention(X, y[:, None], sa, steps=200, ridge_scale=1e-4).selection_order()
        differs += order != omp_order(X, y, K)
    assert differs >= 2


def test_binary_labels_are_least_squares_targets() -> None:
    X, y = correlated_design(7)
    labels = (y > np.median(y)).astype(int)
    selector = SequentialAttentionSelector(K, model="linear", task="classification").fit(X, labels)
    assert selector.selection_order_.tolist() == omp_order(X, labels.astype(float), K)


def test_multiclass_equals_simultaneous_omp_on_one_hot_targets() -> None:
    X, y = correlated_design(8)
    classes = np.digitize(y, np.quantile(y, [0.25, 0.5, 0.75]))  # 4 classes
    Xc = X - X.mean(0)
    R = Yc = np.eye(4)[classes] - np.eye(4)[classes].mean(0)
    reference: list[int] = []
    for _ in range(6):  # simultaneous OMP: largest ||X_j^T R||, then refit on the picks
        strength = np.linalg.norm(Xc.T @ R, axis=1)
        strength[reference] = -1.0
        reference.append(int(np.argmax(strength)))
        coef = np.linalg.lstsq(Xc[:, reference], Yc, rcond=None)[0]
        R = Yc - Xc[:, reference] @ coef
    selector = SequentialAttentionSelector(6, model="linear").fit(X, classes)
    assert selector.selection_order_.tolist() == reference


def test_profiled_loss_equals_the_ridge_objective_at_its_minimum() -> None:
    # The closed form is what the theorem assumes: compare it with the explicit joint fit.
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(60, 6, generator=gen, dtype=torch.float64)
    X -= X.mean(0)
    Y = (X[:, [1]] * 2 - X[:, [4]] + 0.1 * torch.randn(60, 1, generator=gen, dtype=torch.float64))
    Y -= Y.mean(0)
    selected = torch.tensor([False, True, False, False, False, False])
    w = torch.softmax(torch.randn(5, generator=gen, dtype=torch.float64), 0)
    gates = torch.ones(6, dtype=torch.float64)
    gates[~selected] = w
    profiled = ProfiledLinearAttention(X, Y, ridge_scale=1e-3)  # moderate lam: all terms matter
    profiled.refresh(selected)
    # Explicit: unpenalised coefficient on column 1, ridge lam on the gated others.
    Z = X * gates
    penalty = torch.diag((~selected).to(torch.float64)) * profiled.lam
    coef = torch.linalg.solve(Z.T @ Z + penalty, Z.T @ Y)
    objective = ((Y - Z @ coef) ** 2).sum() + profiled.lam * (coef[~selected] ** 2).sum()
    r = Y - X[:, [1]] * torch.linalg.lstsq(X[:, [1]], Y).solution
    expected = profiled.lam * (objective - (r**2).sum())
    assert float(profiled.loss(gates) / profiled.norm) == pytest.approx(float(expected), rel=1e-6)
