"""`vitshrink compress`, `vitshrink finetune` and `vitshrink info`: parse, build one config, call the library.

Registered in vitshrink/cli.py with the commands of the other packages.
"""

from __future__ import annotations

from pathlib import Path

import click

from vitshrink.cli_errors import VitShrinkCommand, parsed_by
from vitshrink.compressor.core.errors import VitShrinkError
from vitshrink.compressor.data.datasets import AUGMENTS
from vitshrink.compressor.jobs.pipeline import CompressConfig
from vitshrink.compressor.planning.plan_file import read_plan_file
from vitshrink.compressor.planning.planner import METRICS, Budget
from vitshrink.compressor.scoring.importance import CRITERIA
from vitshrink.compressor.training.kd_loss import KDWeights
from vitshrink.compressor.training.precision import AMP_CHOICES, amp_option
from vitshrink.compressor.training.selection import KEEP_CHOICES
from vitshrink.compressor.training.train import TrainConfig
from vitshrink.exporters.runtime.latency_profile import TARGETS as LATENCY_TARGETS
from vitshrink.exporters.runtime.latency_profile import parse_target

DATASET_NAMES = ["digits", "cifar10", "cifar100", "imagefolder", "tiny-imagenet"]


def _budget(ctx, param, value: str) -> Budget | str:
    """A Budget, or a metric name alone (`--reduce flops`), which only `--max-drop` takes (what it maximises)."""
    if value.strip().lower() in METRICS:
        return value.strip().lower()
    try:
        return Budget.parse(value)
    except VitShrinkError as e:
        raise click.BadParameter(str(e)) from e


def _searched_budget(kw: dict) -> Budget:
    """--reduce as compress uses it: with --max-drop, METRIC alone searches up to DEFAULT_UPPER, METRIC=X up to X
    (the default --reduce is taken as flops alone)."""
    from vitshrink.compressor.jobs.max_drop import searched_budget

    budget = kw["budget"]
    if kw.get("max_drop") is None:
        if isinstance(budget, str):
            raise click.BadParameter(f"--reduce {budget} names only the metric: give the fraction to remove "
                                     f"({budget}=0.3), or add --max-drop PTS to search for it", param_hint="--reduce")
        return budget
    if isinstance(budget, str) or not kw.get("reduce_given", True):
        return searched_budget(budget if isinstance(budget, str) else budget.metric)
    return budget


def _model_args(ctx, param, values: tuple[str, ...]) -> dict:
    from vitshrink.compressor.core.model_loading import parse_model_args

    try:
        return parse_model_args(values)
    except VitShrinkError as e:
        raise click.BadParameter(str(e)) from e


def _val_split(ctx, param, value: str | None) -> float | int | None:
    if value is None:
        return None
    from vitshrink.compressor.data.datasets import parse_val_split

    try:
        return parse_val_split(value)
    except VitShrinkError as e:
        raise click.BadParameter(str(e)) from e


