"""Land a latency plan on what the target measures, not only on what the table predicts.

A table's fit moves from profile to profile on a busy machine (a few percent of the whole model), enough
to put a plan two points off its target. Where the table's target runs here, the plan is timed against the
teacher; when it misses by more than `CHECK_TOLERANCE`, the next plan aims past the target by the miss
(aim += target - measured), and the plan that measured closest to the target is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TypeVar

from vitshrink.compressor.core.errors import BudgetError

CHECK_TOLERANCE = 0.01  # a measured reduction within 1 point of the target ends the checks
CHECK_ROUNDS = 2  # re-plans after the first plan, at most

Plan = TypeVar("Plan")


@dataclass(frozen=True)
class LatencyCheck:
    aim: float  # the reduction the plan was made for
    predicted: float  # what the table predicts the plan removes
    measured: float  # what the target measured: 1 - student / teacher, timed alternately
    kept: bool = False  # the plan kept: the one measured closest to the target

    def to_dict(self) -> dict:
        return {k: v if isinstance(v, bool) else round(v, 5) for k, v in asdict(self).items()}


def land_on_target(plan_for: Callable[[float], tuple[Plan, float]], measure: Callable[[Plan], float],
                   target: float, *, tolerance: float = CHECK_TOLERANCE, rounds: int = CHECK_ROUNDS,
                   log: Callable[[str], None] = print) -> tuple[Plan, list[LatencyCheck]]:
    """The plan (of `plan_for(aim)` -> (plan, predicted reduction)) whose `measure`d reduction came closest to
    `target`, and every check made (that plan's marked `kept`). A re-aimed plan the budget cannot reach ends
    the checks."""
    aim, tried = target, []
    for attempt in range(rounds + 1):
        try:
            plan, predicted = plan_for(aim)
        except BudgetError as e:
            if not tried:
                raise
            log(f"latency check: no plan for -{aim:.1%} ({e}); keeping the closest measured")
            break
        measured = measure(plan)
        tried.append((plan, LatencyCheck(aim, predicted, measured)))
        log(f"latency check: plan for -{aim:.1%} (predicted -{predicted:.1%}) measured -{measured:.1%}")
        if abs(measured - target) <= tolerance or attempt == rounds:
            break
        aim = min(max(aim + target - measured, 0.0), 0.99)
    best = min(range(len(tried)), key=lambda i: abs(tried[i][1].measured - target))
    return tried[best][0], [replace(check, kept=i == best) for i, (_, check) in enumerate(tried)]
