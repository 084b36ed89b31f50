"""Latency planning: the knapsack against brute force, the table file, profiling, the planner, the commands."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import re
import statistics
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from timm.layers import SwiGLUPacked

from tests.conftest import TINY_ARGS, TINY_CFG, tiny_vit
from tests.fake_tensorrt import fake_tensorrt
from vitshrink.benchmarks.errors import RuntimeUnavailableError
from vitshrink.cli import main
from vitshrink.compressor.core.artifact import load_artifact, save_artifact
from vitshrink.compressor.core.errors import BudgetError, UnreadableFileError
from vitshrink.compressor.core.latency_table import Fit, LatencyTable, TableKey, mlp_grid, mlp_widths_of
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.core.surgery import PrunePlan, apply_plan
from vitshrink.compressor.planning import knapsack
from vitshrink.compressor.planning.planner import model_cost, model_costs, plan_width
from vitshrink.compressor.scoring.importance import Scores
from vitshrink.exporters.runtime.backends import BackendSpec
from vitshrink.exporters.runtime.errors import MeasureError
from vitshrink.exporters.runtime.latency_profile import (
    DEPTH_FIT_MODELS,
    TARGETS,
    architecture_of,
    fit_plans,
    fit_plans_for,
    fit_table,
    monotone,
    parse_target,
    profile,
    table_key,
    target_backend,
)

# ---------------------------------------------------------------------------------------------- knapsack


def _brute_force(losses, costs, budget, floor):
    feasible = [(sum(losses[g][i] for g, i in enumerate(choice)), choice)
                for choice in itertools.product(*[range(len(v)) for v in losses])
                if floor <= sum(costs[g][i] for g, i in enumerate(choice)) <= budget]
    return min(feasible)[0] if feasible else None


@pytest.mark.parametrize("seed", range(40))
def test_knapsack_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, rng.integers(1, 5))
    losses = [rng.normal(size=n) for n in sizes]  # negative scores happen (removing can lower the loss)
    costs = [rng.integers(0, 20, n).astype(float) for n in sizes]
    budget = float(rng.integers(max(1, sum(c.min() for c in costs)), sum(c.max() for c in costs) + 2))
    floor = float(rng.integers(0, budget + 1))
    best = _brute_force(losses, costs, budget, floor)
    if best is None:
        with pytest.raises(BudgetError, match="no choice of options costs between"):
            knapsack.solve(losses, costs, budget, floor=floor, resolution=int(budget))
        return
    chosen = knapsack.solve(losses, costs, budget, floor=floor, resolution=int(budget))
    total = sum(costs[g][i] for g, i in enumerate(chosen))
    assert floor <= total <= budget
    assert sum(losses[g][i] for g, i in enumerate(chosen)) == pytest.approx(best)


def test_knapsack_never_exceeds_the_budget_with_real_valued_costs():
    rng = np.random.default_rng(1)
    costs = [np.sort(rng.random(30)) for _ in range(8)]
    losses = [np.linspace(1, 0, 30) for _ in range(8)]  # keeping more costs less loss
    chosen = knapsack.solve(losses, costs, 3.0, resolution=500)
    assert sum(c[i] for c, i in zip(costs, chosen, strict=True)) <= 3.0


def test_knapsack_refuses_a_budget_below_the_cheapest_choice():
    with pytest.raises(BudgetError, match="cheapest options cost 3"):
        knapsack.solve([[0.0, 1.0], [0.0]], [[2.0, 5.0], [1.0]], 2.5)


# ---------------------------------------------------------------------------------------------- table


def _key(**overrides) -> TableKey:
    base = dict(architecture={"block": "Block", "embed_dim": 64, "num_heads": 4, "head_dim": 16, "mlp_hidden": 256,
                              "tokens": 17, "depth": 3},
                target="ort-cpu", precision="fp32", runtime_version="onnxruntime 1.0", threads=1, batch=1, device="cpu")
    return TableKey(**{**base, **overrides})


def _staircase_table(key: TableKey | None = None) -> LatencyTable:
    """A hand-made table with GEMM-like steps: the MLP costs move only every 64 neurons."""
    widths = tuple(range(0, 257, 32))
    mlp = tuple(0.0 if w == 0 else 0.06 * np.ceil(w / 64) + 0.002 * w / 32 for w in widths)
    return LatencyTable(key or _key(), attention=(0.0, 0.1, 0.15, 0.2, 0.3), mlp_widths=widths, mlp_ms=mlp,
                        fixed=0.05, fit=Fit(a=0.02, b_attention=1.1, b_mlp=1.1, models=7, mean_abs_error=0.01,
                                max_abs_error=0.02),
                        round_to=32)


def test_table_round_trips_and_predicts_with_its_fit(tmp_path):
    table = _staircase_table()
    table.save(tmp_path / "t.json")
    back = LatencyTable.load(tmp_path / "t.json")
    assert back == table
    assert back.mlp_time(80) == pytest.approx((back.mlp_time(64) + back.mlp_time(96)) / 2)  # linear between widths
    # a is paid by each kept sub-block: two here, none for the block that keeps nothing
    assert back.predict([(4, 256), (0, 0)]) == pytest.approx(0.05 + 2 * 0.02 + 1.1 * (0.3 + 0.24 + 0.016))
    assert back.predict([(4, 256)] * 3) == pytest.approx(0.05 + 3 * (2 * 0.02 + 1.1 * (0.3 + 0.24 + 0.016)))


def test_the_fit_tells_attention_from_mlp_time():
    rng = np.random.default_rng(0)
    sums = [(24, rng.uniform(1, 5), rng.uniform(2, 9)) for _ in range(9)]
    measured = [0.5 + 0.01 * n + 1.4 * att + 0.9 * mlp for n, att, mlp in sums]  # fixed 0.5, a 0.01
    fit = fit_table(sums, measured, fixed=0.5, cheapest=(0.1, 0.1))
    assert (fit.a, fit.b_attention, fit.b_mlp) == pytest.approx((0.01, 1.4, 0.9))
    assert fit.max_abs_error == pytest.approx(0, abs=1e-9) and fit.models == 9
    few = fit_table(sums[:3], measured[:3], fixed=0.5, cheapest=(0.1, 0.1))  # too few models for three numbers
    assert few.b_attention == few.b_mlp and few.a == 0


def test_the_fit_takes_a_negative_intercept_per_sub_block_and_carries_it_to_fewer_blocks():
    """Sub-blocks timed alone that cost 0.2 ms more than inside a model (as on ViT-S at batch 1): the fit
    finds it, a model of half the blocks pays half of it, and the narrowest sub-block still costs time."""
    rng = np.random.default_rng(1)
    sums = [(n, rng.uniform(5, 30) * n / 24, rng.uniform(5, 50) * n / 24) for n in (24, 24, 24, 24, 24, 24, 18, 12)]
    measured = [2.0 - 0.2 * n + 0.9 * att + 0.85 * mlp for n, att, mlp in sums]
    fit = fit_table(sums, measured, fixed=2.0, cheapest=(0.8, 0.3))
    assert (fit.a, fit.b_attention, fit.b_mlp) == pytest.approx((-0.2, 0.9, 0.85))
    # when that intercept would leave the narrowest MLP sub-block (0.2 ms alone) 0.03 ms below nothing, the fit
    # takes the best one that leaves it a tenth of its time alone (the bound), not one without intercept
    bounded = fit_table(sums, measured, fixed=2.0, cheapest=(0.8, 0.2))
    assert bounded.a + bounded.b_mlp * 0.2 == pytest.approx(0.1 * 0.2) and bounded.b_attention > 0
    assert -0.2 < bounded.a < 0 and bounded.max_abs_error < 0.05
    unbounded = fit_table(sums, measured, fixed=2.0, cheapest=(0.8, 0.3))
    assert bounded.max_abs_error > unbounded.max_abs_error


@pytest.mark.parametrize("field, value", [("threads", 2), ("batch", 8), ("target", "torch-cpu"),
                                          ("runtime_version", "onnxruntime 2.0"), ("device", "other cpu")])
def test_a_table_made_for_something_else_is_refused_naming_what(field, value):
    with pytest.raises(BudgetError, match=f"{field}: table .*wanted"):
        _staircase_table().check_key(_key(**{field: value}))


def test_a_table_for_another_architecture_is_refused():
    other = _key(architecture={**_key().architecture, "embed_dim": 128})
    with pytest.raises(BudgetError, match="architecture"):
        _staircase_table().check_key(other)


@pytest.mark.parametrize("content, message", [("{", "not JSON"), ('{"format": "x"}', "not a vitshrink latency table"),
                                              ("[1, 2]", "not a vitshrink latency table \\(a JSON list, expected an object"),
                                              ('{"format": "vitshrink-latency-table/2"}', "damaged"),
                                              ('{"format": "vitshrink-latency-table/1"}', "another version of vitshrink")])
def test_a_bad_table_file_is_one_clear_error(tmp_path, content, message):
    (tmp_path / "t.json").write_text(content)
    with pytest.raises(UnreadableFileError, match=message):
        LatencyTable.load(tmp_path / "t.json")


def test_a_table_of_an_older_vitshrink_naming_its_target_trt_fp16_loads_as_tensorrt_fp16(tmp_path):
    old = _staircase_table(_key(target="trt-fp16", precision="fp16"))  # before targets took bench's names
    (tmp_path / "t.json").write_text(json.dumps(old.to_dict()))
    table = LatencyTable.load(tmp_path / "t.json")
    assert table.key.target == "tensorrt:fp16" and table.key.precision == "fp16"
    table.check_for(table.key.architecture, target="tensorrt:fp16")  # asked for by today's name: the same table


@pytest.mark.parametrize("change, message", [
    ({"mlp_ms": (0.0, float("nan"), *([0.1] * 7))}, "finite"),
    ({"attention": (0.1, 0.1, 0.15, 0.2, 0.3)}, "must cost 0"),
    ({"mlp_widths": (0, 64, 32, 96, 128, 160, 192, 224, 256)}, "rise from 0"),
    ({"fit": Fit(a=0.0, b_attention=0.0)}, "positive"),
    ({"fit": Fit(a=-0.2, b_attention=1.0, b_mlp=1.0)}, "narrowest sub-blocks a time > 0"),
])
def test_an_invalid_table_is_refused(tmp_path, change, message):
    data = {**_staircase_table().to_dict(), **{k: (dataclasses.asdict(v) if isinstance(v, Fit) else v)
                                               for k, v in change.items()}}
    (tmp_path / "t.json").write_text(json.dumps(data))
    with pytest.raises(UnreadableFileError, match=message):
        LatencyTable.load(tmp_path / "t.json")


# the timm create_model arguments a DINOv2-style model changes, and the architecture field that names each
OTHER_GRAPHS = [
    ({"mlp_layer": SwiGLUPacked, "mlp_ratio": 8}, "architecture.mlp: table 'Mlp', wanted 'GluMlp'"),
    ({"mlp_layer": SwiGLUPacked, "mlp_ratio": 8}, "architecture.mlp_ratio: table 4.0, wanted 8.0"),
    ({"init_values": 1e-5}, "architecture.layer_scale: table False, wanted True"),
    ({"qk_norm": True}, "architecture.qk_norm: table None, wanted 'LayerNorm'"),
    ({"qkv_bias": False}, "architecture.qkv_bias: table True, wanted False"),
    ({"act_layer": "gelu_tanh"}, "architecture.mlp_act: table 'GELU', wanted 'GELUTanh'"),
]


@pytest.mark.parametrize("args, named", OTHER_GRAPHS)
def test_a_table_for_a_model_of_another_graph_is_refused_naming_the_field(args, named):
    """Same widths, tokens and depth (a SwiGLU MLP of ratio 8 has the plain one's 256 neurons), another graph."""
    table = dataclasses.replace(_staircase_table(), key=table_key(tiny_vit(), "ort-cpu", 1, 1))
    other = tiny_vit(**args)
    assert architecture_of(other)["mlp_hidden"] == table.key.architecture["mlp_hidden"]
    with pytest.raises(BudgetError, match=re.escape(named)):
        table.check_for(architecture_of(other))
    table.check_for(architecture_of(tiny_vit()))  # the model it was made for


def test_a_table_without_the_fields_of_this_version_is_refused_saying_to_profile_again():
    old_fields = ("model", "block", "img_size", "patch_size", "embed_dim", "num_heads", "head_dim", "mlp_hidden",
                  "tokens", "prefix_tokens", "global_pool", "num_classes", "depth")
    key = table_key(tiny_vit(), "ort-cpu", 1, 1)
    old = dataclasses.replace(_staircase_table(), key=dataclasses.replace(
        key, architecture={k: v for k, v in key.architecture.items() if k in old_fields}))
    with pytest.raises(BudgetError, match=r"architecture: made by an older vitshrink, which did not record "
                                          r"[a-z_, ]*\bmlp\b.*profile this target with `vitshrink profile`") as refused:
        old.check_for(architecture_of(tiny_vit()))
    assert str(refused.value).count("older vitshrink") == 1  # one entry for every field it lacks


def test_a_table_on_a_coarser_grid_than_the_plan_is_refused():
    with pytest.raises(BudgetError, match="--round-to 32 grid, which lacks the MLP widths \\[8, 16, 24, 40\\]"):
        _staircase_table().check_grid(256, 8)
    _staircase_table().check_grid(256, 64)  # a multiple of the grid: every kept width was measured


# ---------------------------------------------------------------------------------------------- planner


def _scores(rng, heads=4, hidden=256, depth=3) -> Scores:
    return Scores("taylor", heads=tuple(rng.random(heads) for _ in range(depth)),
                  neurons=tuple(rng.random(hidden) * 0.01 for _ in range(depth)), blocks=np.zeros(0))


def test_latency_plan_lands_on_the_target_and_is_the_least_loss_plan():
    """Brute force over every (heads, MLP width) of every block: the planner's loss is the least that lands."""
    rng = np.random.default_rng(0)
    model, table = tiny_vit(), _staircase_table()
    model_args_check = table_key(model, "ort-cpu", 1, 1).architecture
    assert model_args_check["mlp_hidden"] == 256 and model_args_check["num_heads"] == 4
    costs = model_costs(model, "latency", table)
    assert costs.total == pytest.approx(model_cost(model, "latency", table))
    scores = _scores(rng)
    target = 0.3 * costs.total
    plan = plan_width(costs, scores, target_removed=target, reference_total=costs.total, round_to=32)
    assert target <= plan.removed <= target + 0.01 * costs.total * (1 + 1e-6)
    kept = list(zip(plan.heads_kept, plan.neurons_kept, strict=True))
    assert costs.total - table.predict(kept) == pytest.approx(plan.removed)

    def loss(i, h, m):  # the lowest-scored heads and neurons of block i go first
        return np.sort(scores.heads[i])[: 4 - h].sum() + np.sort(scores.neurons[i])[: 256 - m].sum()

    options = [(h, m) for h in range(1, 5) for m in range(32, 257, 32)]
    best = np.inf
    for combo in itertools.product(options, repeat=3):
        removed = costs.total - table.predict(list(combo))
        if target <= removed <= target + 0.01 * costs.total:
            best = min(best, sum(loss(i, h, m) for i, (h, m) in enumerate(combo)))
    planned = sum(loss(i, h, m) for i, (h, m) in enumerate(kept))
    assert planned == pytest.approx(best, rel=1e-6)


def test_an_unreachable_latency_target_is_refused():
    model, table = tiny_vit(), _staircase_table()
    costs = model_costs(model, "latency", table)
    with pytest.raises(BudgetError, match="can remove at most"):
        plan_width(costs, _scores(np.random.default_rng(0)), target_removed=0.9 * costs.total,
                   reference_total=costs.total)


def test_a_latency_budget_without_a_table_says_how_to_get_one():
    with pytest.raises(BudgetError, match="--latency-table"):
        model_costs(tiny_vit(), "latency")


# ---------------------------------------------------------------------------------------------- profiling


@pytest.mark.parametrize("target", ["ort-cpu", "torch-cpu"])
def test_profile_measures_every_head_count_and_width_of_the_grid(target):
    model = tiny_vit()
    table = profile(model, target, batch=2, threads=1, round_to=64, repeats=2, min_seconds=0.0, model_seconds=0.0, fit_models=3,
                    progress=False, log=lambda *a: None)
    assert table.key == table_key(model, target, 2, 1)
    assert len(table.attention) == 5 and table.attention[0] == 0 and table.attention[-1] > 0
    assert table.mlp_widths == tuple(mlp_grid(256, 64)) == (0, 64, 128, 192, 256)
    assert table.mlp_ms[0] == 0 and min(table.attention[1:] + table.mlp_ms[1:]) > 0 and table.fixed > 0  # never 0
    assert all(np.diff(table.attention) >= 0) and all(np.diff(table.mlp_ms) >= 0)  # made monotone
    # the teacher, 3 models of reduced width (the 2 corners, 1 random) and the first 2 again with fewer blocks
    # (one may be left out)
    assert table.fit.models == 6 - (table.fit.left_out_error is not None) and table.fit.mean_abs_error is not None


class _LinearClock:
    """Stands in for the profiler's clock: every module costs a known linear function of its heads and MLP
    widths (so the fit is exact), except the whole-model timings numbered in `disturbed` (0: the first one
    timed), which come out 1.5x slow."""

    def __init__(self, disturbed: set):
        self.disturbed, self.model_calls = disturbed, []  # model_calls: (id of the model, repeats asked)

    @staticmethod
    def cost(module) -> float:
        if hasattr(module, "blocks"):  # a whole model: the stem, plus its blocks
            return 1.0 + sum(0.4 * b.attn.num_heads + 0.01 * b.mlp.fc1.out_features for b in module.blocks)
        if hasattr(module, "attn"):
            return 0.4 * module.attn.num_heads
        if hasattr(module, "mlp"):
            return 0.01 * module.mlp.fc1.out_features
        return 0.0  # the empty call

    def ratio(self, module, reference, deployed, repeats) -> float:
        reference.samples.append(self.cost(reference.module))
        ms = self.cost(module)
        if deployed:
            if len(self.model_calls) in self.disturbed:
                ms *= 1.5
            self.model_calls.append((id(module), repeats))
        return ms / self.cost(reference.module)


class _FakeReference:
    def __init__(self, module):
        self.module, self.samples = module, []

    @property
    def ms(self) -> float:
        return statistics.median(self.samples)


@pytest.mark.parametrize("disturbed", [set(), {3}])
def test_profile_leaves_out_of_the_fit_a_whole_model_the_others_disagree_with(monkeypatch, disturbed):
    from vitshrink.exporters.runtime import latency_profile

    fake = _LinearClock(set(disturbed))
    monkeypatch.setattr(latency_profile._Clock, "__call__", lambda clock, m, x: fake.cost(m))
    monkeypatch.setattr(latency_profile._Clock, "reference", lambda clock, m, x, deployed=False: _FakeReference(m))
    monkeypatch.setattr(latency_profile._Clock, "ratio", lambda clock, m, x, ref, deployed=False, repeats=None, seconds=None:
                        fake.ratio(m, ref, deployed, repeats))
    logs = []
    table = profile(tiny_vit(), "ort-cpu", batch=1, threads=1, round_to=64, repeats=3, fit_models=6, progress=False,
                    log=logs.append)

    # the stem, then every fit model but the teacher (6 of reduced width, 2 of them again with fewer blocks): none twice
    assert len(fake.model_calls) == 1 + 6 + 2
    assert table.fit.max_abs_error < 1e-9  # exact on the models it was fitted on
    # every model timed is recorded (kept sub-blocks, attention and MLP sums, ms), the teacher first, and travels
    assert len(table.fit.points) == 9 and table.fit.points[0][0] == 2 * len(tiny_vit().blocks)
    assert LatencyTable.from_dict(json.loads(json.dumps(table.to_dict()))) == table
    if disturbed:  # fit model 3 came out 1.5x slow: a fit on the others predicts it 1/3 below what was measured
        assert table.fit.models == 8 and table.fit.left_out_error == pytest.approx(1 / 3)
        assert any("misses model 3 by 33.3%; it is left out" in line for line in logs)
    else:
        assert table.fit.models == 9 and table.fit.left_out_error is None
        assert not any("left out" in line for line in logs)


def test_fit_plans_of_a_pruned_model_keep_each_block_within_its_own_widths():
    shapes = [(2, 264), (6, 1536), (1, 100)]
    plans = fit_plans_for(shapes, round_to=8, count=6)
    assert len(plans) == 6 + DEPTH_FIT_MODELS
    assert plans[0].keep_neurons == {i: tuple(range(m)) for i, (_, m) in enumerate(shapes)}  # whole MLPs, one head
    assert plans[1].keep_heads == {i: tuple(range(h)) for i, (h, _) in enumerate(shapes)}  # every head
    for plan in plans:
        for i, (h, m) in enumerate(shapes):
            assert 1 <= len(plan.keep_heads[i]) <= h and len(plan.keep_neurons[i]) in mlp_grid(m, 8)[1:]
    assert fit_plans_for([(4, 256)], round_to=8, count=3)[3:] == []  # one block: none with fewer blocks


@pytest.mark.parametrize("count", [0, 1, 2, 3, 8])
def test_fit_plans_start_at_the_corners_where_latency_plans_fall(count):
    plans = fit_plans(spec_heads=6, hidden=1536, depth=12, round_to=8, count=count)
    assert len(plans) == count + min(count, DEPTH_FIT_MODELS)
    width, shallow = plans[:count], plans[count:]
    every = range(12)
    if count >= 1:  # one head and the whole MLP in every block
        assert width[0].keep_heads == {i: (0,) for i in every}
        assert width[0].keep_neurons == {i: tuple(range(1536)) for i in every}
    if count >= 2:  # every head and a quarter of the MLP
        assert width[1].keep_heads == {i: tuple(range(6)) for i in every}
        assert width[1].keep_neurons == {i: tuple(range(384)) for i in every}
    assert all(not p.drop_blocks for p in width) and len({repr(p) for p in width}) == count  # all different
    for plan, base, dropped in zip(shallow, width, (3, 6), strict=False):  # the first ones again, 1/4 and 1/2 of the blocks gone
        assert len(plan.drop_blocks) == dropped and plan.keep_heads == base.keep_heads


def test_a_sub_block_that_times_below_the_call_overhead_is_recorded_at_the_floor(monkeypatch):
    """A tiny part can time as less than the empty call taken off it: recorded as 1% of the full part, never 0
    (a part of no time would let the fit price it at nothing, and the table would be refused)."""
    from vitshrink.exporters.runtime import latency_profile

    fake = _LinearClock(set())
    monkeypatch.setattr(latency_profile._Clock, "__call__", lambda clock, m, x: 100.0)  # the empty call: slower than all
    monkeypatch.setattr(latency_profile._Clock, "reference", lambda clock, m, x, deployed=False: _FakeReference(m))
    monkeypatch.setattr(latency_profile._Clock, "ratio", lambda clock, m, x, ref, deployed=False, repeats=None, seconds=None:
                        fake.ratio(m, ref, deployed, repeats))
    table = profile(tiny_vit(), "ort-cpu", batch=1, threads=1, round_to=64, repeats=3, fit_models=6, progress=False,
                    log=lambda *a: None)
    full_attention, full_mlp = 0.4 * 4, 0.01 * 256  # the full sub-blocks' ms (_LinearClock.cost)
    assert table.attention[1:] == pytest.approx([0.01 * full_attention] * 4)
    assert table.mlp_ms[1:] == pytest.approx([0.01 * full_mlp] * 4)
    assert min(table.attention_cost(1), table.mlp_cost(64)) > 0


def test_monotone_pools_adjacent_violators_into_their_mean():
    assert monotone([1.0, 3.0, 2.0, 4.0, 0.0, 5.0]) == [1.0, 2.25, 2.25, 2.25, 2.25, 5.0]
    assert monotone([0.5, 1.0, 1.0, 2.0]) == [0.5, 1.0, 1.0, 2.0]  # already monotone: unchanged
    assert monotone([2.0, 1.0]) == [1.5, 1.5] and monotone([]) == []


def test_profile_without_fit_models_scales_both_parts_alike_on_the_teacher():
    """--fit-models 0: the teacher alone sets one common scale (no intercept), so it is predicted exactly."""
    model = tiny_vit()
    table = profile(model, "ort-cpu", batch=1, threads=1, round_to=64, repeats=2, min_seconds=0.0, model_seconds=0.0, fit_models=0,
                    progress=False, log=lambda *a: None)
    fit = table.fit
    assert fit.models == 1 and fit.a == 0 and fit.b_attention == fit.b_mlp > 0
    # exact on the teacher, unless its blocks timed as nothing beside its stem (then the sub-blocks are trusted)
    assert fit.max_abs_error == pytest.approx(0, abs=1e-9) or fit.b_attention == 1.0


def test_profile_with_one_fit_model_times_its_corner_and_a_shallow_copy_under_one_scale():
    """--fit-models 1: the first corner (one head, whole MLPs) and its copy with a quarter of the blocks removed,
    beside the teacher: 3 models, below the 5 a free fit needs, so one common scale and no intercept."""
    table = profile(tiny_vit(), "ort-cpu", batch=1, threads=1, round_to=64, repeats=2, min_seconds=0.0,
                    model_seconds=0.0, fit_models=1, progress=False, log=lambda *a: None)
    fit = table.fit
    kept_sub_blocks = [int(point[0]) for point in fit.points]
    assert kept_sub_blocks == [6, 6, 4]  # teacher; the corner (3 blocks); the corner with 1 of 3 blocks removed
    head_sums = [point[1] for point in fit.points]
    assert head_sums[1] == pytest.approx(3 * table.attention[1]) and head_sums[2] == pytest.approx(2 * table.attention[1])
    assert fit.a == 0 and fit.b_attention == fit.b_mlp > 0 and fit.models in (2, 3)


def test_a_fit_never_takes_a_scale_at_or_below_zero():
    fit = fit_table([(2, 1.0, 1.0)], [1.0], fixed=1.5, cheapest=(0.1, 0.1))  # measured faster than its stem alone
    assert fit.b_attention == fit.b_mlp == 1.0 and fit.a == 0
    assert fit_table([(0, 0.0, 0.0)], [2.0], fixed=1.0, cheapest=(0.1, 0.1)).b_attention == 1.0  # no block time: no 0/0


def test_mlp_grid_follows_the_planner_groups():
    assert mlp_grid(20, 8) == [0, 8, 16, 20]  # a remainder group of 4 goes first: 20 -> 16 -> 8
    assert mlp_grid(16, 1)[-3:] == [14, 15, 16]


def test_profile_refuses_an_unknown_target():
    with pytest.raises(MeasureError, match="unknown latency target 'onnx'; choose from ort-cpu.*tensorrt:fp16"):
        table_key(tiny_vit(), "onnx", 1, 1)


def test_every_latency_target_is_a_bench_backend_name():
    """One name per target: `profile --target X` and `bench --backends X` read X with the same parser."""
    for target in TARGETS:
        spec = BackendSpec.parse(target)
        assert parse_target(target) == target and target_backend(target).runtime == spec.runtime
    assert [target_backend(t).key for t in TARGETS] == ["ort-cpu:fp32", "ort-cpu:int8", "torch-cpu:fp32", "ort-cuda:fp32",
                                                        "torch-cuda:fp32", "tensorrt:fp32", "tensorrt:fp16"]
    assert parse_target("ort-cpu:fp32") == "ort-cpu"  # bench's spelling with the default precision written out


@pytest.mark.parametrize("name, message", [
    ("tensorrt", "latency tables are not measured on tensorrt; choose from .*tensorrt:fp32, tensorrt:fp16"),
    ("tensorrt:int8", "latency tables are not measured on tensorrt:int8"),
    ("ort-cpu:fp64", "unknown latency target 'ort-cpu:fp64'"),
])
def test_a_bench_backend_a_table_cannot_be_measured_on_is_refused(name, message):
    with pytest.raises(MeasureError, match=message):
        parse_target(name)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_profile_on_tensorrt_without_it_says_what_is_missing():
    with pytest.raises(RuntimeUnavailableError, match="latency target tensorrt:fp16 cannot run here: the tensorrt "
                                                      "package is not installed; profile on the device that has "
                                                      "TensorRT \\(vitshrink profile --target tensorrt:fp16 .*--latency-table"):
        table_key(tiny_vit(), "tensorrt:fp16", 1, 1)


class _OrtAsEngine:
    """Runs a fake "engine" with ONNX Runtime on the ONNX file it was built from (same name, .onnx)."""

    def __init__(self, path):
        from vitshrink.exporters.runtime.sessions import io_names, ort_session

        onnx_path = path.with_suffix(".onnx")
        self.session = ort_session(onnx_path, threads=1)
        self.names = io_names(self.session, onnx_path)

    def output_for(self, x):
        return None

    def execute(self, x, y):
        self.session.run([self.names[1]], {self.names[0]: x.numpy()})


@pytest.mark.parametrize("version", ["10.3.0", "11.4.0"])
def test_profile_orchestrates_tensorrt_builds_with_a_fake_tensorrt(monkeypatch, version):
    """FAKE TensorRT: tests only what the profiler asks the builder for (files, FP16 flag, shapes) and that a
    table comes out; the "engines" run on ONNX Runtime, on the CPU. No real TensorRT has built these."""
    import torch

    from vitshrink.exporters.runtime import latency_profile
    from vitshrink.exporters.runtime.sessions import TensorRTEngine

    calls: dict = {}
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version, calls))
    monkeypatch.setattr(latency_profile, "_unavailable", lambda target: None)
    monkeypatch.setattr(latency_profile, "_device", lambda target: torch.device("cpu"))
    monkeypatch.setattr(latency_profile, "_device_name", lambda target: "Fake Orin")
    monkeypatch.setattr(TensorRTEngine, "load", lambda path, device_id=0: _OrtAsEngine(path))

    table = profile(tiny_vit(), "tensorrt:fp16", batch=2, threads=3, round_to=64, repeats=2, part_repeats=2,
                    min_seconds=0.0, model_seconds=0.0, fit_models=3, progress=False, log=lambda *a: None)

    key = table.key
    assert (key.target, key.precision, key.runtime_version, key.threads, key.device) == \
        ("tensorrt:fp16", "fp16", f"tensorrt {version}", None, "Fake Orin")
    assert len(table.attention) == 5 and table.mlp_widths == (0, 64, 128, 192, 256) and \
        table.fit.models == 6 - (table.fit.left_out_error is not None)
    parsed = calls["parsed_files"]  # overhead + reference and 4 head counts + reference and 4 widths + 7 models
    assert len(parsed) == 1 + 5 + 5 + 7
    tensorrt10 = version.startswith("10.")
    assert all(name.endswith(".fp16.onnx") != tensorrt10 for name in parsed)  # TensorRT 11: the FP16 graph
    assert calls["flags"] == (["FP16"] if tensorrt10 else [])
    # whole models are exported with a dynamic batch: one profile pinned at the profiled batch; sub-blocks are static
    assert calls["profile"] == ("input", (2, 3, 16, 16), (2, 3, 16, 16), (2, 3, 16, 16))
    assert calls["profile_count"] == 7  # the teacher, the stem, 3 models of random widths and 2 of fewer blocks


