"""The tensors a deployed model exposes, defined once.

Export, validation, the engine builder and the `trtexec` command all read names and shapes from
here, so a graph can never be written with one name and checked or built with another.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from vitshrink.exporters.errors import ExportError
from vitshrink.exporters.layout import INPUT_NAME, OUTPUT_NAME  # noqa: F401 (the names travel with the I/O spec)

BATCH_AXIS = "batch"  # name of the dynamic first axis of both tensors


@dataclass(frozen=True)
class IOSpec:
    input_size: tuple[int, int, int]  # (C, H, W), from the model's timm data_config
    num_outputs: int  # width of the output: num_classes, or num_features for a model without head
    static_batch: int | None = None  # None: the batch axis is dynamic and named BATCH_AXIS

    @classmethod
    def from_model(cls, model: nn.Module, data_config: dict, static_batch: int | None = None) -> IOSpec:
        """Read the input size off timm's data_config and the output width off the model."""
        channels, height, width = (int(v) for v in data_config["input_size"])
        embed = getattr(model, "patch_embed", None)
        fixed = getattr(embed, "img_size", None)
        if (
            fixed is not None
            and not getattr(embed, "dynamic_img_size", False)
            and tuple(fixed) != (height, width)
        ):
            raise ExportError(
                f"the model's data config says input size {height}x{width} but the model only accepts "
                f"{fixed[0]}x{fixed[1]}; fix pretrained_cfg.input_size in the folder's config.json"
            )
        num_outputs = getattr(model, "num_classes", 0) or model.num_features
        return cls((channels, height, width), int(num_outputs), static_batch)

    @property
    def dynamic(self) -> bool:
        return self.static_batch is None

    def input_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, *self.input_size)

    def output_shape(self, batch: int) -> tuple[int, int]:
        return (batch, self.num_outputs)

    def onnx_input_shape(self) -> list[int | str]:
        """The input shape as the ONNX graph declares it: a dim name for a dynamic axis."""
        return [self.static_batch or BATCH_AXIS, *self.input_size]

    def onnx_output_shape(self) -> list[int | str]:
        return [self.static_batch or BATCH_AXIS, self.num_outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]] | None:
        """`dynamic_axes` for the TorchScript exporter (`dynamo=False`)."""
        if not self.dynamic:
            return None
        return {INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}}

    def dynamic_shapes(self) -> tuple[dict[int, str]] | None:
        """`dynamic_shapes` for the dynamo exporter; the output axis follows from the input."""
        if not self.dynamic:
            return None
        return ({0: BATCH_AXIS},)

    def trt_shape(self, batch: int) -> str:
        """A shape in trtexec's syntax, e.g. `input:8x3x224x224`."""
        return f"{INPUT_NAME}:" + "x".join(str(d) for d in self.input_shape(batch))

    def to_dict(self) -> dict:
        return {
            "inputs": {INPUT_NAME: {"shape": self.onnx_input_shape(), "dtype": "float32"}},
            "outputs": {OUTPUT_NAME: {"shape": self.onnx_output_shape(), "dtype": "float32"}},
            "dynamic_axes": self.dynamic_axes() or {},
        }
