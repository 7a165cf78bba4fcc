"""Regularised linear Sequential Attention, whose picks equal Orthogonal Matching Pursuit.

The model of Yasuda et al. (ICLR 2023) for least squares: with ``S`` the selected columns,
``U`` the unselected ones and ``w`` the softmax gates over ``U``,

    f = X_S b_S + X_U (w * beta_U),    loss(b, beta, w) = ||y - f||^2 + lam ||beta_U||^2,

the selected coefficients unpenalised. For fixed gates the weights have closed forms (least squares
on ``S``, ridge on the gated ``U`` part), so they are profiled out exactly, as the paper's theorem
assumes. With ``r`` the least-squares residual on ``S``, ``R`` the columns of ``X_U`` with ``X_S``
projected out, ``G = R^T R`` and ``c = X_U^T r``, the profiled loss is

    L(w) = ||r||^2 - (w*c)^T (W G W + lam I)^{-1} (w*c),      W = diag(w),

so ``lam (L(w) - ||r||^2) = -(w*c)^T (I + W G W / lam)^{-1} (w*c)``, computed without cancellation.
As ``lam -> inf`` it tends to ``-sum_j w_j^2 c_j^2``. Gradient steps from uniform logits on that
limit keep the highest logit on the largest ``|c_j|`` (its ``w_j c_j^2`` is the largest, hence at
least ``sum_j w_j^2 c_j^2``, so its logit always rises fastest), and the phase-end argmax is OMP's
pick: ``argmax_j |X_j^T r|``. Plain gradient descent is used, as the theorem does: Adam's
per-coordinate normalisation moves every helpful logit at nearly the same rate, leaving the order of
``|c_j|`` to its epsilon term.

Multiple targets (one-hot classes) sum the squared loss over targets, which gives simultaneous OMP
(``argmax_j ||X_j^T R||``).
"""

from __future__ import annotations

import numpy as np
import torch

from seqattn_core.attention import SequentialAttention, reset_optimizer_state

#: ``lam`` as a multiple of ``trace(X^T X)`` (an upper bound of ``||W G W||``, since gates are <= 1):
#: large enough that the profiled loss is within ~1e-8 of its ``lam -> inf`` limit.
DEFAULT_RIDGE_SCALE = 1e8


