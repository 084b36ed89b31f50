"""Zero-cut diagnostic: distilling the reference teacher into an exact copy of itself must not hurt it.

A student that starts equal to its teacher has nothing to recover; one epoch of the default recipe
(the TrainConfig, augmentation and KD weights the `compress` command builds from its own defaults)
should leave its accuracy where it was. If it drops, the recipe itself (learning rate, augmentation,
loss) damages the model, and every compression result pays that cost on top of the cut.

Measured on images held out of the training split (never on the test split), with a paired bound:
the same images are classified before and after, so the noise of the difference comes from the images
that flipped, not from two independent accuracies.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.conftest import SHARED
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.data.datasets import build_loader
from vitshrink.compressor.jobs.compress_command import _data_options, compress_config
from vitshrink.compressor.jobs.compress_command import compress_command as compress
from vitshrink.compressor.jobs.compress_job import _datasets
from vitshrink.compressor.training.evaluate import predict_logits
from vitshrink.compressor.training.train import train

TEACHER = SHARED / "models" / "cifar10-vit"
CIFAR = SHARED / "datasets" / "cifar10"
TRAIN_IMAGES = 2_000  # fixed subset of the training pool (validation images excluded)
VAL_IMAGES = 1_000  # fixed validation images carved from the training split
MIN_TOLERANCE = 0.005  # at least 0.5 point


@dataclass(frozen=True)
class ZeroCut:
    before: float  # teacher top-1 on the validation images
    after: float  # student top-1 after one epoch of distillation
    lost: int  # images the teacher got right and the student gets wrong
    gained: int  # the other way round
    n: int
    seconds: float

    @property
    def drop(self) -> float:
        return (self.lost - self.gained) / self.n

    @property
    def paired_se(self) -> float:
        """Standard error of the paired difference of two accuracies on the same n images."""
        d = self.lost - self.gained
        return math.sqrt(max(self.lost + self.gained - d * d / self.n, 0.0)) / self.n

    @property
    def tolerance(self) -> float:
        return max(2 * self.paired_se, MIN_TOLERANCE)


def zero_cut(tmp_path: Path, extra_args: tuple[str, ...] = ()) -> ZeroCut:
    """Distil the teacher into a copy of itself with the CLI's defaults (plus `extra_args`) for one epoch."""
    import time

    args = ["--model", str(TEACHER), "--dataset", "imagefolder", "--data-dir", str(CIFAR), "--epochs", "1",
            "--train-limit", str(TRAIN_IMAGES), "--val-split", str(VAL_IMAGES), *extra_args]
    kw = compress.make_context("compress", args).params
    config, opts = compress_config(kw).train, _data_options(kw)
    teacher = load_model(str(TEACHER))
    splits = _datasets(teacher, opts)
    assert len(splits.train) == TRAIN_IMAGES and len(splits.val) == VAL_IMAGES
    val_loader = build_loader(splits.val, 250)
    logits, labels = predict_logits(teacher.model, val_loader)
    right_before = logits.argmax(1) == labels
    student = copy.deepcopy(teacher.model)
    started = time.perf_counter()
    torch.manual_seed(0)
    train(student, splits.train, None, config, tmp_path, teacher=teacher.model, progress=False)
    seconds = time.perf_counter() - started
    logits, _ = predict_logits(student, val_loader)
    right_after = logits.argmax(1) == labels
    return ZeroCut(before=right_before.float().mean().item(), after=right_after.float().mean().item(),
                   lost=int((right_before & ~right_after).sum()), gained=int((~right_before & right_after).sum()),
                   n=len(labels), seconds=seconds)


@pytest.mark.slow
@pytest.mark.skipif(not (TEACHER / "model.safetensors").is_file() or not (CIFAR / "train").is_dir(),
                    reason="needs the reference teacher and CIFAR-10 under ../shared (see shared/README.md)")
def test_distilling_the_teacher_into_itself_keeps_its_accuracy(tmp_path):
    r = zero_cut(tmp_path)
    assert r.drop <= r.tolerance, (
        f"one epoch of the default distillation recipe moved the unpruned teacher from {r.before:.2%} to "
        f"{r.after:.2%} on {r.n} validation images ({r.lost} right->wrong, {r.gained} wrong->right; drop "
        f"{r.drop * 100:.2f} pt > {r.tolerance * 100:.2f} pt allowed = max(2 x paired SE, 0.5 pt))"
    )
