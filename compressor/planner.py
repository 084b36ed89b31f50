"""Budgeted planning: a pure function from scores + budget to a plan, printable before anything is cut.

Width: heads and groups of `round_to` MLP neurons are the units. Each unit has a cost (its params or
MACs, exactly what removing it saves) and a score (the loss it is estimated to add). Units are removed
cheapest-per-cost first (score / cost, so cost-aware) across all blocks, until the removed cost reaches
the target; within a block the lowest-scored head or neuron group always goes first. Near the target, a
unit that would overshoot it by more than half a point gives way to finer units. At least
`min_heads` heads and `round_to` neurons stay in every block; kept MLP widths are multiples of
`round_to` (when the original width is).
Depth: the lowest-scored blocks are removed; never the last one.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from compressor.errors import BudgetError
from compressor.flops import count_macs, count_params, num_tokens
from compressor.importance import Scores
from compressor.surgery import PrunePlan

METRICS = ("flops", "params")


@dataclass(frozen=True)
class Budget:
    metric: str  # "flops" (MACs) or "params"
    reduction: float  # fraction of the teacher's total to remove, in (0, 1)

    def __post_init__(self):
        if self.metric not in METRICS:
            raise BudgetError(f"unknown budget metric {self.metric!r}; use one of {', '.join(METRICS)}")
        if not 0.0 < self.reduction < 1.0:
            raise BudgetError(f"reduction must be in (0, 1), got {self.reduction} (e.g. --reduce flops=0.3)")

    @classmethod
    def parse(cls, text: str) -> Budget:
        """`flops=0.3` or `params=0.25`."""
        metric, sep, value = text.partition("=")
        try:
            return cls(metric.strip().lower(), float(value)) if sep else cls("flops", float(metric))
        except ValueError:
            raise BudgetError(f"cannot read budget {text!r}; write it as flops=0.3 or params=0.3") from None

    def __str__(self) -> str:
        return f"{self.metric}={self.reduction:g}"


@dataclass(frozen=True)
class UnitCosts:
    """What removing one head or one MLP neuron of each block saves, in the budget's metric."""

    head: tuple[float, ...]
    neuron: tuple[float, ...]


def unit_costs(model: nn.Module, metric: str) -> UnitCosts:
    n = num_tokens(model)
    heads, neurons = [], []
    for blk in model.blocks:
        attn, mlp = blk.attn, blk.mlp
        dim, hd = attn.qkv.in_features, attn.head_dim
        if metric == "params":
            head = 4 * hd * dim + (3 * hd if attn.qkv.bias is not None else 0)
            head += 0 if attn.norm.__class__ is nn.Identity else 2 * hd
            neuron = 2 * dim + (1 if mlp.fc1.bias is not None else 0)
            neuron += 0 if mlp.norm.__class__ is nn.Identity else 2
        else:
            head = n * 4 * hd * dim + 2 * n * n * hd
            head += 0 if attn.norm.__class__ is nn.Identity else 5 * n * hd
            head += 0 if attn.q_norm.__class__ is nn.Identity else 10 * n * hd
            neuron = 2 * n * dim + (0 if mlp.norm.__class__ is nn.Identity else 5 * n)
        heads.append(float(head))
        neurons.append(float(neuron))
    return UnitCosts(tuple(heads), tuple(neurons))


def model_cost(model: nn.Module, metric: str) -> int:
    return count_params(model) if metric == "params" else count_macs(model)


@dataclass(frozen=True)
class WidthPlan:
    plan: PrunePlan
    metric: str
    reference_total: float  # the teacher's total (the budget is a fraction of it)
    removed: float  # cost removed by this plan
    already_removed: float  # cost removed before this plan (earlier stages)
    heads_kept: tuple[int, ...] = field(default=())
    neurons_kept: tuple[int, ...] = field(default=())

    @property
    def achieved(self) -> float:
        """Total reduction versus the teacher after this plan."""
        return (self.already_removed + self.removed) / self.reference_total

    def describe(self) -> str:
        rows = [f"  block {i}: {h} heads, MLP {m}" for i, (h, m) in enumerate(zip(self.heads_kept, self.neurons_kept, strict=True))]
        return f"width plan ({self.metric} -{self.achieved:.1%} vs teacher):\n" + "\n".join(rows)


