"""The paper's method as stages: width (score -> plan -> cut -> distill), then depth (same, on blocks).

Each finished stage is saved as an artifact in the work folder, so `--resume` skips finished stages
and continues an interrupted distillation from its last checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from compressor import distributed as ddp
from compressor.artifact import is_artifact, load_artifact, save_artifact
from compressor.errors import BudgetError
from compressor.evaluate import evaluate
from compressor.flops import block_macs_of, count_macs, count_params, num_tokens
from compressor.importance import ScoringLoss, calibration_batches, score
from compressor.loaded import LoadedModel
from compressor.planner import Budget, model_cost, plan_depth, plan_width
from compressor.surgery import PrunePlan, apply_plan
from compressor.train import TrainConfig, train

STAGES = ("width", "depth")


@dataclass(frozen=True)
class CompressConfig:
    budget: Budget
    stages: tuple[str, ...] = ("width", "depth")  # repeat "width" for iterative width steps
    depth_share: float = 0.5  # share of the target reduction that depth pruning should deliver
    depth_blocks: int | None = None  # explicit number of blocks to remove (overrides depth_share)
    criterion: str = "taylor"  # head/neuron importance (see compressor.importance.CRITERIA)
    block_criterion: str = "ablation"  # block importance: exact loss change of skipping each block
    scoring_loss: str = "ce"  # "ce" on labels or "kl" to the teacher
    calib_batches: int = 16  # calibration batches for scoring
    calib_batch_size: int = 64
    min_heads: int = 1
    round_to: int = 8
    train: TrainConfig = field(default_factory=TrainConfig)  # distillation after every cut
    seed: int = 0

    def __post_init__(self):
        bad = [s for s in self.stages if s not in STAGES]
        if bad or not self.stages:
            raise BudgetError(f"unknown stages {bad or self.stages}; use width and/or depth, e.g. width,depth")
        if self.stages.count("depth") > 1 or ("depth" in self.stages and self.stages[-1] != "depth"):
            raise BudgetError("depth may appear once, as the last stage (the paper's order: width, then depth)")
        if not 0.0 <= self.depth_share <= 1.0:
            raise BudgetError(f"--depth-share must be in [0, 1], got {self.depth_share}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["budget"] = str(self.budget)
        return d


@dataclass(frozen=True)
class CompressData:
    train_set: Dataset  # augmented, for distillation
    calib_loader: DataLoader  # un-augmented training images, for scoring
    eval_loader: DataLoader  # the evaluation split


@dataclass
class StageRecord:
    name: str
    params: int
    macs: int
    reduction_params: float
    reduction_flops: float
    after_cut: dict
    after_distill: dict | None
    epochs: int
    seconds: float  # wall time of this stage in the run that finished it
    distill_seconds: float  # distillation wall time, interrupted runs included
    spec: dict
    plan: dict
    scores: dict | None = None
    history: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CompressReport:
    teacher: dict  # params, macs, top1, top5
    stages: list[StageRecord]
    artifact: Path | None
    budget: Budget

    @property
    def final(self) -> StageRecord:
        return self.stages[-1]


def _metrics(model, loader: DataLoader, device: str) -> dict:
    m = evaluate(model, loader, device=device)
    return {"top1": round(m["top1"], 5), "top5": round(m["top5"], 5), "loss": round(m["loss"], 5)}


def depth_blocks_for(model, budget: Budget, config: CompressConfig) -> int:
    """How many blocks the depth stage removes: explicit, or the depth share of the target."""
    depth = len(model.blocks)
    if config.depth_blocks is not None:
        if not 0 <= config.depth_blocks < depth:
            raise BudgetError(f"--depth-blocks {config.depth_blocks}: the model has {depth} blocks, one must remain")
        return config.depth_blocks
    total = model_cost(model, budget.metric)
    per_block = sum(_block_cost(b, model, budget.metric) for b in model.blocks) / depth
    target = budget.reduction * total
    if "width" not in config.stages:  # depth only: the block count closest to the target
        return min(range(1, depth), key=lambda k: abs(k * per_block - target))
    smallest = min(_block_cost(b, model, budget.metric) for b in model.blocks)
    if smallest > target + 0.01 * total:
        raise BudgetError(
            f"one block is {smallest / total:.0%} of the teacher's {budget.metric}, more than the {budget} target; "
            "use --stages width or a larger --reduce"
        )
    return min(depth - 1, max(1, round(config.depth_share * target / per_block)))


def _block_cost(block, model, metric: str) -> float:
    if metric == "params":
        return sum(p.numel() for p in block.parameters())
    return block_macs_of(block, num_tokens(model))


def run_compress(
    teacher: LoadedModel,
    data: CompressData,
    config: CompressConfig,
    out_dir: Path,
    work_dir: Path,
    *,
    resume: bool = False,
    device: str = "cpu",
    progress: bool = True,
    log=print,
    teacher_metrics: dict | None = None,
) -> CompressReport:
    """Compress `teacher` to `config.budget` and write the artifact to `out_dir`.

    `teacher_metrics` (top1, top5, loss on `data.eval_loader`) skips re-evaluating the teacher.
    """
    out_dir, work_dir = Path(out_dir), Path(work_dir)
    budget, metric = config.budget, config.budget.metric
    t_model = teacher.model.to(device).eval()
    reference = model_cost(t_model, metric)
    teacher_row = {
        "params": count_params(t_model),
        "macs": count_macs(t_model),
        **(teacher_metrics or _metrics(t_model, data.eval_loader, device)),
    }
    log(f"teacher: {teacher_row['params'] / 1e6:.3f} M params, {teacher_row['macs'] / 1e6:.1f} M MACs, "
        f"top-1 {teacher_row['top1']:.2%}")
    n_depth = depth_blocks_for(t_model, budget, config) if "depth" in config.stages else 0
    width_target = _width_target(t_model, config, n_depth, reference)
    n_width = config.stages.count("width")
    current = copy.deepcopy(teacher)
    records: list[StageRecord] = []
    calib = calibration_batches(data.calib_loader, config.calib_batches, ddp.rank(), ddp.world_size())
    for index, stage in enumerate(config.stages):
        stage_dir = work_dir / f"stage{index + 1}-{stage}"
        if resume and is_artifact(stage_dir / "artifact"):
            current = load_artifact(stage_dir / "artifact")
            if current.compression.get("config") != json.loads(json.dumps(config.to_dict())):
                raise BudgetError(
                    f"{stage_dir / 'artifact'} was made with other settings; rerun with the same options, "
                    "or without --resume (or another --work-dir) to start over"
                )
            current.model.to(device)
            records.append(StageRecord(**current.compression["stage"]))
            log(f"stage {index + 1} ({stage}): finished earlier, loaded from {stage_dir / 'artifact'}")
            continue
        started = time.perf_counter()
        model = current.model.to(device)
        cut_before = reference - model_cost(model, metric)
        loss = ScoringLoss(config.scoring_loss, teacher=t_model if cut_before > 0 else None)
        if stage == "width":
            step = config.stages[: index + 1].count("width")
            target = width_target * step / n_width
            width_plan, scores = _width_cut(model, calib, config, loss, target - cut_before, reference, cut_before)
            plan = width_plan.plan
            log(width_plan.describe())
        else:
            plan, scores = _depth_cut(model, calib, config, loss, n_depth, budget, reference)
            log(f"depth plan: remove blocks {list(plan.drop_blocks)} (block scores {scores.blocks.round(4).tolist()})")
        spec = apply_plan(model, current.spec, plan)
        after_cut = _metrics(model, data.eval_loader, device)
        log(f"stage {index + 1} ({stage}) cut: {metric} -{1 - model_cost(model, metric) / reference:.1%}, "
            f"top-1 {after_cut['top1']:.2%} before distillation")
        result = None
        if config.train.epochs > 0:
            result = train(
                model, data.train_set, data.eval_loader, config.train, stage_dir,
                teacher=t_model, feature_sources=[b.source_index for b in spec.blocks],
                resume=resume, device=device, progress=progress, desc=f"distill ({stage})",
            )
        after = None
        if result:  # train() evaluated the final student on the same loader; no second pass
            last = result.final
            after = ({"top1": round(last["eval_top1"], 5), "top5": round(last["eval_top5"], 5),
                      "loss": round(last["eval_loss"], 5)} if "eval_top1" in last and not config.train.amp
                     else _metrics(model, data.eval_loader, device))
        record = StageRecord(
            name=stage,
            params=count_params(model),
            macs=count_macs(model),
            reduction_params=round(1 - count_params(model) / teacher_row["params"], 5),
            reduction_flops=round(1 - count_macs(model) / teacher_row["macs"], 5),
            after_cut=after_cut,
            after_distill=after,
            epochs=config.train.epochs,
            seconds=round(time.perf_counter() - started, 1),
            distill_seconds=round(result.seconds, 1) if result else 0.0,
            spec=spec.to_dict(),
            plan=plan.to_dict(),
            scores=scores.to_dict() if scores else None,
            history=result.history if result else [],
        )
        records.append(record)
        current = dataclasses.replace(current, model=model, spec=spec, compression=None)
        if ddp.is_main():
            save_artifact(stage_dir / "artifact", current, {"stage": record.to_dict(), "config": config.to_dict()})
        ddp.barrier()
        if after:
            log(f"stage {index + 1} ({stage}) distilled: top-1 {after['top1']:.2%} after {config.train.epochs} epochs")
    report = CompressReport(teacher=teacher_row, stages=records, artifact=out_dir if ddp.is_main() else None, budget=budget)
    if ddp.is_main():
        save_artifact(out_dir, current, _compression_record(teacher, config, report))
    ddp.barrier()
    return report


def _width_target(model, config: CompressConfig, n_depth: int, reference: float) -> float:
    """Absolute cost the width stages remove, leaving the rest to depth (plus a small top-up)."""
    target = config.budget.reduction * reference
    if "width" not in config.stages:
        return 0.0
    if n_depth == 0:
        return target
    depth = len(model.blocks)
    blocks_total = sum(_block_cost(b, model, config.budget.metric) for b in model.blocks)
    share = n_depth / depth
    # width removes w; depth then removes about share * (blocks_total - w); solve w + share*(B - w) = target,
    # and leave 1% of the reference for the depth stage's top-up so the total is never overshot by depth.
    w = (target - share * blocks_total) / (1 - share) - 0.01 * reference
    return max(0.0, w)


def _width_cut(model, calib, config: CompressConfig, loss, target_removed: float, reference: float, already: float):
    scores = score(model, calib, config.criterion, loss, seed=config.seed)
    plan = plan_width(
        model, scores, metric=config.budget.metric, target_removed=max(0.0, target_removed),
        reference_total=reference, already_removed=already, min_heads=config.min_heads, round_to=config.round_to,
    )
    return plan, scores


def _depth_cut(model, calib, config: CompressConfig, loss, n_depth: int, budget: Budget, reference: float):
    """Drop the least important blocks; then, if width stages ran, trim width to land on the target.

    With width stages, blocks are taken lowest score first among those that still fit the budget
    (the target plus 1 point), so depth never overshoots; depth alone takes the `n_depth` lowest.
    """
    block_scores = score(model, calib, config.block_criterion, loss, seed=config.seed)
    if "width" not in config.stages:
        return plan_depth(block_scores, n_depth), block_scores
    room = (budget.reduction + 0.01) * reference - (reference - model_cost(model, budget.metric))
    chosen = []
    for i in np.argsort(block_scores.blocks, kind="stable"):
        cost = _block_cost(model.blocks[int(i)], model, budget.metric)
        if len(chosen) < n_depth and cost <= room and len(chosen) < len(model.blocks) - 1:
            chosen.append(int(i))
            room -= cost
    if not chosen:
        raise BudgetError(
            f"every block costs more than the {budget} budget has left after width pruning; "
            "use --stages width, a larger --reduce, or a smaller --depth-share"
        )
    plan = PrunePlan(drop_blocks=tuple(sorted(chosen)))
    # what the cut would leave: cost of the dropped blocks comes off the current model
    dropped = sum(_block_cost(model.blocks[i], model, budget.metric) for i in plan.drop_blocks)
    removed = reference - model_cost(model, budget.metric) + dropped
    missing = budget.reduction * reference - removed
    if missing <= 0:
        return plan, block_scores
    # top-up: width units of the kept blocks, planned on the same scores, renumbered after the cut
    kept = [i for i in range(len(model.blocks)) if i not in plan.drop_blocks]
    sub = copy.deepcopy(model)
    sub.blocks = torch.nn.Sequential(*[sub.blocks[i] for i in kept])
    unit_scores = score(sub, calib, config.criterion, loss, seed=config.seed)
    top_up = plan_width(
        sub, unit_scores, metric=budget.metric, target_removed=missing, reference_total=reference,
        already_removed=removed, min_heads=config.min_heads, round_to=config.round_to,
    )
    remap = {new: old for new, old in enumerate(kept)}
    return dataclasses.replace(
        plan,
        keep_heads={remap[k]: v for k, v in top_up.plan.keep_heads.items()},
        keep_neurons={remap[k]: v for k, v in top_up.plan.keep_neurons.items()},
    ), block_scores


def _compression_record(teacher: LoadedModel, config: CompressConfig, report: CompressReport) -> dict:
    return {
        "method": "vitshrink: loss-change importance, budgeted width pruning, distillation, depth pruning, distillation",
        "teacher": {"name": teacher.name, "path": str(teacher.path) if teacher.path else None, **report.teacher},
        "budget": {"metric": config.budget.metric, "reduction": config.budget.reduction},
        "config": config.to_dict(),
        "stages": [r.to_dict() for r in report.stages],
        "result": {
            "params": report.final.params,
            "macs": report.final.macs,
            "reduction_params": report.final.reduction_params,
            "reduction_flops": report.final.reduction_flops,
            "top1": (report.final.after_distill or report.final.after_cut)["top1"],
        },
    }
