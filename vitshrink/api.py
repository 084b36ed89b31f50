"""The Python API: a timm ViT in memory and your own DataLoaders in, an artifact folder out.

Thin wrappers: each builds the config object the CLI would build and calls the same library function
(`vitshrink.compressor.jobs.compress_job`, `vitshrink.exporters.export_job.export`, `vitshrink.benchmarks.bench_job.run_bench`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn
from torch.utils.data import DataLoader

from vitshrink.compressor.core import distributed as ddp
from vitshrink.compressor.core.artifact import load_artifact
from vitshrink.compressor.core.errors import BudgetError, VitShrinkError
from vitshrink.compressor.core.families import mlp_hidden
from vitshrink.compressor.core.latency_table import LatencyTable
from vitshrink.compressor.core.loaded_model import LoadedModel
from vitshrink.compressor.core.model_loading import wrap_module
from vitshrink.compressor.data.user_data import pair_loader, pair_samples
from vitshrink.compressor.jobs.compress_job import LatencyTarget, default_work_dir, loader_data, run_job
from vitshrink.compressor.jobs.pipeline import DISTILL_LR, CompressConfig
from vitshrink.compressor.planning.planner import Budget, WidthPlan, model_costs, plan_width
from vitshrink.compressor.scoring.importance import Scores, calibration_batches, score_units
from vitshrink.compressor.training.train import TrainConfig

if TYPE_CHECKING:  # imported when called: `import vitshrink` does not load ONNX or the runtimes
    from vitshrink.benchmarks.bench_job import BenchConfig
    from vitshrink.benchmarks.results import BenchReport
    from vitshrink.exporters.config import ExportConfig
    from vitshrink.exporters.export_report import ExportReport

DEFAULT_REDUCE = "flops=0.3"
DEFAULT_EPOCHS = 3  # distillation epochs after every cut (the CLI's default off digits)


def wrap(model: nn.Module, *, name: str | None = None, model_args: dict | None = None) -> LoadedModel:
    """A timm ViT built in memory, plus what rebuilds it (timm name and create_model arguments).

    Both are read off the model when not given, and checked by rebuilding it; see
    `vitshrink.compressor.core.model_loading.wrap_module`.
    """
    return wrap_module(model, name=name, model_args=model_args)


def compress(
    model: nn.Module | LoadedModel,
    train_loader: DataLoader,
    eval_loader: DataLoader,
    *,
    reduce: str | None = None,
    out: str | Path = "runs/compressed",
    epochs: int | None = None,
    val_loader: DataLoader | None = None,
    val_split: float | int | None = None,
    config: CompressConfig | None = None,
    work_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    latency: LatencyTarget | None = None,
    max_drop: float | None = None,
) -> nn.Module:
    """Prune `model` to a FLOPs/params/latency budget and distill it back; write the artifact to `out`; return the student.

    `train_loader` and `eval_loader` yield (image, label) batches in the model's input format: `(image, label,
    *rest)` tuples, or dicts with "image" or "pixel_values" and "label" or "labels" (the rest ignored).
    Training re-reads `train_loader.dataset` in its own seeded order, at `train_loader.batch_size`;
    `eval_loader` (the test images) only gives the reported numbers. Choices and per-epoch evaluation use
    `val_loader`, or else a fixed, seeded part of the training dataset held out of training (`val_split`:
    fraction or image count, 0 for none; default 10%, at most 5,000 images).

    reduce: "flops=0.3" (default), "params=0.25" or "latency=0.3": the share of the teacher to remove.
    max_drop: search the reduction instead (`vitshrink compress --max-drop`): the largest level, up to
        reduce's fraction (70% for a metric alone, e.g. reduce="latency"), whose distilled student loses at
        most `max_drop` points of validation top-1.
    latency: for a latency budget, where it is measured (`LatencyTarget(target="ort-cpu", batch=1, threads=2,
        table_file=...)`; default ort-cpu, batch 1, torch's threads, profiled now and cached).
    epochs: distillation epochs after every cut (default 3; 0 = cut only).
    config: every setting of `vitshrink compress` (stages, criteria, learning rate, ...) instead of
        `reduce` and `epochs`.
    work_dir: checkpoints and stage artifacts (default `<out>.work`); `resume` continues from them.
    """
    teacher = model if isinstance(model, LoadedModel) else wrap_module(model)
    settings = _compress_config(reduce, epochs, config, train_loader.batch_size, max_drop)
    if latency is not None and settings.budget.metric != "latency":
        raise BudgetError(f"latency= applies to a latency budget (reduce='latency=0.3'), not {settings.budget}: "
                          "leave it out, or ask for a latency budget")
    train_loader = pair_samples(train_loader, "train_loader")
    eval_loader, val_loader = pair_loader(eval_loader, "eval_loader"), pair_loader(val_loader, "val_loader")
    data = loader_data(train_loader, eval_loader, settings, val_loader=val_loader, val_split=val_split,
                       seed=settings.seed)
    out = Path(out)
    work = Path(work_dir) if work_dir is not None else default_work_dir(out)
    run_job(teacher, data, settings, latency or LatencyTarget(), out, work, data_record=data.info, resume=resume,
            device=ddp.init_from_env(), progress=progress, log=log)
    return load_artifact(out).model


def _compress_config(reduce: str | None, epochs: int | None, config: CompressConfig | None,
                     batch_size: int | None, max_drop: float | None = None) -> CompressConfig:
    if config is not None:
        if reduce is not None or epochs is not None:
            raise VitShrinkError("give reduce= and epochs=, or config=, not both: the config holds its own budget "
                                 "(config.budget) and epochs (config.train.epochs)")
        return config if max_drop is None else dataclasses.replace(config, max_drop=max_drop)
    train = TrainConfig(epochs=DEFAULT_EPOCHS if epochs is None else epochs, batch_size=batch_size or 128,
                        lr=DISTILL_LR)
    return CompressConfig(budget=_budget(reduce, max_drop), train=train, max_drop=max_drop)


def _budget(reduce: str | None, max_drop: float | None) -> Budget:
    """reduce= as a Budget; with max_drop, a metric alone ("latency", default "flops") is searched up to 70%."""
    from vitshrink.compressor.jobs.max_drop import searched_budget

    return Budget.parse(reduce or DEFAULT_REDUCE) if max_drop is None else searched_budget(reduce or "flops")


def export(artifact_dir: str | Path, target: str = "onnx", *, out_dir: str | Path | None = None,
           config: ExportConfig | None = None) -> ExportReport:
    """Export the model in `artifact_dir` for `target` (onnx, onnx-fp16, onnx-int8, trt) and validate it
    against PyTorch; returns the `ExportReport` (also written as export.json).

    out_dir: where the files go (default: into the artifact folder).
    config: a `vitshrink.exporters.config.ExportConfig` with the other options (opset, tolerances, TensorRT
        profile, ...); `target` and `out_dir` given here replace its own.
    """
    from vitshrink.exporters.export_job import ExportConfig
    from vitshrink.exporters.export_job import export as run_export

    base = config or ExportConfig()
    chosen = dataclasses.replace(base, target=target,
                                 out_dir=Path(out_dir) if out_dir is not None else base.out_dir)
    return run_export(artifact_dir, chosen)


def bench(
    artifact_dir: str | Path,
    *,
    teacher: nn.Module | LoadedModel | str | Path | None = None,
    loader: DataLoader | None = None,
    backends: Sequence[str] | None = None,
    batch_sizes: Sequence[int] | None = None,
    out_dir: str | Path | None = None,
    config: BenchConfig | None = None,
    log: Callable[[str], None] | None = print,
) -> BenchReport:
    """Time the student in `artifact_dir` against its teacher on every backend here; returns a `BenchReport`.

    teacher: a model in memory, a folder or timm name, or None for the teacher the artifact records.
    loader: (image, label) batches for the accuracy rows, in any shape `compress` takes; none: no accuracy.
    backends: e.g. ("torch-cpu", "ort-cpu"); default: every backend this machine runs.
    batch_sizes: default (1, 8, 32).
    out_dir: write bench.json, bench.md and bench.png there (default: nothing written).
    config: a `vitshrink.benchmarks.bench_job.BenchConfig` with the other options (timing policy, memory, threads, ...);
        what is given here replaces its own.
    """
    from vitshrink.benchmarks.bench_job import BenchConfig, run_bench

    changes: dict = {"student": str(artifact_dir)}
    if isinstance(teacher, (str, Path)):
        changes["teacher"] = str(teacher)
    if backends is not None:
        changes["backends"] = tuple(backends)
    if batch_sizes is not None:
        changes["batch_sizes"] = tuple(batch_sizes)
    if out_dir is not None:
        changes["out_dir"] = Path(out_dir)
    chosen = dataclasses.replace(config or BenchConfig(student=str(artifact_dir)), **changes)
    in_memory = None
    if isinstance(teacher, LoadedModel):
        in_memory = teacher
    elif isinstance(teacher, nn.Module):
        in_memory = wrap_module(teacher)
    return run_bench(chosen, log, teacher=in_memory, loader=pair_loader(loader, "loader"))


def score(model: nn.Module, loader: DataLoader, *, criterion: str = "taylor", batches: int = 16,
          seed: int = 0) -> Scores:
    """Importance of every head and MLP neuron of `model`: the loss change without it, on the first
    `batches` batches of `loader` (criteria: taylor, ablation, l1, random)."""
    return score_units(model, calibration_batches(pair_loader(loader, "loader"), batches), criterion, seed=seed)


def plan(model: nn.Module, scores: Scores, reduce: str = DEFAULT_REDUCE, *, min_heads: int = 1,
         round_to: int = 8, latency_table: LatencyTable | str | Path | None = None) -> WidthPlan:
    """Which heads and neurons to remove so that `reduce` of the model's FLOPs, params or predicted latency
    goes (within 1 point); `plan(...).plan` is the `PrunePlan` that `apply_plan` cuts, `.describe()` says what
    it keeps. A latency budget ("latency=0.3") is planned on `latency_table` (a `LatencyTable` or the file
    `vitshrink profile --out` wrote), which must have been measured for this model."""
    budget = Budget.parse(reduce)
    table = LatencyTable.load(latency_table) if isinstance(latency_table, str | Path) else latency_table
    if budget.metric == "latency" and table is None:
        raise BudgetError(f"reduce={reduce!r} plans on a latency table: pass latency_table= (a LatencyTable or the "
                          "file `vitshrink profile --out FILE` wrote)")
    if table is not None and budget.metric != "latency":
        raise BudgetError(f"latency_table= applies to a latency budget (reduce='latency=0.3'), not {reduce!r}")
    if table is not None:
        from vitshrink.exporters.runtime.latency_profile import architecture_of

        table.check_for(architecture_of(model), "latency_table")
        table.check_grid([int(mlp_hidden(b.mlp)) for b in model.blocks], round_to, "latency_table")
    costs = model_costs(model, budget.metric, table)
    return plan_width(costs, scores, target_removed=budget.reduction * costs.total, reference_total=costs.total,
                      min_heads=min_heads, round_to=round_to)
