"""PyTorch module -> one ONNX file, with the exporter chosen explicitly and the graph simplified.

The default is the TorchScript exporter (`dynamo=False`) followed by onnxslim: on torch 2.14.1 it
gives the smallest graph with the fewest shape ops, which is what TensorRT's parser and fusion
passes like best, and it writes opset 17 natively; see docs/exporters.md for the node counts.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from vitshrink.exporters.errors import ExportError
from vitshrink.exporters.io_spec import INPUT_NAME, OUTPUT_NAME, IOSpec

MIN_OPSET = 17  # LayerNormalization is a native op from 17 (TensorRT maps it to INormalizationLayer)
DEFAULT_OPSET = 17  # TensorRT 10.3 (JetPack 6) parses opsets 9-20
MAX_OPSET = {False: 20, True: 23}  # torch 2.14.1: TorchScript exporter up to 20, dynamo exporter up to 23
EXAMPLE_BATCH = 2  # traced example batch; not 1, so no exporter can mistake the batch axis for a constant
PROTOBUF_LIMIT = 2**31 - 2**26  # a single ONNX file must stay under 2 GB; keep 64 MB for the graph itself


def exporter_name(dynamo: bool) -> str:
    return "dynamo" if dynamo else "torchscript"


def check_opset(opset: int, dynamo: bool) -> None:
    """Raise unless `opset` is one the chosen exporter writes and that keeps LayerNormalization."""
    top = MAX_OPSET[dynamo]
    if not MIN_OPSET <= opset <= top:
        raise ExportError(
            f"opset {opset} is not supported with the {exporter_name(dynamo)} exporter: use {MIN_OPSET}..{top} "
            f"({DEFAULT_OPSET} for TensorRT 10.3 on JetPack 6)"
        )


def export_onnx(
    model: nn.Module, io: IOSpec, path: Path, *, dynamo: bool, opset: int, simplify: bool
) -> None:
    """Write `model` to `path` as one ONNX file (plus `path.data` only when the weights exceed 2 GB)."""
    check_opset(opset, dynamo)
    model.eval()
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".raw-") as raw_dir:
        raw = Path(raw_dir) / path.name  # the exporter may write external weight files beside it
        _torch_export(model, io, raw, dynamo=dynamo, opset=opset)
        proto = onnx.load(str(raw))
    if simplify:
        import onnxslim

        proto = onnxslim.slim(proto)
    save_onnx(proto, path)


def save_onnx(proto: onnx.ModelProto, path: Path) -> None:
    """Save as a single file, or with all weights in one `<name>.data` file beside it when over 2 GB."""
    if weight_bytes(proto) < PROTOBUF_LIMIT:
        onnx.save_model(proto, str(path))
    else:
        onnx.save_model(
            proto,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
        )


def external_data_file(path: Path) -> Path | None:
    """The weights file `save_onnx` wrote beside `path`, if it wrote one."""
    data = path.with_name(path.name + ".data")
    return data if data.is_file() else None


def weight_bytes(proto: onnx.ModelProto) -> int:
    return sum(
        int(np.prod(t.dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        for t in proto.graph.initializer
    )


class _ImagesOnly(nn.Module):
    """`model` called with the image batch alone. The TorchScript exporter turns every defaulted argument of
    `forward` into a traced input: timm's `Eva.forward(x, attn_mask=None, is_causal=False)` would hand
    `is_causal` to `scaled_dot_product_attention` as a tensor, which it refuses."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _torch_export(model: nn.Module, io: IOSpec, path: Path, *, dynamo: bool, opset: int) -> None:
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(io.input_shape(io.static_batch or EXAMPLE_BATCH), generator=generator)
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # timm's input-size asserts trace to constants (the size is fixed anyway), and the
            # TorchScript exporter warns that it is deprecated: both are known and harmless here.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message="The feature will be removed.*")
            if dynamo:
                large = sum(p.numel() * p.element_size() for p in model.parameters()) >= PROTOBUF_LIMIT
                torch.onnx.export(
                    model,
                    (example,),
                    str(path),
                    dynamo=True,
                    dynamic_shapes=io.dynamic_shapes(),
                    external_data=large,  # one self-contained file below 2 GB
                    verbose=False,
                    **names,
                )
            else:
                torch.onnx.export(
                    _ImagesOnly(model),
                    (example,),
                    str(path),
                    dynamo=False,
                    dynamic_axes=io.dynamic_axes(),
                    **names,
                )
    except Exception as e:  # the exporters raise many types (TorchExportError, RuntimeError, ...)
        other = exporter_name(not dynamo)
        raise ExportError(
            f"torch.onnx.export with the {exporter_name(dynamo)} exporter at opset {opset} failed: "
            f"{type(e).__name__}: {e}. Try the {other} exporter (--{'no-' if dynamo else ''}dynamo) or another --opset"
        ) from e
