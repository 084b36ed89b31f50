"""The optimizer and learning-rate schedule of a training run.

AdamW with weight decay on the weight matrices only (no decay on biases, norms, the position embedding
or the class/distillation tokens), and a per-step schedule: linear warm-up, then cosine decay to a floor.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def build_optimizer(
    model: nn.Module, *, lr: float, weight_decay: float, min_lr: float, warmup_steps: int, total_steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `model`'s parameters and its schedule, stepped once per optimizer step."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        decays = param.ndim > 1 and "pos_embed" not in name and "token" not in name
        (decay if decays else no_decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, warmup_steps, min(1.0, min_lr / lr))
    )
    return optimizer, scheduler


def warmup_cosine(total_steps: int, warmup_steps: int, floor: float) -> Callable[[int], float]:
    """The learning-rate factor at each step: linear up to 1 over `warmup_steps`, then cosine down to `floor`.

    A `floor` above 1 (a peak rate below the floor rate) is held at 1: the decay never rises above the peak.
    """
    floor = min(1.0, floor)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor
