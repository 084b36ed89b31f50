"""The planner: a pure function of scores and budget; lands on the target; respects its constraints."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm

from compressor.errors import BudgetError
from compressor.importance import Scores
from compressor.planner import Budget, model_cost, plan_depth, plan_width
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


def test_cost_aware_prefers_cheap_losses():
    """Equal score per unit: a neuron group is cheaper than a head, so equal scores remove neurons first."""
    model = timm.create_model("vit_small_patch16_224", pretrained=False, depth=1)
    scores = Scores("s", (np.full(6, 1.0),), (np.full(1536, 1.0),), np.ones(1))
    total = model_cost(model, "flops")
    plan = plan_width(model, scores, metric="flops", target_removed=0.05 * total, reference_total=total)
    assert plan.heads_kept == (6,) and plan.neurons_kept[0] < 1536


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
