"""FP32 ONNX -> FP16 ONNX (weights and compute in FP16, input and output kept FP32).

TensorRT >= 11 builds strongly typed networks only, so the precision has to be in the graph.
The converter is the one that ships inside onnxruntime; it keeps LayerNormalization (opset 17)
as one FP16 node and adds a Cast at the input and at the output.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from vitshrink.exporters.onnx_export import save_onnx


def convert_fp16(src: Path, dst: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    fp16 = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    # the converter appends its input Casts after the nodes that read them; ONNX needs topological order
    graph = OnnxModel(fp16)
    graph.topological_sort()
    save_onnx(graph.model, dst)
