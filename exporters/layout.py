"""What an export writes into the artifact folder, named once for the writers and the readers."""

from __future__ import annotations

INPUT_NAME = "input"  # graph input: (batch, C, H, W) float32, normalised with the model's mean/std
OUTPUT_NAME = "logits"  # graph output: (batch, num_classes) float32, before softmax

ONNX_FILE = "model.onnx"  # FP32, the source of every other file
FP16_ONNX_FILE = "model.fp16.onnx"  # FP16 weights and compute, FP32 input/output
INT8_ONNX_FILE = "model.int8.onnx"  # INT8: static Q/DQ (ONNX Runtime CPU and TensorRT), or dynamic (CPU only)
EXPORT_JSON = "export.json"  # what was exported, how, checksums and validation numbers
ENGINE_JSON = "engine.json"  # the TensorRT engine (or why none was built, and how to build it)
BUILD_SCRIPT = "build_engine.sh"  # builds the engine with trtexec on the device
TIMING_CACHE = "timing.cache"  # TensorRT timing cache, reused by later builds on the same GPU + TensorRT

ONNX_FILES = {"fp32": ONNX_FILE, "fp16": FP16_ONNX_FILE, "int8": INT8_ONNX_FILE}


def engine_file(precision: str) -> str:
    return f"model.{precision}.engine"


def engine_onnx_file(precision: str, strongly_typed: bool) -> str:
    """The ONNX file an engine is built from.

    TensorRT 10 takes the FP32 graph and lowers layers to FP16 itself (`--fp16`); TensorRT >= 11
    builds strongly typed networks only, so an FP16 engine needs the FP16 graph. An INT8 engine is always
    built from the Q/DQ graph (explicit quantization).
    """
    if precision == "int8":
        return INT8_ONNX_FILE
    return FP16_ONNX_FILE if precision == "fp16" and strongly_typed else ONNX_FILE
