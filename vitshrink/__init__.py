"""vitshrink: make a timm Vision Transformer small and fast for an edge GPU.

    import vitshrink
    student = vitshrink.compress(model, train_loader, eval_loader, reduce="flops=0.3", out="runs/s")
    vitshrink.export("runs/s", target="onnx")
    vitshrink.bench("runs/s", teacher=model, loader=eval_loader)

The steps under `compress`, for a loop of your own: `wrap` (a timm model plus how to rebuild it),
`score` -> `plan` -> `apply_plan` (importance, budget, surgery), `distillation_loss`, and
`save_artifact` / `load_artifact` (config.json + compression.json + model.safetensors).

One installed name: the subpackages are `vitshrink.compressor`, `vitshrink.exporters` and
`vitshrink.benchmarks`. In a source checkout they are the folders `compressor/`, `exporters/` and
`benchmarks/` beside this one (the wheel maps them under `vitshrink/`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

# In a checkout (pyproject.toml beside this folder) the subpackages are the top-level folders of the
# repository: let `vitshrink.compressor` resolve to ./compressor. An installed wheel holds them inside.
_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "compressor" / "__init__.py").is_file():
    __path__.append(str(_CHECKOUT))  # noqa: F821 (every package has __path__)

# Where each public name lives. They are imported on first use (PEP 562), so that `import vitshrink`,
# and any `vitshrink.<subpackage>` import, stays light: the memory probe's fresh process
# (`python -m vitshrink.benchmarks.memory_probe`) must not load torch just to start.
_EXPORTS = {
    "compress": "vitshrink.api",
    "export": "vitshrink.api",
    "bench": "vitshrink.api",
    "wrap": "vitshrink.api",
    "score": "vitshrink.api",
    "plan": "vitshrink.api",
    "apply_plan": "vitshrink.compressor.core.surgery",
    "distillation_loss": "vitshrink.compressor.training.kd_loss",
    "KDWeights": "vitshrink.compressor.training.kd_loss",
    "save_artifact": "vitshrink.compressor.core.artifact",
    "load_artifact": "vitshrink.compressor.core.artifact",
    "VitShrinkError": "vitshrink.compressor.core.errors",
    "LatencyTarget": "vitshrink.compressor.jobs.compress_job",
    "LatencyTable": "vitshrink.compressor.core.latency_table",
    "CompressConfig": "vitshrink.compressor.jobs.pipeline",
    "TrainConfig": "vitshrink.compressor.training.train",
    "ExportConfig": "vitshrink.exporters.config",
    "BenchConfig": "vitshrink.benchmarks.bench_job",
}
__all__ = [
    "BenchConfig",
    "CompressConfig",
    "ExportConfig",
    "KDWeights",
    "LatencyTable",
    "LatencyTarget",
    "TrainConfig",
    "VitShrinkError",
    "apply_plan",
    "bench",
    "compress",
    "distillation_loss",
    "export",
    "load_artifact",
    "plan",
    "save_artifact",
    "score",
    "wrap",
]

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from vitshrink.api import bench, compress, export, plan, score, wrap
    from vitshrink.benchmarks.bench_job import BenchConfig
    from vitshrink.compressor.core.artifact import load_artifact, save_artifact
    from vitshrink.compressor.core.errors import VitShrinkError
    from vitshrink.compressor.core.surgery import apply_plan
    from vitshrink.compressor.jobs.pipeline import CompressConfig
    from vitshrink.compressor.training.kd_loss import KDWeights, distillation_loss
    from vitshrink.compressor.training.train import TrainConfig
    from vitshrink.exporters.config import ExportConfig


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vitshrink' has no attribute {name!r}; the public names are {__all__}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
