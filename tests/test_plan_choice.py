"""A latency plan chosen on validation: the FLOPs planner's cut at the knapsack's predicted latency, the choice
between the two, and what compress records of it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import TINY_ARGS, TINY_CFG, tiny_vit
from tests.test_latency import _scores
from vitshrink.cli import main
from vitshrink.compressor.core.artifact import load_artifact, save_artifact
from vitshrink.compressor.core.flops import block_macs_of, num_tokens
from vitshrink.compressor.core.latency_table import Fit, LatencyTable
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.planning.choice import choose_plan, describe, flops_plan_at, plan_and_choose
from vitshrink.compressor.planning.planner import TOLERANCE, model_costs, plan_width
from vitshrink.exporters.runtime.latency_profile import table_key


def _fine_table() -> LatencyTable:
    """Heads 0.06 ms each, MLP 1 us a neuron on a grid of 8: steps far finer than the 1-point window."""
    widths = tuple(range(0, 257, 8))
    return LatencyTable(table_key(tiny_vit(), "ort-cpu", 1, 1), attention=(0.0, 0.06, 0.12, 0.18, 0.24),
                        mlp_widths=widths, mlp_ms=tuple(0.001 * w for w in widths), fixed=0.05, round_to=8)


def _costs(table: LatencyTable | None = None):
    model = tiny_vit()
    return model, model_costs(model, "latency", table or _fine_table()), model_costs(model, "flops")


def _macs_removed(model, plan) -> float:
    n = num_tokens(model)
    return sum(block_macs_of(b, n) - block_macs_of(b, n, h, m)
               for b, h, m in zip(model.blocks, plan.heads_kept, plan.neurons_kept, strict=True))


# with 3 of 4 heads kept or MLP groups of 128, width pruning removes less than half the blocks' MACs: the
# bisection's first try is more than it can remove
@pytest.mark.parametrize(("reduction", "min_heads", "round_to"),
                         [(0.15, 1, 8), (0.3, 1, 8), (0.45, 1, 8), (0.2, 3, 128), (0.2, 4, 64)])
def test_the_flops_plan_at_a_latency_is_the_least_macs_cut_that_reaches_it(reduction, min_heads, round_to):
    model, latency, flops = _costs()
    scores = _scores(np.random.default_rng(1))
    target = reduction * latency.total
    plan = flops_plan_at(flops, latency, scores, target_removed=target, tolerance=TOLERANCE, min_heads=min_heads,
                         round_to=round_to)
    assert plan is not None and plan.metric == "latency" and plan.reference_total == latency.total
    kept = list(zip(plan.heads_kept, plan.neurons_kept, strict=True))
    assert plan.removed == pytest.approx(latency.total - _fine_table().predict(kept))
    assert target <= plan.removed <= target + TOLERANCE * latency.total * (1 + 1e-9)
    # the FLOPs planner's own plan at the least MACs that reach the target: scan the MACs on a grid finer than
    # one neuron group (8 neurons of one block: 17 tokens x 64 x 8 x 2 MACs), plan each, keep the first that reaches
    step = (flops.total - flops.fixed) / 1500
    assert step < 17 * 64 * 8 * 2
    for macs in np.arange(step, flops.total - flops.fixed, step):
        scan = plan_width(flops, scores, target_removed=macs, reference_total=flops.total, min_heads=min_heads,
                          round_to=round_to, tolerance=None)
        kept_scan = list(zip(scan.heads_kept, scan.neurons_kept, strict=True))
        if latency.total - _fine_table().predict(kept_scan) >= target:
            break
    assert (scan.heads_kept, scan.neurons_kept) == (plan.heads_kept, plan.neurons_kept)
    assert _macs_removed(model, plan) == pytest.approx(_macs_removed(model, scan))


def test_no_flops_plan_when_its_steps_jump_over_the_window():
    """Heads are all the latency (1 ms each, 12 ms in all): reductions move in steps of 1/12, none lands at 30%."""
    widths = tuple(range(0, 257, 8))
    table = dataclasses.replace(_fine_table(), attention=(0.0, 1.0, 2.0, 3.0, 4.0), mlp_widths=widths,
                                mlp_ms=tuple(1e-4 * w for w in widths), fixed=0.0, fit=Fit())
    model, latency, flops = _costs(table)
    scores = _scores(np.random.default_rng(2))
    assert flops_plan_at(flops, latency, scores, target_removed=0.3 * latency.total, tolerance=TOLERANCE,
                         min_heads=1, round_to=8) is None


def _plans():
    model, latency, flops = _costs()
    scores = _scores(np.random.default_rng(3))
    knapsack = plan_width(latency, scores, target_removed=0.3 * latency.total, reference_total=latency.total,
                          round_to=8)
    at_same = flops_plan_at(flops, latency, scores, target_removed=0.3 * latency.total, tolerance=TOLERANCE,
                            min_heads=1, round_to=8)
    assert at_same is not None and at_same.plan != knapsack.plan  # two different cuts to choose between
    return knapsack, at_same


@pytest.mark.parametrize(("knapsack_loss", "flops_loss", "kept"),
                         [(1.0, 0.9, "flops"), (0.9, 1.0, "knapsack"), (1.0, 1.0, "knapsack")])
def test_the_lower_validation_loss_is_kept_and_a_tie_keeps_the_knapsack(knapsack_loss, flops_loss, kept):
    knapsack, at_same = _plans()
    losses = {id(knapsack.plan): knapsack_loss, id(at_same.plan): flops_loss}
    plan, choice = choose_plan({"knapsack": knapsack, "flops": at_same}, lambda p: {"loss": losses[id(p)], "top1": 0.5}, aim=0.3)
    assert choice.chosen == kept and plan is {"knapsack": knapsack, "flops": at_same}[kept]
    assert choice.candidates["knapsack"]["val_loss"] == knapsack_loss
    assert choice.candidates["flops"]["val_loss"] == flops_loss
    assert f"kept the {kept} plan" in describe(choice)
    assert choice.to_dict()["candidates"]["flops"]["predicted"] == pytest.approx(at_same.achieved, abs=1e-5)


def test_without_a_flops_plan_the_knapsack_is_kept_and_the_reason_shown():
    knapsack, _ = _plans()
    plan, choice = choose_plan({"knapsack": knapsack, "flops": None}, lambda p: {"loss": 1.0, "top1": 0.5}, aim=0.3)
    assert plan is knapsack and choice.chosen == "knapsack" and list(choice.candidates) == ["knapsack"]
    assert choice.to_dict()["missing"] == ["flops"]
    assert "no FLOPs plan lands at its predicted latency" in describe(choice)


def test_without_validation_metrics_the_plan_is_the_knapsacks():
    _, latency, flops = _costs()
    scores = _scores(np.random.default_rng(3))
    plan, choice = plan_and_choose(latency, flops, scores, target_removed=0.3 * latency.total, tolerance=TOLERANCE,
                                   min_heads=1, round_to=8, val_metrics=None)
    knapsack = plan_width(latency, scores, target_removed=0.3 * latency.total, reference_total=latency.total,
                          round_to=8)
    assert choice is None and plan == knapsack


# --------------------------------------------------------------------------------------- compress


def _compress(tmp_path, *extra):
    loaded = load_model("vit_tiny_patch16_224", model_args={**TINY_ARGS, "pretrained_cfg_overlay": TINY_CFG})
    teacher = save_artifact(tmp_path / "teacher", loaded, {"method": "test teacher"})
    _fine_table().save(tmp_path / "lut.json")
    out = tmp_path / "student"
    result = CliRunner().invoke(main, [str(a) for a in (
        "compress", "--model", teacher, "--reduce", "latency=0.3", "--latency-table", tmp_path / "lut.json",
        "--round-to", "8", "--epochs", "0", "--calib-batches", "2", "--no-latency-check", "--out", out,
        "--no-progress", *extra)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output, load_artifact(out).compression


@pytest.mark.parametrize(("stages", "names"), [((), ["joint", "knapsack", "flops"]),  # the default for latency
                                               (("--stages", "width"), ["knapsack", "flops"])])
def test_compress_with_a_validation_split_keeps_the_plan_with_the_lower_validation_loss(tmp_path, stages, names):
    output, record = _compress(tmp_path, *stages)
    choices = record["stages"][0]["plan_choices"]
    assert len(choices) == 1 and choices[0]["aim"] == pytest.approx(0.3)
    candidates = choices[0]["candidates"]
    assert list(candidates) == names
    lower = min(candidates, key=lambda name: (candidates[name]["val_loss"], names.index(name)))
    assert choices[0]["chosen"] == lower and f"kept the {lower} plan" in output
    # the cut is the chosen plan: its predicted reduction is the one recorded for it
    predicted = record["latency"]["predicted_ms"]
    assert 1 - predicted["student"] / predicted["teacher"] == pytest.approx(candidates[lower]["predicted"], abs=1e-4)


def test_compress_without_a_validation_split_cuts_the_knapsacks_plan_and_says_so(tmp_path):
    output, record = _compress(tmp_path, "--val-split", "0")
    assert "plan choice: off: no validation split (--val-split 0)" in output
    assert record["stages"][0]["plan_choices"] is None
