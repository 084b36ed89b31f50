"""The images an INT8 export reads: calibration images from the training split, and the validation images
held out of it that the INT8 file's accuracy is checked on. The test split is never read here.

The validation split is the one `vitshrink compress` held out (`split_train` with the same `val_split` and
seed), so an artifact is checked on images its compression never trained or calibrated on; calibration
images are drawn from the rest of the training split only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vitshrink.compressor.data.datasets import build_dataset, fixed_subset, split_train
from vitshrink.exporters.errors import ExportError


@dataclass(frozen=True)
class Int8Images:
    calibration: np.ndarray  # (N, C, H, W) float32 training images, outside the validation split
    validation: np.ndarray  # (M, C, H, W) float32 held-out training images
    labels: np.ndarray  # (M,) class indices of the validation images
    record: dict  # what was read, for export.json

    def to_dict(self) -> dict:
        return self.record


def split_settings(val_split: float | int | None, seed: int | None, compression: dict | None,
                   dataset: str) -> tuple[float | int | None, int, str]:
    """(val_split, seed, where they came from): given, else the artifact's compress run on the same dataset."""
    data = (compression or {}).get("data") or {}
    recorded = data.get("dataset") == dataset
    source = "given" if val_split is not None or seed is not None else ("compression.json" if recorded else "default")
    if val_split is None and recorded:
        val_split = data.get("val_split")
    if seed is None:
        seed = int(data.get("seed", 0)) if recorded else 0
    return val_split, seed, source


def int8_images(dataset: str, data_dir, data_config: dict, *, calibration_images: int, validation_images: int,
                val_split: float | int | None, seed: int, source: str = "given") -> Int8Images:
    plain = build_dataset(dataset, data_dir, "train", data_config)
    split = split_train(len(plain), val_split, seed)
    if not split.val:
        raise ExportError(f"the INT8 accuracy check needs a validation split, and --val-split {val_split} holds out "
                          "no training images; give a count such as 2000 or a fraction such as 0.1")
    calib_idx = fixed_subset(split.train, calibration_images, seed + 1)
    val_idx = fixed_subset(split.val, validation_images, seed)
    calibration, _ = _stack(plain, calib_idx)
    validation, labels = _stack(plain, val_idx)
    record = {
        "dataset": dataset, "split": "train", "val_split": val_split, "seed": seed, "split_from": source,
        "train_images": len(split.train), "val_images": len(split.val),
        "calibration_images": len(calib_idx), "validation_images": len(val_idx),
    }
    return Int8Images(calibration, validation, labels, record)


def _stack(dataset, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = zip(*(dataset[i] for i in indices), strict=True)
    return np.stack([np.asarray(x, dtype=np.float32) for x in images]), np.asarray(labels, dtype=np.int64)
