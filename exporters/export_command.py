"""`vitshrink export ARTIFACT --target onnx|onnx-fp16|onnx-int8|trt`: parse, build one config, call `export`.

Registered in cli.py with `main.add_command(export_command)`.
"""

from __future__ import annotations

from pathlib import Path

import click

from vitshrink.cli_errors import VitShrinkCommand
from vitshrink.compressor.data.datasets import parse_val_split
from vitshrink.exporters.config import TARGETS
from vitshrink.exporters.export_job import ExportConfig, export
from vitshrink.exporters.int8 import CALIBRATION_METHODS, MODES, OP_GROUPS, Int8Recipe
from vitshrink.exporters.int8_accuracy import DEFAULT_MAX_DROP
from vitshrink.exporters.onnx_export import DEFAULT_OPSET
from vitshrink.exporters.trtexec import PRECISIONS

_FOLDER = click.Path(exists=True, file_okay=False, path_type=Path)
_POSITIVE = click.IntRange(min=1)
_DEFAULT_INT8 = Int8Recipe()


def _val_split(ctx, param, value: str | None):
    if value is None:
        return None
    try:
        return parse_val_split(value)
    except Exception as e:  # DataError: its message names the value and what to give
        raise click.BadParameter(str(e)) from e


def _op_groups(ctx, param, value: str) -> tuple[str, ...]:
    groups = tuple(dict.fromkeys(g.strip() for g in value.split(",") if g.strip()))
    unknown = [g for g in groups if g not in OP_GROUPS]
    if unknown or not groups:
        raise click.BadParameter(f"{value!r}: give a comma-separated list of {', '.join(OP_GROUPS)}")
    return groups


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
    "--int8-mode",
    type=click.Choice(MODES),
    default=_DEFAULT_INT8.mode,
    show_default=True,
    help="INT8: static Q/DQ (calibrated; ONNX Runtime CPU and TensorRT) or dynamic (ONNX Runtime only).",
)
@click.option(
    "--int8-ops",
    default=",".join(_DEFAULT_INT8.ops),
    show_default=True,
    callback=_op_groups,
    help=f"INT8: op groups to quantize, comma-separated: {', '.join(OP_GROUPS)}.",
)
@click.option(
    "--calib-method",
    type=click.Choice(CALIBRATION_METHODS),
    default=_DEFAULT_INT8.calibration_method,
    show_default=True,
    help="INT8: how activation ranges are calibrated.",
)
@click.option(
    "--calib-images",
    type=_POSITIVE,
    default=_DEFAULT_INT8.calibration_images,
    show_default=True,
    help="INT8: training images to calibrate on (never the validation or test images).",
)
@click.option(
    "--int8-max-drop",
    type=click.FloatRange(min=0),
    default=DEFAULT_MAX_DROP,
    show_default=True,
    help="INT8: most validation top-1 points the INT8 file may lose against FP32; more is refused.",
)
@click.option(
    "--val-split",
    callback=_val_split,
    help="INT8: validation images held out of training (fraction or count) [default: the compress run's, else 0.1].",
)
@click.option("--seed", type=click.IntRange(min=0), help="INT8: seed of the validation split [default: the compress run's, else 0].")
@click.option(
    "--val-limit", type=_POSITIVE, default=2000, show_default=True, help="INT8: validation images for the accuracy check."
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp16",
    show_default=True,
    help="TensorRT engine precision (int8: built from the Q/DQ graph).",
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
    int8 = Int8Recipe(
        mode=options.pop("int8_mode"),
        ops=options.pop("int8_ops"),
        calibration_method=options.pop("calib_method"),
        calibration_images=options.pop("calib_images"),
    )
    report = export(artifact, ExportConfig(int8=int8, **options))
    click.echo(report.summary())
