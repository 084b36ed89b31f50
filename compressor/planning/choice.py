"""A latency plan chosen on the validation split: the knapsack's, or the FLOPs planner's cut at the same
predicted latency, whichever keeps the lower validation loss.

The knapsack (`planner._plan_latency`) keeps the most Taylor score under the predicted latency. A cut's
Taylor score is the sum of the scores of what goes, and that sum misleads most where the knapsack likes to
cut: a block cut down to one head. On the reference CIFAR-10 ViT at equal measured latency the FLOPs
planner's cut was 0.27 point better on average (16 runs of the knapsack's plan against FLOPs plans timed
against it, docs/latency.md; files in research/results/latency-plan/equal-latency/), although the
knapsack kept more Taylor score. So where a validation split exists, both plans are cut, evaluated on it,
and the one with the lower mean cross-entropy is kept (ties: the knapsack's, which runs faster at equal
MACs). Loss, not top-1: on 2000 images a top-1 difference of a few tenths of a point is a handful of images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from vitshrink.compressor.core.errors import BudgetError
from vitshrink.compressor.core.surgery import PrunePlan
from vitshrink.compressor.planning.planner import ModelCosts, WidthPlan, plan_width
from vitshrink.compressor.scoring.importance import Scores

BISECTION_STEPS = 30  # halvings of the MACs interval: far finer than one neuron group of a ViT


@dataclass(frozen=True)
class PlanChoice:
    """The two plans for one aim, their predicted reductions and validation metrics, and which was kept."""

    aim: float  # the predicted latency reduction both plans were made for
    chosen: str  # "knapsack" or "flops"
    candidates: dict  # name -> {"predicted": reduction, "val_loss": ..., "val_top1": ...}

    def to_dict(self) -> dict:
        return {"aim": round(self.aim, 5), "chosen": self.chosen,
                "candidates": {name: {k: round(v, 5) for k, v in c.items()} for name, c in self.candidates.items()}}


def flops_plan_at(flops: ModelCosts, latency: ModelCosts, scores: Scores, *, target_removed: float,
                  tolerance: float, min_heads: int, round_to: int) -> WidthPlan | None:
    """The FLOPs planner's width plan (on `flops` costs) whose predicted latency (on `latency` costs, the
    table's) removes at least `target_removed` ms and at most `tolerance` x the teacher's more, in latency
    terms; None when the MACs reductions it tries land outside that window.

    Found by bisection on the MACs to remove: the least MACs whose plan reaches the latency target.
    """
    table = latency.table
    ceiling = target_removed + tolerance * latency.total

    def plan_at(macs_removed: float) -> tuple[WidthPlan, float] | None:
        """The plan removing `macs_removed` MACs and its predicted latency reduction; None when width pruning
        cannot remove that much (then every larger amount is out of reach too)."""
        try:
            plan = plan_width(flops, scores, target_removed=macs_removed, reference_total=flops.total,
                              min_heads=min_heads, round_to=round_to, tolerance=None)
        except BudgetError:
            return None
        kept = list(zip(plan.heads_kept, plan.neurons_kept, strict=True))
        return plan, latency.total - table.predict(kept)

    low, high, best = 0.0, flops.total - flops.fixed, None
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        found = plan_at(middle)
        if found is None:  # more than width pruning can remove: the answer, if any, lies below
            high = middle
        elif found[1] >= target_removed:
            high, best = middle, found
        else:
            low = middle
    if best is None or best[1] > ceiling * (1 + 1e-9):
        return None
    plan, removed = best
    return replace(plan, metric="latency", reference_total=latency.total, removed=removed)


def choose_plan(knapsack: WidthPlan, flops: WidthPlan | None, val_metrics: Callable[[PrunePlan], dict],
                aim: float) -> tuple[WidthPlan, PlanChoice]:
    """The plan with the lower validation loss (`val_metrics(plan)` -> {"loss", "top1", ...}); the knapsack's
    on a tie or when there is no FLOPs plan at its latency."""
    plans = {"knapsack": knapsack} if flops is None else {"knapsack": knapsack, "flops": flops}
    candidates = {}
    for name, plan in plans.items():
        metrics = val_metrics(plan.plan)
        candidates[name] = {"predicted": plan.achieved, "val_loss": metrics["loss"], "val_top1": metrics["top1"]}
    chosen = min(plans, key=lambda name: (candidates[name]["val_loss"], name != "knapsack"))
    return plans[chosen], PlanChoice(aim=aim, chosen=chosen, candidates=candidates)


def describe(choice: PlanChoice) -> str:
    parts = [f"{name} (predicted -{c['predicted']:.1%}, val loss {c['val_loss']:.4f}, top-1 {c['val_top1']:.2%})"
             for name, c in choice.candidates.items()]
    if len(parts) == 1:
        parts.append("no FLOPs plan lands at its predicted latency")
    return f"plan choice for -{choice.aim:.1%}: kept the {choice.chosen} plan; " + " vs ".join(parts)


def plan_and_choose(latency: ModelCosts, flops: ModelCosts, scores: Scores, *, target_removed: float, tolerance: float,
                    min_heads: int, round_to: int, val_metrics: Callable[[PrunePlan], dict] | None
                    ) -> tuple[WidthPlan, PlanChoice | None]:
    """The knapsack's plan for a whole width cut from the teacher (`target_removed` predicted ms), or with
    `val_metrics` the better on validation of it and the FLOPs planner's plan at its predicted latency."""
    knapsack = plan_width(latency, scores, target_removed=target_removed, reference_total=latency.total,
                          min_heads=min_heads, round_to=round_to, tolerance=tolerance)
    if val_metrics is None:
        return knapsack, None
    at_same = flops_plan_at(flops, latency, scores, target_removed=target_removed, tolerance=tolerance,
                            min_heads=min_heads, round_to=round_to)
    return choose_plan(knapsack, at_same, val_metrics, target_removed / latency.total)
