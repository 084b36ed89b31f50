"""Is the INT8 file as accurate as the FP32 model? Top-1 on the validation split, paired image by image."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from vitshrink.exporters.errors import ExportError

DEFAULT_MAX_DROP = 1.0  # points of validation top-1 the INT8 file may lose against FP32


class Int8AccuracyError(ExportError):
    """The INT8 file loses more validation top-1 than allowed; nothing was published."""


@dataclass(frozen=True)
class Int8Accuracy:
    images: int
    fp32_top1: float  # fraction, the PyTorch FP32 model
    int8_top1: float  # fraction, the INT8 file in ONNX Runtime
    drop_points: float  # (fp32 - int8) * 100
    drop_ci95: tuple[float, float]  # paired 95% interval of the drop, points
    agreement: float  # INT8 top-1 class == FP32 top-1 class
    max_drop: float  # the tolerance it was checked against, points

    @property
    def passed(self) -> bool:
        return self.drop_points <= self.max_drop

    def to_dict(self) -> dict:
        return {**asdict(self), "drop_ci95": list(self.drop_ci95), "passed": self.passed}

    def line(self) -> str:
        lo, hi = self.drop_ci95
        return (f"INT8 top-1 on {self.images} validation images {self.int8_top1:.2%} vs FP32 {self.fp32_top1:.2%}: "
                f"drop {self.drop_points:+.2f} points (95% CI {lo:+.2f} to {hi:+.2f}), agreement {self.agreement:.2%}, "
                f"allowed {self.max_drop:g} point{'' if self.max_drop == 1 else 's'}")


def int8_accuracy(fp32_logits: np.ndarray, int8_logits: np.ndarray, labels: np.ndarray, max_drop: float) -> Int8Accuracy:
    """Paired comparison: per image, FP32 correct minus INT8 correct; its mean is the drop."""
    fp32 = fp32_logits.argmax(1) == labels
    int8 = int8_logits.argmax(1) == labels
    diff = fp32.astype(np.float64) - int8.astype(np.float64)
    n = len(diff)
    half = 1.96 * diff.std(ddof=1) / math.sqrt(n) * 100 if n > 1 else float("inf")
    drop = diff.mean() * 100
    return Int8Accuracy(
        images=n, fp32_top1=float(fp32.mean()), int8_top1=float(int8.mean()), drop_points=float(drop),
        drop_ci95=(float(drop - half), float(drop + half)),
        agreement=float(np.mean(fp32_logits.argmax(1) == int8_logits.argmax(1))), max_drop=max_drop,
    )


def check_int8_accuracy(result: Int8Accuracy, file_name: str) -> None:
    if not result.passed:
        raise Int8AccuracyError(
            f"{file_name}: {result.line()}; nothing was written. Quantize fewer op groups (--int8-ops linear), "
            "calibrate on more images (--calib-images), or allow more (--int8-max-drop)"
        )
