"""Sequential Attention: differentiable greedy forward selection (Yasuda et al., ICLR 2023).

During a warm-up every gate is 1 (the whole model trains, as in the reference). After it, every
unselected candidate carries a trainable logit. Its gate is the softmax of the logits over the
unselected candidates; a selected candidate's gate is 1. The gate scales the candidate's whole output
(a column, a block of columns, an embedding vector). Model weights and logits train together. After a
warm-up, training is cut into ``ceil(k / per_step)`` phases; at the END of each phase the unselected
candidates with the highest trained logits are selected and the logits are reset to zero.

Two defects of the public TF reference are avoided on purpose:

* it selects at the START of a phase, so its first pick comes from logits that never trained;
  here every pick follows a full phase of training;
* with ``per_step > 1`` it runs ``k // per_step`` phases and under-selects; here the last phase picks
  the remainder, so exactly ``k`` candidates are selected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class SelectionSchedule:
    """When picks happen, as fractions of training progress.

    Example::

        >>> SelectionSchedule(num_to_select=4, per_step=2, warmup=0.2).boundaries()
        [0.6, 1.0]
    """

    num_to_select: int
    per_step: int = 1
    warmup: float = 0.1

    def __post_init__(self) -> None:
        if self.num_to_select < 1:
            raise ValueError(f"num_to_select: must be >= 1, got {self.num_to_select}")
        if self.per_step < 1:
            raise ValueError(f"per_step: must be >= 1, got {self.per_step}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup: must be in [0, 1), got {self.warmup}")

    @property
    def num_phases(self) -> int:
        return math.ceil(self.num_to_select / self.per_step)

    def boundaries(self) -> list[float]:
        """Progress values at which phase ``i`` ends (the last one ends at 1.0)."""
        span = (1.0 - self.warmup) / self.num_phases
        return [round(self.warmup + span * (i + 1), 12) for i in range(self.num_phases)]

    def picks_in_phase(self, phase: int) -> int:
        """How many candidates phase ``phase`` selects: ``per_step``, the last one the remainder."""
        return min(self.per_step, self.num_to_select - phase * self.per_step)


class SequentialAttention(nn.Module):
    """Softmax gates over ``num_candidates`` units that select ``num_to_select`` of them greedily.

    Args:
        num_candidates: number of gated units.
        num_to_select: how many to select in total (``k``).
        per_step: how many to select at the end of each phase.
        warmup: fraction of training before the first phase starts.
        costs: optional cost per candidate (for example embedding bytes).
        budget: optional cap on the summed cost of the selected candidates. A phase picks the
            best-ranked candidates that still fit and never exceeds the budget; if nothing fits,
            selection stops early. A budget that every pick fits changes nothing.
        rank_by_cost: rank by ``score / cost`` (gain per byte) instead of by score. Right for a
            knapsack whose budget always binds (the dimension race spends a fixed allocation);
            wrong for a cap that may not bind, where cheap but useless candidates (a dense
            column costs 4 bytes) would outrank strong ones.
        group_sizes: optional width of each candidate. When given, ``forward(x)`` expects
            ``x.shape[-1] == sum(group_sizes)`` and one gate scales each candidate's whole block.
        prerequisites: optional index per candidate (-1 for none) that must already be selected
            before it can be (used for embedding-dimension blocks, which are taken in prefix order).

    Selection is driven by :meth:`update` with the training progress in [0, 1], called by the
    training loop after each optimizer step. It never selects in eval mode. All selection state
    (mask, order, scores, phase, budget) lives in buffers, so it survives ``state_dict()``.
    Once every phase has run, unselected candidates are switched off (gate 0): the model then
    trains on exactly the selected set. :meth:`exclude` removes candidates from the race early.

    Example::

        >>> sa = SequentialAttention(num_candidates=3, num_to_select=1, warmup=0.0)
        >>> x = torch.ones(2, 3)
        >>> sa(x).shape                       # gated input, each column scaled by its gate
        torch.Size([2, 3])
        >>> sa.gates()                        # uniform softmax before any training
        tensor([0.3333, 0.3333, 0.3333], grad_fn=<WhereBackward0>)
        >>> with torch.no_grad():
        ...     _ = sa.logits.copy_(torch.tensor([0.0, 2.0, 0.0]))
        >>> sa.update(1.0)                    # end of the only phase: candidate 1 wins
        [1]
        >>> sa.gates()[1].item()
        1.0
    """

    # Buffers (register_buffer in __init__), declared for the type checker.
    costs: torch.Tensor
    selected: torch.Tensor
    order: torch.Tensor
    scores: torch.Tensor
    phases_done: torch.Tensor
    exhausted: torch.Tensor
    eligible: torch.Tensor
    warming: torch.Tensor
    budget: torch.Tensor
    prerequisites: torch.Tensor
    group_index: torch.Tensor | None

    def __init__(
        self,
        num_candidates: int,
        num_to_select: int,
        per_step: int = 1,
        warmup: float = 0.1,
        costs: Sequence[float] | torch.Tensor | None = None,
        budget: float | None = None,
        group_sizes: Sequence[int] | None = None,
        prerequisites: Sequence[int] | None = None,
        rank_by_cost: bool = False,
    ) -> None:
        super().__init__()
        if num_candidates < 1:
            raise ValueError(f"num_candidates: must be >= 1, got {num_candidates}")
        if num_to_select > num_candidates:
            raise ValueError(
                f"num_to_select: {num_to_select} is more than the {num_candidates} candidates"
            )
        self.schedule = SelectionSchedule(num_to_select, per_step, warmup)
        self.num_candidates = num_candidates
        self.rank_by_cost = rank_by_cost
        cost = torch.ones(num_candidates) if costs is None else torch.as_tensor(costs, dtype=torch.float64)
        if cost.shape != (num_candidates,) or bool((cost <= 0).any()):
            raise ValueError("costs: need one positive cost per candidate")
        if budget is not None and budget <= 0:
            raise ValueError(f"budget: must be positive, got {budget}")
        self.logits = nn.Parameter(torch.zeros(num_candidates))
        self.register_buffer("costs", cost.to(torch.float64))
        self.register_buffer("selected", torch.zeros(num_candidates, dtype=torch.bool))
        self.register_buffer("order", torch.full((num_candidates,), -1, dtype=torch.long))
        self.register_buffer("scores", torch.full((num_candidates,), float("nan")))
        self.register_buffer("phases_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("exhausted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("eligible", torch.ones(num_candidates, dtype=torch.bool))
        self.register_buffer("warming", torch.tensor(warmup > 0))
        self.register_buffer("budget", torch.tensor(math.inf if budget is None else float(budget), dtype=torch.float64))
        pre = (torch.full((num_candidates,), -1, dtype=torch.long) if prerequisites is None
               else torch.as_tensor(prerequisites, dtype=torch.long))
        if pre.shape != (num_candidates,) or bool((pre >= num_candidates).any()):
            raise ValueError("prerequisites: need one index (or -1) per candidate")
        self.register_buffer("prerequisites", pre)
        if group_sizes is not None:
            if len(group_sizes) != num_candidates or min(group_sizes) < 1:
                raise ValueError("group_sizes: need one positive width per candidate")
            index = torch.repeat_interleave(torch.arange(num_candidates), torch.as_tensor(group_sizes))
            self.register_buffer("group_index", index, persistent=False)
        else:
            self.group_index = None

    # -- gates -----------------------------------------------------------------------------------
    def gates(self) -> torch.Tensor:
        """Gate per candidate: masked softmax over the unselected, 1 for the selected, 0 for the
        excluded (and for every unselected one once selection is done)."""
        ones = torch.ones_like(self.logits)
        if bool(self.warming):
            # As in the reference: the warm-up trains the whole model on every candidate.
            return ones + 0.0 * self.logits
        racing = self.eligible & ~self.selected
        if self.done or not bool(racing.any()):
            # `0 * logits` keeps the logits in the graph, so DDP's static graph stays static.
            return torch.where(self.selected, ones, torch.zeros_like(ones)) + 0.0 * self.logits
        soft = torch.softmax(self.logits.masked_fill(~racing, float("-inf")), dim=0)
        return torch.where(self.selected, ones, soft)

    def forward(self, x: torch.Tensor | None = None) -> torch.Tensor:
        """Return ``x`` scaled by the gates along its last dim, or the gates when ``x`` is None."""
        g = self.gates()
        if x is None:
            return g
        if self.group_index is not None:
            g = g[self.group_index]
        return x * g

    # -- selection -------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return bool(self.exhausted) or int(self.phases_done) >= self.schedule.num_phases

    @property
    def num_selected(self) -> int:
        return int(self.selected.sum())

    @property
    def spent(self) -> float:
        """Summed cost of the selected candidates."""
        return float(self.costs[self.selected].sum())

    def selection_order(self) -> list[int]:
        """Indices of the selected candidates, in the order they were picked."""
        return [int(i) for i in self.order[: self.num_selected]]

    @torch.no_grad()
    def exclude(self, indices: Sequence[int] | torch.Tensor) -> None:
        """Take candidates out of the race for good (gate 0, never selected)."""
        self.eligible[torch.as_tensor(indices, dtype=torch.long)] = False

    def set_budget(self, budget: float | None) -> None:
        """Set or clear the cost budget (kept in ``state_dict``)."""
        self.budget.fill_(math.inf if budget is None else float(budget))

    @torch.no_grad()
    def update(self, progress: float) -> list[int]:
        """Advance the schedule to ``progress``; select at every phase end passed. Returns new picks."""
        if not self.training:
            return []
        if progress >= self.schedule.warmup:
            self.warming.fill_(False)
        picks: list[int] = []
        boundaries = self.schedule.boundaries()
        while not self.done and progress >= boundaries[int(self.phases_done)] - 1e-9:
            picks += self._select(self.schedule.picks_in_phase(int(self.phases_done)))
            self.phases_done += 1
        return picks

    def _select(self, n: int) -> list[int]:
        weights = self.gates().double()
        free = self.eligible & ~self.selected
        # Every unselected candidate's score is refreshed at each pick; a picked one keeps its own.
        self.scores[free] = weights[free].to(self.scores.dtype)
        budget = float(self.budget)
        # The budget only skips candidates that no longer fit: while every pick fits, the picks are
        # the unbudgeted ones, and a binding budget takes the best candidate that still fits.
        ranking = weights / self.costs if self.rank_by_cost else weights
        picks: list[int] = []
        spent = self.spent
        candidates = torch.argsort(ranking.masked_fill(~free, -1.0), descending=True).tolist()
        progressed = True
        while len(picks) < n and progressed:  # re-scan: a pick may unlock its dependants
            progressed = False
            for i in candidates:
                if len(picks) == n:
                    break
                pre = int(self.prerequisites[i])
                if not bool(free[i]) or (pre >= 0 and not bool(self.selected[pre])):
                    continue
                if spent + float(self.costs[i]) > budget * (1 + 1e-12):
                    continue
                picks.append(i)
                spent += float(self.costs[i])
                self.order[self.num_selected] = i
                self.selected[i] = True
                free[i] = False
                progressed = True
                break
        if len(picks) < n:
            self.exhausted.fill_(True)
        self.logits.zero_()
        return picks


def reset_optimizer_state(optimizer: torch.optim.Optimizer, params: Sequence[nn.Parameter]) -> None:
    """Forget the optimizer's moments for ``params``: after a pick the logits restart from zero,
    and stale Adam momentum would otherwise push them back toward the previous ranking."""
    for p in params:
        optimizer.state.pop(p, None)
