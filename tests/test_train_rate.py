"""Training throughput in log rows: images/s of the training steps, not of the evaluation after them."""

from __future__ import annotations

import time

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tests.conftest import tiny_vit
from vitshrink.compressor.core.errors import VitShrinkError
from vitshrink.compressor.training.train import TrainConfig, train


class SlowDataset(Dataset):
    """An evaluation set that takes `delay` seconds per image."""

    def __init__(self, n: int, delay: float):
        self.n, self.delay = n, delay

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        time.sleep(self.delay)
        return torch.zeros(3, 16, 16), 0


def test_images_per_s_excludes_evaluation(tmp_path):
    torch.manual_seed(0)
    train_set = TensorDataset(torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,)))
    slow_eval = DataLoader(SlowDataset(20, 0.05), batch_size=10)  # >= 1 s of evaluation per epoch
    config = TrainConfig(epochs=1, batch_size=32, lr=1e-3, warmup_epochs=0, amp=False)
    result = train(tiny_vit(), train_set, slow_eval, config, tmp_path, teacher=tiny_vit(), progress=False)
    row = result.history[0]
    assert row["seconds"] >= 1.0 and row["amp"] is False
    # the evaluation sleeps >= 1 s, so the training steps took at most `seconds` - 1 (+ rounding)
    train_seconds = 64 / row["images_per_s"]
    assert train_seconds <= row["seconds"] - 1.0 + 0.02, row
    assert result.images_per_s == row["images_per_s"]


def test_the_decay_never_rises_above_the_peak():
    """A peak rate below the floor rate (1e-7 under 1e-6) holds the peak; it never climbs towards the floor."""
    from vitshrink.compressor.training.optimizer import build_optimizer

    model = torch.nn.Linear(4, 4)
    optimizer, scheduler = build_optimizer(model, lr=1e-7, weight_decay=0.0, min_lr=1e-6, warmup_steps=2,
                                           total_steps=10)
    rates = []
    for _ in range(10):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert max(rates) <= 1e-7 * (1 + 1e-9), rates


@pytest.mark.parametrize("field, value", [("lr", 0.0), ("lr", -1.0), ("lr", float("nan")), ("weight_decay", -0.1),
                                          ("warmup_epochs", -1.0)])
def test_a_rate_that_cannot_train_is_refused_by_the_config(field, value):
    with pytest.raises(VitShrinkError, match=field.split("_")[0]):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("command", ["compress", "finetune"])
@pytest.mark.parametrize("args", [["--lr", "0"], ["--lr", "-1"], ["--weight-decay", "-0.1"], ["--warmup-epochs", "-1"]])
def test_a_rate_that_cannot_train_is_one_line_at_parse_time(command, args, tmp_path):
    from click.testing import CliRunner

    from vitshrink.cli import main

    extra = ["--model", "vit_tiny_patch16_224"] if command == "finetune" else []
    result = CliRunner().invoke(main, [command, *extra, *args, "--out", str(tmp_path / "o"), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert args[0] in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()