# families whose blocks the profiler does not cut (BEiT's block class is also named `Block`)
UNPROFILED = {
    "beit": ("beit_base_patch16_224", "Beit with ['timm.models.beit.Block']"),
    "eva02": ("eva02_tiny_patch14_224", "Eva with ['timm.models.eva.EvaBlock']"),
    "relpos": ("vit_relpos_base_patch16_224", "VisionTransformerRelPos with ['timm.models.vision_transformer_relpos."),
}


def _unprofiled(family: str):
    import timm

    return timm.create_model(UNPROFILED[family][0], pretrained=False, **{**TINY_ARGS, "depth": 2})


@pytest.mark.parametrize("family", UNPROFILED)
def test_profile_refuses_blocks_it_cannot_time_naming_their_class(family):
    with pytest.raises(MeasureError, match=r"plain `Block`s; this model is " + re.escape(UNPROFILED[family][1])):
        table_key(_unprofiled(family), "ort-cpu", 1, 1)
    with pytest.raises(MeasureError, match="use --reduce flops"):
        architecture_of(_unprofiled(family))  # what a given table is checked against: the same refusal


@pytest.mark.parametrize("family", ["beit", "eva02"])
def test_profile_and_a_latency_budget_on_other_families_are_one_clear_error(family, tmp_path):
    loaded = load_model(UNPROFILED[family][0], model_args={**TINY_ARGS, "depth": 2, "pretrained_cfg_overlay": TINY_CFG})
    teacher = save_artifact(tmp_path / "teacher", loaded, {"method": "test teacher"})
    result = _run("profile", "--model", teacher, "--threads", "1", "--out", tmp_path / "t.json", "--no-progress")
    assert result.exit_code == 1 and UNPROFILED[family][1] in result.output and "Traceback" not in result.output
    assert not (tmp_path / "t.json").exists()
    _staircase_table(table_key(tiny_vit(), "ort-cpu", 1, 1)).save(tmp_path / "lut.json")
    result = _run("compress", "--model", teacher, "--reduce", "latency=0.3", "--latency-table", tmp_path / "lut.json",
                  "--epochs", "0", "--out", tmp_path / "s", "--no-progress")
    assert result.exit_code == 1 and UNPROFILED[family][1] in result.output and "Traceback" not in result.output
    assert not (tmp_path / "s").exists() and not (tmp_path / "s.work").exists()


