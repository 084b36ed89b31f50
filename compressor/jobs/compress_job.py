"""What the CLI commands do, as plain functions of one config object each (no click, no sys.exit)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from vitshrink.compressor.core import distributed as ddp
from vitshrink.compressor.core.artifact import is_artifact, load_artifact, save_artifact
from vitshrink.compressor.core.atomic import write_text_atomic
from vitshrink.compressor.core.errors import BudgetError
from vitshrink.compressor.core.flops import count_macs, count_params
from vitshrink.compressor.core.loaded_model import LoadedModel
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.data.datasets import (
    Splits,
    build_loader,
    build_splits,
    fixed_subset,
    num_classes_of,
    split_train,
)
from vitshrink.compressor.jobs.compress_report import format_table, markdown_report, report_rows
from vitshrink.compressor.jobs.pipeline import (
    CompressConfig,
    CompressData,
    CompressReport,
    check_config,
    run_compress,
)
from vitshrink.compressor.training.evaluate import evaluate
from vitshrink.compressor.training.resume import start_work_dir, weights_sha256
from vitshrink.compressor.training.train import TrainConfig, train

# The embedded default: a small ViT trained on scikit-learn's digits (no download), 16x16 input.
DEFAULT_TEACHER_DIR = Path("runs/digits-teacher")
DEFAULT_TEACHER_ARCH = "vit_tiny_patch16_224"
DEFAULT_TEACHER_ARGS = {
    "img_size": 16, "patch_size": 4, "embed_dim": 128, "depth": 4, "num_heads": 4, "mlp_ratio": 4.0,
    "num_classes": 10,
}
DEFAULT_TEACHER_CFG = {"input_size": (3, 16, 16), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                       "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"}
DEFAULT_TEACHER_TRAIN = TrainConfig(epochs=40, batch_size=64, lr=2e-3, warmup_epochs=2, label_smoothing=0.1)


@dataclass(frozen=True)
class DataOptions:
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    train_limit: int | None = None  # random subset of the training pool, validation images excluded (same every run)
    eval_limit: int | None = None  # random subset of the evaluation (test) split
    num_workers: int = 0
    seed: int = 0  # fixes the validation split and the subsets
    augment: str = "auto"  # training augmentation (vitshrink.compressor.data.datasets.AUGMENTS); auto: by input size
    val_split: float | int | None = None  # held out of training: fraction, image count, 0 = none; None = 10% <= 5,000


@dataclass(frozen=True)
class LatencyTarget:
    """Where a latency budget is measured: a bench backend, its batch and CPU threads, or a table file.

    None = not asked: with a table file, the table's own; without, ort-cpu, batch 1, torch's thread count.
    """

    target: str | None = None
    batch: int | None = None
    threads: int | None = None
    table_file: Path | None = None  # a table made by `vitshrink profile` (anywhere); None: cached or profiled now


@dataclass(frozen=True)
class CompressJob:
    model: str | None  # timm name / folder / artifact; None = the embedded digits teacher
    out: Path
    config: CompressConfig
    data: DataOptions = field(default_factory=DataOptions)
    checkpoint: str | None = None
    pretrained: bool = False
    work_dir: Path | None = None  # default: <out>.work beside the output
    resume: bool = False
    progress: bool = True
    latency: LatencyTarget = field(default_factory=LatencyTarget)  # used by a latency budget only


@dataclass(frozen=True)
class FinetuneJob:
    model: str
    out: Path
    train: TrainConfig
    data: DataOptions = field(default_factory=DataOptions)
    model_args: dict = field(default_factory=dict)
    checkpoint: str | None = None
    pretrained: bool = False
    resume: bool = False
    progress: bool = True


def _datasets(loaded: LoadedModel, opts: DataOptions, calib_size: int = 0) -> Splits:
    """Training set, validation split (held out of it), calibration images and test split."""
    return build_splits(opts.dataset, opts.data_dir, loaded.data_config, augment=opts.augment,
                        val_split=opts.val_split, train_limit=opts.train_limit, test_limit=opts.eval_limit,
                        calib_size=calib_size, seed=opts.seed, download=opts.download)


def build_compress_data(teacher: LoadedModel, opts: DataOptions, config: CompressConfig,
                        eval_batch: int = 256) -> CompressData:
    """The augmented training set, the calibration loader, and the validation and test loaders.

    Validation images are carved out of the training split and are neither trained nor calibrated on;
    the test split (`eval_loader`) is only for the reported numbers.
    """
    splits = _datasets(teacher, opts, calib_size=config.calib_batches * config.calib_batch_size)
    return CompressData(
        train_set=splits.train,
        calib_loader=build_loader(splits.calib, config.calib_batch_size),
        eval_loader=build_loader(splits.test, eval_batch, num_workers=opts.num_workers),
        val_loader=build_loader(splits.val, eval_batch, num_workers=opts.num_workers) if splits.val else None,
        info={**dataclasses.asdict(opts), **splits.describe()},
    )


def loader_data(train_loader: DataLoader, eval_loader: DataLoader, config: CompressConfig, *,
                val_loader: DataLoader | None = None, val_split: float | int | None = None,
                seed: int = 0) -> CompressData:
    """CompressData from a user's own DataLoaders of (image, label) batches (the Python API's input).

    Without `val_loader`, a validation split is carved out of `train_loader.dataset` as the CLI carves it
    (`val_split`: fraction, image count, 0 = none; None = 10%, at most 5,000; fixed by `seed`); those
    images are never trained or calibrated on. Calibration batches come from the remaining training
    images, in the training dataset's own transform. `eval_loader` only gives the reported numbers.
    """
    dataset = train_loader.dataset
    split = split_train(len(dataset), 0 if val_loader is not None else val_split, seed)
    train_set = Subset(dataset, list(split.train)) if split.val else dataset
    calib_size = config.calib_batches * config.calib_batch_size
    calib = Subset(dataset, fixed_subset(split.train, calib_size, seed + 1))
    batch = eval_loader.batch_size or config.calib_batch_size
    if val_loader is None and split.val:
        val_loader = build_loader(Subset(dataset, list(split.val)), batch)
    return CompressData(
        train_set=train_set,
        calib_loader=build_loader(calib, config.calib_batch_size),
        eval_loader=eval_loader,
        val_loader=val_loader,
        info={"source": "DataLoaders given to vitshrink.compress", "seed": seed, "train_images": len(train_set),
              "val_images": len(val_loader.dataset) if val_loader is not None else 0,
              "test_images": len(eval_loader.dataset)},
    )


def compress(job: CompressJob, log=print) -> CompressReport:
    """Load the teacher, build the data, run the stages, write the artifact and the report."""
    device = ddp.init_from_env()
    torch.manual_seed(job.config.seed)  # a timm name without --pretrained is random weights: the same ones every run
    teacher = default_teacher(log=log, progress=job.progress) if job.model is None else load_model(
        job.model, checkpoint=job.checkpoint, pretrained=job.pretrained)
    data = build_compress_data(teacher, job.data, job.config)  # bad data options: refused before anything is written
    return run_job(teacher, data, job.config, job.latency, Path(job.out), Path(job.work_dir or default_work_dir(job.out)),
                   data_record=_data_record(job.data), resume=job.resume, device=device, progress=job.progress,
                   log=log)


def run_job(teacher: LoadedModel, data: CompressData, config: CompressConfig, latency: LatencyTarget, out: Path,
            work_dir: Path, *, data_record: dict, resume: bool = False, device: str = "cpu", progress: bool = True,
            log=print) -> CompressReport:
    """What `vitshrink compress` and `vitshrink.compress` share once teacher and data are in hand: the latency
    table, the checks that refuse a budget or plan before anything is written, the work folder, the stages."""
    config = with_latency_table(config, teacher, latency, progress=progress, log=log)
    if config.max_drop is not None:
        if data.val_loader is None:
            raise BudgetError("--max-drop bounds the loss of validation top-1: it needs a validation split "
                              "(leave out --val-split 0, or give a count or fraction)")
    else:
        check_config(teacher, config)
    # the stages in the work folder belong to this teacher and data; --resume into another run's is refused
    start_run(teacher, work_dir, data_record, resume, log=log)
    if config.max_drop is not None:
        from vitshrink.compressor.jobs.max_drop import compress_max_drop

        return compress_max_drop(teacher, data, config, out, work_dir, resume=resume, device=device,
                                 progress=progress, log=log)
    return compress_and_report(teacher, data, config, out, work_dir, resume=resume, device=device,
                               progress=progress, log=log)


def with_latency_table(config: CompressConfig, teacher: LoadedModel, latency: LatencyTarget, *,
                       progress: bool = True, log=print) -> CompressConfig:
    """`config` with the measured table a latency budget plans on (given, cached, or profiled now)."""
    if config.budget.metric != "latency" or config.latency_table is not None:
        return config
    if ddp.world_size() > 1 and latency.table_file is None:
        raise BudgetError("a latency budget under torchrun needs --latency-table FILE (make it once with "
                          "`vitshrink profile`), so that every process plans on the same table")
    from vitshrink.exporters.runtime.latency_profile import table_for

    table = table_for(teacher.model, latency.target, batch=latency.batch, threads=latency.threads,
                      round_to=config.round_to, table_file=latency.table_file, progress=progress and ddp.is_main(),
                      log=log)
    return dataclasses.replace(config, latency_table=table.to_dict())


def default_work_dir(out: Path) -> Path:
    """Checkpoints and stage artifacts go beside the output: `<out>.work`."""
    out = Path(out)
    return out.with_name(out.name + ".work")


def start_run(teacher: LoadedModel, work_dir: Path, data_record: dict, resume: bool, log=print) -> None:
    """Bind the work folder to this teacher (sha256 of its weights) and data; see `resume.start_work_dir`."""
    start_work_dir(work_dir, {"teacher_sha256": weights_sha256(teacher.model), "data": data_record}, resume,
                   log=log if ddp.is_main() else (lambda *a, **k: None))


def compress_and_report(teacher: LoadedModel, data: CompressData, config: CompressConfig, out: Path,
                        work_dir: Path, *, resume: bool = False, device: str = "cpu", progress: bool = True,
                        log=print) -> CompressReport:
    """Run the stages (`pipeline.run_compress`), then write report.md beside the artifact and print the table."""
    main_log = log if ddp.is_main() else (lambda *a, **k: None)
    report = run_compress(teacher, data, config, out, work_dir, resume=resume, device=device,
                          progress=progress, log=main_log)
    if ddp.is_main():
        write_text_atomic(Path(out) / "report.md", markdown_report(report))
        main_log("\n" + format_table(report_rows(report)))
        main_log(f"\nartifact: {out}  (report: {Path(out) / 'report.md'})")
    return report


def finetune(job: FinetuneJob, log=print) -> dict:
    """Train or fine-tune a teacher on a dataset; write it in the artifact format."""
    device = ddp.init_from_env()
    # a model trained from scratch (and a reset classifier) starts from weights drawn from this seed: the same
    # command gives the same teacher on every run and every rank
    torch.manual_seed(job.train.seed)
    loaded = load_model(job.model, checkpoint=job.checkpoint, pretrained=job.pretrained, model_args=job.model_args)
    splits = _datasets(loaded, job.data)
    classes = num_classes_of(splits.train)
    if loaded.model.num_classes != classes:
        log(f"resetting the classifier: {loaded.model.num_classes} -> {classes} classes")
        loaded.model.reset_classifier(classes)
        loaded = dataclasses.replace(loaded, model_args={**loaded.model_args, "num_classes": classes})
    test_loader = build_loader(splits.test, 256, num_workers=job.data.num_workers)
    val_loader = build_loader(splits.val, 256, num_workers=job.data.num_workers) if splits.val else None
    work_dir = default_work_dir(job.out)
    source = {"model": job.model, "checkpoint": job.checkpoint, "pretrained": job.pretrained,
              "model_args": job.model_args}
    start_work_dir(work_dir, {**source, "data": _data_record(job.data)}, job.resume,
                   log=log if ddp.is_main() else (lambda *a, **k: None))
    # per-epoch evaluation on the validation split; the test split only for the reported result
    result = train(loaded.model, splits.train, val_loader, job.train, work_dir, resume=job.resume,
                   device=device, progress=job.progress, desc="finetune")
    loaded.model.cpu()
    metrics = evaluate(loaded.model, test_loader)
    val = evaluate(loaded.model, val_loader) if val_loader else None
    summary = {"params": count_params(loaded.model), "macs": count_macs(loaded.model),
               "top1": round(metrics["top1"], 5), "top5": round(metrics["top5"], 5),
               "val_top1": round(val["top1"], 5) if val else None, "images_per_s": result.images_per_s}
    if ddp.is_main():
        save_artifact(job.out, loaded, {
            "method": "finetune (no compression)",
            "source": {"model": job.model, "pretrained": job.pretrained, "checkpoint": job.checkpoint},
            "train": job.train.to_dict(), "data": {**dataclasses.asdict(job.data), **splits.describe()},
            "history": result.history, "result": summary,
        })
        val_text = f"{summary['val_top1']:.2%}" if val else "–"
        log(f"teacher: test top-1 {summary['top1']:.2%} (val {val_text}), {summary['params'] / 1e6:.3f} M params "
            f"-> {job.out}")
    ddp.barrier()  # the artifact is complete for every rank on return (default_teacher loads it next)
    return summary


def _data_record(opts: DataOptions) -> dict:
    """The data options a run's results depend on (not the worker count: see vitshrink.compressor.data.sampling)."""
    record = {k: v for k, v in dataclasses.asdict(opts).items() if k not in ("num_workers", "download")}
    if record.get("data_dir") is not None:
        record["data_dir"] = str(Path(record["data_dir"]).resolve())
    return record


