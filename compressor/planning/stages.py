"""The plan of each compress stage: budget -> costs -> plan (greedy or knapsack) -> optional choice -> plan.

Every decision about what a stage removes is taken here:
- `budget_split`, before any work: how many blocks the depth stage removes, how much each width step removes;
- `plan_width_stage`: heads and MLP neuron groups, on FLOPs, params (greedy) or a latency table (knapsack); a
  latency plan is the better on validation of the knapsack's and the FLOPs planner's at the same predicted
  latency (`choice.py`), and is timed on the target and re-aimed by its miss (`landing.py`); with `--stages joint`
  the same stage plans blocks and widths together (`joint.py`) and keeps that plan only where it is the best on
  validation of it and the width-only plans at the same predicted budget;
- `plan_depth_stage`: whole blocks, then a width top-up that lands the total on the target.

What must be measured is handed in by the job as functions: `measure` (plan -> its latency reduction timed on
the target) and `val_metrics` (plan -> the cut's metrics on the validation split). Nothing here times or
evaluates a model.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from vitshrink.compressor.core.errors import BudgetError
from vitshrink.compressor.core.latency_table import LatencyTable
from vitshrink.compressor.core.surgery import PrunePlan
from vitshrink.compressor.planning.choice import choose_plan, width_candidates
from vitshrink.compressor.planning.choice import describe as describe_choice
from vitshrink.compressor.planning.joint import JOINT_BLOCK_ESTIMATE, block_losses, plan_joint
from vitshrink.compressor.planning.landing import land_on_target
from vitshrink.compressor.planning.planner import (
    TOLERANCE,
    Budget,
    BudgetSplit,
    ModelCosts,
    depth_plan,
    model_cost,
    model_costs,
    plan_depth,
    plan_depth_blocks,
    plan_width,
    split_budget,
)
from vitshrink.compressor.scoring.importance import Scores, score_blocks, score_units

Measure = Callable[[PrunePlan], float]  # plan -> 1 - its time / the teacher's, on the target
ValMetrics = Callable[[PrunePlan], dict]  # plan -> {"top1", "top5", "loss"} of the cut on the validation split


@dataclass(frozen=True)
class PlanSettings:
    """What the planner reads of a compress run's settings."""

    budget: Budget
    stages: tuple[str, ...]
    width_steps: int = 1
    depth_share: float = 0.5
    depth_blocks: int | None = None
    criterion: str = "taylor"
    block_criterion: str = "ablation"
    min_heads: int = 1
    round_to: int = 8
    seed: int = 0
    latency_table: dict | None = None  # `LatencyTable.to_dict()`

    @cached_property
    def table(self) -> LatencyTable | None:
        return LatencyTable.from_dict(self.latency_table) if self.latency_table is not None else None

    def costs(self, model) -> ModelCosts:
        """What each block, head and neuron of `model` costs in the budget's metric."""
        return model_costs(model, self.budget.metric, self.table)

    def cost(self, model) -> float:
        """`model`'s total in the budget's metric (MACs, parameters or predicted ms)."""
        return model_cost(model, self.budget.metric, self.table)


@dataclass(frozen=True)
class StagePlan:
    """One stage's plan, the scores it was made from, and how it was chosen (dicts, as the record keeps them)."""

    plan: PrunePlan
    scores: object | None  # `Scores` or `BlockScores` (None for a given plan)
    description: str
    checks: list[dict] | None = None  # the latency checks (`LatencyCheck.to_dict`)
    choices: list[dict] | None = None  # knapsack vs FLOPs plan on validation (`PlanChoice.to_dict`)


def budget_split(teacher, settings: PlanSettings) -> BudgetSplit:
    """The budget decisions that need no scores: blocks for depth, the rest for width (refuses what cannot land)."""
    return split_budget(settings.costs(teacher), settings.budget, width=bool({"width", "joint"} & set(settings.stages)),
                        depth="depth" in settings.stages, depth_share=settings.depth_share,
                        depth_blocks=settings.depth_blocks)


