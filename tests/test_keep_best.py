"""`keep="best"`: a training run keeps the best of its starting weights and every epoch's on validation."""

from __future__ import annotations

import copy
import dataclasses
import shutil

import pytest
import torch

from tests.conftest import tiny_vit
from vitshrink.compressor.core.errors import VitShrinkError
from vitshrink.compressor.data.datasets import build_dataset
from vitshrink.compressor.training.evaluate import evaluate
from vitshrink.compressor.training.train import TrainConfig, TrainingInterrupted, train


def _train_set(teacher):
    return build_dataset("digits", None, "train", teacher.data_config, augment=True, limit=384)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_a_run_that_only_hurts_keeps_the_starting_weights(digits_teacher, digits_eval_loader, tmp_path):
    start = copy.deepcopy(digits_teacher.model)
    wrecking = TrainConfig(epochs=2, batch_size=64, lr=0.5, warmup_epochs=0, grad_clip=0, max_steps_per_epoch=3)
    student = copy.deepcopy(start)
    result = train(student, _train_set(digits_teacher), digits_eval_loader, wrecking, tmp_path / "best",
                   teacher=start, progress=False)
    assert result.kept_epoch == 0
    assert _same(student, start)
    assert all(r["eval_top1"] < evaluate(start, digits_eval_loader)["top1"] for r in result.history)

    last = copy.deepcopy(start)  # the same run with keep="last" ends on the wrecked weights
    result = train(last, _train_set(digits_teacher), digits_eval_loader, dataclasses.replace(wrecking, keep="last"),
                   tmp_path / "last", teacher=start, progress=False)
    assert result.kept_epoch == 2 and not _same(last, start)
    assert evaluate(last, digits_eval_loader)["top1"] == pytest.approx(result.history[-1]["eval_top1"])


def test_the_kept_epoch_is_the_best_on_validation(digits_teacher, digits_eval_loader, tmp_path):
    torch.manual_seed(0)
    student = tiny_vit()  # random weights: training helps, so an epoch beats the start
    start_top1 = evaluate(student, digits_eval_loader)["top1"]
    config = TrainConfig(epochs=3, batch_size=64, lr=2e-3, warmup_epochs=0, max_steps_per_epoch=5)
    result = train(student, _train_set(digits_teacher), digits_eval_loader, config, tmp_path, progress=False)
    assert result.kept_epoch >= 1
    kept_row = next(r for r in result.history if r["epoch"] == result.kept_epoch)
    assert kept_row["eval_top1"] == max(r["eval_top1"] for r in result.history) > start_top1
    assert evaluate(student, digits_eval_loader)["top1"] == pytest.approx(kept_row["eval_top1"])


def test_resume_chooses_among_the_epochs_before_the_interruption(digits_teacher, digits_eval_loader, tmp_path):
    start = copy.deepcopy(digits_teacher.model)
    config = TrainConfig(epochs=2, batch_size=64, lr=0.5, warmup_epochs=0, grad_clip=0, max_steps_per_epoch=3, seed=2)
    train_set = _train_set(digits_teacher)
    straight = copy.deepcopy(start)
    expected = train(straight, train_set, digits_eval_loader, config, tmp_path / "a", teacher=start, progress=False)
    part = copy.deepcopy(start)
    with pytest.raises(TrainingInterrupted):
        train(part, train_set, digits_eval_loader, config, tmp_path / "b", teacher=start, progress=False,
              should_stop=lambda epoch, step: epoch == 1 and step == 1)
    resumed = copy.deepcopy(start)
    result = train(resumed, train_set, digits_eval_loader, config, tmp_path / "b", teacher=start, progress=False,
                   resume=True)
    assert result.kept_epoch == expected.kept_epoch == 0
    assert _same(resumed, straight)

    shutil.rmtree(tmp_path / "b" / "best")  # a checkpoint without its kept weights cannot resume honestly
    assert (tmp_path / "b" / "checkpoint").is_dir()
    with pytest.raises(VitShrinkError, match="no kept best weights.*without --resume"):
        train(copy.deepcopy(start), train_set, digits_eval_loader, config, tmp_path / "b", teacher=start,
              progress=False, resume=True)


def test_without_a_validation_loader_the_last_epoch_is_kept(digits_teacher, tmp_path):
    start = copy.deepcopy(digits_teacher.model)
    config = TrainConfig(epochs=1, batch_size=64, lr=0.5, warmup_epochs=0, grad_clip=0, max_steps_per_epoch=2)
    student = copy.deepcopy(start)
    result = train(student, _train_set(digits_teacher), None, config, tmp_path, progress=False)
    assert result.kept_epoch == 1 and not _same(student, start)
    assert not (tmp_path / "best").exists()


def test_an_unknown_keep_is_refused():
    with pytest.raises(VitShrinkError, match="keep='first'.*best, last"):
        TrainConfig(keep="first")