# ---------------------------------------------------------------------------------------------- commands


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def tiny_teacher_dir(tmp_path):
    loaded = load_model("vit_tiny_patch16_224", model_args={**TINY_ARGS, "pretrained_cfg_overlay": TINY_CFG})
    return save_artifact(tmp_path / "teacher", loaded, {"method": "test teacher"})


def _fake_clock(monkeypatch) -> _LinearClock:
    """The profiler's clock replaced by `_LinearClock` (no timing: fast and exact)."""
    from vitshrink.exporters.runtime import latency_profile

    fake = _LinearClock(set())
    monkeypatch.setattr(latency_profile._Clock, "__call__", lambda clock, m, x: fake.cost(m))
    monkeypatch.setattr(latency_profile._Clock, "reference", lambda clock, m, x, deployed=False: _FakeReference(m))
    monkeypatch.setattr(latency_profile._Clock, "ratio", lambda clock, m, x, ref, deployed=False, repeats=None,
                        seconds=None: fake.ratio(m, ref, deployed, repeats))
    return fake


def test_a_pruned_artifact_is_profiled_and_compressed_further_on_its_table(tmp_path, monkeypatch):
    """Widths differ per block: the table covers the most heads and every width a plan can keep in any block."""
    shapes = [(2, 264), (4, 256), (3, 100)]
    plan = PrunePlan(keep_heads={i: tuple(range(h)) for i, (h, _) in enumerate(shapes)},
                     keep_neurons={i: tuple(range(m)) for i, (_, m) in enumerate(shapes)})
    teacher = load_model("vit_tiny_patch16_224", model_args={**TINY_ARGS, "mlp_ratio": 264 / 64,
                                                              "pretrained_cfg_overlay": TINY_CFG})
    spec = apply_plan(teacher.model, teacher.spec, plan)
    pruned = save_artifact(tmp_path / "pruned", dataclasses.replace(teacher, spec=spec), {"method": "test"})
    _fake_clock(monkeypatch)
    result = _run("profile", "--model", pruned, "--threads", "1", "--round-to", "32", "--fit-models", "3",
                  "--out", tmp_path / "lut.json", "--no-progress")
    assert result.exit_code == 0, result.output
    table = LatencyTable.load(tmp_path / "lut.json")
    assert table.key.architecture["widths"] == [list(s) for s in shapes]
    assert len(table.attention) == 5 and table.mlp_widths == tuple(mlp_widths_of([264, 256, 100], 32))
    assert {96, 100, 256, 264} <= set(table.mlp_widths)  # each block's own grid (264 -> 256, 100 -> 96, ...)
    assert len(table.fit.points) == 1 + 3 + 2  # the teacher, 3 of reduced width, 2 of them with fewer blocks

    out = tmp_path / "student"
    result = _run("compress", "--model", pruned, "--reduce", "latency=0.2", "--latency-table", tmp_path / "lut.json",
                  "--round-to", "32", "--epochs", "0", "--calib-batches", "2", "--no-latency-check", "--out", out,
                  "--no-progress")
    assert result.exit_code == 0, result.output
    student = load_artifact(out)
    predicted = student.compression["latency"]["predicted_ms"]
    assert predicted["teacher"] == pytest.approx(table.predict(shapes))
    assert 0.2 <= 1 - predicted["student"] / predicted["teacher"] <= 0.21 + 1e-9
    assert all(b.num_heads <= h and b.mlp_hidden <= m for b, (h, m) in zip(student.spec.blocks, shapes, strict=True))