def data_options(f):
    opts = [
        click.option("--dataset", type=click.Choice(DATASET_NAMES), default="digits", show_default=True,
                     help="digits is scikit-learn's bundled 8x8 digits (no download)."),
        click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                     help="Dataset folder (imagefolder: DIR/train and DIR/val|test)."),
        click.option("--download", is_flag=True, help="Download CIFAR-10/100 into --data-dir if missing."),
        click.option("--train-limit", type=click.IntRange(min=1), default=None,
                     help="Train on a fixed random subset of N training images (never validation images). "
                          "compress scores (calibrates) on its own --calib-batches x 64 un-augmented images drawn "
                          "from the whole training split less the validation images, not from this subset."),
        click.option("--eval-limit", type=click.IntRange(min=1), default=None,
                     help="Use a fixed random subset of N test (evaluation split) images."),
        click.option("--val-split", default=None, callback=_val_split, metavar="FRACTION|N",
                     help="Validation images held out of the TRAINING split (a fixed, seeded part): never trained "
                          "or calibrated on; the per-epoch evaluation and every choice (a latency plan's too) use them, "
                          "the test split "
                          "only gives the reported numbers. A fraction in [0, 1) or an image count; 0 = none. "
                          "[default: 10% of the training split, at most 5,000 images]"),
        click.option("--augment", type=click.Choice(AUGMENTS), default="auto",
                     show_default=True,
                     help="Training augmentation. crop-flip: reflect-pad 1/8 of the side, random crop, horizontal "
                          "flip; rrc: random resized crop 0.6-1 + flip; auto: crop-flip for inputs up to 64 px, "
                          "rrc above. digits never flips (auto = small affine jitter)."),
        click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True, help="DataLoader workers."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def train_options(default_epochs: int, default_lr: float):
    def deco(f):
        opts = [
            click.option("--epochs", type=click.IntRange(min=0), default=None,
                         help=f"Training epochs (per distillation stage for compress; 0 = no distillation) "
                              f"[default: {default_epochs}; 10 on digits]."),
            click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True),
            click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=default_lr, show_default=True,
                         help="Peak AdamW learning rate (> 0); the cosine decay ends at 1e-6, or at the peak if lower."),
            click.option("--weight-decay", type=click.FloatRange(min=0), default=0.05, show_default=True),
            click.option("--warmup-epochs", type=click.FloatRange(min=0), default=0.5, show_default=True),
            click.option("--max-steps-per-epoch", type=click.IntRange(min=1), default=None,
                         help="Cap each epoch at N steps (quick runs)."),
            click.option("--amp", type=click.Choice(AMP_CHOICES), default="auto", show_default=True,
                         help="bf16 autocast for training (the teacher runs in the same precision). auto: on for "
                              "CUDA with bf16 and for CPUs with avx512_bf16/amx_bf16, off elsewhere (emulated "
                              "bf16 is slower than fp32)."),
            click.option("--keep", type=click.Choice(KEEP_CHOICES), default="best", show_default=True,
                         help="Which weights a training run keeps. best: of the starting weights and every "
                              "epoch's, the best on the validation split (so distillation never keeps a student "
                              "worse on validation than the cut); last: the last epoch's. Without a validation "
                              "split (--val-split 0): the last."),
            click.option("--seed", type=int, default=0, show_default=True,
                         help="Fixes the validation split, the calibration images, data subsets and order, "
                              "augmentation, dropout, and the starting weights of a model built without "
                              "--pretrained: a rerun on the same machine (CPU) repeats the run. Not a latency plan "
                              "the latency check timed (compress --reduce latency=X without --no-latency-check): "
                              "it keeps the plan that measured closest, and timings vary; compression.json says "
                              "so (repeatable: false). To repeat such a run exactly, pass --plan with its "
                              "stage1-width/plan.json, or use --no-latency-check on the same --latency-table."),
            click.option("--resume", is_flag=True, help="Continue an interrupted run from its checkpoints."),
        ]
        for opt in reversed(opts):
            f = opt(f)
        return f

    return deco


def _train_config(kw: dict, default_epochs: int, **extra) -> TrainConfig:
    # digits is tiny (1,437 training images): more passes cost seconds and are needed to recover
    epochs = kw["epochs"] if kw["epochs"] is not None else (10 if kw["dataset"] == "digits" else default_epochs)
    return TrainConfig(
        epochs=epochs, batch_size=kw["batch_size"], lr=kw["lr"], weight_decay=kw["weight_decay"],
        warmup_epochs=kw["warmup_epochs"], max_steps_per_epoch=kw["max_steps_per_epoch"], amp=amp_option(kw["amp"]),
        keep=kw["keep"], seed=kw["seed"], num_workers=kw["workers"], **extra,
    )


def _data_options(kw: dict):
    from vitshrink.compressor.jobs.compress_job import DataOptions

    return DataOptions(dataset=kw["dataset"], data_dir=kw["data_dir"], download=kw["download"],
                       train_limit=kw["train_limit"], eval_limit=kw["eval_limit"], num_workers=kw["workers"],
                       seed=kw["seed"], augment=kw["augment"], val_split=kw["val_split"])


def compress_config(kw: dict) -> CompressConfig:
    """The `compress` options (click's parsed values) as one config object."""
    stages = tuple(s.strip() for s in kw["stages"].split(",") if s.strip()) if kw.get("stages") else None
    try:
        plan, plan_model = read_plan_file(kw["plan_file"]) if kw.get("plan_file") else (None, None)
        return CompressConfig(
            budget=_searched_budget(kw), stages=stages, width_steps=kw["width_steps"], depth_share=kw["depth_share"],
            depth_blocks=kw["depth_blocks"],
            criterion=kw["criterion"], block_criterion=kw["block_criterion"], scoring_loss=kw["scoring_loss"],
            calib_batches=kw["calib_batches"], min_heads=kw["min_heads"], round_to=kw["round_to"], seed=kw["seed"],
            train=_train_config(kw, 3, kd=KDWeights(kw["alpha"], kw["temperature"], kw["feature_weight"])),
            plan=plan.to_dict() if plan is not None else None, plan_model=plan_model,
            latency_check=not kw.get("no_latency_check", False), max_drop=kw.get("max_drop"),
        )
    except VitShrinkError as e:
        raise click.BadParameter(str(e)) from e


