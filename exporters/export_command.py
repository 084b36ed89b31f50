"""`vitshrink export ARTIFACT --target onnx|onnx-fp16|onnx-int8|trt`: parse, build one config, call `export`.

Registered in cli.py with `main.add_command(export_command)`.
"""

from __future__ import annotations

from pathlib import Path

import click

from vitshrink.cli_errors import VitShrinkCommand
from vitshrink.exporters.config import TARGETS
from vitshrink.exporters.export_job import ExportConfig, export
from vitshrink.exporters.onnx_export import DEFAULT_OPSET
from vitshrink.exporters.trtexec import PRECISIONS

_FOLDER = click.Path(exists=True, file_okay=False, path_type=Path)
_POSITIVE = click.IntRange(min=1)


@click.command("export", cls=VitShrinkCommand)
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--target", type=click.Choice(TARGETS), default="onnx", show_default=True, help="What to produce."
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder [default: ARTIFACT].",
)
@click.option(
    "--dynamo/--no-dynamo",
    default=False,
    show_default=True,
    help="torch.onnx exporter: dynamo, or TorchScript (+ onnxslim: the smallest, most TensorRT-friendly graph).",
)
@click.option(
    "--opset",
    type=int,
    default=DEFAULT_OPSET,
    show_default=True,
    help="ONNX opset (17 for TensorRT 10.3 / JetPack 6).",
)
@click.option("--static-batch", type=_POSITIVE, help="Fixed batch size instead of a dynamic batch axis.")
@click.option(
    "--simplify/--no-simplify", default=True, show_default=True, help="Simplify the graph with onnxslim."
)
@click.option(
    "--atol", type=click.FloatRange(min=0), help="Absolute tolerance on logits [default: by precision]."
)
@click.option(
    "--rtol", type=click.FloatRange(min=0), help="Relative tolerance on logits [default: by precision]."
)
@click.option(
    "--min-agreement", type=click.FloatRange(0, 1), help="Minimum top-1 agreement with PyTorch, 0..1."
)
@click.option("--dataset", help="Dataset for validation on real images (vitshrink.compressor.data.datasets name, e.g. cifar10).")
@click.option("--data-dir", type=_FOLDER, help="Folder of that dataset.")
@click.option(
    "--limit", type=_POSITIVE, default=256, show_default=True, help="Eval images used for validation."
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp16",
    show_default=True,
    help="TensorRT engine precision.",
)
@click.option(
    "--min-batch", type=_POSITIVE, default=1, show_default=True, help="TensorRT profile: smallest batch."
)
@click.option(
    "--opt-batch", type=_POSITIVE, default=1, show_default=True, help="TensorRT profile: batch to tune for."
)
@click.option(
    "--max-batch", type=_POSITIVE, default=16, show_default=True, help="TensorRT profile: largest batch."
)
@click.option(
    "--workspace-mb", type=_POSITIVE, default=1024, show_default=True, help="TensorRT workspace limit (MiB)."
)
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TensorRT timing cache file [default: OUT/timing.cache].",
)
@click.option(
    "--require-engine", is_flag=True, help="Fail (exit 1) when no TensorRT engine can be built here."
)
def export_command(artifact: Path, **options) -> None:
    """Export ARTIFACT (a vitshrink artifact or timm model folder) to ONNX or TensorRT, and prove it matches.

    Writes model.onnx (+ model.fp16.onnx / model.int8.onnx / the engine or build_engine.sh) and
    export.json into the folder, only after the files pass onnx.checker and match PyTorch.
    """
    report = export(artifact, ExportConfig(**options))
    click.echo(report.summary())
