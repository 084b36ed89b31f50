"""The planner: a pure function of scores and budget; lands on the target; respects its constraints."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm

from compressor.errors import BudgetError
from compressor.importance import Scores
from compressor.planner import Budget, model_cost, plan_depth, plan_width, unit_costs
from compressor.spec import ArchSpec
from compressor.surgery import apply_plan


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
    plan = plan_width(model, _scores(model), metric=metric, target_removed=reduction * total, reference_total=total)
    assert abs(plan.achieved - reduction) < 0.01
    apply_plan(model, ArchSpec.from_model(model), plan.plan)
    assert 1 - model_cost(model, metric) / total == pytest.approx(plan.achieved, abs=1e-9)


def test_constraints_min_heads_and_round_to():
    model = timm.create_model("vit_small_patch16_224", pretrained=False, depth=3)
    total = model_cost(model, "flops")
    scores = _scores(model)
    scores = Scores("s", tuple(h * 1e-6 for h in scores.heads), scores.neurons, scores.blocks)  # heads look useless
    plan = plan_width(model, scores, metric="flops", target_removed=0.5 * total, reference_total=total,
                      min_heads=2, round_to=64)
    assert min(plan.heads_kept) == 2
    assert all(n % 64 == 0 and n >= 64 for n in plan.neurons_kept)


def test_pure_and_printable():
    model = timm.create_model("vit_small_patch16_224", pretrained=False, depth=2)
    before = copy.deepcopy(model.state_dict())
    total = model_cost(model, "flops")
    plan = plan_width(model, _scores(model), metric="flops", target_removed=0.3 * total, reference_total=total)
    again = plan_width(model, _scores(model), metric="flops", target_removed=0.3 * total, reference_total=total)
    assert plan == again
    assert all((before[k] == v).all() for k, v in model.state_dict().items())
    assert "block 1:" in plan.describe()


def test_cost_aware_ranks_by_loss_per_cost():
    """A head adds 12x the loss of a neuron group but saves ~160x its MACs: cost-aware removes the head first."""
    model = timm.create_model("vit_small_patch16_224", pretrained=False, depth=1)
    scores = Scores("s", (np.array([10.0, 20, 20, 20, 20, 20]),), (np.full(1536, 0.1),), np.ones(1))
    total = model_cost(model, "flops")
    one_head = unit_costs(model, "flops").head[0]
    plan = plan_width(model, scores, metric="flops", target_removed=one_head, reference_total=total)
    assert plan.heads_kept == (5,) and plan.neurons_kept == (1536,)
    assert plan.plan.keep_heads[0] == (1, 2, 3, 4, 5)


def test_coarse_units_do_not_overshoot_when_finer_ones_can_land():
    model = timm.create_model("vit_small_patch16_224", pretrained=False, depth=2)
    # heads look useless, so a loss-only greedy would overshoot with a whole head at the end
    scores = Scores("s", tuple(np.full(6, 1e-9) for _ in range(2)), tuple(np.full(1536, 1e-3) for _ in range(2)),
                    np.ones(2))
    total = model_cost(model, "flops")
    for target in (0.05, 0.13, 0.27):
        plan = plan_width(model, scores, metric="flops", target_removed=target * total, reference_total=total)
        assert 0 <= plan.achieved - target <= 0.005, (target, plan.achieved)


def test_impossible_budgets_say_why():
    model = timm.create_model("vit_small_patch16_224", pretrained=False, depth=2)
    total = model_cost(model, "flops")
    with pytest.raises(BudgetError, match="at most"):
        plan_width(model, _scores(model), metric="flops", target_removed=0.99 * total, reference_total=total)
    with pytest.raises(BudgetError, match="in \\(0, 1\\)"):
        Budget.parse("flops=1.5")
    with pytest.raises(BudgetError, match="unknown budget metric"):
        Budget.parse("latency=0.3")
    with pytest.raises(BudgetError, match="one block must remain"):
        plan_depth(_scores(model), 2)


def test_depth_removes_lowest_blocks():
    model = timm.create_model("vit_small_patch16_224", pretrained=False, depth=4)
    scores = Scores("s", (), (), np.array([0.5, 0.1, 0.9, 0.05]))
    assert plan_depth(scores, 2).drop_blocks == (1, 3)
    assert Budget.parse("params=0.25") == Budget("params", 0.25)
    del model
