"""The planner: a pure function of scores and budget; lands on the target; respects its constraints."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import timm

from tests.conftest import tiny_vit
from vitshrink.compressor.core.errors import BudgetError
from vitshrink.compressor.core.spec import ArchSpec
from vitshrink.compressor.core.surgery import PrunePlan, apply_plan
from vitshrink.compressor.planning.planner import (
    Budget,
    ModelCosts,
    choose_blocks,
    model_cost,
    model_costs,
    plan_depth,
    plan_width,
    split_budget,
    unit_costs,
)
from vitshrink.compressor.scoring.importance import Scores


def _scores(model, seed=0) -> Scores:
    rng = np.random.default_rng(seed)
    return Scores(
        "synthetic",
        tuple(rng.random(b.attn.num_heads) for b in model.blocks),
        tuple(rng.random(b.mlp.fc1.out_features) * 1e-3 for b in model.blocks),
        rng.random(len(model.blocks)),
    )


@pytest.mark.parametrize("metric", ["flops", "params"])
@pytest.mark.parametrize("reduction", [0.1, 0.3, 0.5])
def test_lands_within_one_point_and_cuts_exactly_that(metric, reduction):
    model = timm.create_model("vit_small_patch16_224", pretrained=False, depth=4)
    total = model_cost(model, metric)
    plan = plan_width(model_costs(model, metric), _scores(model), target_removed=reduction * total, reference_total=total)
    assert abs(plan.achieved - reduction) < 0.01
    apply_plan(model, ArchSpec.from_model(model), plan.plan)
    assert 1 - model_cost(model, metric) / total == pytest.approx(plan.achieved, abs=1e-9)


def test_constraints_min_heads_and_round_to():
    model = timm.create_model("vit_small_patch16_224", pretrained=False, depth=3)
    total = model_cost(model, "flops")
    scores = _scores(model)
    scores = Scores("s", tuple(h * 1e-6 for h in scores.heads), scores.neurons, scores.blocks)  # heads look useless
    plan = plan_width(model_costs(model, "flops"), scores, target_removed=0.5 * total, reference_total=total,
                      min_heads=2, round_to=64)
    assert min(plan.heads_kept) == 2
    assert all(n % 64 == 0 and n >= 64 for n in plan.neurons_kept)


def test_pure_and_printable():
    model = timm.create_model("vit_small_patch16_224", pretrained=False, depth=2)
    before = copy.deepcopy(model.state_dict())
    total = model_cost(model, "flops")
    plan = plan_width(model_costs(model, "flops"), _scores(model), target_removed=0.3 * total, reference_total=total)
    again = plan_width(model_costs(model, "flops"), _scores(model), target_removed=0.3 * total, reference_total=total)
    assert plan == again
    assert all((before[k] == v).all() for k, v in model.state_dict().items())
    assert "block 1:" in plan.describe()


def test_cost_aware_ranks_by_loss_per_cost():
    """A head adds 12x the loss of a neuron group but saves ~160x its MACs: cost-aware removes the head first."""
    model = timm.create_model("vit_small_patch16_224", pretrained=False, depth=1)
    scores = Scores("s", (np.array([10.0, 20, 20, 20, 20, 20]),), (np.full(1536, 0.1),), np.ones(1))
    total = model_cost(model, "flops")
    one_head = unit_costs(model, "flops").head[0]
    plan = plan_width(model_costs(model, "flops"), scores, target_removed=one_head, reference_total=total)
    assert plan.heads_kept == (5,) and plan.neurons_kept == (1536,)
    assert plan.plan.keep_heads[0] == (1, 2, 3, 4, 5)


def test_coarse_units_do_not_overshoot_when_finer_ones_can_land():
    model = timm.create_model("vit_small_patch16_224", pretrained=False, depth=2)
    # heads look useless, so a loss-only greedy would overshoot with a whole head at the end
    scores = Scores("s", tuple(np.full(6, 1e-9) for _ in range(2)), tuple(np.full(1536, 1e-3) for _ in range(2)),
                    np.ones(2))
    total = model_cost(model, "flops")
    for target in (0.05, 0.13, 0.27):
        plan = plan_width(model_costs(model, "flops"), scores, target_removed=target * total, reference_total=total)
        assert 0 <= plan.achieved - target <= 0.005, (target, plan.achieved)


def test_impossible_budgets_say_why():
    model = timm.create_model("vit_small_patch16_224", pretrained=False, depth=2)
    total = model_cost(model, "flops")
    with pytest.raises(BudgetError, match="at most"):
        plan_width(model_costs(model, "flops"), _scores(model), target_removed=0.99 * total, reference_total=total)
    with pytest.raises(BudgetError, match="in \\(0, 1\\)"):
        Budget.parse("flops=1.5")
    with pytest.raises(BudgetError, match="unknown budget metric"):
        Budget.parse("energy=0.3")
    with pytest.raises(BudgetError, match="one block must remain"):
        plan_depth(_scores(model), 2)


def test_depth_removes_lowest_blocks():
    model = timm.create_model("vit_small_patch16_224", pretrained=False, depth=4)
    scores = Scores("s", (), (), np.array([0.5, 0.1, 0.9, 0.05]))
    assert plan_depth(scores, 2).drop_blocks == (1, 3)
    assert Budget.parse("params=0.25") == Budget("params", 0.25)
    del model


@pytest.mark.parametrize("metric", ["flops", "params"])
def test_costs_are_what_the_cut_saves(metric):
    """One cost model: a block, a head and neurons cost exactly what cutting them removes from the count."""
    model = timm.create_model("vit_small_patch16_224", pretrained=False, depth=3, qk_norm=True)
    costs = model_costs(model, metric)
    assert costs.total == model_cost(model, metric) and costs.depth == 3
    cut = copy.deepcopy(model)
    apply_plan(cut, ArchSpec.from_model(cut), PrunePlan({0: (1, 2, 3, 4, 5)}, {0: tuple(range(5, 1536))}, (2,)))
    assert model_cost(model, metric) - model_cost(cut, metric) == costs.head[0] + 5 * costs.neuron[0] + costs.blocks[2]
    assert costs.without_blocks((2,)).total == model_cost(model, metric) - costs.blocks[2]


def test_coarse_units_that_cannot_land_within_one_point_say_what_can():
    """round_to=128 on a tiny model: a head is 2.9% of the MACs, a neuron group 10.3%; 7% is out of reach."""
    model = tiny_vit()
    total = model_cost(model, "flops")
    scores = _scores(model)
    with pytest.raises(BudgetError) as info:
        plan_width(model_costs(model, "flops"), scores, target_removed=0.07 * total, reference_total=total, round_to=128)
    message = str(info.value)
    assert "cannot land within 1 point of flops -7.0%" in message and "a smaller --round-to" in message
    assert "nearest reductions it reaches are 5.8% and 8.7%" in message  # two heads, three heads
    suggested = [float(v) for v in re.findall(r"--reduce flops=([0-9.]+)", message)]
    assert suggested, message
    for reduction in suggested:  # every value it suggests does land
        plan = plan_width(model_costs(model, "flops"), scores, target_removed=reduction * total, reference_total=total,
                          round_to=128)
        assert 0 <= plan.achieved - reduction <= 0.01
    fine = plan_width(model_costs(model, "flops"), scores, target_removed=0.07 * total, reference_total=total, round_to=8)
    assert 0 <= fine.achieved - 0.07 <= 0.01
    # 20%: cheapest-first ends at 22.0% (a group and four heads); two groups (20.6%) land
    coarse = plan_width(model_costs(model, "flops"), scores, target_removed=0.2 * total, reference_total=total,
                        round_to=128)
    assert 0 <= coarse.achieved - 0.2 <= 0.01 and coarse.neurons_kept == (128, 256, 128)
    # an intermediate step (a later stage completes the budget) may overshoot
    step = plan_width(model_costs(model, "flops"), scores, target_removed=0.07 * total, reference_total=total,
                      round_to=128, tolerance=None)
    assert step.achieved - 0.07 > 0.01


def _costs(blocks: tuple[float, ...]) -> ModelCosts:
    n = len(blocks)
    return ModelCosts("flops", fixed=5.0, blocks=blocks, head=(1.0,) * n, neuron=(0.01,) * n, num_heads=(4,) * n,
                      hidden=(64,) * n)


@pytest.mark.parametrize("blocks", [(12.0,) * 8, (10.0, 20.0, 5.0, 15.0, 30.0, 8.0, 12.0, 25.0)])
def test_depth_share_counts_blocks_monotonically_up_to_every_block_that_fits(blocks):
    costs = _costs(blocks)
    for reduction in (0.1, 0.15, 0.3, 0.45, 0.6, 0.8):
        budget = Budget("flops", reduction)
        fit = max(k for k in range(len(blocks)) if sum(sorted(blocks)[:k]) <= (reduction + 0.01) * costs.total)
        if fit == 0:
            with pytest.raises(BudgetError, match="one block is"):
                split_budget(costs, budget, width=True, depth=True, depth_share=0.5)
            continue
        splits = [split_budget(costs, budget, width=True, depth=True, depth_share=s) for s in np.linspace(0, 1, 21)]
        counts = [s.depth_blocks for s in splits]
        assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == fit, (reduction, counts)
        assert splits[0].width_removed == pytest.approx(reduction * costs.total)  # share 0: all width
        assert all(s.width_removed >= 0 for s in splits)


def test_split_refusals():
    with pytest.raises(BudgetError, match="the model has one block; depth pruning needs at least two"):
        split_budget(_costs((50.0,)), Budget("flops", 0.3), width=False, depth=True)
    with pytest.raises(BudgetError, match="the model has one block; depth pruning needs at least two"):
        split_budget(_costs((50.0,)), Budget("flops", 0.3), width=True, depth=True, depth_share=0.5)
    assert split_budget(_costs((50.0,)), Budget("flops", 0.3), width=True, depth=True, depth_share=0).depth_blocks == 0
    with pytest.raises(BudgetError, match="removes nothing"):
        split_budget(_costs((10.0,) * 4), Budget("flops", 0.3), width=False, depth=True, depth_blocks=0)
    with pytest.raises(BudgetError, match="one must remain"):
        split_budget(_costs((10.0,) * 4), Budget("flops", 0.3), width=False, depth=True, depth_blocks=4)


def test_depth_alone_lands_within_a_point_or_is_refused_before_any_work():
    costs = _costs((12.0,) * 8)  # fixed 5: a block is 11.9% of the total
    for reduction in np.linspace(0.01, 0.95, 95):
        try:
            split = split_budget(costs, Budget("flops", reduction), width=False, depth=True)
        except BudgetError as e:
            assert "cannot land within 1 point" in str(e)
            assert all(abs(k * 12.0 / costs.total - reduction) > 0.01 for k in range(1, 8)), reduction
            continue
        assert abs(split.depth_blocks * 12.0 / costs.total - reduction) <= 0.01, reduction
    message = (r"--stages depth cannot land within 1 point of flops -1.0%: the nearest block count, 1, removes "
               r"11.9% of the teacher's flops; use --stages width or width,depth, --reduce flops=0.119 (1 block), or "
               r"--depth-blocks N")
    with pytest.raises(BudgetError, match=re.escape(message)):
        split_budget(costs, Budget("flops", 0.01), width=False, depth=True)
    with pytest.raises(BudgetError, match=re.escape("--reduce flops=0.238 (2 blocks) or flops=0.356 (3 blocks)")):
        split_budget(costs, Budget("flops", 0.3), width=False, depth=True)
    for suggested, blocks in ((0.119, 1), (0.238, 2), (0.356, 3)):
        assert split_budget(costs, Budget("flops", suggested), width=False, depth=True).depth_blocks == blocks
    # an explicit count is the user's choice, landing or not
    assert split_budget(costs, Budget("flops", 0.01), width=False, depth=True, depth_blocks=1).depth_blocks == 1


def test_depth_alone_on_unequal_blocks_takes_a_count_that_can_land():
    """Which blocks go is known only after scoring: a count is taken when some choice of that many lands."""
    costs = _costs((10.0, 20.0, 5.0, 15.0, 30.0, 8.0, 12.0, 25.0))
    for reduction in (0.1, 0.3, 0.5):
        k = split_budget(costs, Budget("flops", reduction), width=False, depth=True).depth_blocks
        ordered = sorted(costs.blocks)
        assert sum(ordered[:k]) / costs.total - 0.01 <= reduction <= sum(ordered[-k:]) / costs.total + 0.01
    with pytest.raises(BudgetError, match=re.escape("the nearest block count, 1, removes 3.8% to 23.1%")):
        split_budget(costs, Budget("flops", 0.01), width=False, depth=True)


def test_blocks_are_chosen_by_score_among_those_that_fit():
    costs = (10.0, 30.0, 10.0, 10.0)
    scores = np.array([0.5, 0.1, 0.9, 0.3])
    # the lowest-scored block (1) is the dearest: taking it would leave no room for a second block
    assert choose_blocks(scores, costs, 2, room=35.0) == (0, 3)
    assert choose_blocks(scores, costs, 2, room=45.0) == (1, 3)
    assert choose_blocks(scores, costs, 4, room=100.0) == (0, 1, 3)  # one must remain
    assert choose_blocks(scores, costs, 2, room=9.0) == ()
