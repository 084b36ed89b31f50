"""FP32 ONNX -> INT8 ONNX for CPUs: ONNX Runtime dynamic quantization.

Weights are stored as INT8; activations are quantized on the fly per batch, so no calibration
data is needed. This file is for ONNX Runtime on CPU edge devices, not for TensorRT (which takes
explicit Q/DQ graphs for INT8).
"""

from __future__ import annotations

import logging
from pathlib import Path


class _DropPreprocessHint(logging.Filter):
    """quantize_dynamic always logs a hint to fold constants and infer shapes first: the exporters
    (and onnxslim) already did, so in our output it is only noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    hint = _DropPreprocessHint()
    logging.getLogger().addFilter(hint)
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        logging.getLogger().removeFilter(hint)
