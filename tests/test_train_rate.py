"""Training throughput in log rows: images/s of the training steps, not of the evaluation after them."""

from __future__ import annotations

import time

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tests.conftest import tiny_vit
from vitshrink.compressor.train import TrainConfig, train


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
