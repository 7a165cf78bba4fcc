"""SequentialAttention++: block-sparse pruning of ``nn.Linear`` layers (Yasuda et al., 2024).

A weight matrix is cut into ``block x block`` tiles. Each tile has a trainable logit; its attention
weight is ``min(clip, n * softmax(logits)_i)`` over the layer's ``n`` tiles, so all weights start at 1
and training moves mass toward the tiles that lower the loss. The weight the layer uses is
``W * mask * attention``. The *combinatorial* part is an ACDC-style schedule (Peste et al., 2021) of
phases over training progress, each cycle being:

1. **dense**: every tile is free (tiles pruned in the previous cycle restart from zero);
2. **sparsify**: the block sparsity rises as ``s * (1 - e^{-4t}) / (1 - e^{-4})`` over the phase
   (``t`` in [0, 1]), keeping the most important tiles: by default those whose weight in use
   ``||W_b * attention_b||`` is largest (``rank_by="weight"``), or those whose attention logit is
   largest (``rank_by="logits"``, the mask's own score; see below);
3. **sparse**: the support is fixed at the target sparsity ``s`` and the kept tiles fine-tune.

The optimizer state of the pruned layers is reset at every phase boundary, as in ACDC. There the
attention is first folded into the weights (``W <- W * a``, so the layer computes the same function)
and the logits return to zero, except (by default, ``logits="carry"``) from the dense phase into the
sparsify phase: there the logits the dense phase trained keep scaling the tiles that the sparsify
phase ranks, and go on adjusting after each cut. Without the fold, zeroing the logits would make
every shrunken tile jump back to full size at a boundary.

**Block-magnitude pruning**, the baseline, is the same schedule with the importance ``||W_b||`` alone
and no attention. Layers with fewer than ``min_blocks`` tiles stay dense.

Why two rankings: with ``clip=1`` every tile whose attention is above the mean is capped at 1, so
among the tiles the attention favours ``rank_by="weight"`` ranks by the norm alone, as magnitude
does; the attention moves the ranking only through the tiles it shrinks. Ranking by the logits lets
the attention alone pick the support. In ``docs/pruning_ablation.md`` that wins clearly on the
planted data and ties or loses on Frappe, so it is an option, not the default. The same page shows
where the kept tiles go: magnitude, and the weight ranking with it, puts most of the first layer's
on the large embedding tables (Frappe's item and user); the logits move a large share to small
tables and the dense inputs. On the planted data magnitude's choice over-fits more (lower training,
higher validation log-loss); on Frappe at 6 epochs it is better on both.

``weight_decay`` adds ``lambda * ||W||^2`` on the pruned layers' weights (for both methods). With
the attention method this is what makes the softmax mask a *sparsity* device, the paper's point
(§3): minimising ``||W_b||^2`` over the factorisation ``V_b = W_b * a_b`` with the ``a_b`` on a
simplex gives a group penalty ``(sum_b ||V_b||^(2/3))^3`` on the weight the layer uses, a nonconvex
group-lasso that drives unimportant tiles toward zero before the hard selection cuts them. That
needs room for the favoured tiles to grow: with ``clip=1`` (every ``a_b <= 1``) the cheapest
factorisation is every ``a_b = 1``, and the penalty is plain ridge on ``V``, as for magnitude. A
larger clip (the ablation tries 8) restores the group effect up to the cap.
After training, :meth:`BlockSparseLinear.to_inference` gives a layer whose weight is a real block
sparse (BSR) tensor, so the zero tiles cost nothing at serving time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Method = Literal["attention", "magnitude"]
RankBy = Literal["weight", "logits"]
PHASES = ("dense", "sparsify", "sparse")


@dataclass(frozen=True)
class PruningConfig:
    """What to prune and how.

    Example::

        >>> cfg = PruningConfig(sparsity=0.9, block=8)
        >>> [(kind, round(start, 3)) for kind, start, _ in cfg.phases()][:3]
        [('dense', 0.0), ('sparsify', 0.1), ('sparse', 0.3)]
        >>> cfg.sparsity_at(0.3), cfg.sparsity_at(1.0)
        (0.9, 0.9)
    """

    sparsity: float
    block: int = 8
    method: Method = "attention"
    cycles: int = 2
    phase_fractions: tuple[float, float, float] = (0.2, 0.4, 0.4)  # dense, sparsify, sparse within a cycle
    clip: float = 1.0
    min_blocks: int = 64
    weight_decay: float = 0.0  # L2 penalty on the pruned layers' weights (both methods): see the module doc
    # "carry": keep the dense phase's logits into the sparsify phase, so the mask the dense phase
    # trained picks the support (the paper's reading); "reset": fold the attention and zero the logits
    # at every boundary. The two are within the seed spread of each other in the ablation.
    logits: Literal["carry", "reset"] = "carry"
    # "weight": rank tiles by ||W_b * a_b||; "logits": by the attention logit, the norm breaking ties.
    rank_by: RankBy = "weight"
    # The tile logits' Adam rate as a multiple of the run's learning rate (None: 1 when ranking by
    # weight, 100 by logits). docs/pruning_ablation.md compares 1 and 10 with clips 1 and 8 for the
    # weight ranking: faster logits, or a clip that lets tiles grow, do worse on the planted data.
    logit_lr_scale: float | None = None
    # Adam's eps for the tile logits (None: Adam's 1e-8 when ranking by weight, 1e-3 by logits).
    # Adam moves every logit by about its rate per step whatever the gradient's size, so a tile whose
    # gradient is tiny but steady gets as large a logit as one that matters. A large eps makes the
    # steps follow the gradient's size (momentum SGD at rate / eps): a logit then sums how much its
    # tile lowers the loss, which is what ranking by the logits needs.
    logit_eps: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.sparsity < 1.0:
            raise ValueError(f"sparsity: must be in (0, 1), got {self.sparsity}")
        if self.block < 1:
            raise ValueError(f"block: must be >= 1, got {self.block}")
        if self.method not in ("attention", "magnitude"):
            raise ValueError(f"method: must be 'attention' or 'magnitude', got {self.method!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay: must be >= 0, got {self.weight_decay}")
        if self.rank_by not in ("weight", "logits"):
            raise ValueError(f"rank_by: must be 'weight' or 'logits', got {self.rank_by!r}")
        by_logits = self.rank_by == "logits"
        if self.logit_lr_scale is None:
            object.__setattr__(self, "logit_lr_scale", 100.0 if by_logits else 1.0)
        if self.logit_eps is None:
            object.__setattr__(self, "logit_eps", 1e-3 if by_logits else 1e-8)
        assert self.logit_lr_scale is not None and self.logit_eps is not None  # set just above
        if self.logit_lr_scale <= 0:
            raise ValueError(f"logit_lr_scale: must be > 0, got {self.logit_lr_scale}")
        if self.logit_eps <= 0:
            raise ValueError(f"logit_eps: must be > 0, got {self.logit_eps}")
        if self.logits not in ("carry", "reset"):
            raise ValueError(f"logits: must be 'carry' or 'reset', got {self.logits!r}")
        if self.cycles < 1:
            raise ValueError(f"cycles: must be >= 1, got {self.cycles}")
        if len(self.phase_fractions) != 3 or min(self.phase_fractions) <= 0:
            raise ValueError("phase_fractions: need three positive fractions (dense, sparsify, sparse)")

    def phases(self) -> list[tuple[str, float, float]]:
        """``(kind, start, end)`` of every phase, as fractions of training progress."""
        total = self.cycles * sum(self.phase_fractions)
        out, t = [], 0.0
        for _ in range(self.cycles):
            for kind, frac in zip(PHASES, self.phase_fractions):
                out.append((kind, t, t + frac / total))
                t += frac / total
        kind, start, _ = out[-1]
        out[-1] = (kind, start, 1.0)
        return out

    def phase_at(self, progress: float) -> int:
        """Index of the phase that holds ``progress`` (a phase includes its end, except the dense ones)."""
        for i, (kind, _start, end) in enumerate(self.phases()):
            if progress < end or (progress <= end and kind != "dense"):
                return i
        return len(self.phases()) - 1

    def sparsity_at(self, progress: float) -> float:
        """Target block sparsity at ``progress``: 0 in dense phases, the exponential ramp, then ``s``."""
        kind, start, end = self.phases()[self.phase_at(progress)]
        if kind == "dense":
            return 0.0
        if kind == "sparse":
            return self.sparsity
        t = min(1.0, max(0.0, (progress - start) / (end - start)))
        return self.sparsity * (1 - math.exp(-4 * t)) / (1 - math.exp(-4))


class BlockAttention(nn.Module):
    """One logit per tile; weights ``min(clip, n * softmax(logits))`` (mean 1 before clipping)."""

    def __init__(self, shape: tuple[int, int], clip: float) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(shape))
        self.clip = clip

    def forward(self) -> torch.Tensor:
        n = self.logits.numel()
        return torch.clamp(n * torch.softmax(self.logits.flatten(), 0), max=self.clip).view_as(self.logits)


def _expand(tiles: torch.Tensor, block: int, shape: torch.Size) -> torch.Tensor:
    return tiles.repeat_interleave(block, 0).repeat_interleave(block, 1)[: shape[0], : shape[1]]


class BlockSparseLinear(nn.Module):
    """An ``nn.Linear`` whose ``block x block`` tiles can be masked (and, with attention, scaled).

    Example::

        >>> layer = BlockSparseLinear(nn.Linear(32, 16), block=8, method="attention")  # 2 x 4 tiles
        >>> layer.num_blocks, layer(torch.ones(2, 32)).shape
        (8, torch.Size([2, 16]))
        >>> layer.prune_to(0.5); layer.block_sparsity()
        0.5
        >>> fast = layer.to_inference()         # a BSR weight: the zero tiles are not stored
        >>> torch.allclose(fast(torch.ones(2, 32)), layer(torch.ones(2, 32)), atol=1e-5)
        True
    """

    # Buffers (register_buffer in __init__), declared for the type checker.
    mask: torch.Tensor

    def __init__(self, linear: nn.Linear, block: int, method: Method = "attention", clip: float = 1.0,
                 rank_by: RankBy = "weight") -> None:
        super().__init__()
        self.linear = linear
        self.block = block
        self.rank_by = rank_by
        out_f, in_f = linear.weight.shape
        shape = (math.ceil(out_f / block), math.ceil(in_f / block))
        self.register_buffer("mask", torch.ones(shape, dtype=torch.bool, device=linear.weight.device))
        self.attention = BlockAttention(shape, clip) if method == "attention" else None

    @property
    def num_blocks(self) -> int:
        return self.mask.numel()

    def tile_scale(self) -> torch.Tensor:
        """Per-tile factor applied to the weight: mask times attention."""
        scale = self.mask.to(self.linear.weight.dtype)
        return scale * self.attention() if self.attention is not None else scale

    def effective_weight(self) -> torch.Tensor:
        w = self.linear.weight
        return w * _expand(self.tile_scale(), self.block, w.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.linear.bias)

    @torch.no_grad()
    def importance(self) -> torch.Tensor:
        """Per tile: the Frobenius norm of the weight the layer uses (0 for a masked tile), or with
        ``rank_by="logits"`` the attention logit, the norm (scaled below any logit gap) breaking ties
        and masked tiles last, so a sparsify phase never brings a cut tile back."""
        w = self.effective_weight()
        padded = F.pad(w, (0, self.mask.shape[1] * self.block - w.shape[1],
                           0, self.mask.shape[0] * self.block - w.shape[0]))
        norm = padded.view(self.mask.shape[0], self.block, self.mask.shape[1], self.block).pow(2).sum(dim=(1, 3)).sqrt()
        if self.rank_by == "weight" or self.attention is None:
            return norm
        score = self.attention.logits + 1e-6 * norm / norm.max().clamp_min(1e-12)
        return torch.where(self.mask, score, torch.full_like(score, -math.inf))

    @torch.no_grad()
    def prune_to(self, sparsity: float) -> None:
        """Keep the ``round((1 - sparsity) * n)`` most important tiles (at least one)."""
        keep = max(1, round((1.0 - sparsity) * self.num_blocks))
        order = torch.argsort(self.importance().flatten(), descending=True, stable=True)
        mask = torch.zeros(self.num_blocks, dtype=torch.bool, device=self.mask.device)
        mask[order[:keep]] = True
        self.mask.copy_(mask.view_as(self.mask))

    @torch.no_grad()
    def fold_attention(self) -> None:
        """Multiply the attention into the weight and zero the logits: the layer computes the same."""
        if self.attention is not None:
            self.linear.weight.copy_(self.effective_weight())
            self.attention.logits.zero_()

    @torch.no_grad()
    def release(self) -> None:
        """Free every tile again (ACDC's dense phase): pruned tiles restart from zero."""
        w = self.linear.weight
        w.mul_(_expand(self.mask.to(w.dtype), self.block, w.shape))
        self.mask.fill_(True)

    def block_sparsity(self) -> float:
        return 1.0 - float(self.mask.float().mean())

    @torch.no_grad()
    def to_inference(self) -> BlockSparseInference:
        """A serving copy: the attention folded into the weight, stored as a BSR tensor."""
        return BlockSparseInference(self.effective_weight(), self.linear.bias, self.block)


class BlockSparseInference(nn.Module):
    """A linear layer with a block-sparse (BSR) weight; input columns padded to whole tiles."""

    # Buffers (register_buffer in __init__), declared for the type checker.
    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, block: int) -> None:
        super().__init__()
        out_f, in_f = weight.shape
        self.out_features, self.in_pad = out_f, (-in_f) % block
        padded = F.pad(weight.detach(), (0, self.in_pad, 0, (-out_f) % block))
        self.register_buffer("weight", padded.to_sparse_bsr((block, block)))
        self.register_buffer("bias", None if bias is None else F.pad(bias.detach(), (0, (-out_f) % block)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        if self.in_pad:
            x = F.pad(x, (0, self.in_pad))
        # W @ x^T, not F.linear(x, W): F.linear needs the BSR weight transposed, and PyTorch's CPU
        # kernels run that several times slower than the plain BSR x dense product (bench section f).
        bias = self.bias if self.bias is not None else x.new_zeros(self.weight.shape[0])
        y = torch.addmm(bias[:, None], self.weight, x.T).T
        return y[:, : self.out_features].reshape(*lead, self.out_features)


class BlockSparsifier(nn.Module):
    """Drives the phase schedule over the prunable ``nn.Linear`` layers of a module.

    :meth:`wrap` swaps each eligible ``nn.Linear`` inside ``module`` for a
    :class:`BlockSparseLinear` in place; :meth:`update` is called with the training progress after
    each optimizer step and returns True at a phase boundary (the caller then resets the optimizer
    state of :meth:`layer_parameters`). The masks are buffers of the layers and the phase index a
    buffer of this module (register it on the owner), so a checkpoint holds the whole pruning state.
    The layers themselves stay registered where they sit (in ``module``), not here.

    Example::

        >>> mlp = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 1))
        >>> sparsifier = BlockSparsifier.wrap(mlp, PruningConfig(sparsity=0.75, block=8))
        >>> len(sparsifier.layers)                    # the 64 -> 1 layer is too small to prune
        1
        >>> sparsifier.update(1.0); round(sparsifier.block_sparsity(), 2)
        True
        0.75
    """

    # Buffers (register_buffer in __init__), declared for the type checker.
    phase: torch.Tensor

    def __init__(self, layers: list[BlockSparseLinear], config: PruningConfig) -> None:
        super().__init__()
        self.layers = list(layers)  # a plain list: not submodules of this one
        self.config = config
        self.register_buffer("phase", torch.tensor(-1))

    @classmethod
    def wrap(cls, module: nn.Module, config: PruningConfig) -> BlockSparsifier:
        layers = []
        for parent in list(module.modules()):
            for name, child in list(parent.named_children()):
                if not isinstance(child, nn.Linear):
                    continue
                out_f, in_f = child.weight.shape
                if math.ceil(out_f / config.block) * math.ceil(in_f / config.block) < config.min_blocks:
                    continue  # too small to prune: left dense
                layer = BlockSparseLinear(child, config.block, config.method, config.clip, config.rank_by)
                setattr(parent, name, layer)
                layers.append(layer)
        return cls(layers, config)

    def layer_parameters(self) -> list[nn.Parameter]:
        return [p for layer in self.layers for p in layer.parameters()]

    def penalty(self) -> torch.Tensor | float:
        """``weight_decay * sum ||W||^2`` over the pruned layers' weights, added to the training loss."""
        if not self.config.weight_decay or not self.layers:
            return 0.0
        return self.config.weight_decay * sum(layer.linear.weight.pow(2).sum() for layer in self.layers)

    @torch.no_grad()
    def update(self, progress: float) -> bool:
        """Apply the schedule at ``progress``; True when a new phase began."""
        index = self.config.phase_at(progress)
        kind = self.config.phases()[index][0]
        new_phase = index != int(self.phase)
        carry = kind == "sparsify" and self.config.logits == "carry"
        for layer in self.layers:
            if new_phase and not carry:
                layer.fold_attention()
            if kind == "dense":
                if new_phase:
                    layer.release()
            else:
                layer.prune_to(self.config.sparsity_at(progress))
        self.phase.fill_(index)
        return new_phase

    def block_sparsity(self) -> float:
        """Fraction of masked tiles over every pruned layer."""
        total = sum(layer.num_blocks for layer in self.layers)
        return sum(layer.block_sparsity() * layer.num_blocks for layer in self.layers) / max(1, total)

    def summary(self) -> list[dict[str, object]]:
        """Per pruned layer: shape, tiles kept and the kept tiles' indices (row-major)."""
        return [{"shape": list(layer.linear.weight.shape), "block": layer.block, "blocks": layer.num_blocks,
                 "kept": int(layer.mask.sum()), "kept_blocks": layer.mask.flatten().nonzero().flatten().tolist()}
                for layer in self.layers]