def default_teacher(log=print, progress: bool = True) -> LoadedModel:
    """The embedded default teacher: reuse `runs/digits-teacher`, or train it (about a minute on 2 cores).

    Under torchrun every rank trains it together; `finetune` returns on every rank only once rank 0
    has written it, so no rank loads a half-written folder.
    """
    if is_artifact(DEFAULT_TEACHER_DIR):
        log(f"using the embedded default teacher in {DEFAULT_TEACHER_DIR}")
        return load_artifact(DEFAULT_TEACHER_DIR)
    log(f"no teacher given: training the embedded default on scikit-learn digits -> {DEFAULT_TEACHER_DIR}")
    job = FinetuneJob(
        model=DEFAULT_TEACHER_ARCH,
        out=DEFAULT_TEACHER_DIR,
        train=DEFAULT_TEACHER_TRAIN,
        data=DataOptions(dataset="digits"),
        model_args={**DEFAULT_TEACHER_ARGS, "pretrained_cfg_overlay": DEFAULT_TEACHER_CFG},
        progress=progress,
    )
    finetune(job, log=log)
    return load_artifact(DEFAULT_TEACHER_DIR)


def describe_artifact(path: Path) -> str:
    """A short human summary of an artifact (used by `vitshrink info`)."""
    loaded = load_artifact(path)
    result = (loaded.compression or {}).get("result", {})
    return json.dumps({"architecture": loaded.name, "spec": loaded.spec.summary().splitlines(), "result": result},
                      indent=2)