@click.command("compress", cls=VitShrinkCommand)
@click.option("--model", "model", default=None,
              help="Teacher: timm name, timm folder (config.json + model.safetensors) or vitshrink artifact. "
                   "Default: the embedded digits teacher (trained on first use).")
@click.option("--checkpoint", default=None, help="Weights for a timm name: .safetensors or .pth (weights_only).")
@click.option("--pretrained", is_flag=True, help="Download timm's pretrained weights for --model.")
@data_options
@click.option("--reduce", "budget", default="flops=0.3", show_default=True, callback=_budget,
              help="Total target: fraction of FLOPs (MACs), params or measured latency to remove, e.g. flops=0.3, "
                   "params=0.25 or latency=0.3 (latency: planned on a table measured on --target).")
@click.option("--max-drop", type=click.FloatRange(min=0), default=None, metavar="PTS",
              help="Search the reduction instead of cutting at one: the largest --reduce level (5%, 10%, ... up to "
                   "--reduce METRIC=X, or 70% with --reduce METRIC alone) whose distilled student loses at most PTS "
                   "points of validation top-1 against the teacher. Cut-only evaluations of every level, short "
                   "probe distillations, then the full distillation where it delivers; writes pareto.md and "
                   "pareto.png beside the artifact. Needs a validation split; not with --plan.")
@click.option("--target", "latency_target", metavar=f"[{'|'.join(LATENCY_TARGETS)}]", default=None,
              callback=parsed_by(parse_target),
              help="Runtime a latency budget is measured on, named as in bench --backends [default: ort-cpu, or the "
                   "--latency-table's]; profiled now and cached, unless --latency-table is given.")
@click.option("--batch-size-target", type=click.IntRange(min=1), default=None,
              help="Batch size a latency budget is measured at [default: 1, or the --latency-table's].")
@click.option("--target-threads", type=click.IntRange(min=1), default=None,
              help="CPU threads of the latency target [default: torch's thread count, or the --latency-table's].")
@click.option("--latency-table", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Plan a latency budget on this table (`vitshrink profile --out FILE`, e.g. made on the device); "
                   "it must match the model, target, batch and threads.")
@click.option("--no-latency-check", is_flag=True,
              help="Do not time the latency plan. By default a plan that makes the whole cut (--stages width or joint, one "
                   "width step), on a table measured on this machine, is timed against the teacher on the target "
                   "and re-planned, twice at most, when it misses the target by more than 1 point.")
@click.option("--stages", default=None,
              help="Stages in order: width, depth, or width,depth (the paper's order); each cut is followed by "
                   "distillation. joint: one cut that may remove blocks and narrow the others, planned together "
                   "on the budget's metric, kept only if it beats the width-only plan on the validation split. "
                   "[default: joint for a latency budget (one width step), else width; docs/compress.md, Defaults]")
@click.option("--width-steps", type=click.IntRange(min=1), default=1, show_default=True,
              help="Split the width stage into N prune+distill steps (iterative pruning); N > 1 needs a width stage.")
@click.option("--depth-share", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Share of the target reduction assigned to depth (blocks), the rest to width.")
@click.option("--depth-blocks", type=click.IntRange(min=0), default=None,
              help="Remove exactly N blocks in the depth stage (overrides --depth-share).")
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Apply this plan instead of scoring and planning: a plan.json an earlier run wrote in its work "
                   "folder (stageN-*/plan.json), possibly edited; one cut, then distillation. --reduce, --stages, "
                   "--width-steps, --depth-share and --depth-blocks do not apply to it.")
@click.option("--criterion", type=click.Choice(sorted(CRITERIA)), default="taylor", show_default=True,
              help="Head/neuron importance.")
@click.option("--block-criterion", type=click.Choice(sorted(CRITERIA)), default="ablation", show_default=True,
              help="Block importance (ablation = exact loss change of skipping each block).")
@click.option("--scoring-loss", type=click.Choice(["ce", "kl"]), default="ce", show_default=True,
              help="Loss whose change is measured: cross-entropy on labels, or KL to the teacher (no labels).")
@click.option("--calib-batches", type=click.IntRange(min=1), default=16, show_default=True,
              help="Batches of 64 un-augmented training images (a fixed, seeded draw; never validation images, "
                   "not limited by --train-limit) the importance scores are computed on.")
@click.option("--min-heads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--round-to", type=click.IntRange(min=1), default=8, show_default=True,
              help="Kept MLP widths are multiples of this.")
