"""Real data: the reference CIFAR-10 teacher in ../shared, cut 30% in FLOPs by Taylor importance."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.conftest import SHARED
from vitshrink.compressor.core.artifact import load_artifact, save_artifact
from vitshrink.compressor.core.flops import count_macs
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.core.surgery import apply_plan
from vitshrink.compressor.data.datasets import build_dataset, build_loader
from vitshrink.compressor.planning.planner import model_cost, model_costs, plan_width
from vitshrink.compressor.scoring.importance import calibration_batches, score
from vitshrink.compressor.training.evaluate import evaluate

TEACHER = SHARED / "models" / "cifar10-vit"
CIFAR = SHARED / "datasets" / "cifar10"
pytestmark = pytest.mark.skipif(
    not (TEACHER.is_dir() and CIFAR.is_dir()), reason="needs ../shared/models/cifar10-vit and ../shared/datasets/cifar10"
)


def test_taylor_width_cut_keeps_the_teacher_accuracy(tmp_path):
    teacher = load_model(str(TEACHER))
    eval_loader = build_loader(build_dataset("imagefolder", CIFAR, "eval", teacher.data_config, limit=500), 250)
    before = evaluate(teacher.model, eval_loader)
    assert 0.6 < before["top1"] < 0.72  # the README's 66.16% on all 10k; 500 images vary by a few points

    calib_set = build_dataset("imagefolder", CIFAR, "train", teacher.data_config, limit=256, seed=1)
    scores = score(teacher.model, calibration_batches(build_loader(calib_set, 64), 4), "taylor")
    total = model_cost(teacher.model, "flops")
    plan = plan_width(model_costs(teacher.model, "flops"), scores, target_removed=0.3 * total, reference_total=total)
    spec = apply_plan(teacher.model, teacher.spec, plan.plan)
    assert abs(1 - count_macs(teacher.model) / total - 0.3) < 0.01
    after = evaluate(teacher.model, eval_loader)
    assert after["top1"] > before["top1"] - 0.05, (before, after)

    cut = dataclasses.replace(teacher, spec=spec)
    save_artifact(tmp_path / "cut", cut, {"method": "test"})
    back = load_artifact(tmp_path / "cut")
    x = next(iter(eval_loader))[0][:8]
    torch.testing.assert_close(back.model(x), teacher.model(x), rtol=0, atol=0)
