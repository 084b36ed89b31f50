"""Budgeted planning: every budget decision, as pure functions of costs, scores and budget.

Costs are read off a model once (`model_costs`, from the one cost model in flops.py); each decision
below is a function of those numbers, the scores and the budget, printable before anything is cut:

- Split (`split_budget`, before any work): how many blocks the depth stage removes, and how much the
  width stages remove, so that width first and depth after land together on the target.
- Width (`plan_width`): heads and groups of `round_to` MLP neurons are the units. Each unit has a cost
  (its params or MACs, exactly what removing it saves) and a score (the loss it is estimated to add).
  Units are removed cheapest-per-cost first (score / cost, so cost-aware) across all blocks, until the
  removed cost reaches the target; within a block the lowest-scored head or neuron group always goes
  first. Near the target, a unit that would overshoot it by more than half a point gives way to finer
  units; if the plan still overshoots by more than a point, it is made again with fewer units of one
  block or one kind, and if none of those lands, the plan is refused, naming the nearest reductions
  the units reach. At least `min_heads` heads and `round_to` neurons stay in every block; kept MLP
  widths are multiples of `round_to` (when the original width is).
- Depth (`plan_depth`; after width stages `plan_depth_blocks`, `depth_plan`): the lowest-scored blocks
  are removed, never the last one; after width stages only blocks that fit the budget, then a width
  top-up on the kept blocks lands the total on the target.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field, replace

import numpy as np
from torch import nn

from vitshrink.compressor.core.errors import BudgetError
from vitshrink.compressor.core.families import mlp_hidden
from vitshrink.compressor.core.flops import (
    block_macs_of,
    block_params_of,
    count_macs,
    count_params,
    num_tokens,
)
from vitshrink.compressor.core.latency_table import LatencyTable
from vitshrink.compressor.core.surgery import PrunePlan
from vitshrink.compressor.planning import knapsack
from vitshrink.compressor.scoring.importance import Scores

METRICS = ("flops", "params", "latency")  # latency: predicted by a measured table (latency_table.py)
TOLERANCE = 0.01  # a plan lands within this fraction of the teacher's total above the target


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
            raise BudgetError(f"cannot read budget {text!r}; write it as flops=0.3, params=0.3 or latency=0.3") from None

    def __str__(self) -> str:
        return f"{self.metric}={self.reduction:g}"


@dataclass(frozen=True)
class ModelCosts:
    """What each structure of one model costs in one metric; removing a structure saves exactly its cost."""

    metric: str
    fixed: float  # patch embedding, tokens, final norm, classifier: never removed
    blocks: tuple[float, ...]  # each whole block
    head: tuple[float, ...]  # one attention head of each block
    neuron: tuple[float, ...]  # one MLP neuron of each block
    num_heads: tuple[int, ...]  # heads of each block
    hidden: tuple[int, ...]  # MLP neurons of each block
    # latency only: the measured table. Head and neuron costs above are then those of the last head and
    # neuron (unused: width plans are made on the table itself, whose steps are not linear, `_plan_latency`)
    table: LatencyTable | None = None

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def total(self) -> float:
        return self.fixed + sum(self.blocks)

    def without_blocks(self, drop: tuple[int, ...]) -> ModelCosts:
        """The costs of the same model with blocks `drop` removed (the rest renumbered from 0)."""
        keep = [i for i in range(self.depth) if i not in set(drop)]
        pick = lambda values: tuple(values[i] for i in keep)  # noqa: E731
        return replace(self, blocks=pick(self.blocks), head=pick(self.head), neuron=pick(self.neuron),
                       num_heads=pick(self.num_heads), hidden=pick(self.hidden))


def _block_cost(block: nn.Module, n: int, metric: str, heads: int | None = None, hidden: int | None = None) -> int:
    return block_params_of(block, heads, hidden) if metric == "params" else block_macs_of(block, n, heads, hidden)


def model_costs(model: nn.Module, metric: str, table: LatencyTable | None = None) -> ModelCosts:
    """Read the costs of `model`'s blocks, heads and neurons off flops.py's counters (exact, linear),
    or for latency off the measured `table` (in predicted ms, the table's fit applied)."""
    if metric not in METRICS:
        raise BudgetError(f"unknown budget metric {metric!r}; use one of {', '.join(METRICS)}")
    if metric == "latency":
        return _latency_costs(model, _need_table(table))
    n = num_tokens(model)
    blocks, heads, neurons = [], [], []
    for blk in model.blocks:
        whole = _block_cost(blk, n, metric)
        blocks.append(float(whole))
        heads.append(float(whole - _block_cost(blk, n, metric, heads=blk.attn.num_heads - 1)))
        neurons.append(float(whole - _block_cost(blk, n, metric, hidden=mlp_hidden(blk.mlp) - 1)))
    return ModelCosts(
        metric=metric,
        fixed=float(model_cost(model, metric) - sum(blocks)),
        blocks=tuple(blocks),
        head=tuple(heads),
        neuron=tuple(neurons),
        num_heads=tuple(blk.attn.num_heads for blk in model.blocks),
        hidden=tuple(mlp_hidden(blk.mlp) for blk in model.blocks),
    )


def _need_table(table: LatencyTable | None) -> LatencyTable:
    if table is None:
        raise BudgetError("a latency budget needs a latency table: give --latency-table FILE or a --target to "
                          "profile (vitshrink profile)")
    return table


def _latency_costs(model: nn.Module, table: LatencyTable) -> ModelCosts:
    shapes = [(blk.attn.num_heads, mlp_hidden(blk.mlp)) for blk in model.blocks]
    return ModelCosts(
        metric="latency",
        fixed=table.fixed,
        blocks=tuple(table.attention_cost(h) + table.mlp_cost(m) for h, m in shapes),
        head=tuple(table.attention_cost(h) - table.attention_cost(h - 1) for h, _ in shapes),
        neuron=tuple(table.mlp_cost(m) - table.mlp_cost(m - 1) for _, m in shapes),
        num_heads=tuple(h for h, _ in shapes),
        hidden=tuple(m for _, m in shapes),
        table=table,
    )


def unit_costs(model: nn.Module, metric: str) -> ModelCosts:
    """What removing one head (`.head[i]`) or one MLP neuron (`.neuron[i]`) of block i saves."""
    return model_costs(model, metric)


def model_cost(model: nn.Module, metric: str, table: LatencyTable | None = None) -> float:
    if metric == "latency":
        return _need_table(table).predict([(blk.attn.num_heads, mlp_hidden(blk.mlp)) for blk in model.blocks])
    return count_params(model) if metric == "params" else count_macs(model)


# ---------------------------------------------------------------------------------------------- split


@dataclass(frozen=True)
class BudgetSplit:
    """How the target is shared between the width stages and the depth stage, decided before any work."""

    metric: str
    reference_total: float  # the teacher's total
    target_removed: float  # the whole target, absolute
    width_removed: float  # what the width stages remove together, absolute (0: they are skipped)
    depth_blocks: int  # blocks the depth stage removes (0: it is skipped)
    note: str = ""  # why a stage is skipped, or how the count was chosen

    def runs(self, stage: str) -> bool:
        """Whether `stage` ("width" or "depth") has anything to remove."""
        return self.depth_blocks > 0 if stage == "depth" else self.width_removed > 0

    def width_target(self, step: int, steps: int) -> float:
        """What the teacher has lost, absolute, once width step `step` of `steps` is done (equal shares)."""
        return self.width_removed * step / steps

    def is_last_cut(self, stage: str, step: int = 1, steps: int = 1) -> bool:
        """Whether this cut is the run's last, which must land within the tolerance (earlier ones may overshoot)."""
        return stage == "depth" or (step == steps and not self.runs("depth"))

    def describe(self) -> str:
        width = f"width -{self.width_removed / self.reference_total:.1%}" if self.width_removed > 0 else "no width"
        depth = f"{self.depth_blocks} block(s)" if self.depth_blocks else "no blocks"
        line = f"budget split ({self.metric} -{self.target_removed / self.reference_total:.1%}): {width}, {depth}"
        return line + (f"; {self.note}" if self.note else "")


def split_budget(
    costs: ModelCosts,
    budget: Budget,
    *,
    width: bool,
    depth: bool,
    depth_share: float = 0.5,
    depth_blocks: int | None = None,
) -> BudgetSplit:
    """Share `budget` between width stages (`width`) and a depth stage (`depth`) on a model with `costs`.

    The depth stage removes `depth_blocks` blocks if given (0: none), else the block count closest to
    `depth_share` of the target: k blocks when the k cheapest, less half of the last one (or less the
    1-point tolerance, if that is more), fit within share x target. The count never decreases as the
    share grows; it is capped at the most blocks that fit the target (+1 point), which share 1 takes.
    Width removes the rest (see `_width_removed`). Depth alone removes the block count closest to the
    target (the share is not used: there is nothing else to share with), and is refused when no count
    lands within 1 point of it (`--depth-blocks N` is taken as given).
    """
    total = costs.total
    target = budget.reduction * total
    tolerance = TOLERANCE * total

    def split(n: int, note: str = "") -> BudgetSplit:
        width_removed = _width_removed(costs, target, n) if width else 0.0
        if width and width_removed == 0:
            note = f"width stage skipped: {n} block(s) cover the target" + (f"; {note}" if note else "")
        return BudgetSplit(budget.metric, total, target, width_removed, n, note)

    if not depth:
        return split(0)
    if depth_blocks == 0:
        if not width:
            raise BudgetError("--depth-blocks 0 with --stages depth removes nothing; use --stages width or N >= 1")
        return split(0, "depth stage skipped: --depth-blocks 0")
    if width and depth_blocks is None and depth_share == 0:
        return split(0, "depth stage skipped: --depth-share 0 asks for no block")
    if costs.depth < 2:
        raise BudgetError(
            "the model has one block; depth pruning needs at least two (one must remain): use --stages width"
        )
    cheapest = np.cumsum(sorted(costs.blocks))  # cheapest[k - 1]: the k cheapest blocks together
    if depth_blocks is not None:
        if not 0 < depth_blocks < costs.depth:
            raise BudgetError(
                f"--depth-blocks {depth_blocks}: the model has {costs.depth} blocks, one must remain"
            )
        if width and cheapest[depth_blocks - 1] > target + tolerance:
            fit = int(np.searchsorted(cheapest, target + tolerance, side="right"))
            raise BudgetError(
                f"--depth-blocks {depth_blocks}: the {depth_blocks} cheapest blocks are "
                f"{cheapest[depth_blocks - 1] / total:.0%} of the teacher's {budget.metric}, more than the {budget} "
                f"target; use --depth-blocks {min(fit, costs.depth - 1)} or a larger --reduce"
            )
        return split(depth_blocks)
    if not width:  # depth only: the count closest to the target, if whole blocks can land near it
        return split(_depth_alone_count(costs, budget))
    fits = min(int(np.searchsorted(cheapest, target + tolerance, side="right")), costs.depth - 1)
    if fits == 0:
        raise BudgetError(
            f"one block is {cheapest[0] / total:.0%} of the teacher's {budget.metric}, more than the {budget} "
            "target; use --stages width, --depth-share 0 or a larger --reduce"
        )
    last = np.sort(costs.blocks)  # a block counts once half of it (or all but the tolerance) fits the share
    asked = int(np.sum(cheapest - np.maximum(last / 2, tolerance) <= depth_share * target + 1e-9 * total))
    n = min(asked, fits)
    if n == 0:
        return split(0, f"depth stage skipped: --depth-share {depth_share:g} asks for no block ({depth_share:g} of "
                        f"the target is {depth_share * budget.reduction:.1%}, under half the cheapest block's "
                        f"{cheapest[0] / total:.1%})")
    return split(n, f"{fits} block(s) fit the target" if asked > fits else "")


def _depth_alone_count(costs: ModelCosts, budget: Budget) -> int:
    """The block count depth alone removes: of those that can land within 1 point of the target, the one
    whose average cost is nearest it; refused when none can.

    Before scoring it is not known which k blocks go: k blocks remove between the k cheapest and the k
    dearest together (the same for every choice when blocks cost the same, as in a teacher).
    """
    total, target = costs.total, budget.reduction * costs.total
    ordered = sorted(costs.blocks)
    per_block = sum(ordered) / costs.depth
    reach = {k: (sum(ordered[:k]) / total, sum(ordered[-k:]) / total) for k in range(1, costs.depth)}
    distance = lambda k: abs(k * per_block - target)  # noqa: E731
    landing = [k for k, (lo, hi) in reach.items() if lo - TOLERANCE <= budget.reduction <= hi + TOLERANCE]
    if landing:
        return min(landing, key=distance)
    nearest = min(reach, key=distance)
    lo, hi = reach[nearest]
    removes = f"{lo:.1%}" if hi - lo < 5e-4 else f"{lo:.1%} to {hi:.1%}"
    near = sorted({max([k for k in reach if k * per_block <= target], default=1),
                   min([k for k in reach if k * per_block >= target], default=costs.depth - 1)})
    values = " or ".join(f"{budget.metric}={round(k * per_block / total, 3):g} ({k} block{'s' * (k > 1)})" for k in near)
    raise BudgetError(
        f"--stages depth cannot land within 1 point of {budget.metric} -{budget.reduction:.1%}: the nearest block "
        f"count, {nearest}, removes {removes} of the teacher's {budget.metric}; use --stages width or "
        f"width,depth, --reduce {values}, or --depth-blocks N to remove N blocks whatever they remove"
    )


def _width_removed(costs: ModelCosts, target: float, n_depth: int) -> float:
    """Absolute cost the width stages remove so that depth (`n_depth` blocks) after them lands the total.

    Width shrinks blocks, so the depth stage removes about share x (blocks - w), share = n_depth / depth:
    solve w + share * (blocks - w) = target, and leave 1 point of the teacher's total to the depth
    stage's width top-up, so that depth never overshoots. Less than 1 point is left to the top-up too
    (a width stage of its own would cost a scoring and a distillation for almost nothing).
    """
    if n_depth == 0:
        return target
    share = n_depth / costs.depth
    w = (target - share * sum(costs.blocks)) / (1 - share) - TOLERANCE * costs.total
    return w if w >= TOLERANCE * costs.total else 0.0


# ---------------------------------------------------------------------------------------------- width


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
        removed = set(self.plan.drop_blocks)
        rows = [f"  block {i}: " + ("removed" if i in removed else f"{h} heads, MLP {m}")
                for i, (h, m) in enumerate(zip(self.heads_kept, self.neurons_kept, strict=True))]
        kind = "joint plan (blocks and widths)" if removed else "width plan"
        return f"{kind} ({self.metric} -{self.achieved:.1%} vs teacher):\n" + "\n".join(rows)


def plan_width(
    costs: ModelCosts,
    scores: Scores,
    *,
    target_removed: float,
    reference_total: float,
    already_removed: float = 0.0,
    min_heads: int = 1,
    round_to: int = 8,
    tolerance: float | None = TOLERANCE,
) -> WidthPlan:
    """Heads and neuron groups to remove, on `costs` (`model_costs`): at least `target_removed`, and at most `tolerance` x `reference_total`
    more (else BudgetError naming the reductions within reach); `tolerance=None` for a step that a later
    stage completes (it may overshoot)."""
    if min_heads < 1:
        raise BudgetError(f"--min-heads must be at least 1, got {min_heads}")
    if round_to < 1:
        raise BudgetError(f"--round-to must be at least 1, got {round_to}")
    if len(scores.heads) != costs.depth or len(scores.neurons) != costs.depth:
        raise BudgetError(f"width plan needs head and neuron scores for all {costs.depth} blocks")
    if costs.table is not None:
        return _plan_latency(costs, scores, target_removed=target_removed, reference_total=reference_total,
                             already_removed=already_removed, min_heads=min_heads, round_to=round_to,
                             tolerance=tolerance)
    units = _Units(costs, scores, reference_total, min_heads, round_to)
    limit = None if tolerance is None else tolerance * reference_total
    run, reached = units.search(target_removed, limit)
    if run.removed < target_removed:
        most = (already_removed + run.removed) / reference_total
        raise BudgetError(
            f"width pruning can remove at most {most:.1%} of {costs.metric} with --min-heads {min_heads} and "
            f"--round-to {round_to}; lower the target or add depth pruning"
        )
    if limit is not None and not units.lands(run, target_removed, limit):
        raise BudgetError(units.overshoot_message(target_removed, limit, already_removed, reached))
    keep_heads, keep_neurons = {}, {}
    for i in range(costs.depth):
        gone = {int(h) for h in units.head_order[i][: run.taken[("head", i)]]}
        keep_heads[i] = tuple(h for h in range(costs.num_heads[i]) if h not in gone)
        dropped = {int(j) for g in units.groups[i][: run.taken[("group", i)]] for j in g}
        keep_neurons[i] = tuple(j for j in range(costs.hidden[i]) if j not in dropped)
    return WidthPlan(
        plan=PrunePlan(keep_heads=keep_heads, keep_neurons=keep_neurons),
        metric=costs.metric,
        reference_total=reference_total,
        removed=run.removed,
        already_removed=already_removed,
        heads_kept=tuple(len(keep_heads[i]) for i in range(costs.depth)),
        neurons_kept=tuple(len(keep_neurons[i]) for i in range(costs.depth)),
    )


@dataclass(frozen=True)
class _Run:
    taken: dict  # (kind, block) -> how many units of that chain were removed, kind "head" or "group"
    removed: float  # their cost
    loss: float  # their summed scores
    below: float  # the cost removed just before the last unit


class _Units:
    """The removable units of one model: per block, a chain of heads and a chain of neuron groups, each
    lowest-scored first; a chain can only be removed from its front."""

    def __init__(self, costs: ModelCosts, scores: Scores, reference_total: float, min_heads: int, round_to: int):
        self.reference_total = reference_total
        self.metric, self.min_heads, self.round_to = costs.metric, min_heads, round_to
        self.head_order = [np.argsort(scores.heads[i], kind="stable") for i in range(costs.depth)]
        self.groups = [_neuron_groups(scores.neurons[i], round_to) for i in range(costs.depth)]
        # chain -> the (score, cost) of its units, in removal order
        self.chains: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for i in range(costs.depth):
            heads = [(float(scores.heads[i][h]), costs.head[i]) for h in self.head_order[i]]
            self.chains[("head", i)] = heads[: max(0, len(heads) - min_heads)]
            groups = [(float(scores.neurons[i][g].sum()), costs.neuron[i] * len(g)) for g in self.groups[i]]
            self.chains[("group", i)] = groups[:-1]  # keep the last group

    def greedy(self, target: float, caps: dict | None = None) -> _Run:
        """Units cheapest per cost first (score / cost) until `target` is removed.

        A unit that would overshoot the target by more than half a point is set aside while finer units
        (neuron groups) can still close the gap; it is taken only if nothing else remains. `caps` bounds
        how many units a chain (key: (kind, block)) or a kind (key: "head" or "group") may lose.
        """
        caps = caps or {}
        taken = dict.fromkeys(self.chains, 0)
        per_kind = {"head": 0, "group": 0}

        def candidate(chain):
            k, kind = taken[chain], chain[0]
            if k >= len(self.chains[chain]) or k >= caps.get(chain, k + 1) or per_kind[kind] >= caps.get(kind, per_kind[kind] + 1):
                return None
            unit_score, cost = self.chains[chain][k]
            return (unit_score / cost, chain, cost, unit_score)

        heap = [c for c in map(candidate, self.chains) if c is not None]
        heapq.heapify(heap)
        removed = below = loss = 0.0
        slack = 0.005 * self.reference_total
        set_aside: list = []
        while removed < target and (heap or set_aside):
            if heap:
                unit = heapq.heappop(heap)
                if removed + unit[2] - target > slack:
                    set_aside.append(unit)
                    continue
            else:
                unit = min(set_aside, key=lambda u: u[2])
                set_aside.remove(unit)
            _, chain, cost, unit_score = unit
            if candidate(chain) is None:  # a kind's cap was reached after this unit was queued
                continue
            taken[chain] += 1
            per_kind[chain[0]] += 1
            below, removed, loss = removed, removed + cost, loss + unit_score
            nxt = candidate(chain)
            if nxt is not None:
                heapq.heappush(heap, nxt)
        return _Run(taken, removed, loss, below)

    @staticmethod
    def lands(run: _Run, target: float, limit: float) -> bool:
        return target <= run.removed <= target + limit * (1 + 1e-9)

    def search(self, target: float, limit: float | None) -> tuple[_Run, list[float]]:
        """The greedy plan; if it overshoots by more than `limit`, the greedy again with fewer units of one
        chain, or of one kind (up to 8 fewer), in its place, keeping the least loss among those that land.
        Also returns every cost removed on the way (what the units reach near the target)."""
        run = self.greedy(target)
        reached = [run.below, run.removed]
        if limit is None or run.removed < target or self.lands(run, target, limit):
            return run, reached
        caps = [{chain: k - 1} for chain, k in run.taken.items() if k]
        for kind in ("head", "group"):
            n = sum(k for (c, _), k in run.taken.items() if c == kind)
            caps += [{kind: n - j} for j in range(1, min(n, 8) + 1)]
        landed = []
        for cap in caps:
            retry = self.greedy(target, cap)
            reached += [retry.below, retry.removed]
            if self.lands(retry, target, limit):
                landed.append(retry)
        return (min(landed, key=lambda r: (r.loss, r.removed)) if landed else run), reached

    def overshoot_message(self, target: float, limit: float, already: float, reached: list[float]) -> str:
        """Which total reductions the units reach around the target, and which --reduce values land."""
        as_total = lambda removed: (already + removed) / self.reference_total  # noqa: E731
        under = [r for r in reached if 0 < r < target]
        over = [r for r in reached if r > target + limit]
        near = ([max(under)] if under else []) + ([min(over)] if over else [])
        landing = []
        for removed in near:
            value = math.floor(as_total(removed) * 1000) / 1000  # as --reduce would be given, not above it
            retarget = value * self.reference_total - already
            if retarget > 0 and self.lands(self.search(retarget, limit)[0], retarget, limit):
                landing.append(f"--reduce {self.metric}={value:g}")
        return (
            f"width pruning cannot land within {limit / self.reference_total * 100:g} point of "
            f"{self.metric} -{as_total(target):.1%}: with --round-to {self.round_to} and --min-heads "
            f"{self.min_heads} the nearest reductions it reaches are {' and '.join(f'{as_total(r):.1%}' for r in near)}; "
            f"use {' or '.join([*landing, 'a smaller --round-to'])}"
        )


def _plan_latency(costs: ModelCosts, scores: Scores, *, target_removed: float, reference_total: float,
                  already_removed: float, min_heads: int, round_to: int, tolerance: float | None) -> WidthPlan:
    """Width plan on a measured latency table: per block, how many heads and neuron groups go, chosen
    together by a multiple-choice knapsack (least summed score removed; predicted latency at the target,
    or at most `tolerance` x the teacher's below it). Within a block the lowest-scored heads and groups
    go first, as in the FLOPs plan."""
    table = costs.table
    head_order = [np.argsort(scores.heads[i], kind="stable") for i in range(costs.depth)]
    groups = [_neuron_groups(scores.neurons[i], round_to) for i in range(costs.depth)]
    losses, prices, options = [], [], []  # per sub-block: option -> loss removed, predicted ms, units removed
    for i in range(costs.depth):
        head_loss, group_loss, sizes = removal_chains(scores, i, min_heads, round_to)
        losses.append(head_loss)
        prices.append([table.attention_cost(costs.num_heads[i] - k) for k in range(len(head_loss))])
        options.append(("head", i))
        losses.append(group_loss)
        prices.append([table.mlp_cost(costs.hidden[i] - int(n)) for n in sizes])
        options.append(("group", i))
    room = costs.total - target_removed - costs.fixed  # what the blocks may cost together
    most = costs.total - costs.fixed - sum(min(p) for p in prices)
    if most < target_removed:
        raise BudgetError(
            f"width pruning can remove at most {(already_removed + most) / reference_total:.1%} of the predicted "
            f"latency with --min-heads {min_heads} and --round-to {round_to}; lower the target or add depth pruning"
        )
    floor = room - tolerance * reference_total if tolerance is not None else 0.0
    try:
        chosen = knapsack.solve(losses, prices, room, floor=max(floor, 0.0))
    except BudgetError as e:
        window = f"within {tolerance:g} of the teacher's predicted latency below the target" if tolerance else "under the target"
        raise BudgetError(f"width pruning cannot land {window} on this latency table ({e}); use another --reduce "
                          "or a smaller --round-to (profiled on that grid)") from None
    keep_heads, keep_neurons = {}, {}
    for (kind, i), k in zip(options, chosen, strict=True):
        if kind == "head":
            gone = {int(h) for h in head_order[i][:k]}
            keep_heads[i] = tuple(h for h in range(costs.num_heads[i]) if h not in gone)
        else:
            dropped = {int(j) for g in groups[i][:k] for j in g}
            keep_neurons[i] = tuple(j for j in range(costs.hidden[i]) if j not in dropped)
    after = costs.fixed + sum(p[k] for p, k in zip(prices, chosen, strict=True))
    return WidthPlan(
        plan=PrunePlan(keep_heads=keep_heads, keep_neurons=keep_neurons),
        metric=costs.metric,
        reference_total=reference_total,
        removed=costs.total - after,
        already_removed=already_removed,
        heads_kept=tuple(len(keep_heads[i]) for i in range(costs.depth)),
        neurons_kept=tuple(len(keep_neurons[i]) for i in range(costs.depth)),
    )


def removal_chains(scores: Scores, block: int, min_heads: int, round_to: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What removing the first k heads (lowest-scored first, `min_heads` stay) or the first n neuron groups (the
    last group stays) of `block` loses: summed scores per k and per n, and the neurons the n groups hold."""
    heads = scores.heads[block]
    removable = max(0, len(heads) - min_heads)
    head_loss = np.concatenate([[0.0], np.cumsum(np.sort(heads, kind="stable"))])[: removable + 1]
    groups = _neuron_groups(scores.neurons[block], round_to)[:-1]
    group_loss = np.concatenate([[0.0], np.cumsum([scores.neurons[block][g].sum() for g in groups])])
    sizes = np.concatenate([[0], np.cumsum([len(g) for g in groups])]).astype(int)
    return head_loss, group_loss, sizes


def _neuron_groups(neuron_scores: np.ndarray, round_to: int) -> list[np.ndarray]:
    """Neurons sorted by score, cut into groups of `round_to`; a remainder group comes first."""
    order = np.argsort(neuron_scores, kind="stable")
    first = len(order) % round_to
    groups = [order[:first]] if first else []
    groups += [order[s : s + round_to] for s in range(first, len(order), round_to)]
    return groups


# ---------------------------------------------------------------------------------------------- depth


def plan_depth(scores: Scores, num_remove: int) -> PrunePlan:
    """Remove the `num_remove` lowest-scored blocks."""
    depth = len(scores.blocks)
    if not 0 <= num_remove < depth:
        raise BudgetError(f"cannot remove {num_remove} of {depth} blocks; at least one block must remain")
    order = np.argsort(scores.blocks, kind="stable")
    return PrunePlan(drop_blocks=tuple(sorted(int(i) for i in order[:num_remove])))


def choose_blocks(block_scores: np.ndarray, block_costs: tuple[float, ...], count: int, room: float) -> tuple[int, ...]:
    """Up to `count` blocks, lowest score first, whose costs together fit in `room`.

    As many blocks are taken as fit (the `count` cheapest, if they fit); a low-scored block is passed
    over only when taking it would leave no room for that many.
    """
    depth = len(block_costs)
    count = min(count, depth - 1)
    count = min(count, int(np.searchsorted(np.cumsum(sorted(block_costs)), room, side="right")))
    chosen: list[int] = []
    order = [int(i) for i in np.argsort(block_scores, kind="stable")]
    for k, i in enumerate(order):
        need = count - len(chosen) - 1
        if need < 0:
            break
        rest = sorted(block_costs[j] for j in order[k + 1 :])
        if block_costs[i] + sum(rest[:need]) <= room:
            chosen.append(i)
            room -= block_costs[i]
    return tuple(sorted(chosen))


@dataclass(frozen=True)
class DepthPlan:
    plan: PrunePlan  # blocks to drop, and the top-up's heads and neurons (indices of this model)
    block_scores: tuple[float, ...]
    top_up: WidthPlan | None = None  # the width units that land the total on the target, if any

    def describe(self) -> str:
        text = (f"depth plan: remove blocks {list(self.plan.drop_blocks)} "
                f"(block scores {[round(s, 4) for s in self.block_scores]})")
        if self.top_up is not None:
            text += "\ntop-up on the kept blocks, " + self.top_up.describe()
        return text


def plan_depth_blocks(
    costs: ModelCosts, scores: Scores, count: int, *, target_removed: float, reference_total: float
) -> tuple[PrunePlan, float]:
    """Blocks to drop after width stages: the lowest-scored of those that fit the target (+1 point).

    Returns the plan and what is still missing to the target after it (absolute; <= 0 when reached).
    """
    already = reference_total - costs.total
    room = target_removed + TOLERANCE * reference_total - already
    chosen = choose_blocks(scores.blocks, costs.blocks, count, room)
    if not chosen:
        raise BudgetError(
            f"every block costs more than the {costs.metric} budget has left after width pruning; "
            "use --stages width, a larger --reduce, or a smaller --depth-share"
        )
    dropped = sum(costs.blocks[i] for i in chosen)
    return PrunePlan(drop_blocks=chosen), target_removed - (already + dropped)


def depth_plan(plan: PrunePlan, block_scores: np.ndarray, top_up: WidthPlan | None = None) -> DepthPlan:
    """The blocks `plan` drops, plus a width `top_up` planned on the kept blocks (numbered 0.. after the cut)."""
    if top_up is not None:
        kept = [i for i in range(len(block_scores)) if i not in set(plan.drop_blocks)]
        plan = replace(
            plan,
            keep_heads={kept[k]: v for k, v in top_up.plan.keep_heads.items()},
            keep_neurons={kept[k]: v for k, v in top_up.plan.keep_neurons.items()},
        )
    return DepthPlan(plan=plan, block_scores=tuple(float(s) for s in block_scores), top_up=top_up)