def test_a_one_block_vit_is_profiled_without_models_of_fewer_blocks(tmp_path, monkeypatch):
    loaded = load_model("vit_tiny_patch16_224", model_args={**TINY_ARGS, "depth": 1, "pretrained_cfg_overlay": TINY_CFG})
    teacher = save_artifact(tmp_path / "teacher", loaded, {"method": "test teacher"})
    _fake_clock(monkeypatch)
    result = _run("profile", "--model", teacher, "--threads", "1", "--round-to", "64", "--fit-models", "3",
                  "--out", tmp_path / "lut.json", "--no-progress")
    assert result.exit_code == 0, result.output
    points = LatencyTable.load(tmp_path / "lut.json").fit.points
    assert [int(p[0]) for p in points] == [2, 2, 2, 2]  # the teacher and 3 of reduced width: every one keeps its block


def test_profile_then_compress_on_the_table_then_bench_shows_predicted_vs_realised(tiny_teacher_dir, tmp_path):
    table_file = tmp_path / "lut.json"
    result = _run("profile", "--model", tiny_teacher_dir, "--target", "ort-cpu", "--threads", "1", "--round-to", "32",
                  "--fit-models", "2", "--out", table_file, "--no-progress")
    assert result.exit_code == 0, result.output
    table = LatencyTable.load(table_file)
    assert table.key.threads == 1 and table.key.batch == 1 and table.key.target == "ort-cpu"
    # times of a tiny model on a shared CPU are mostly overhead and noise: plan on the staircase table (same key),
    # so that the plan is the same every run
    dataclasses.replace(_staircase_table(), key=table.key).save(table_file)

    out = tmp_path / "student"
    result = _run("compress", "--model", tiny_teacher_dir, "--reduce", "latency=0.3", "--latency-table", table_file,
                  "--target-threads", "1", "--round-to", "32", "--epochs", "0", "--calib-batches", "2",
                  "--no-latency-check", "--out", out, "--no-progress")  # the made-up table's plan, as planned
    assert result.exit_code == 0, result.output
    record = load_artifact(out).compression
    predicted = record["latency"]["predicted_ms"]
    assert record["latency"]["target"] == "ort-cpu" and record["config"]["latency_table"]["key"]["threads"] == 1
    assert 0.3 <= 1 - predicted["student"] / predicted["teacher"] <= 0.31 + 1e-9

    bench_dir = tmp_path / "bench"
    result = _run("bench", out, "--teacher", tiny_teacher_dir, "--backends", "ort-cpu", "--batch-sizes", "1",
                  "--threads", "1", "--no-memory", "--no-fvcore", "--min-iters", "5", "--min-time", "0",
                  "--warmup", "1", "--warmup-time", "0", "--no-plot", "--no-progress", "--out", bench_dir)
    assert result.exit_code == 0, result.output
    assert "latency plan (ort-cpu:fp32, batch 1): predicted -3" in result.output
    check = json.loads((bench_dir / "bench.json").read_text())["latency_plan"]
    speed = json.loads((bench_dir / "bench.json").read_text())["speedup"][0]["ratio"]
    assert check["realised_reduction"] == pytest.approx(1 - 1 / speed, abs=1e-6)
    assert check["student_prediction_error"] == pytest.approx(
        check["realised_ms"]["student"] / check["predicted_ms"]["student"] - 1)


