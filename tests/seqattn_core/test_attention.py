"""SequentialAttention: its schedule, exact pick counts, state, budgets, groups, and a first pick
that follows training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seqattn_core.attention import SelectionSchedule, SequentialAttention, reset_optimizer_state

pytestmark = pytest.mark.usefixtures("one_thread")


def _set_logits(sa: SequentialAttention, values: list[float]) -> None:
    with torch.no_grad():
        sa.logits.copy_(torch.tensor(values, dtype=sa.logits.dtype))


def _sweep(sa: SequentialAttention, steps: int = 100) -> list[list[int]]:
    """Drive the schedule like a training loop of ``steps`` steps; the picks of every step."""
    return [sa.update(step / steps) for step in range(1, steps + 1)]


# -- schedule ------------------------------------------------------------------------------------
def test_schedule_boundaries_and_remainder_phase() -> None:
    assert SelectionSchedule(4, per_step=2, warmup=0.2).boundaries() == [0.6, 1.0]
    five = SelectionSchedule(5, per_step=2, warmup=0.1)
    assert five.num_phases == 3
    assert five.boundaries() == pytest.approx([0.4, 0.7, 1.0])
    assert [five.picks_in_phase(p) for p in range(3)] == [2, 2, 1]
    assert SelectionSchedule(3, per_step=1, warmup=0.0).boundaries() == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_picks_happen_at_phase_ends_not_starts() -> None:
    sa = SequentialAttention(6, 2, warmup=0.2)  # phases end at 0.6 and 1.0
    _set_logits(sa, [0.0, 0.0, 3.0, 0.0, 1.0, 0.0])
    assert sa.update(0.1) == []
    assert sa.update(0.59) == []
    assert sa.update(0.6) == [2]
    _set_logits(sa, [0.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    assert sa.update(0.99) == []
    assert sa.update(1.0) == [4]
    assert sa.done and sa.selection_order() == [2, 4]


@pytest.mark.parametrize(("k", "per_step"), [(5, 2), (7, 3), (4, 4), (3, 1)])
def test_selects_exactly_k_even_when_per_step_does_not_divide_k(k: int, per_step: int) -> None:
    torch.manual_seed(0)
    sa = SequentialAttention(12, k, per_step=per_step, warmup=0.1)
    picks = [p for step in _sweep(sa) for p in step]
    assert len(picks) == len(set(picks)) == k
    assert sa.num_selected == k
    assert sa.selection_order() == picks
    assert int(sa.phases_done) == math.ceil(k / per_step)


def test_no_selection_in_eval_mode() -> None:
    sa = SequentialAttention(5, 2, warmup=0.0)
    _set_logits(sa, [0.0, 4.0, 0.0, 0.0, 0.0])
    sa.eval()
    assert sa.update(1.0) == []
    assert sa.num_selected == 0 and int(sa.phases_done) == 0
    sa.train()
    assert sa.update(0.5) == [1]


# -- gates ---------------------------------------------------------------------------------------
def test_gates_softmax_over_unselected_and_one_for_selected() -> None:
    sa = SequentialAttention(4, 2, warmup=0.0)
    assert torch.allclose(sa.gates(), torch.full((4,), 0.25))
    _set_logits(sa, [0.0, 2.0, 0.0, 0.0])
    assert sa.update(0.5) == [1]
    gates = sa.gates()
    assert gates[1].item() == 1.0
    assert torch.allclose(gates[[0, 2, 3]], torch.full((3,), 1 / 3))  # logits were reset


def test_warmup_keeps_every_gate_at_one() -> None:
    sa = SequentialAttention(4, 1, warmup=0.5)
    assert torch.equal(sa.gates().detach(), torch.ones(4))
    sa.update(0.4)
    assert torch.equal(sa.gates().detach(), torch.ones(4))
    sa.update(0.5)
    assert torch.allclose(sa.gates(), torch.full((4,), 0.25))


def test_group_sizes_scale_each_block_by_its_candidate_gate() -> None:
    sa = SequentialAttention(3, 1, warmup=0.0, group_sizes=[2, 1, 3])
    _set_logits(sa, [1.0, 0.0, -1.0])
    x = torch.arange(1.0, 13.0).reshape(2, 6)
    gates = sa.gates()
    expected = x * torch.cat([gates[0].repeat(2), gates[1].repeat(1), gates[2].repeat(3)])
    assert torch.allclose(sa(x), expected)
    assert sa.update(1.0) == [0]
    # Selected block passes unchanged; the others are switched off once selection is done.
    assert torch.equal(sa(x), x * torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0]))
    with pytest.raises(RuntimeError):
        sa(torch.ones(2, 3))  # one column per candidate is not the declared width


# -- state ---------------------------------------------------------------------------------------
def test_state_dict_round_trip_restores_selection_state() -> None:
    kwargs = dict(num_candidates=8, num_to_select=5, per_step=2, warmup=0.1)
    sa = SequentialAttention(**kwargs)
    _set_logits(sa, [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6])
    assert sa.update(0.45) == [1, 3]  # first phase ends at 0.4
    _set_logits(sa, [0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0])
    fresh = SequentialAttention(**kwargs)
    fresh.load_state_dict(sa.state_dict())
    assert torch.equal(fresh.selected, sa.selected)
    assert torch.equal(fresh.order, sa.order)
    assert torch.allclose(fresh.scores, sa.scores, equal_nan=True)
    assert int(fresh.phases_done) == int(sa.phases_done) == 1
    assert torch.equal(fresh.logits, sa.logits)
    assert torch.equal(fresh.gates(), sa.gates())
    # Both continue identically: same next phase, same picks.
    assert fresh.update(0.7) == sa.update(0.7) == [2, 0]
    assert fresh.selection_order() == sa.selection_order() == [1, 3, 2, 0]


def test_works_in_float64() -> None:
    # The linear model (seqattn_core.linear) runs the module in float64.
    sa = SequentialAttention(4, 2, warmup=0.0).double()
    _set_logits(sa, [0.0, 1.0, 3.0, 2.0])
    assert sa.update(0.5) == [2]
    assert sa.scores.dtype == torch.float64
    assert sa.scores[2].item() == pytest.approx(math.exp(3) / (1 + math.e + math.exp(3) + math.exp(2)))


def test_reset_optimizer_state_forgets_the_moments() -> None:
    sa = SequentialAttention(3, 1)
    other = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.Adam([sa.logits, other], lr=0.1)
    (sa.gates().sum() + other.sum()).backward()
    optimizer.step()
    assert sa.logits in optimizer.state and other in optimizer.state
    reset_optimizer_state(optimizer, [sa.logits])
    assert sa.logits not in optimizer.state and other in optimizer.state


# -- budgets -------------------------------------------------------------------------------------
def test_a_binding_budget_takes_the_best_candidates_that_still_fit() -> None:
    # Three strong tables of 400 bytes and two near-useless dense columns of 4 bytes, room for two
    # tables and the columns. The two best tables are picked, then the third does not fit, so only
    # then does a column get the last pick.
    costs = [400.0, 400.0, 400.0, 4.0, 4.0]
    logits = [3.0, 2.8, 2.5, -1.0, -1.0]
    sa = SequentialAttention(5, 3, per_step=3, warmup=0.0, costs=costs, budget=808.0)
    _set_logits(sa, logits)
    picks = sa.update(1.0)
    assert picks[:2] == [0, 1] and picks[2] in (3, 4)
    assert sa.spent <= 808.0
    # Gain per byte (the dimension race's ranking) would have spent the first picks on the columns.
    by_cost = SequentialAttention(5, 3, per_step=3, warmup=0.0, costs=costs, budget=808.0, rank_by_cost=True)
    _set_logits(by_cost, logits)
    assert by_cost.update(1.0) == [3, 4, 0]


@pytest.mark.parametrize("seed", range(5))
def test_a_budget_that_every_pick_fits_changes_no_pick(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    costs = (torch.rand(12, generator=gen) * 1000 + 1).tolist()
    logit_steps = [torch.randn(12, generator=gen).tolist() for _ in range(50)]

    def run(budget: float | None) -> list[int]:
        sa = SequentialAttention(12, 6, per_step=2, warmup=0.1, costs=costs, budget=budget)
        for step, logits in enumerate(logit_steps, start=1):
            _set_logits(sa, logits)
            sa.update(step / len(logit_steps))
        return sa.selection_order()

    free = run(None)
    assert len(free) == 6
    exact = sum(costs[i] for i in free)
    assert run(exact) == free  # the budget is met exactly and never binds
    assert run(exact * 10) == free
    assert sum(costs[i] for i in run(exact * 0.6)) <= exact * 0.6  # a binding one is never exceeded


@pytest.mark.parametrize("seed", range(5))
def test_budget_never_exceeded_over_a_training_schedule(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    costs = torch.rand(20, generator=gen) * 9 + 1
    budget = float(costs.sum()) / 4
    sa = SequentialAttention(20, 10, per_step=2, warmup=0.1, costs=costs, budget=budget)
    for step in range(1, 101):
        _set_logits(sa, torch.randn(20, generator=gen).tolist())
        sa.update(step / 100)
        assert float(sa.costs[sa.selected].sum()) <= budget * (1 + 1e-9)
    assert 1 <= sa.num_selected <= 10


# -- training ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_first_pick_is_an_informative_column(seed: int) -> None:
    # 12 columns, the target depends on three of them: the first pick is made after a full
    # phase of training, so it must be one of the three (a pick from untrained logits would not).
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(1024, 12, generator=gen)
    y = 2.0 * X[:, 3] - 1.5 * X[:, 8] + torch.relu(X[:, 10]) + 0.1 * torch.randn(1024, generator=gen)
    sa = SequentialAttention(12, 3, warmup=0.1)
    net = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    torch.manual_seed(seed)
    for layer in (net[0], net[2]):
        layer.reset_parameters()
    optimizer = torch.optim.Adam([*net.parameters(), sa.logits], lr=3e-3)
    steps, first = 300, None
    for step in range(1, steps + 1):
        idx = torch.randint(0, 1024, (128,), generator=gen)
        loss = torch.nn.functional.mse_loss(net(sa(X[idx])).squeeze(1), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        picks = sa.update(step / steps)
        if picks:
            first = first if first is not None else picks[0]
            reset_optimizer_state(optimizer, [sa.logits])
    assert first in {3, 8, 10}
    assert set(sa.selection_order()) == {3, 8, 10}
    assert np.isfinite(sa.scores.numpy()).all()
