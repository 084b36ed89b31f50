"""Top-1 / top-5 and loss of a model on a loader."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from vitshrink.compressor.core.progress import progress_bar


@torch.no_grad()
def predict_logits(
    model: nn.Module, loader: DataLoader, *, device: str = "cpu", amp: bool = False, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """All logits (float32, on CPU) and labels of a loader, in loader order."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for x, y in progress_bar(loader, desc="eval", enabled=progress, leave=False):
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
            out = model(x.to(device))
        logits.append(out.float().cpu())
        labels.append(y)
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def accuracy_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    correct = topk.eq(labels[:, None])
    return {
        "top1": correct[:, 0].float().mean().item(),
        "top5": correct.any(dim=1).float().mean().item(),
        "loss": F.cross_entropy(logits, labels).item(),
        "n": len(labels),
    }


def evaluate(
    model: nn.Module, loader: DataLoader, *, device: str = "cpu", amp: bool = False, progress: bool = False
) -> dict:
    """`top1`, `top5` (fractions), mean cross-entropy `loss` and sample count `n`."""
    logits, labels = predict_logits(model, loader, device=device, amp=amp, progress=progress)
    return accuracy_from_logits(logits, labels)