class ProfiledLinearAttention:
    """The profiled least-squares loss of the gated linear model, as a function of the gates.

    Args:
        X: design matrix of shape (n_samples, n_features), already centred (no intercept here).
        Y: targets of shape (n_samples, n_targets), already centred.
        ridge_scale: ``lam = ridge_scale * trace(X^T X)``.

    :meth:`refresh` recomputes the residual quantities for the current selected set (once per
    phase); :meth:`loss` is the normalised ``lam (L(w) - ||r||^2)`` for the gates of the
    unselected columns. Everything goes through ``X^T X`` and ``X^T Y``, formed once: a refresh
    then costs one solve in the selected columns instead of a pass over the samples (the same
    normal-equations route scikit-learn's OMP takes, via Cholesky updates of ``X_S^T X_S``).

    Example::

        >>> X = torch.randn(50, 4, dtype=torch.float64); X -= X.mean(0)
        >>> Y = X[:, [2]] * 3.0
        >>> profiled = ProfiledLinearAttention(X, Y)
        >>> profiled.refresh(torch.zeros(4, dtype=torch.bool))
        >>> profiled.loss(torch.full((4,), 0.25, dtype=torch.float64)).shape
        torch.Size([])
    """

    def __init__(self, X: torch.Tensor, Y: torch.Tensor, ridge_scale: float = DEFAULT_RIDGE_SCALE) -> None:
        X = X.to(torch.float64)
        Y = Y.to(torch.float64).reshape(X.shape[0], -1)
        self.xtx = X.T @ X
        self.xty = X.T @ Y
        self.lam = ridge_scale * max(float(self.xtx.diagonal().sum()), 1e-300)
        self.unselected = torch.ones(X.shape[1], dtype=torch.bool)
        self.gram = self.xtx
        self.corr = self.xty
        self.norm = 1.0

    def refresh(self, selected: torch.Tensor) -> None:
        """Project the selected columns out: ``G = R^T R`` and ``c = X_U^T r`` for the unselected."""
        self.unselected = U = ~selected.cpu()
        S = ~U
        self.gram = self.xtx[U][:, U]
        self.corr = self.xty[U]
        if bool(S.any()):
            # (X_S^T X_S)^+ [X_S^T X_U | X_S^T Y]; lstsq gives the pseudo-inverse solution, so a
            # rank-deficient selection (a duplicate picked when nothing is left to explain) still
            # projects correctly.
            cross = self.xtx[S][:, U]
            rhs = torch.cat([cross, self.xty[S]], dim=1)
            coef = torch.linalg.lstsq(self.xtx[S][:, S], rhs, driver="gelsd").solution
            self.gram = self.gram - cross.T @ coef[:, : cross.shape[1]]
            self.corr = self.corr - cross.T @ coef[:, cross.shape[1] :]  # X_U^T r, r = y - X_S b_S
        m = int(U.sum())
        # At uniform gates the logit gradient of -sum w^2 c^2 is -(2/m^2)(c_i^2 - mean c^2):
        # scaling by m^2 / (2 max c^2) makes it O(1), whatever the scale of X and y.
        top = float((self.corr**2).sum(dim=1).max()) if m else 0.0
        self.norm = m * m / (2.0 * top) if top > 0 else 1.0

    def loss(self, gates: torch.Tensor) -> torch.Tensor:
        """Normalised ``lam (L(w) - ||r||^2)`` for the gates of every candidate (unselected used)."""
        w = gates[self.unselected]
        wc = w[:, None] * self.corr
        system = torch.eye(w.shape[0], dtype=torch.float64) + (w[:, None] * self.gram * w[None, :]) / self.lam
        # LU solve, not Cholesky: torch's Cholesky backward measured 5x slower at 784 columns.
        return -self.norm * (wc * torch.linalg.solve(system, wc)).sum()


def fit_linear_attention(
    X: np.ndarray,
    Y: np.ndarray,
    attention: SequentialAttention,
    steps: int,
    learning_rate: float = 1.0,
    ridge_scale: float = DEFAULT_RIDGE_SCALE,
) -> SequentialAttention:
    """Run ``attention``'s whole schedule on the regularised linear model; return it, selection done.

    ``X`` and ``Y`` are centred here (as scikit-learn's OMP does with ``fit_intercept=True``) but
    not rescaled: OMP compares raw ``|X_j^T r|``. ``steps`` full-batch gradient steps span the
    schedule; each must leave every phase at least one step, else a pick is made from untrained
    logits.

    Example::

        >>> rng = np.random.default_rng(0)
        >>> X = rng.standard_normal((100, 6))
        >>> y = 3 * X[:, 4] - 2 * X[:, 1] + 0.1 * rng.standard_normal(100)
        >>> sa = SequentialAttention(6, 2, warmup=0.0).double()
        >>> fit_linear_attention(X, y[:, None], sa, steps=10).selection_order()
        [4, 1]
    """
    Xt = torch.tensor(np.asarray(X, dtype=np.float64))  # a copy: X may be a read-only memmap
    Yt = torch.tensor(np.asarray(Y, dtype=np.float64)).reshape(Xt.shape[0], -1)
    profiled = ProfiledLinearAttention(Xt - Xt.mean(0), Yt - Yt.mean(0), ridge_scale)
    profiled.refresh(attention.selected)
    optimizer = torch.optim.SGD([attention.logits], lr=learning_rate)
    attention.train()
    for step in range(1, steps + 1):
        optimizer.zero_grad(set_to_none=True)
        # During a warm-up the gates are 1 and this gradient is zero: nothing to profile yet.
        profiled.loss(attention.gates().to(torch.float64)).backward()
        optimizer.step()
        if attention.update(step / steps):
            profiled.refresh(attention.selected)
            reset_optimizer_state(optimizer, [attention.logits])
        if attention.done:
            break
    return attention

