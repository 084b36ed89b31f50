"""The compression methods the comparison runs: a registry of name -> function of one `MethodContext`.

Every method gets the same teacher, calibration batches, evaluation split, seed and total
distillation budget (`MethodContext.total_epochs`, with the paper's optimizer, schedule and
augmentation), and leaves its final student as a vitshrink artifact in its folder.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import timm
import torch
from torch import nn

from research.tp_baseline import (
    INSTALL_HINT as TP_INSTALL_HINT,  # torch_pruning is imported there lazily
)
from research.tp_baseline import import_torch_pruning, tp_prune
from vitshrink.benchmarks.errors import CompareError
from vitshrink.compressor.core.artifact import is_artifact, load_artifact, save_artifact
from vitshrink.compressor.core.flops import count_macs, count_params
from vitshrink.compressor.core.loaded_model import LoadedModel
from vitshrink.compressor.core.spec import ArchSpec
from vitshrink.compressor.core.surgery import reshape_to_spec
from vitshrink.compressor.jobs.pipeline import CompressConfig, CompressData, StageRecord, run_compress
from vitshrink.compressor.scoring.importance import calibration_batches
from vitshrink.compressor.training.evaluate import evaluate
from vitshrink.compressor.training.precision import resolve_amp
from vitshrink.compressor.training.train import TrainConfig, train

TP_TOLERANCE = 0.01  # Torch-Pruning's achieved reduction must be within 1 point of the target


@dataclass(frozen=True)
class MethodContext:
    teacher: LoadedModel  # never modified: methods cut and train copies
    data: CompressData  # the same training set, calibration batches and evaluation split for all
    paper: CompressConfig  # the paper's configuration for this seed (budget, calibration, distillation per stage)
    folder: Path  # this method's folder: artifacts, checkpoints
    resume: bool = False  # continue interrupted stages / distillation from their checkpoints
    progress: bool = False  # progress bars of scoring and distillation
    log: Callable[[str], None] = lambda message: None
    earlier: Mapping[str, dict] = field(default_factory=dict)  # finished rows of this seed, by method

    @property
    def total_epochs(self) -> int:
        """The distillation budget of every method: the paper's epochs per stage times its stages."""
        return self.paper.train.epochs * len(self.paper.stage_sequence)

    def train_config(self, epochs: int) -> TrainConfig:
        return dataclasses.replace(self.paper.train, epochs=epochs)


@dataclass(frozen=True)
class MethodOutcome:
    artifact: Path  # the final student, a vitshrink artifact folder
    stages: tuple[dict, ...]  # per cut (or init) and its training: name, after_cut, after_train, epochs, seconds
    final: dict  # top1, top5, loss of the final student on the evaluation (test) split
    config: dict  # what the method ran with
    details: dict = field(default_factory=dict)  # method-specific facts (e.g. Torch-Pruning's ratio)
    final_val: dict | None = None  # the same on the validation split (held out of training): for choosing


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    run: Callable[[MethodContext], MethodOutcome]
    needs: tuple[str, ...] = ()  # methods whose result (same seed) this one reads
    requires: tuple[tuple[str, str], ...] = ()  # (optional module, install hint) it imports

    def missing(self) -> str | None:
        """Why this method cannot run here (an optional package is missing), or None."""
        for module, hint in self.requires:
            if importlib.util.find_spec(module) is None:
                return f"{self.name} needs the {module} package: {hint}"
        return None


METHODS: dict[str, Method] = {}


def register(name: str, description: str, needs: tuple[str, ...] = (), requires: tuple[tuple[str, str], ...] = ()):
    def wrap(fn: Callable[[MethodContext], MethodOutcome]):
        METHODS[name] = Method(name, description, fn, needs, requires)
        return fn

    return wrap


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise CompareError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def metrics(model: nn.Module, loader) -> dict:
    m = evaluate(model, loader)
    return {"top1": round(m["top1"], 5), "top5": round(m["top5"], 5), "loss": round(m["loss"], 5)}


def _teacher_copy(teacher: LoadedModel) -> LoadedModel:
    return dataclasses.replace(teacher, model=copy.deepcopy(teacher.model))


