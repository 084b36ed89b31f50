"""Distillation: the KD loss and its gradient, a few steps that lower it, exact resume, hidden states."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from vitshrink.compressor.core.artifact import load_artifact, save_artifact
from vitshrink.compressor.core.errors import VitShrinkError
from vitshrink.compressor.core.spec import ArchSpec
from vitshrink.compressor.core.surgery import PrunePlan, apply_plan
from vitshrink.compressor.data.datasets import build_dataset
from vitshrink.compressor.jobs.compress_job import CompressJob, DataOptions, compress
from vitshrink.compressor.jobs.pipeline import CompressConfig
from vitshrink.compressor.planning.planner import Budget
from vitshrink.compressor.training.kd_loss import KDWeights, distillation_loss, kd_loss
from vitshrink.compressor.training.train import TrainConfig, TrainingInterrupted, train


def test_kd_loss_is_zero_for_identical_logits():
    logits = torch.randn(8, 10)
    assert kd_loss(logits, logits.clone(), temperature=3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_gradient_is_t_times_softmax_difference():
    """d/ds [T^2 KL(p_t || p_s)] = T (softmax(s/T) - softmax(t/T)) / B."""
    torch.manual_seed(0)
    s = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 7, dtype=torch.float64)
    temperature = 2.5
    kd_loss(s, t, temperature).backward()
    expected = temperature * (F.softmax(s / temperature, 1) - F.softmax(t / temperature, 1)) / 4
    torch.testing.assert_close(s.grad, expected.detach().float().double(), rtol=1e-4, atol=1e-6)


def test_full_loss_mixes_terms():
    s, t, y = torch.randn(5, 3), torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    w = KDWeights(alpha=0.25, temperature=1.0, feature_weight=2.0)
    feats_s, feats_t = [torch.ones(2, 3)], [torch.zeros(2, 3)]
    expected = 0.25 * kd_loss(s, t, 1.0) + 0.75 * F.cross_entropy(s, y) + 2.0 * 1.0
    torch.testing.assert_close(distillation_loss(s, t, y, w, feats_s, feats_t), expected)


def _student(teacher):
    student = copy.deepcopy(teacher.model)
    spec = apply_plan(student, teacher.spec, PrunePlan(keep_heads={0: (0, 1)}, keep_neurons={1: tuple(range(64))},
                                                         drop_blocks=(2,)))
    return student, spec


def _train_set(teacher):
    return build_dataset("digits", None, "train", teacher.data_config, augment=True, limit=384)


def test_a_few_distillation_steps_lower_the_loss(digits_teacher, tmp_path):
    student, spec = _student(digits_teacher)
    config = TrainConfig(epochs=3, batch_size=64, lr=1e-3, warmup_epochs=0, seed=0,
                         kd=KDWeights(alpha=1.0, temperature=2.0, feature_weight=0.5))
    result = train(student, _train_set(digits_teacher), None, config, tmp_path, teacher=digits_teacher.model,
                   feature_sources=[b.source_index for b in spec.blocks], progress=False)
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0] * 0.9, losses
    assert (tmp_path / "log.jsonl").read_text().count("\n") == 3


def test_resume_equals_uninterrupted(digits_teacher, tmp_path):
    config = TrainConfig(epochs=2, batch_size=64, lr=1e-3, warmup_epochs=0.5, seed=3, max_steps_per_epoch=4)
    train_set = _train_set(digits_teacher)

    straight, _ = _student(digits_teacher)
    train(straight, train_set, None, config, tmp_path / "a", teacher=digits_teacher.model, progress=False)

    resumed, _ = _student(digits_teacher)
    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(resumed, train_set, None, config, tmp_path / "b", teacher=digits_teacher.model, progress=False,
              should_stop=lambda epoch, step: epoch == 1 and step == 0)
    fresh, _ = _student(digits_teacher)  # a new process would start from the cut model again
    train(fresh, train_set, None, config, tmp_path / "b", teacher=digits_teacher.model, progress=False, resume=True)
    for (name, a), b in zip(straight.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_resume_with_other_settings_is_refused(digits_teacher, tmp_path):
    config = TrainConfig(epochs=2, batch_size=64, max_steps_per_epoch=2)
    student, _ = _student(digits_teacher)
    with pytest.raises(TrainingInterrupted):
        train(student, _train_set(digits_teacher), None, config, tmp_path, progress=False,
              should_stop=lambda e, s: e == 1 and s == 0)
    with pytest.raises(VitShrinkError, match=r"made with --batch-size 64, this run has --batch-size 32;.*without --resume"):
        train(student, _train_set(digits_teacher), None, TrainConfig(epochs=2, batch_size=32, max_steps_per_epoch=2),
              tmp_path, progress=False, resume=True)
    assert ArchSpec.from_model(student).depth == 2


@pytest.mark.parametrize("workers, stop_step", [(0, 2), (2, 3)])
def test_resume_mid_epoch_equals_uninterrupted(digits_teacher, tmp_path, workers, stop_step):
    """Augmentation is a function of (seed, epoch, sample), not of which worker drew it or when."""
    config = TrainConfig(epochs=1, batch_size=64, lr=1e-3, warmup_epochs=0, seed=1, max_steps_per_epoch=5,
                         num_workers=workers)
    train_set = _train_set(digits_teacher)
    straight, _ = _student(digits_teacher)
    train(straight, train_set, None, config, tmp_path / "a", progress=False)
    part, _ = _student(digits_teacher)
    with pytest.raises(TrainingInterrupted, match=f"step {stop_step}"):
        train(part, train_set, None, config, tmp_path / "b", progress=False,
              should_stop=lambda e, s: s == stop_step)
    fresh, _ = _student(digits_teacher)
    train(fresh, train_set, None, config, tmp_path / "b", progress=False, resume=True)
    for (name, a), b in zip(straight.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    in_process, _ = _student(digits_teacher)  # and the worker count does not change the result at all
    train(in_process, train_set, None, dataclasses.replace(config, num_workers=0), tmp_path / "c", progress=False)
    for (name, a), b in zip(straight.state_dict().items(), in_process.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def _pruned_teacher(digits_teacher, folder):
    """A real pruned artifact: the digits teacher without its middle block (original blocks 0 and 2)."""
    model = copy.deepcopy(digits_teacher.model)
    spec = apply_plan(model, digits_teacher.spec, PrunePlan(drop_blocks=(1,)))
    save_artifact(folder, dataclasses.replace(digits_teacher, model=model, spec=spec), {"method": "test: block 1 cut"})
    return load_artifact(folder)


def test_feature_sources_follow_a_pruned_teacher(digits_teacher, tmp_path):
    from vitshrink.compressor.training.train import feature_sources_for

    teacher = _pruned_teacher(digits_teacher, tmp_path / "teacher")
    assert [b.source_index for b in teacher.spec.blocks] == [0, 2]
    assert feature_sources_for(teacher.spec, teacher.spec) == [0, 1]
    only_last = ArchSpec(teacher.spec.embed_dim, teacher.spec.blocks[1:])
    assert feature_sources_for(teacher.spec, only_last) == [1]
    with pytest.raises(VitShrinkError, match=r"original blocks \[1\].*--feature-weight 0"):
        feature_sources_for(teacher.spec, digits_teacher.spec)
    # a student identical to the teacher, matched block to block: soft-target and hidden-state losses are 0
    student = copy.deepcopy(teacher.model)
    config = TrainConfig(epochs=1, batch_size=64, max_steps_per_epoch=1, kd=KDWeights(1.0, 2.0, feature_weight=1.0))
    result = train(student, _train_set(digits_teacher), None, config, tmp_path / "run", teacher=teacher.model,
                   feature_sources=feature_sources_for(teacher.spec, teacher.spec), progress=False)
    assert result.history[0]["train_loss"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(VitShrinkError, match=r"position among the teacher's 2"):  # original indices passed as-is
        train(student, _train_set(digits_teacher), None, config, tmp_path / "bad", teacher=teacher.model,
              feature_sources=[0, 2], progress=False)


def test_compress_with_feature_distillation_from_a_pruned_teacher(digits_teacher, tmp_path):
    """Student blocks name original blocks 0 and 2; the teacher holds them at positions 0 and 1."""
    _pruned_teacher(digits_teacher, tmp_path / "teacher")
    config = CompressConfig(
        budget=Budget.parse("flops=0.1"), stages=("width",), calib_batches=1, calib_batch_size=32,
        train=TrainConfig(epochs=1, batch_size=32, max_steps_per_epoch=1, kd=KDWeights(0.7, 2.0, feature_weight=0.5)),
    )
    job = CompressJob(model=str(tmp_path / "teacher"), out=tmp_path / "student", config=config,
                      data=DataOptions(dataset="digits", train_limit=64, eval_limit=64), progress=False)
    report = compress(job, log=lambda *a, **k: None)
    assert [b["source_index"] for b in report.final.spec["blocks"]] == [0, 2]
    assert load_artifact(tmp_path / "student").spec.depth == 2