def test_a_table_from_another_machine_plans_on_its_own_key(tiny_teacher_dir, tmp_path):
    """Profile on the device, compress anywhere: device and runtime version are the table's, not this machine's."""
    key = dataclasses.replace(table_key(tiny_vit(), "ort-cpu", 8, 6), device="NVIDIA Jetson AGX Orin",
                              runtime_version="onnxruntime 9.9")
    dataclasses.replace(_staircase_table(), key=key).save(tmp_path / "lut.json")
    out = tmp_path / "student"
    result = _run("compress", "--model", tiny_teacher_dir, "--reduce", "latency=0.3", "--latency-table",
                  tmp_path / "lut.json", "--round-to", "32", "--epochs", "0", "--calib-batches", "2", "--out", out,
                  "--no-progress")
    assert result.exit_code == 0, result.output
    assert "measured on NVIDIA Jetson AGX Orin" in result.output
    assert load_artifact(out).compression["latency"]["batch"] == 8


def test_latency_width_steps_plan_each_step_on_the_table(tiny_teacher_dir, tmp_path):
    widths = tuple(range(0, 257, 8))
    table = LatencyTable(table_key(tiny_vit(), "ort-cpu", 1, 1), attention=(0.0, 0.06, 0.12, 0.18, 0.24),
                         mlp_widths=widths, mlp_ms=tuple(0.001 * w for w in widths), fixed=0.05, round_to=8)
    table.save(tmp_path / "lut.json")
    out = tmp_path / "student"
    result = _run("compress", "--model", tiny_teacher_dir, "--reduce", "latency=0.4", "--width-steps", "2",
                  "--latency-table", tmp_path / "lut.json", "--epochs", "0", "--calib-batches", "2", "--out", out,
                  "--no-progress")
    assert result.exit_code == 0, result.output
    assert result.output.count("width plan (latency") == 2
    predicted = load_artifact(out).compression["latency"]["predicted_ms"]
    assert 0.4 <= 1 - predicted["student"] / predicted["teacher"] <= 0.41 + 1e-9


