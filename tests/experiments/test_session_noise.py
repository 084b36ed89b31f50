"""The A/A experiment: one file in two fresh sessions per round, and the spread of their ratios."""

from __future__ import annotations

import pytest

from research.ort_pair import export_for_ort
from research.session_noise import a_a, spread
from tests.conftest import TINY_ARGS, TINY_CFG, tiny_vit
from vitshrink.exporters.io_spec import IOSpec
from vitshrink.exporters.runtime.timing import TimingPolicy


def test_spread_of_the_ratios_and_of_their_own_intervals():
    pairings = [{"ratio": r, "ci_low": r - w / 2, "ci_high": r + w / 2}
                for r, w in ((0.90, 0.02), (1.00, 0.01), (1.02, 0.01), (0.98, 0.03))]
    s = spread(pairings)
    assert s["rounds"] == 4 and s["median"] == pytest.approx(0.99) and (s["low"], s["high"]) == (0.90, 1.02)
    assert s["sd"] == pytest.approx(0.05260, abs=1e-4) and s["median_interval_width"] == pytest.approx(0.015)


def test_a_a_times_one_file_against_itself_once_per_round(tmp_path):
    model = tiny_vit()
    io = IOSpec.from_model(model, {"input_size": (3, TINY_ARGS["img_size"], TINY_ARGS["img_size"]), **TINY_CFG})
    path = export_for_ort(model, io, tmp_path / "m.onnx")
    quick = TimingPolicy(warmup_iters=1, warmup_s=0.0, min_iters=3, min_time_s=0.0, max_time_s=5.0)
    pairings = a_a(path, io, batch=1, threads=1, policy=quick, rounds=2, seed=0)
    assert len(pairings) == 2 and all(p["pairs"] >= 3 and p["ci_low"] <= p["ratio"] <= p["ci_high"] for p in pairings)