def plan_width_stage(model, calib, settings: PlanSettings, loss, *, target_removed: float, reference: float,
                     already: float, final: bool, measure: Measure | None = None,
                     val_metrics: ValMetrics | None = None, joint: bool = False, log=print) -> StagePlan:
    """Score heads and neurons (and with `joint` blocks), plan them; the last cut of a run must land within 1
    point. With `measure`, the plan is timed and re-aimed (`land_on_target`); with `val_metrics`, each plan is
    the best on validation of the candidates at its predicted budget (`choice.py`): on a latency table the
    knapsack's and the FLOPs planner's width plans; with `joint`, the joint plan of blocks and widths too."""
    scores = score_units(model, calib, settings.criterion, loss, seed=settings.seed)
    removal = joint_removal_losses(model, calib, settings, loss, scores) if joint else None
    costs = settings.costs(model)
    flops = model_costs(model, "flops") if val_metrics is not None and costs.table is not None else None
    tolerance = TOLERANCE if final else None
    choices = []

    def plan_for(removed: float):
        removed = max(0.0, removed)
        common = dict(target_removed=removed, min_heads=settings.min_heads, round_to=settings.round_to,
                      tolerance=tolerance)
        make_joint = lambda: plan_joint(costs, scores, removal, reference_total=reference,  # noqa: E731
                                        already_removed=already, **common)
        if val_metrics is None:
            return make_joint() if joint else plan_width(costs, scores, reference_total=reference,
                                                         already_removed=already, **common)
        if not joint:
            planned = width_candidates(costs, flops, scores, **common)
        else:  # the joint plan, and the width-only plans where they land too
            planned = {"joint": make_joint()}
            try:
                planned |= width_candidates(costs, flops, scores, **common)
            except BudgetError as e:
                planned["width"] = None
                log(f"plan choice: no width-only plan at -{removed / reference:.1%} ({e})")
        plan, choice = choose_plan(planned, val_metrics, removed / reference)
        choices.append(choice.to_dict())
        log(describe_choice(choice))
        return plan

    checks: list[dict] = []
    if measure is None:
        width = plan_for(target_removed)
    else:
        width, timed = land_on_target(lambda aim: (p := plan_for(aim * reference), p.removed / reference),
                                      lambda p: measure(p.plan), target_removed / reference, log=log)
        checks = [c.to_dict() for c in timed]
    if removal is not None:
        scores = dataclasses.replace(scores, blocks=removal)
    return StagePlan(width.plan, scores, width.describe(), checks, choices)


def joint_removal_losses(model, calib, settings: PlanSettings, loss, units: Scores) -> np.ndarray:
    """Each block's estimated loss when removed, on the scale of the unit scores (`joint.JOINT_BLOCK_ESTIMATE`)."""
    estimate = JOINT_BLOCK_ESTIMATE
    blocks = None if estimate == "unit-sum" else score_blocks(model, calib, estimate, loss, seed=settings.seed)
    return block_losses(estimate, units, blocks)


def plan_depth_stage(model, calib, settings: PlanSettings, loss, split: BudgetSplit, reference: float) -> StagePlan:
    """Score the blocks and plan the cut; after width stages, a width top-up (scored on the kept blocks)
    lands the total on the target. Depth alone removes the `split.depth_blocks` lowest-scored blocks."""
    block_scores = score_blocks(model, calib, settings.block_criterion, loss, seed=settings.seed)
    if "width" not in settings.stages:
        planned = depth_plan(plan_depth(block_scores, split.depth_blocks), block_scores.blocks)
        return StagePlan(planned.plan, block_scores, planned.describe())
    costs = settings.costs(model)
    plan, missing = plan_depth_blocks(costs, block_scores, split.depth_blocks, target_removed=split.target_removed,
                                      reference_total=reference)
    if missing <= 0:
        planned = depth_plan(plan, block_scores.blocks)
        return StagePlan(planned.plan, block_scores, planned.describe())
    kept = copy.deepcopy(model)  # unit scores of the model the top-up is planned on: without the dropped blocks
    kept.blocks = torch.nn.Sequential(*[b for i, b in enumerate(kept.blocks) if i not in plan.drop_blocks])
    top_up = plan_width(
        costs.without_blocks(plan.drop_blocks), score_units(kept, calib, settings.criterion, loss, seed=settings.seed),
        target_removed=missing, reference_total=reference, already_removed=split.target_removed - missing,
        min_heads=settings.min_heads, round_to=settings.round_to,
    )
    planned = depth_plan(plan, block_scores.blocks, top_up)
    return StagePlan(planned.plan, block_scores, planned.describe())
