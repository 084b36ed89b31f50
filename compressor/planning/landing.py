"""Land a latency plan on what the target measures, not only on what the table predicts.

A table's fit moves from profile to profile on a busy machine (a few percent of the whole model), enough
to put a plan two points off its target. Where the table's target runs here, the plan is timed against the
teacher (`timings` times, each a fresh pair of sessions, and its measured reduction is their mean); when that
misses by more than `CHECK_TOLERANCE`, the next plan aims past the target by the miss
(aim += target - measured), and the plan that measured closest to the target is kept.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from vitshrink.compressor.core.errors import BudgetError

CHECK_TOLERANCE = 0.01  # a measured reduction within 1 point of the target ends the checks
CHECK_ROUNDS = 2  # re-plans after the first plan, at most
CHECK_TIMINGS = 1  # timings per plan: re-aiming by the mean of two landed no closer, at twice the cost (ViT-S,
# batch 8, 20 landings each, idle and beside a bursty process; research/results/joint/landing.md)

Plan = TypeVar("Plan")


@dataclass(frozen=True)
class LatencyCheck:
    aim: float  # the reduction the plan was made for
    predicted: float  # what the table predicts the plan removes
    measured: float  # what the target measured: the mean of `timings`
    timings: tuple[float, ...] = ()  # each timing's 1 - student / teacher, the two called alternately
    kept: bool = False  # the plan kept: the one measured closest to the target

    def to_dict(self) -> dict:
        return {"aim": round(self.aim, 5), "predicted": round(self.predicted, 5),
                "measured": round(self.measured, 5), "timings": [round(t, 5) for t in self.timings],
                "kept": self.kept}


def land_on_target(plan_for: Callable[[float], tuple[Plan, float]], measure: Callable[[Plan], float],
                   target: float, *, tolerance: float = CHECK_TOLERANCE, rounds: int = CHECK_ROUNDS,
                   timings: int = CHECK_TIMINGS,
                   log: Callable[[str], None] = print) -> tuple[Plan, list[LatencyCheck]]:
    """The plan (of `plan_for(aim)` -> (plan, predicted reduction)) whose reduction, the mean of `timings` calls
    of `measure`, came closest to `target`, and every check made (that plan's marked `kept`). A re-aimed plan
    the budget cannot reach ends the checks."""
    if timings < 1:
        raise ValueError(f"timings must be at least 1, got {timings}")
    aim, tried = target, []
    for attempt in range(rounds + 1):
        try:
            plan, predicted = plan_for(aim)
        except BudgetError as e:
            if not tried:
                raise
            log(f"latency check: no plan for -{aim:.1%} ({e}); keeping the closest measured")
            break
        each = tuple(measure(plan) for _ in range(timings))
        measured = statistics.fmean(each)
        tried.append((plan, LatencyCheck(aim, predicted, measured, each)))
        spread = f" (timings {', '.join(f'-{t:.1%}' for t in each)})" if timings > 1 else ""
        log(f"latency check: plan for -{aim:.1%} (predicted -{predicted:.1%}) measured -{measured:.1%}{spread}")
        if abs(measured - target) <= tolerance or attempt == rounds:
            break
        aim = min(max(aim + target - measured, 0.0), 0.99)
    best = min(range(len(tried)), key=lambda i: abs(tried[i][1].measured - target))
    return tried[best][0], [replace(check, kept=i == best) for i, (_, check) in enumerate(tried)]
