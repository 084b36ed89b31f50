"""`--stages joint`: one plan over widths and blocks. The knapsack against brute force, the last block kept,
and a plan that removes a block and narrows the others through cut, reload, export and `--plan`."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import DataLoader, TensorDataset

from tests.conftest import TINY_ARGS, TINY_CFG
from vitshrink.cli import main
from vitshrink.compressor.core.artifact import load_artifact, save_artifact
from vitshrink.compressor.core.errors import BudgetError
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.jobs.pipeline import CompressConfig, CompressData, run_compress
from vitshrink.compressor.planning import stages
from vitshrink.compressor.planning.joint import block_losses, plan_joint
from vitshrink.compressor.planning.plan_file import read_plan
from vitshrink.compressor.planning.planner import Budget, ModelCosts, model_costs
from vitshrink.compressor.scoring.importance import Scores
from vitshrink.compressor.training.train import TrainConfig
from vitshrink.exporters.config import ExportConfig
from vitshrink.exporters.export_job import export


def _tiny_costs(rng, depth: int, heads: int = 2, hidden: int = 16) -> ModelCosts:
    """Integer costs (on the knapsack's grid, so its answer is exact): per head, per neuron, fixed."""
    head = [float(rng.integers(1, 6)) for _ in range(depth)]
    neuron = [float(rng.integers(1, 3)) for _ in range(depth)]
    blocks = tuple(h * heads + n * hidden + float(rng.integers(0, 4)) for h, n in zip(head, neuron, strict=True))
    return ModelCosts(metric="flops", fixed=10.0, blocks=blocks, head=tuple(head), neuron=tuple(neuron),
                      num_heads=(heads,) * depth, hidden=(hidden,) * depth)


def _tiny_scores(rng, costs: ModelCosts) -> Scores:
    return Scores("taylor", tuple(rng.random(h) for h in costs.num_heads),
                  tuple(rng.random(m) * 0.2 for m in costs.hidden), np.zeros(0))


def _brute_force(costs: ModelCosts, scores: Scores, removal, target: float, limit: float, round_to: int):
    """Least loss over every choice per block (keep k heads removed, n groups removed; or remove it)."""
    groups = costs.hidden[0] // round_to
    options = [("remove",)] + [(k, n) for k in range(costs.num_heads[0]) for n in range(groups)]
    best = np.inf
    for choice in itertools.product(options, repeat=costs.depth):
        if all(c == ("remove",) for c in choice):
            continue  # the last block stays
        removed, loss = 0.0, 0.0
        for i, c in enumerate(choice):
            if c == ("remove",):
                removed += costs.blocks[i]
                loss += removal[i]
                continue
            k, n = c
            removed += k * costs.head[i] + n * round_to * costs.neuron[i]
            loss += np.sort(scores.heads[i])[:k].sum()
            loss += np.sort(scores.neurons[i])[: n * round_to].sum()
        if target <= removed <= target + limit + 1e-9:
            best = min(best, loss)
    return best


def _plan_loss(plan, scores: Scores, removal) -> float:
    loss = sum(removal[i] for i in plan.plan.drop_blocks)
    for i, kept in plan.plan.keep_heads.items():
        loss += sum(scores.heads[i][h] for h in range(len(scores.heads[i])) if h not in kept)
    for i, kept in plan.plan.keep_neurons.items():
        loss += sum(scores.neurons[i][j] for j in range(len(scores.neurons[i])) if j not in kept)
    return float(loss)


@pytest.mark.parametrize("seed", range(8))
def test_the_joint_knapsack_is_exact_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    costs = _tiny_costs(rng, depth=3)
    scores = _tiny_scores(rng, costs)
    removal = rng.random(3) * 2
    target = float(rng.uniform(0.2, 0.6)) * costs.total
    limit = 0.05 * costs.total
    best = _brute_force(costs, scores, removal, target, limit, round_to=8)
    if not np.isfinite(best):
        with pytest.raises(BudgetError):
            plan_joint(costs, scores, removal, target_removed=target, reference_total=costs.total, round_to=8,
                       tolerance=0.05)
        return
    plan = plan_joint(costs, scores, removal, target_removed=target, reference_total=costs.total, round_to=8,
                      tolerance=0.05)
    assert target <= plan.removed <= target + limit + 1e-9
    assert _plan_loss(plan, scores, removal) == pytest.approx(best)


def test_the_joint_plan_removes_a_block_where_that_is_cheapest_and_narrows_the_others():
    rng = np.random.default_rng(0)
    costs = _tiny_costs(rng, depth=3)
    scores = _tiny_scores(rng, costs)
    removal = np.array([5.0, 0.0, 5.0])  # block 1 costs nothing to remove
    plan = plan_joint(costs, scores, removal, target_removed=0.5 * costs.total, reference_total=costs.total,
                      round_to=8, tolerance=0.05)
    assert plan.plan.drop_blocks == (1,) and plan.heads_kept[1] == 0
    assert "block 1: removed" in plan.describe()


def test_the_joint_plan_never_removes_the_last_block():
    """Removing blocks is free here and the budget could be met by removing all three: one must stay."""
    rng = np.random.default_rng(1)
    costs = _tiny_costs(rng, depth=3)
    scores = _tiny_scores(rng, costs)
    removal = np.zeros(3)
    blocks = sum(costs.blocks)
    plan = plan_joint(costs, scores, removal, target_removed=blocks - max(costs.blocks), reference_total=costs.total,
                      round_to=8, tolerance=1.0)
    assert len(plan.plan.drop_blocks) == 2
    with pytest.raises(BudgetError):  # only removing all three blocks would reach this
        plan_joint(costs, scores, removal, target_removed=blocks - 0.5, reference_total=costs.total, round_to=8,
                   tolerance=1.0)


def test_on_a_latency_table_a_removed_block_costs_nothing_and_the_plan_says_what_the_table_predicts():
    from tests.test_plan_choice import _costs

    _, latency, _ = _costs()
    rng = np.random.default_rng(4)
    scores = _tiny_scores(rng, latency)
    removal = np.array([10.0, 0.0, 10.0])
    plan = plan_joint(latency, scores, removal, target_removed=0.5 * latency.total, reference_total=latency.total)
    assert plan.plan.drop_blocks == (1,)
    kept = [(h, m) for h, m in zip(plan.heads_kept, plan.neurons_kept, strict=True) if h]
    assert plan.removed == pytest.approx(latency.total - latency.table.predict(kept))
    assert 0.5 <= plan.achieved <= 0.51


def test_block_estimates_and_their_refusals():
    rng = np.random.default_rng(2)
    costs = _tiny_costs(rng, depth=3)
    scores = _tiny_scores(rng, costs)
    expected = [scores.heads[i].sum() + scores.neurons[i].sum() for i in range(3)]
    np.testing.assert_allclose(block_losses("unit-sum", scores, None), expected)
    ablation = Scores("ablation", (), (), np.array([0.1, 0.2, 0.3]))
    np.testing.assert_allclose(block_losses("ablation", scores, ablation), [0.1, 0.2, 0.3])
    with pytest.raises(BudgetError, match="unknown block estimate 'magic'"):
        block_losses("magic", scores, ablation)
    with pytest.raises(BudgetError, match="needs a score for every block"):
        block_losses("taylor", scores, None)


# ------------------------------------------------------------------------------------- through compress


def _teacher():
    torch.manual_seed(0)
    return load_model("vit_tiny_patch16_224", model_args={**TINY_ARGS, "pretrained_cfg_overlay": TINY_CFG})


def _data() -> CompressData:
    g = torch.Generator().manual_seed(0)
    images = TensorDataset(torch.randn(64, 3, 16, 16, generator=g), torch.randint(0, 10, (64,), generator=g))
    loader = DataLoader(images, batch_size=32)
    return CompressData(train_set=images, calib_loader=loader, eval_loader=loader, val_loader=loader)


def _free_middle_block(model, calib, settings, loss, units):
    """Removal estimates that make block 1 free to remove: the joint plan removes it."""
    return np.array([1e3, 0.0, 1e3])


def test_stage_joint_removes_a_block_narrows_the_others_and_records_the_choice(tmp_path, monkeypatch):
    monkeypatch.setattr(stages, "joint_removal_losses", _free_middle_block)
    config = CompressConfig(Budget("flops", 0.5), stages=("joint",), calib_batches=2, train=TrainConfig(epochs=0))
    lines: list[str] = []
    report = run_compress(_teacher(), _data(), config, tmp_path / "joint", tmp_path / "joint.work", resume=False,
                          progress=False, log=lines.append)
    (stage,) = report.stages
    assert stage.name == "joint" and 0.5 <= stage.reduction_flops <= 0.51
    (choice,) = stage.plan_choices
    assert set(choice["candidates"]) == {"joint", "width"}
    kept = choice["chosen"]
    if kept == "joint":
        assert stage.plan["drop_blocks"] == [1]
        assert [b["source_index"] for b in stage.spec["blocks"]] == [0, 2]
    assert choice["candidates"][kept]["val_loss"] == min(c["val_loss"] for c in choice["candidates"].values())
    assert stage.scores["blocks"] == [1e3, 0.0, 1e3]
    assert "plan choice for -50.0%: kept the" in "\n".join(lines)
    recorded = json.loads((tmp_path / "joint" / "compression.json").read_text())
    assert recorded["config"]["stages"] == ["joint"]


def test_a_joint_plan_cuts_reloads_exports_and_replays_through_plan(tmp_path):
    """A plan that removes a block and narrows the others: written as plan.json, replayed by `--plan`, reloaded
    from the artifact with the same outputs, and exported to a validated ONNX graph."""
    teacher = _teacher()
    teacher_dir = save_artifact(tmp_path / "teacher", teacher, {"method": "test teacher"})
    costs = model_costs(teacher.model, "flops")
    rng = np.random.default_rng(0)
    scores = Scores("taylor", tuple(rng.random(h) for h in costs.num_heads),
                    tuple(rng.random(m) for m in costs.hidden), np.zeros(0))
    joint = plan_joint(costs, scores, np.array([1e3, 0.0, 1e3]), target_removed=0.5 * costs.total,
                       reference_total=costs.total, round_to=8)
    assert joint.plan.drop_blocks == (1,) and (joint.plan.keep_heads or joint.plan.keep_neurons)
    from vitshrink.compressor.planning.plan_file import write_plan

    plan_path = tmp_path / "plan.json"
    write_plan(plan_path, joint.plan, teacher.model, note="joint")
    assert read_plan(plan_path) == joint.plan
    out = tmp_path / "student"
    result = CliRunner().invoke(main, ["compress", "--model", str(teacher_dir), "--plan", str(plan_path),
                                       "--epochs", "0", "--out", str(out), "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    student = load_artifact(out)
    assert [b.source_index for b in student.spec.blocks] == [0, 2]
    assert [b.num_heads for b in student.spec.blocks] == [joint.heads_kept[0], joint.heads_kept[2]]
    assert 1 - model_costs(student.model, "flops").total / costs.total == pytest.approx(joint.achieved)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(load_artifact(out).model(x), student.model(x), rtol=0, atol=0)
    report = export(out, ExportConfig())
    (validation,) = report.validations  # export raises on a failed parity; this one passed it
    assert not validation.mismatches() and validation.top1_agreement == 1.0


@pytest.mark.parametrize("stages, steps", [(("joint", "depth"), 1), (("width", "joint"), 1), (("joint",), 2)])
def test_joint_is_one_cut_alone(stages, steps):
    with pytest.raises(BudgetError, match="joint plans blocks and widths in one cut; give it alone"):
        CompressConfig(Budget("flops", 0.3), stages=stages, width_steps=steps)


def test_stages_joint_from_the_command_line_is_one_clear_line_when_combined(tmp_path):
    result = CliRunner().invoke(main, ["compress", "--stages", "width,joint", "--out", str(tmp_path / "x"),
                                       "--no-progress"])
    assert result.exit_code == 2 and "give it alone (--stages joint" in result.output  # a usage error
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.work").exists()


def test_a_latency_budget_in_one_step_plans_joint_by_default_and_other_budgets_width():
    assert CompressConfig(Budget("latency", 0.3)).stages == ("joint",)
    assert CompressConfig(Budget("latency", 0.3), width_steps=2).stages == ("width",)
    assert CompressConfig(Budget("flops", 0.3)).stages == ("width",)
    assert CompressConfig(Budget("params", 0.3)).stages == ("width",)
    assert CompressConfig(Budget("latency", 0.3), stages=("width",)).stages == ("width",)
