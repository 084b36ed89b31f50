"""Top-1 at equal latency: FLOPs plans timed against the latency plan itself, in rounds of fresh sessions."""

from __future__ import annotations

import statistics

import pytest

from research import equal_latency
from research.equal_latency import (
    flops_top1_at_equal_latency,
    retime,
    shaped,
    time_rounds,
)
from tests.conftest import TINY_ARGS, TINY_CFG, tiny_vit
from vitshrink.exporters.io_spec import IOSpec
from vitshrink.exporters.runtime.timing import TimingPolicy

QUICK = TimingPolicy(warmup_iters=1, warmup_s=0.0, min_iters=3, min_time_s=0.0, max_time_s=5.0)


def _row(plan: str, macs: float, over: float, top1: float) -> dict:
    return {"plan": plan, "flops_reduction": macs, "over_latency_plan": over, "top1": top1}


def test_top1_is_read_at_the_macs_where_a_line_through_the_speedups_crosses_one():
    # speedups on a line 0.97 + 1.5 * (MACs - 0.38): 1 at MACs 0.40, halfway between the 2nd and 3rd plans
    rows = [_row("c", 0.41, 1.015, 0.62), _row("a", 0.38, 0.97, 0.66), _row("b", 0.39, 0.985, 0.64),
            _row("d", 0.42, 1.03, 0.60)]
    same = flops_top1_at_equal_latency(rows)
    assert same["macs_reduction"] == pytest.approx(0.40) and same["slope"] == pytest.approx(1.5)
    assert same["top1"] == pytest.approx(0.63) and same["interpolated"]
    # one speedup 4% off: both reads move, the line (which all four plans hold) less than the plain interpolation
    # between the two speedups either side of 1
    noisy = flops_top1_at_equal_latency([*rows[:3], _row("d", 0.42, 0.99, 0.60)])
    assert noisy["top1"] == pytest.approx(0.6114, abs=1e-4) and noisy["interpolated"]
    assert noisy["top1_interpolated_on_speedups"] == pytest.approx(0.608, abs=1e-4)


def test_a_crossing_outside_the_plans_is_flagged_and_a_flat_line_refused():
    beyond = flops_top1_at_equal_latency([_row("a", 0.38, 0.90, 0.66), _row("b", 0.40, 0.92, 0.64)])
    assert beyond["macs_reduction"] > 0.40 and not beyond["interpolated"] and beyond["top1"] == pytest.approx(0.64)
    with pytest.raises(ValueError, match="do not get faster"):
        flops_top1_at_equal_latency([_row("a", 0.38, 1.0, 0.66), _row("b", 0.40, 0.99, 0.64)])


def test_shaped_keeps_each_blocks_heads_and_neurons():
    model = shaped(tiny_vit(), heads=[1, 4, 2], mlp=[8, 256, 64])
    assert [b.attn.num_heads for b in model.blocks] == [1, 4, 2]
    assert [b.mlp.fc1.out_features for b in model.blocks] == [8, 256, 64]


@pytest.mark.parametrize("rounds", [1, 2])
def test_time_rounds_keeps_the_median_of_one_pairing_per_round(tmp_path, rounds):
    model = tiny_vit()
    io = IOSpec.from_model(model, {"input_size": (3, TINY_ARGS["img_size"], TINY_ARGS["img_size"]), **TINY_CFG})
    others = {"same": tiny_vit(), "narrow": shaped(model, [1, 1, 1], [8, 8, 8])}
    timed = time_rounds(model, others, io, batch=1, threads=1, policy=QUICK, rounds=rounds, work=tmp_path, seed=0)
    assert set(timed) == {"same", "narrow"}
    for t in timed.values():
        assert len(t["rounds"]) == rounds and all(r["pairs"] >= 3 and r["ms"] > 0 for r in t["rounds"])
        assert [r["reference_first"] for r in t["rounds"]] == [True, False][:rounds]
        assert t["speedup"] == statistics.median(r["ratio"] for r in t["rounds"])


def test_time_rounds_refuses_zero_rounds(tmp_path):
    with pytest.raises(ValueError, match="rounds must be >= 1, got 0"):
        time_rounds(tiny_vit(), {}, None, 1, 1, QUICK, 0, tmp_path, 0)


def test_retime_compares_at_the_speedup_of_one_and_names_the_same_macs_twin(monkeypatch, tmp_path):
    result = {"difference_pt": -0.9, "rows": [
        {"plan": "latency", "heads": [4, 2, 1], "mlp": [256, 128, 64], "top1": 0.640, "flops_reduction": 0.400},
        {"plan": "flops0.380", "heads": [4, 4, 2], "mlp": [256, 96, 64], "top1": 0.650, "flops_reduction": 0.380},
        {"plan": "flops0.400", "heads": [4, 3, 2], "mlp": [256, 64, 64], "top1": 0.645, "flops_reduction": 0.401},
        {"plan": "flops0.420", "heads": [4, 3, 1], "mlp": [256, 64, 64], "top1": 0.638, "flops_reduction": 0.420}]}
    speedups = {"flops0.380": 0.96, "flops0.400": 0.98, "flops0.420": 1.02}
    seen = {}

    def fake_rounds(reference, others, *args):
        seen["shapes"] = {n: [b.mlp.fc1.out_features for b in m.blocks] for n, m in {"ref": reference, **others}.items()}
        return {name: {"speedup": speedups[name], "rounds": []} for name in others}

    monkeypatch.setattr(equal_latency, "time_rounds", fake_rounds)
    r = retime(result, tiny_vit(), None, 1, 1, QUICK, 3, tmp_path, 0)
    assert seen["shapes"] == {"ref": [256, 128, 64], "flops0.380": [256, 96, 64], "flops0.400": [256, 64, 64],
                              "flops0.420": [256, 64, 64]}
    # the line through (0.38, 0.96), (0.401, 0.98), (0.42, 1.02) crosses 1 at MACs 0.4085, between the last two
    # plans' (64.5% and 63.8%): 64.2%, and the latency plan has 64.0%
    assert r["equal_latency"]["macs_reduction"] == pytest.approx(0.4085, abs=1e-3) and r["equal_latency"]["interpolated"]
    assert r["difference_pt"] == pytest.approx(100 * (0.640 - r["equal_latency"]["top1"]))
    assert r["difference_pt"] == pytest.approx(-0.2, abs=0.02) and r["teacher_timed_difference_pt"] == -0.9
    assert r["same_macs_twin"] == "flops0.400" and r["latency_plan_over_twin"] == pytest.approx(1 / 0.98)
