"""Structural checks of an exported graph: valid ONNX, the declared tensors, and the pruned size.

Numbers (does it compute the same logits?) are checked in `validate.py`; this file checks what
can be read off the graph without running it.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from timm.layers.pos_embed_rel import RelPosMlp
from torch import nn

from vitshrink.exporters.errors import ExportError
from vitshrink.exporters.io_spec import INPUT_NAME, OUTPUT_NAME, IOSpec

# Initializer types that hold model weights (FP32/FP16 graphs, and the INT8 weights and INT32 biases of a
# quantized one).
# Shape constants (int64) and the scales/zero points a quantizer adds are not weights.
_WEIGHT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.INT8,
    onnx.TensorProto.UINT8,
    onnx.TensorProto.INT32,  # biases of quantized Gemm/Conv nodes
}
_QDQ = ("QuantizeLinear", "DequantizeLinear")
_BATCH_TOKENS = ("cls_token", "reg_token", "dist_token")  # timm prefix tokens, expanded over the batch


@dataclass(frozen=True)
class GraphStats:
    opset: int
    nodes: int
    op_counts: dict[str, int]  # op type -> number of nodes, most frequent first
    weight_elements: int  # elements of all weight tensors (see `weight_elements`)

    def to_dict(self) -> dict:
        return asdict(self)


def check_graph(path: Path, io: IOSpec, opset: int) -> GraphStats:
    """Run onnx.checker (full, with shape inference) and check opset and tensor names, shapes and types."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"{path.name} is not a valid ONNX model: {e}") from e
    proto = onnx.load(str(path))
    found_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if found_opset != opset:
        raise ExportError(
            f"{path.name} has opset {found_opset} but opset {opset} was asked for (the exporter could not "
            "convert it); choose another --opset or exporter"
        )
    _check_tensors(path.name, "input", proto.graph.input, INPUT_NAME, io.onnx_input_shape())
    _check_tensors(path.name, "output", proto.graph.output, OUTPUT_NAME, io.onnx_output_shape())
    ops = Counter(n.op_type for n in proto.graph.node)
    return GraphStats(found_opset, len(proto.graph.node), dict(ops.most_common()), weight_elements(proto))


def _check_tensors(file: str, kind: str, values, name: str, shape: list[int | str]) -> None:
    found = [(v.name, _shape(v), v.type.tensor_type.elem_type) for v in values]
    expected = [(name, shape, onnx.TensorProto.FLOAT)]
    if found != expected:
        shown = [(n, s, onnx.TensorProto.DataType.Name(t)) for n, s, t in found]
        raise ExportError(f"{file}: graph {kind}s are {shown}, expected [({name!r}, {shape}, 'FLOAT')]")


def _shape(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def weight_elements(proto: onnx.ModelProto) -> int:
    """Elements of the weight tensors in a graph: non-scalar float or int8 initializers and constants."""
    # scales and zero points of Q/DQ nodes: per output channel in a per-channel quantized graph
    qparams = {i for n in proto.graph.node if n.op_type in _QDQ for i in n.input[1:]}
    tensors = [t for t in proto.graph.initializer if t.name not in qparams]
    tensors += [
        a.t
        for n in proto.graph.node
        if n.op_type == "Constant" and n.output[0] not in qparams
        for a in n.attribute
        if a.name == "value"
    ]
    return sum(int(np.prod(t.dims)) for t in tensors if t.data_type in _WEIGHT_TYPES and np.prod(t.dims) > 1)


def expected_weight_elements(model: nn.Module, static_batch: int | None) -> tuple[int, int]:
    """The range of weight elements an export of `model` may hold, as (low, high).

    Exact for trained weights. Four things exporters legitimately do move it: graph optimizers
    merge identical tensors and may drop an all-zero bias (so identical parameters count once
    and all-zero ones may vanish: the low end), with a static batch constant folding
    stores the class/register tokens once per batch row (the high end), a relative position
    bias (BEiT's or RelPos's table, gathered by a constant index; RelPos's bias MLP, run on constant
    coordinates) is computed from constants alone, so constant folding may replace its weights
    (the low end) by its result, at most one (heads, N, N) bias per block (the high end), and two
    buffers become graph constants (the high end): a rotary embedding's sin/cos table (`Eva.rope`,
    no parameters), and the zero `k_bias` that BEiT/EVA attentions concatenate between q and v biases.
    """
    distinct: dict[tuple, int] = {}
    zeros = 0
    for p in model.parameters():
        a = p.detach().cpu().numpy()
        key = (a.shape, a.dtype.str, hashlib.sha256(a.tobytes()).hexdigest())
        if key not in distinct:
            distinct[key] = a.size
            zeros += a.size if not a.any() else 0
    total = sum(distinct.values())
    tokens = sum(getattr(model, n).numel() for n in _BATCH_TOKENS if getattr(model, n, None) is not None)
    foldable, folded = _position_bias_folding(model)
    return total - zeros - foldable, total + ((static_batch or 1) - 1) * tokens + folded


def _position_bias_folding(model: nn.Module) -> tuple[int, int]:
    """(weights constant folding may remove, elements it may add) for position biases and buffer constants."""
    foldable = folded = 0
    for m in model.modules():
        if isinstance(m, RelPosMlp):
            foldable += sum(p.numel() for p in m.mlp.parameters())
            folded += m.num_heads * (m.window_area + m.prefix_tokens) ** 2
        elif isinstance(getattr(m, "relative_position_bias_table", None), nn.Parameter):
            table = m.relative_position_bias_table  # (distances, heads), gathered by (N, N) positions
            foldable += table.numel()
            folded += table.shape[-1] * m.relative_position_index.numel()
        if isinstance(getattr(m, "k_bias", None), torch.Tensor) and "k_bias" in m._buffers:
            folded += m.k_bias.numel()
    rope = getattr(model, "rope", None)
    if isinstance(rope, nn.Module):
        folded += sum(b.numel() for b in rope.buffers())
    return foldable, folded


def check_weight_count(file: str, stats: GraphStats, expected: tuple[int, int], parameters: int) -> None:
    """Raise unless the graph holds as many weights as the PyTorch model (pruned widths survived)."""
    low, high = expected
    if not low <= stats.weight_elements <= high:
        raise ExportError(
            f"{file} holds {stats.weight_elements:,} weight elements but the PyTorch model has {parameters:,} "
            f"parameters (expected {low:,}..{high:,}): the graph is not the pruned model; "
            "report this with the exporter and opset used"
        )
