"""The one object every stage receives: a model plus what is known about where it came from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from vitshrink.compressor.core.spec import ArchSpec


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module  # timm VisionTransformer, eval mode
    spec: ArchSpec
    name: str  # timm architecture name used to rebuild it
    model_args: dict  # kwargs for timm.create_model that rebuild the (unpruned) base
    pretrained_cfg: dict  # timm pretrained_cfg (mean, std, input_size, label_names, ...)
    data_config: dict  # timm resolve_data_config: input_size, mean, std, interpolation, crop_pct, crop_mode
    path: Path | None = None  # folder it was loaded from, if any
    compression: dict | None = None  # compression.json content when loaded from an artifact

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.data_config["input_size"])
