"""The distillation loss: soft logits from the teacher, hard labels, optional hidden states."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class KDWeights:
    alpha: float = 0.7  # weight of the soft (teacher) term; 1 - alpha goes to cross-entropy on labels
    temperature: float = 2.0  # softens both distributions so the teacher's non-argmax classes carry signal
    feature_weight: float = 0.0  # weight of the hidden-state MSE (kept block output vs its teacher block)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher/T || student/T), batch mean.

    The gradient of the softened KL scales as 1/T^2 (Hinton et al. 2015), so multiplying by T^2 keeps
    the soft term's gradient magnitude comparable to the hard term's whatever T is chosen.
    """
    t = temperature
    return (t * t) * F.kl_div(
        F.log_softmax(student_logits.float() / t, dim=1),
        F.log_softmax(teacher_logits.float() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )


def feature_loss(student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor]) -> torch.Tensor:
    """Mean over kept blocks of the MSE between a student block's output and its source teacher block's.

    Written as mean((s - t)^2) rather than F.mse_loss: the same value, but autograd saves only the
    difference, never `t`, so the teacher may run under torch.inference_mode (an inference tensor
    cannot be saved for backward, and F.mse_loss would save it).
    """
    losses = [(s.float() - t.float()).square().mean() for s, t in zip(student_feats, teacher_feats, strict=True)]
    return torch.stack(losses).mean()


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    weights: KDWeights,
    student_feats: list[torch.Tensor] | None = None,
    teacher_feats: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """alpha * T^2 * KL + (1 - alpha) * CE + feature_weight * hidden-state MSE."""
    loss = weights.alpha * kd_loss(student_logits, teacher_logits, weights.temperature)
    if weights.alpha < 1.0:
        loss = loss + (1.0 - weights.alpha) * F.cross_entropy(student_logits.float(), labels)
    if weights.feature_weight > 0 and student_feats:
        loss = loss + weights.feature_weight * feature_loss(student_feats, teacher_feats)
    return loss