def test_compress_refuses_a_table_made_for_other_threads_and_writes_nothing(tiny_teacher_dir, tmp_path):
    table = dataclasses.replace(_staircase_table(), key=table_key(tiny_vit(), "ort-cpu", 1, 4))
    table.save(tmp_path / "lut.json")
    out = tmp_path / "student"
    result = _run("compress", "--model", tiny_teacher_dir, "--reduce", "latency=0.3", "--latency-table",
                  tmp_path / "lut.json", "--target-threads", "1", "--epochs", "0", "--out", out, "--no-progress")
    assert result.exit_code == 1
    assert "threads: table 4, wanted 1" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_compress_refuses_a_plain_mlp_table_for_a_swiglu_teacher_naming_the_field(tmp_path):
    """A DINOv2-style teacher (SwiGLU, mlp_ratio 8: the plain MLP's 256 neurons) on a plain ViT's table."""
    loaded = load_model("vit_giant_patch14_dinov2", model_args={**TINY_ARGS, "mlp_ratio": 8,
                                                                 "pretrained_cfg_overlay": TINY_CFG})
    teacher = save_artifact(tmp_path / "teacher", loaded, {"method": "test teacher"})
    _staircase_table(table_key(tiny_vit(), "ort-cpu", 1, 1)).save(tmp_path / "lut.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    for table, named in (("lut.json", "architecture.mlp: table 'Mlp', wanted 'GluMlp'"),
                         ("list.json", "list.json is not a vitshrink latency table (a JSON list, expected an object)")):
        result = _run("compress", "--model", teacher, "--reduce", "latency=0.3", "--latency-table", tmp_path / table,
                      "--round-to", "32", "--epochs", "0", "--out", tmp_path / "s", "--no-progress")
        assert result.exit_code == 1 and named in result.output and "Traceback" not in result.output
        assert not (tmp_path / "s").exists() and not (tmp_path / "s.work").exists()