def plan_width(
    model: nn.Module,
    scores: Scores,
    *,
    metric: str,
    target_removed: float,
    reference_total: float,
    already_removed: float = 0.0,
    min_heads: int = 1,
    round_to: int = 8,
) -> WidthPlan:
    """Choose heads and neuron groups to remove so that `target_removed` (absolute cost) is removed."""
    if min_heads < 1:
        raise BudgetError(f"--min-heads must be at least 1, got {min_heads}")
    if round_to < 1:
        raise BudgetError(f"--round-to must be at least 1, got {round_to}")
    costs = unit_costs(model, metric)
    depth = len(model.blocks)
    head_order = [list(np.argsort(scores.heads[i], kind="stable")) for i in range(depth)]
    groups = [_neuron_groups(scores.neurons[i], round_to) for i in range(depth)]
    removed_heads: list[list[int]] = [[] for _ in range(depth)]
    removed_groups = [0] * depth

    def head_candidate(i: int):
        k = len(removed_heads[i])
        if len(head_order[i]) - k <= min_heads:
            return None
        h = int(head_order[i][k])
        return (float(scores.heads[i][h]) / costs.head[i], "head", i, costs.head[i])

    def group_candidate(i: int):
        k = removed_groups[i]
        if k >= len(groups[i]) - 1:  # keep the last group
            return None
        group = groups[i][k]
        cost = costs.neuron[i] * len(group)
        return (float(scores.neurons[i][group].sum()) / cost, "group", i, cost)

    heap = [c for i in range(depth) for c in (head_candidate(i), group_candidate(i)) if c is not None]
    heapq.heapify(heap)
    removed = 0.0
    # a unit that would overshoot the target by more than half a point is set aside while finer
    # units (neuron groups) can still close the gap; it is taken only if nothing else remains
    slack = 0.005 * reference_total
    set_aside: list = []
    while removed < target_removed and (heap or set_aside):
        if heap:
            unit = heapq.heappop(heap)
            if removed + unit[3] - target_removed > slack:
                set_aside.append(unit)
                continue
        else:
            unit = min(set_aside, key=lambda u: u[3])
            set_aside.remove(unit)
        _, kind, i, cost = unit
        if kind == "head":
            removed_heads[i].append(int(head_order[i][len(removed_heads[i])]))
            nxt = head_candidate(i)
        else:
            removed_groups[i] += 1
            nxt = group_candidate(i)
        removed += cost
        if nxt is not None:
            heapq.heappush(heap, nxt)
    if removed < target_removed:
        most = (already_removed + removed) / reference_total
        raise BudgetError(
            f"width pruning can remove at most {most:.1%} of {metric} with --min-heads {min_heads} and "
            f"--round-to {round_to}; lower the target or add depth pruning"
        )
    keep_heads, keep_neurons = {}, {}
    for i, blk in enumerate(model.blocks):
        gone = set(removed_heads[i])
        keep_heads[i] = tuple(h for h in range(blk.attn.num_heads) if h not in gone)
        dropped = {int(j) for g in groups[i][: removed_groups[i]] for j in g}
        keep_neurons[i] = tuple(j for j in range(blk.mlp.fc1.out_features) if j not in dropped)
    return WidthPlan(
        plan=PrunePlan(keep_heads=keep_heads, keep_neurons=keep_neurons),
        metric=metric,
        reference_total=reference_total,
        removed=removed,
        already_removed=already_removed,
        heads_kept=tuple(len(keep_heads[i]) for i in range(depth)),
        neurons_kept=tuple(len(keep_neurons[i]) for i in range(depth)),
    )


def _neuron_groups(neuron_scores: np.ndarray, round_to: int) -> list[np.ndarray]:
    """Neurons sorted by score, cut into groups of `round_to`; a remainder group comes first."""
    order = np.argsort(neuron_scores, kind="stable")
    first = len(order) % round_to
    groups = [order[:first]] if first else []
    groups += [order[s : s + round_to] for s in range(first, len(order), round_to)]
    return groups


def plan_depth(scores: Scores, num_remove: int) -> PrunePlan:
    """Remove the `num_remove` lowest-scored blocks."""
    depth = len(scores.blocks)
    if not 0 <= num_remove < depth:
        raise BudgetError(f"cannot remove {num_remove} of {depth} blocks; at least one block must remain")
    order = np.argsort(scores.blocks, kind="stable")
    return PrunePlan(drop_blocks=tuple(sorted(int(i) for i in order[:num_remove])))
