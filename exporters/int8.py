"""FP32 ONNX -> INT8 ONNX: static Q/DQ quantization (the default), or ONNX Runtime dynamic quantization.

Static (`quantize_static`, QDQ format): INT8 weights per output channel and INT8 activations whose ranges
were calibrated on training images. Activations are symmetric signed INT8 (zero point 0), the form
TensorRT's explicit quantization consumes, so one file serves ONNX Runtime on CPUs and
`trtexec --int8`. Dynamic (`quantize_dynamic`): INT8 weights, activations quantized per batch at run time,
no calibration; ONNX Runtime only.

Which nodes are quantized is chosen by op group, found from the graph's structure, not its node names:
`patch_embed` (the Conv), `head` (the Gemm/MatMul whose output is the logits), `attention` (MatMuls of two
activations: q @ k^T and attn @ v) and `linear` (every other MatMul/Gemm with a weight: qkv, proj, fc1,
fc2). Only `linear` is quantized by default: on ONNX Runtime CPU the other groups made the graph slower and
(attention, whose Softmax output is then quantized) less accurate (docs/exporters.md#int8). Softmax,
LayerNormalization, GELU and the residual Adds always stay in float.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vitshrink.exporters.errors import ExportError
from vitshrink.exporters.layout import INPUT_NAME, OUTPUT_NAME

MODES = ("static", "dynamic")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
OP_GROUPS = ("patch_embed", "linear", "attention", "head")
CALIBRATION_BATCH = 32  # images per calibration forward pass


@dataclass(frozen=True)
class Int8Recipe:
    """How the INT8 file is made; the defaults are the measured choice (docs/exporters.md#int8)."""

    mode: str = "static"  # static (Q/DQ, calibrated; CPU and TensorRT) | dynamic (ONNX Runtime only)
    calibration_method: str = "minmax"  # activation ranges: minmax | percentile (99.999) | entropy
    calibration_images: int = 256  # training images the ranges are calibrated on (static only)
    ops: tuple[str, ...] = ("linear",)  # op groups quantized (static only); the others stay in float

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ExportError(f"unknown INT8 mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ExportError(
                f"unknown calibration method {self.calibration_method!r}; choose one of {', '.join(CALIBRATION_METHODS)}"
            )
        if self.calibration_images < 1:
            raise ExportError(f"calibration images must be >= 1, got {self.calibration_images}")
        unknown = sorted(set(self.ops) - set(OP_GROUPS))
        if unknown:
            raise ExportError(f"unknown op group(s) {unknown} to quantize; choose from {', '.join(OP_GROUPS)}")
        if not self.ops:
            raise ExportError(f"no op group to quantize; name at least one of {', '.join(OP_GROUPS)}")

    def to_dict(self) -> dict:
        return {**asdict(self), "ops": list(self.ops)}


def op_groups(path: Path) -> dict[str, list[str]]:
    """Quantizable node names of an FP32 graph by op group (see the module docstring)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output
    }
    groups: dict[str, list[str]] = {g: [] for g in OP_GROUPS}
    head = _head_node(graph)
    for node in graph.node:
        if node.op_type == "Conv":
            groups["patch_embed"].append(node.name)
        elif node.op_type in ("MatMul", "Gemm"):
            if node.name == head:
                groups["head"].append(node.name)
            elif any(i in weights for i in node.input[:2]):
                groups["linear"].append(node.name)
            else:
                groups["attention"].append(node.name)
    unnamed = [g for g, names in groups.items() if "" in names]
    if unnamed:
        raise ExportError(f"{path.name} has unnamed {'/'.join(unnamed)} nodes; export it with vitshrink export")
    return groups


def _head_node(graph) -> str | None:
    """The last MatMul/Gemm on the way back from the logits (through Add, Reshape and the like)."""
    producer = {o: n for n in graph.node for o in n.output}
    name, seen = OUTPUT_NAME, set()
    while name in producer and name not in seen:
        seen.add(name)
        node = producer[name]
        if node.op_type in ("MatMul", "Gemm"):
            return node.name
        name = node.input[0] if node.input else ""
    return None


def _reader(images: np.ndarray, batch: int = CALIBRATION_BATCH):
    """Calibration batches of `images` as ONNX Runtime's calibrator reads them (read once)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Images(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = iter(
                [images[i : i + batch] for i in range(0, len(images), batch)]
            )

        def get_next(self) -> dict | None:
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}

    return Images()


class _DropPreprocessHint(logging.Filter):
    """ONNX Runtime's quantizers always log a hint to fold constants and infer shapes first: the exporter
    (and onnxslim) already did, so in our output it is only noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize_int8(src: Path, dst: Path, recipe: Int8Recipe, calibration: np.ndarray | None = None,
                  batch: int = CALIBRATION_BATCH) -> dict:
    """Write the INT8 graph of `src` to `dst`; returns what was quantized (for export.json).

    `calibration`: (N, C, H, W) float32 training images, normalised like the model's input (static only),
    fed `batch` at a time (a graph with a static batch takes only its own).
    """
    hint = _DropPreprocessHint()
    logging.getLogger().addFilter(hint)
    try:
        if recipe.mode == "dynamic":
            return _dynamic(src, dst)
        if calibration is None or len(calibration) == 0:
            raise ExportError("static INT8 needs calibration images; pass a dataset (--dataset, --data-dir)")
        return _static(src, dst, recipe, calibration[: recipe.calibration_images], batch)
    finally:
        logging.getLogger().removeFilter(hint)


def _dynamic(src: Path, dst: Path) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return {"mode": "dynamic", "weights": "int8 per tensor", "activations": "uint8, per batch at run time"}


def _static(src: Path, dst: Path, recipe: Int8Recipe, images: np.ndarray, batch: int) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    groups = op_groups(src)
    quantized = [n for g in OP_GROUPS if g in recipe.ops for n in groups[g]]
    if not quantized:
        raise ExportError(f"{src.name} has no {'/'.join(recipe.ops)} nodes to quantize")
    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[recipe.calibration_method]
    quantize_static(
        str(src),
        str(dst),
        _reader(images, batch),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul", "Gemm", "Conv"],
        nodes_to_quantize=quantized,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=method,
        extra_options={
            "ActivationSymmetric": True,  # zero point 0: what TensorRT's explicit quantization takes
            "WeightSymmetric": True,
            # Q/DQ on the inputs of a quantized op, not on its output: ONNX Runtime then runs each linear layer as
            # one MatMulIntegerToFloat, and TensorRT reads the same placement (inputs of weighted layers)
            "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm", "Conv"],
        },
    )
    return {
        "mode": "static",
        "format": "QDQ",
        "weights": "int8 symmetric, per output channel",
        "activations": "int8 symmetric, per tensor, calibrated",
        "calibration": {"method": recipe.calibration_method, "images": int(len(images))},
        "quantized": {g: len(groups[g]) for g in OP_GROUPS if g in recipe.ops},
        "kept_float": {g: len(groups[g]) for g in OP_GROUPS if g not in recipe.ops},
    }
