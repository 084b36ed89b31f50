"""`python -m research.compare_methods`: vitshrink against its ablations and Torch-Pruning, in one command.

Thin: parse, build one `CompareConfig`, call `research.compare.run_compare`, print the table.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from research.methods import METHODS
from vitshrink.cli_errors import VitShrinkCommand
from vitshrink.compressor.core.errors import VitShrinkError
from vitshrink.compressor.data.datasets import DATASETS

DEFAULT_TEACHER = "../shared/models/cifar10-vit"
DEFAULT_DATA_DIR = "../shared/datasets/cifar10"  # used when --dataset imagefolder and no --data-dir
# --quick: a smoke run of a few minutes; each value applies only where the option was not given
QUICK = {"train_limit": 512, "eval_limit": 512, "epochs": 1, "max_steps_per_epoch": 4, "calib_batches": 2}
FULL = {"train_limit": None, "eval_limit": None, "epochs": 1, "max_steps_per_epoch": None, "calib_batches": 16}


def _methods(ctx, param, value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise click.BadParameter(f"{', '.join(unknown) or 'none given'}: choose from {', '.join(METHODS)}")
    return names


def _ints(ctx, param, value: str) -> tuple[int, ...]:
    try:
        values = tuple(dict.fromkeys(int(v) for v in value.split(",") if v.strip()))
    except ValueError:
        raise click.BadParameter(f"{value!r}: write integers separated by commas, e.g. 0,1,2") from None
    if not values:
        raise click.BadParameter("give at least one value")
    return values


def _budget(ctx, param, value: str):
    from vitshrink.compressor.planning.planner import Budget

    try:
        return Budget.parse(value)
    except VitShrinkError as e:
        raise click.BadParameter(str(e)) from e


@click.command("compare", cls=VitShrinkCommand)
@click.option("--teacher", default=DEFAULT_TEACHER, show_default=True,
              help="Teacher: timm folder, vitshrink artifact or timm name.")
@click.option("--dataset", type=click.Choice(sorted(DATASETS)), default="imagefolder", show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help=f"Dataset folder [default for imagefolder: {DEFAULT_DATA_DIR}].")
@click.option("--reduce", "budget", default="flops=0.3", show_default=True, callback=_budget,
              help="Target reduction for every method, e.g. flops=0.3 or params=0.3.")
@click.option("--epochs", type=click.IntRange(min=0), default=None,
              help="Distillation epochs per stage of the paper's method [default 1]; every method trains "
                   "2x this in total.")
@click.option("--train-limit", type=click.IntRange(min=1), default=None,
              help="Fixed random subset of N training images [default: all; --quick 512].")
@click.option("--eval-limit", type=click.IntRange(min=1), default=None,
              help="Fixed random subset of N evaluation images [default: all; --quick 512].")
@click.option("--calib-batches", type=click.IntRange(min=1), default=None,
              help="Calibration batches of 64 images for scoring [default 16; --quick 2].")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True,
              help="Peak AdamW learning rate of every distillation run (scratch uses 2e-3, the teacher recipe).")
@click.option("--max-steps-per-epoch", type=click.IntRange(min=1), default=None,
              help="Cap each epoch at N steps [default: none; --quick 4].")
@click.option("--amp/--no-amp", default=False, show_default=True, help="bf16 autocast in training.")
@click.option("--methods", default=",".join(METHODS), show_default=True, callback=_methods,
              help="Comma-separated methods to run.")
@click.option("--seeds", default="0", show_default=True, callback=_ints,
              help="Comma-separated seeds; with several, mean and min-max are reported.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="ONNX Runtime intra-op threads for the latency ratios.")
@click.option("--latency-batches", default="1,8", show_default=True, callback=_ints,
              help="Batch sizes of the latency ratios.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/compare"),
              show_default=True)
@click.option("--results", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the per-(method, seed) rows and compare.json/.md/.png (small files to commit) "
                   "[default: --out].")
@click.option("--val-split", type=float, default=None,
              help="Validation images held out of training (fraction < 1 or count) [default: 10%, at most 5,000].")
@click.option("--resume", is_flag=True, help="Skip finished methods; continue interrupted distillation.")
@click.option("--quick", is_flag=True, help="Smoke mode of a few minutes (small subsets, 4 steps per epoch, "
                                            "2 calibration batches, short latency timing).")
@click.option("--progress", is_flag=True, help="Pipeline log lines and progress bars.")
def main(**kw) -> None:
    """Run every method on one teacher at one budget with the same data, seeds and training budget."""
    from research.compare import CompareConfig, LatencyOptions, run_compare
    from research.compare_report import summary_rows
    from vitshrink.compressor.jobs.compress_job import DataOptions
    from vitshrink.compressor.jobs.compress_report import format_table
    from vitshrink.compressor.jobs.pipeline import CompressConfig
    from vitshrink.compressor.training.train import TrainConfig
    from vitshrink.exporters.runtime.timing import TimingPolicy

    preset = QUICK if kw["quick"] else FULL
    opt = {k: (kw[k] if kw[k] is not None else v) for k, v in preset.items()}
    data_dir = kw["data_dir"] or (DEFAULT_DATA_DIR if kw["dataset"] == "imagefolder" else None)
    timing = (TimingPolicy(warmup_iters=2, warmup_s=0.0, min_iters=10, min_time_s=0.0, max_time_s=5.0)
              if kw["quick"] else TimingPolicy())
    command = _command_line(kw, opt, data_dir)
    train = TrainConfig(epochs=opt["epochs"], batch_size=kw["batch_size"], lr=kw["lr"], amp=kw["amp"],
                        max_steps_per_epoch=opt["max_steps_per_epoch"])
    config = CompareConfig(
        teacher=kw["teacher"],
        paper=CompressConfig(budget=kw["budget"], stages=("width", "depth"), calib_batches=opt["calib_batches"],
                             train=train),  # the reference method: the paper's order
        data=DataOptions(dataset=kw["dataset"], data_dir=data_dir, train_limit=opt["train_limit"],
                         eval_limit=opt["eval_limit"], val_split=_val_split(kw["val_split"])),
        methods=kw["methods"], seeds=kw["seeds"],
        latency=LatencyOptions(threads=kw["threads"], batch_sizes=kw["latency_batches"], timing=timing),
        out_dir=kw["out"], results_dir=kw["results"], resume=kw["resume"], progress=kw["progress"], command=command,
    )
    result = run_compare(config, log=click.echo)
    header, rows = summary_rows(result)
    click.echo("\n" + format_table(rows, header))


def _val_split(value: float | None) -> float | int | None:
    return int(value) if value is not None and value >= 1 else value


def _command_line(kw: dict, opt: dict, data_dir: str | None) -> str:
    """The command with every setting spelled out (the --quick values resolved), to rerun it exactly."""
    args = ["--teacher", kw["teacher"], "--dataset", kw["dataset"]]
    args += ["--data-dir", data_dir] if data_dir else []
    args += ["--reduce", str(kw["budget"]), "--epochs", opt["epochs"], "--calib-batches", opt["calib_batches"]]
    for key in ("train_limit", "eval_limit", "max_steps_per_epoch"):
        args += [f"--{key.replace('_', '-')}", opt[key]] if opt[key] is not None else []
    args += ["--batch-size", kw["batch_size"], "--lr", kw["lr"], "--amp" if kw["amp"] else "--no-amp",
             "--methods", ",".join(kw["methods"]), "--seeds", ",".join(map(str, kw["seeds"])),
             "--threads", kw["threads"], "--latency-batches", ",".join(map(str, kw["latency_batches"])),
             "--out", kw["out"]]
    args += ["--results", kw["results"]] if kw["results"] else []
    args += ["--val-split", kw["val_split"]] if kw["val_split"] is not None else []
    args += ["--quick"] if kw["quick"] else []
    return "python -m research.compare_methods " + " ".join(shlex.quote(str(a)) for a in args)


if __name__ == "__main__":
    main()