def _stage_row(record: StageRecord) -> dict:
    return {"name": record.name, "after_cut": record.after_cut, "after_train": record.after_distill,
            "epochs": record.epochs if record.after_distill else 0, "train_seconds": record.distill_seconds,
            "kept_epoch": record.kept_epoch,
            "reduction_flops": record.reduction_flops, "reduction_params": record.reduction_params}


def _pipeline(ctx: MethodContext, stages: tuple[str, ...], criterion: str, block_criterion: str) -> MethodOutcome:
    """vitshrink's own pipeline with other stages or criteria; the same total distillation epochs."""
    if ctx.total_epochs % len(stages):
        raise CompareError(f"{ctx.total_epochs} distillation epochs cannot be split evenly over stages {stages}")
    config = dataclasses.replace(ctx.paper, stages=stages, criterion=criterion, block_criterion=block_criterion,
                                 train=ctx.train_config(ctx.total_epochs // len(stages)))
    out = ctx.folder / "artifact"
    report = run_compress(_teacher_copy(ctx.teacher), ctx.data, config, out, ctx.folder / "work",
                          resume=ctx.resume, progress=ctx.progress, log=ctx.log)
    final = report.final.after_distill or report.final.after_cut
    final_val = report.final.val_after_distill or report.final.val_after_cut
    return MethodOutcome(out, tuple(_stage_row(r) for r in report.stages), final, config.to_dict(),
                         final_val=final_val)


@register("vitshrink", "the paper: Taylor heads/neurons -> width cut -> distill -> block ablation -> depth cut -> distill")
def _vitshrink(ctx: MethodContext) -> MethodOutcome:
    return _pipeline(ctx, ("width", "depth"), "taylor", "ablation")


@register("l1", "same pipeline, weight-magnitude (L1) importance for heads, neurons and blocks")
def _l1(ctx: MethodContext) -> MethodOutcome:
    return _pipeline(ctx, ("width", "depth"), "l1", "l1")


@register("random", "same pipeline, random importance for heads, neurons and blocks")
def _random(ctx: MethodContext) -> MethodOutcome:
    return _pipeline(ctx, ("width", "depth"), "random", "random")


@register("width-only", "Taylor width cut to the whole target, then one distillation")
def _width_only(ctx: MethodContext) -> MethodOutcome:
    return _pipeline(ctx, ("width",), "taylor", "ablation")


@register("depth-only", "block-ablation depth cut (the block count closest to the target), then one distillation")
def _depth_only(ctx: MethodContext) -> MethodOutcome:
    return _pipeline(ctx, ("depth",), "taylor", "ablation")


def _as_loaded(teacher: LoadedModel, model: nn.Module, spec: ArchSpec | None = None) -> LoadedModel:
    sources = [b.source_index for b in spec.blocks] if spec is not None else None
    return dataclasses.replace(teacher, model=model, spec=ArchSpec.from_model(model, sources), path=None,
                               compression=None)


# Training from random weights needs a from-scratch learning rate, not the recovery rate distillation
# uses: scratch gets the reference teacher's own recipe (2e-3, ../shared/models/cifar10-vit/training.json).
SCRATCH_LR = 2e-3


def _train_and_save(ctx: MethodContext, loaded: LoadedModel, stage: dict, *, distill: bool, record: dict) -> MethodOutcome:
    """Train `loaded.model` for the whole budget (from the teacher or from labels), save, return the outcome."""
    config = ctx.train_config(ctx.total_epochs)
    if not distill:
        config = dataclasses.replace(config, lr=SCRATCH_LR)
    final = stage["after_cut"]
    final_val = metrics(loaded.model, ctx.data.val_loader) if ctx.data.val_loader is not None else None
    model, reference = loaded.model, ctx.teacher.model
    stage = {**stage, "reduction_flops": round(1 - count_macs(model) / count_macs(reference), 5),
             "reduction_params": round(1 - count_params(model) / count_params(reference), 5)}
    if config.epochs > 0:
        # per-epoch evaluation and the kept epoch (`keep`) read the validation split, never the test split
        result = train(loaded.model, ctx.data.train_set, ctx.data.val_loader, config, ctx.folder / "train",
                       teacher=ctx.teacher.model if distill else None, resume=ctx.resume, progress=ctx.progress,
                       desc=f"{'distill' if distill else 'train'} ({stage['name']})",
                       start_metrics=final_val if not resolve_amp(config.amp, "cpu") else None)
        final = metrics(loaded.model, ctx.data.eval_loader)
        if ctx.data.val_loader is not None:
            final_val = metrics(loaded.model, ctx.data.val_loader)
        stage = {**stage, "after_train": final, "epochs": config.epochs, "train_seconds": round(result.seconds, 1),
                 "kept_epoch": result.kept_epoch}
    out = ctx.folder / "artifact"
    save_artifact(out, loaded, {**record, "train": config.to_dict(), "stage": stage})
    return MethodOutcome(out, (stage,), final, {"train": config.to_dict(), **record.get("config", {})},
                         final_val=final_val)


@register("torch-pruning", "Torch-Pruning GroupTaylor + global BasePruner (heads and MLP channels), then distillation",
          requires=(("torch_pruning", TP_INSTALL_HINT),))
def _torch_pruning(ctx: MethodContext) -> MethodOutcome:
    import_torch_pruning()  # fails here, before any work, with the install hint
    budget = ctx.paper.budget
    cut_dir = ctx.folder / "cut"
    if ctx.resume and is_artifact(cut_dir):  # the cut is saved, so resumed distillation finds its architecture
        loaded = load_artifact(cut_dir)
        cut, after_cut = loaded.compression["cut"], loaded.compression["after_cut"]
    else:
        calib = calibration_batches(ctx.data.calib_loader, ctx.paper.calib_batches)
        result = tp_prune(copy.deepcopy(ctx.teacher.model), calib, metric=budget.metric, target=budget.reduction,
                          tolerance=TP_TOLERANCE)
        loaded = _as_loaded(ctx.teacher, result.model)
        cut, after_cut = result.to_dict(), metrics(result.model, ctx.data.eval_loader)
        save_artifact(cut_dir, loaded, {"method": "torch-pruning cut", "cut": cut, "after_cut": after_cut})
    ctx.log(f"torch-pruning cut: ratio {cut['pruning_ratio']:.3f}, {budget.metric} -{cut['reduction']:.1%}, "
            f"top-1 {after_cut['top1']:.2%} before distillation")
    config = {"importance": "GroupTaylorImportance", "pruner": "BasePruner", "global_pruning": True,
              "prune_num_heads": True, "prune_head_dims": False, "round_to": 1,
              "ignored_layers": "head + every mlp.fc2 (embedding width kept)", "calib_batches": ctx.paper.calib_batches,
              "torch_pruning": metadata.version("torch-pruning"), "tolerance": TP_TOLERANCE}
    stage = {"name": "torch-pruning", "after_cut": after_cut, "after_train": None, "epochs": 0, "train_seconds": 0.0,
             "reduction_flops": None, "reduction_params": None}
    outcome = _train_and_save(ctx, loaded, stage, distill=True,
                              record={"method": "torch-pruning + vitshrink distillation", "config": config, "cut": cut})
    return dataclasses.replace(outcome, details={"cut": cut})


@register("scratch", "vitshrink's final architecture, freshly initialised, trained on labels for the whole budget",
          needs=("vitshrink",))
def _scratch(ctx: MethodContext) -> MethodOutcome:
    row = ctx.earlier.get("vitshrink")
    if row is None:
        raise CompareError("scratch trains vitshrink's final architecture: include vitshrink in --methods "
                           "(it runs first), or --resume a run where it finished")
    spec = ArchSpec.from_dict(row["spec"])
    torch.manual_seed(ctx.paper.seed)
    teacher = ctx.teacher
    model = timm.create_model(teacher.name, pretrained=False, pretrained_cfg=teacher.pretrained_cfg,
                              **teacher.model_args)
    reshape_to_spec(model, spec)  # a subset of a fresh (seeded) initialisation: no teacher weight
    loaded = _as_loaded(teacher, model, spec)
    stage = {"name": "init", "after_cut": metrics(model, ctx.data.eval_loader), "after_train": None, "epochs": 0,
             "train_seconds": 0.0, "reduction_flops": None, "reduction_params": None}
    return _train_and_save(ctx, loaded, stage, distill=False,
                           record={"method": "scratch (vitshrink's architecture, cross-entropy)",
                                   "config": {"architecture_from": "vitshrink", "loss": "cross-entropy"}})
