"""Multiple-choice knapsack: one option from every group, least total loss, total cost within a budget.

The latency planner's solver. Costs are measured latencies, which move in steps (a neuron group can
cost nothing until a whole GEMM tile goes), so a greedy loss-per-cost rule can stop short of the
target or overshoot it; dynamic programming over the cost, on a grid of `resolution` steps of the
budget, is exact for costs on that grid and within one grid step per group otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vitshrink.compressor.core.errors import BudgetError


def solve(losses: Sequence[Sequence[float]], costs: Sequence[Sequence[float]], budget: float,
          floor: float = 0.0, resolution: int = 20000) -> list[int]:
    """The option index chosen in each group: minimum sum of `losses[g][i]` with the sum of `costs[g][i]`
    in [`floor`, `budget`] (a floor keeps a plan from removing far more than asked when removal is free).

    Costs are rounded up to multiples of budget / `resolution`, so the chosen options never exceed the
    budget in real costs; the loss is optimal for the rounded costs. Raises BudgetError when no choice
    lands in the window, naming the totals nearest to it.
    """
    if len(losses) != len(costs) or any(len(v) != len(c) or not len(v) for v, c in zip(losses, costs, strict=True)):
        raise ValueError("every group needs as many losses as costs, and at least one option")
    if not all(np.all(np.isfinite(c)) and np.min(c) >= 0 for c in costs) or not np.isfinite(budget):
        raise BudgetError("option costs and the budget must be finite and >= 0")
    cheapest = sum(min(c) for c in costs)
    if cheapest > budget * (1 + 1e-12) or budget <= 0:
        raise BudgetError(f"the cheapest options cost {cheapest:.6g} together, more than the budget {budget:.6g}")
    step = budget / resolution
    size = resolution + 1
    best = np.full(size, np.inf)  # best[c]: least loss of the groups so far with rounded total cost exactly c
    best[0] = 0.0
    choices = []  # per group: for each c, the option taken
    for group_losses, group_costs in zip(losses, costs, strict=True):
        units = np.ceil(np.asarray(group_costs, dtype=float) / step - 1e-9).astype(int)
        new = np.full(size, np.inf)
        pick = np.full(size, -1)
        for option, (loss, cost) in enumerate(zip(group_losses, units, strict=True)):
            if cost > resolution:
                continue
            candidate = np.full(size, np.inf)
            candidate[max(cost, 0):] = best[: size - max(cost, 0)] + loss
            better = candidate < new
            new[better], pick[better] = candidate[better], option
        best = new
        choices.append(pick)
    lowest = min(int(np.floor(floor / step + 1e-9)), resolution)
    window = best[lowest:]
    if not np.isfinite(window).any():
        reachable = np.flatnonzero(np.isfinite(best))
        below = f"; the nearest total below is {reachable.max() * step:.6g}" if reachable.size else ""
        raise BudgetError(f"no choice of options costs between {floor:.6g} and {budget:.6g}{below}")
    c = lowest + int(np.argmin(window))
    chosen = []
    for group_costs, pick in zip(reversed(costs), reversed(choices), strict=True):
        option = int(pick[c])
        chosen.append(option)
        c -= max(int(np.ceil(group_costs[option] / step - 1e-9)), 0)
    return chosen[::-1]
