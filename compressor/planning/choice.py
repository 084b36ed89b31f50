"""A plan chosen on the validation split among candidates made for the same predicted budget: whichever cut
keeps the lower validation loss.

The candidates: on a latency table, the knapsack's width plan and the FLOPs planner's cut at the same
predicted latency; with `--stages joint`, also the joint plan of blocks and widths (`joint.py`), which on
FLOPs or params competes with the width planner's cut.

The knapsack (`planner._plan_latency`) keeps the most Taylor score under the predicted latency. A cut's
Taylor score is the sum of the scores of what goes, and that sum misleads most where the knapsack likes to
cut: a block cut down to one head. On the reference CIFAR-10 ViT at equal measured latency the FLOPs
planner's cut was 0.27 point better on average (16 runs of the knapsack's plan against FLOPs plans timed
against it, docs/latency.md; files in research/results/latency-plan/equal-latency/), although the
knapsack kept more Taylor score. So where a validation split exists, the candidates are cut, evaluated on
it, and the one with the lower mean cross-entropy is kept (ties: the first named, the joint plan, then the
knapsack's, which runs faster at equal MACs). Loss, not top-1: on 2000 images a top-1 difference of a few
tenths of a point is a handful of images.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from vitshrink.compressor.core.errors import BudgetError
from vitshrink.compressor.core.surgery import PrunePlan
from vitshrink.compressor.planning.planner import TOLERANCE, ModelCosts, WidthPlan, plan_width
from vitshrink.compressor.scoring.importance import Scores

BISECTION_STEPS = 30  # halvings of the MACs interval: far finer than one neuron group of a ViT


@dataclass(frozen=True)
class PlanChoice:
    """The two plans for one aim, their predicted reductions and validation metrics, and which was kept."""

    aim: float  # the predicted reduction the plans were made for
    chosen: str  # "knapsack", "flops" (width-only on a latency table), "width" (width-only on FLOPs/params), "joint"
    candidates: dict  # name -> {"predicted": reduction, "val_loss": ..., "val_top1": ...}
    missing: tuple[str, ...] = ()  # kinds of plan that do not land at the aim

    def to_dict(self) -> dict:
        return {"aim": round(self.aim, 5), "chosen": self.chosen,
                "candidates": {name: {k: round(v, 5) for k, v in c.items()} for name, c in self.candidates.items()},
                **({"missing": list(self.missing)} if self.missing else {})}


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


def choose_plan(plans: dict[str, WidthPlan | None], val_metrics: Callable[[PrunePlan], dict],
                aim: float) -> tuple[WidthPlan, PlanChoice]:
    """Of the named `plans` (None: no plan of that kind lands at the aim), the one with the lower validation
    loss (`val_metrics(plan)` -> {"loss", "top1", ...}); on a tie the first named. A plan equal to one already
    evaluated is not evaluated again."""
    candidates, seen = {}, {}
    for name, plan in plans.items():
        if plan is None:
            continue
        key = repr(plan.plan.to_dict())
        if key not in seen:
            seen[key] = val_metrics(plan.plan)
        metrics = seen[key]
        candidates[name] = {"predicted": plan.achieved, "val_loss": metrics["loss"], "val_top1": metrics["top1"]}
    if not candidates:
        raise BudgetError("no plan lands on this budget")
    chosen = min(candidates, key=lambda name: candidates[name]["val_loss"])  # min keeps the first of equals
    return plans[chosen], PlanChoice(aim=aim, chosen=chosen, candidates=candidates,
                                     missing=tuple(n for n, p in plans.items() if p is None))


def describe(choice: PlanChoice) -> str:
    parts = [f"{name} (predicted -{c['predicted']:.1%}, val loss {c['val_loss']:.4f}, top-1 {c['val_top1']:.2%})"
             for name, c in choice.candidates.items()]
    parts += [f"no {_KIND.get(name, name)} plan lands at its predicted {'latency' if name == 'flops' else 'budget'}"
              for name in choice.missing]
    return f"plan choice for -{choice.aim:.1%}: kept the {choice.chosen} plan; " + " vs ".join(parts)


_KIND = {"flops": "FLOPs", "width": "width-only", "knapsack": "knapsack"}


def width_candidates(latency: ModelCosts, flops: ModelCosts | None, scores: Scores, *, target_removed: float,
                     tolerance: float | None, min_heads: int, round_to: int) -> dict[str, WidthPlan | None]:
    """The width-only plans for one aim: on a latency table the knapsack's and the FLOPs planner's at the same
    predicted latency (with `flops` costs), else the FLOPs/params planner's ("width")."""
    plan = plan_width(latency, scores, target_removed=target_removed, reference_total=latency.total,
                      min_heads=min_heads, round_to=round_to, tolerance=tolerance)
    if latency.table is None:
        return {"width": plan}
    if flops is None:
        return {"knapsack": plan}
    at_same = flops_plan_at(flops, latency, scores, target_removed=target_removed, tolerance=tolerance or TOLERANCE,
                            min_heads=min_heads, round_to=round_to)
    return {"knapsack": plan, "flops": at_same}


def plan_and_choose(latency: ModelCosts, flops: ModelCosts, scores: Scores, *, target_removed: float, tolerance: float,
                    min_heads: int, round_to: int, val_metrics: Callable[[PrunePlan], dict] | None
                    ) -> tuple[WidthPlan, PlanChoice | None]:
    """The knapsack's plan for a whole width cut from the teacher (`target_removed` predicted ms), or with
    `val_metrics` the better on validation of it and the FLOPs planner's plan at its predicted latency."""
    plans = width_candidates(latency, flops if val_metrics is not None else None, scores,
                             target_removed=target_removed, tolerance=tolerance, min_heads=min_heads,
                             round_to=round_to)
    if val_metrics is None:
        return plans["knapsack"], None
    return choose_plan(plans, val_metrics, target_removed / latency.total)