@train_options(default_epochs=3, default_lr=1e-4)
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.7, show_default=True,
              help="Weight of the soft KD term (1 - alpha on labels).")
@click.option("--temperature", type=click.FloatRange(min=0.1), default=2.0, show_default=True)
@click.option("--feature-weight", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Weight of hidden-state distillation (MSE per kept block).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/compressed"),
              show_default=True, help="Artifact folder to write.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Checkpoints and stage artifacts (default: <out>.work).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def compress_command(**kw) -> None:
    """Prune a teacher to a FLOPs, params or latency budget and distill it back (the paper's staged method)."""
    from vitshrink.compressor.jobs.compress_job import CompressJob, LatencyTarget
    from vitshrink.compressor.jobs.compress_job import compress as run

    if kw["max_drop"] is not None and kw["plan_file"] is not None:
        raise click.UsageError("--max-drop searches the reduction and --plan gives one: use one or the other")
    if kw["max_drop"] is not None and kw["val_split"] == 0:
        raise click.UsageError("--max-drop bounds the loss of validation top-1: it needs a validation split "
                               "(leave out --val-split 0)")
    if kw["plan_file"] is not None:
        ctx = click.get_current_context()
        given = [f"--{n.replace('_', '-')}" for n in ("budget", "stages", "width_steps", "depth_share", "depth_blocks")
                 if ctx.get_parameter_source(n) is not click.core.ParameterSource.DEFAULT]
        if given:
            raise click.UsageError(f"--plan applies a given plan; {', '.join(given).replace('--budget', '--reduce')} "
                                   "would be ignored: leave them out")
    kw["reduce_given"] = click.get_current_context().get_parameter_source("budget") is not \
        click.core.ParameterSource.DEFAULT
    config = compress_config(kw)
    latency_given = [f"--{n.replace('_', '-')}" for n in ("latency_target", "batch_size_target", "target_threads",
                                                          "latency_table") if kw[n] is not None]
    latency_given += ["--no-latency-check"] if kw["no_latency_check"] else []
    if latency_given and config.budget.metric != "latency":
        raise click.UsageError(f"{', '.join(latency_given).replace('--latency-target', '--target')} applies to a "
                               f"latency budget (--reduce latency=...), not --reduce {config.budget}")
    if kw["model"] is None and kw["dataset"] != "digits":
        raise click.BadParameter("--model is required unless --dataset digits (the embedded default)")
    job = CompressJob(model=kw["model"], out=kw["out"], config=config, data=_data_options(kw),
                      checkpoint=kw["checkpoint"], pretrained=kw["pretrained"], work_dir=kw["work_dir"],
                      resume=kw["resume"], progress=not kw["no_progress"],
                      latency=LatencyTarget(target=kw["latency_target"], batch=kw["batch_size_target"],
                                            threads=kw["target_threads"], table_file=kw["latency_table"]))
    run(job, log=click.echo)


@click.command("finetune", cls=VitShrinkCommand)
@click.option("--model", required=True, help="timm name (e.g. vit_small_patch16_224), timm folder or artifact.")
@click.option("--checkpoint", default=None, help="Starting weights: .safetensors or .pth (weights_only).")
@click.option("--pretrained", is_flag=True, help="Start from timm's pretrained weights (needs the hub).")
@click.option("--model-arg", "model_args", multiple=True, callback=_model_args,
              help="Extra timm.create_model argument, e.g. --model-arg img_size=32 --model-arg patch_size=4.")
@data_options
@train_options(default_epochs=10, default_lr=1e-3)
@click.option("--label-smoothing", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--no-progress", is_flag=True)
def finetune_command(**kw) -> None:
    """Train or fine-tune a teacher on a dataset, saved in the artifact format (input to compress)."""
    from vitshrink.compressor.jobs.compress_job import FinetuneJob
    from vitshrink.compressor.jobs.compress_job import finetune as run

    job = FinetuneJob(model=kw["model"], out=kw["out"], train=_train_config(kw, 10, label_smoothing=kw["label_smoothing"]),
                      data=_data_options(kw), model_args=kw["model_args"], checkpoint=kw["checkpoint"],
                      pretrained=kw["pretrained"], resume=kw["resume"], progress=not kw["no_progress"])
    run(job, log=click.echo)


@click.command("info", cls=VitShrinkCommand)
@click.argument("artifact", type=click.Path(path_type=Path))
def info_command(artifact: Path) -> None:
    """Print an artifact's architecture spec and results."""
    from vitshrink.compressor.jobs.compress_job import describe_artifact

    click.echo(describe_artifact(artifact))
