"""The distillation-cost benchmark on a tiny real ViT: both students, paired ratios, the cut really cut."""

from __future__ import annotations

import math

import pytest

from research.distill_cost import CostConfig, format_rows, run_cost
from tests.conftest import TINY_ARGS, TINY_CFG
from vitshrink.compressor.core.artifact import save_artifact
from vitshrink.compressor.core.errors import VitShrinkError
from vitshrink.compressor.core.model_loading import load_model


@pytest.fixture
def tiny_teacher_dir(tmp_path):
    loaded = load_model("vit_tiny_patch16_224", model_args={**TINY_ARGS, "pretrained_cfg_overlay": TINY_CFG})
    return save_artifact(tmp_path / "teacher", loaded, {"method": "test teacher"})


def test_distill_cost_times_both_students(tiny_teacher_dir):
    result = run_cost(CostConfig(model=str(tiny_teacher_dir), batch_size=8, steps=3, warmup=1, amp=False),
                      log=lambda *a: None)
    unpruned, cut = result["students"]
    assert unpruned["macs"] == result["teacher_macs"]
    assert cut["macs"] / result["teacher_macs"] == pytest.approx(0.7, abs=0.02)  # flops=0.3 within the planner's 1%
    for row in (unpruned, cut):
        assert row["plain_ms"] > 0 and row["distill_ms"] > 0 and math.isfinite(row["ratio"])
        assert row["ratio_ci"][0] <= row["ratio"] <= row["ratio_ci"][1]
        assert row["plain_images_per_s"] == pytest.approx(8 / (row["plain_ms"] / 1e3), rel=0.01)  # ms rounded to 0.1
    assert "goal" in format_rows(result)


def test_distill_cost_needs_two_steps(tiny_teacher_dir):
    with pytest.raises(VitShrinkError, match="--steps 1"):
        run_cost(CostConfig(model=str(tiny_teacher_dir), steps=1))