def test_latency_options_with_a_flops_budget_are_refused(tiny_teacher_dir, tmp_path):
    result = _run("compress", "--model", tiny_teacher_dir, "--reduce", "flops=0.3", "--target", "ort-cpu",
                  "--out", tmp_path / "s")
    assert result.exit_code == 2 and "--target applies to a latency budget" in result.output


def test_the_paper_order_plans_both_stages_on_the_table(tiny_teacher_dir, tmp_path):
    """width -> depth on a latency budget: the split, the blocks and the top-up all use the table."""
    widths = tuple(range(0, 257, 8))  # a smooth table, so that the top-up has fine steps to land with
    table = LatencyTable(table_key(tiny_vit(), "ort-cpu", 1, 1), attention=(0.0, 0.06, 0.12, 0.18, 0.24),
                         mlp_widths=widths, mlp_ms=tuple(0.001 * w for w in widths), fixed=0.05, round_to=8)
    table.save(tmp_path / "lut.json")
    out = tmp_path / "student"
    result = _run("compress", "--model", tiny_teacher_dir, "--reduce", "latency=0.5", "--stages", "width,depth",
                  "--latency-table", tmp_path / "lut.json", "--target-threads", "1", "--round-to", "8",
                  "--epochs", "0", "--calib-batches", "2", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "budget split (latency -50.0%)" in result.output and "depth plan: remove blocks" in result.output
    student = load_artifact(out)
    predicted = student.compression["latency"]["predicted_ms"]
    assert len(student.model.blocks) < 3
    assert 0.5 <= 1 - predicted["student"] / predicted["teacher"] <= 0.51 + 1e-9
    assert predicted["student"] == pytest.approx(table.predict([(b.num_heads, b.mlp_hidden) for b in student.spec.blocks]))


def test_a_target_whose_runtime_is_missing_is_one_clear_error(tiny_teacher_dir, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: torch-cuda can run")
    result = _run("profile", "--model", tiny_teacher_dir, "--target", "torch-cuda", "--out", tmp_path / "t.json")
    assert result.exit_code == 1 and "latency target torch-cuda cannot run here: no CUDA GPU" in result.output
    assert not (tmp_path / "t.json").exists()


@pytest.mark.parametrize("command", ["profile", "compress"])
def test_a_target_of_an_older_vitshrink_on_the_command_line_is_one_error_line_naming_the_new_one(
        command, tiny_teacher_dir, tmp_path):
    budget = ("--reduce", "latency=0.3") if command == "compress" else ()
    result = _run(command, "--model", tiny_teacher_dir, *budget, "--target", "trt-fp16", "--out", tmp_path / "t")
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert result.exit_code == 2 and "Traceback" not in result.output and len(errors) == 1
    assert errors[0] == ("Error: Invalid value for '--target': latency target 'trt-fp16' is now written "
                         "'tensorrt:fp16', as `bench --backends` names it")
    assert not (tmp_path / "t").exists()


def test_an_unreachable_latency_target_exits_1_and_writes_nothing(tiny_teacher_dir, tmp_path):
    table = dataclasses.replace(_staircase_table(), key=table_key(tiny_vit(), "ort-cpu", 1, 1))
    table.save(tmp_path / "lut.json")
    out = tmp_path / "student"
    result = _run("compress", "--model", tiny_teacher_dir, "--reduce", "latency=0.95", "--latency-table",
                  tmp_path / "lut.json", "--round-to", "32", "--epochs", "0", "--calib-batches", "2",
                  "--out", out, "--no-progress")
    assert result.exit_code == 1 and "can remove at most" in result.output and "Traceback" not in result.output
    assert not out.exists()
