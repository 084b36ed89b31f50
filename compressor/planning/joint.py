"""One plan over widths and blocks: for every block, keep it at some (heads, neuron groups) or remove it.

Each block is one group of a multiple-choice knapsack (`knapsack.solve`). Its options are every kept
(heads, MLP width) pair a width plan can make (the lowest-scored heads and neuron groups go first, at least
`min_heads` heads and one neuron group stay), plus "remove the block". An option's cost is what the block
then costs in the budget's metric (MACs, parameters, or predicted ms on the latency table, where a removed
block costs 0); its loss is the estimated loss added: the summed scores of the heads and groups removed, or,
for a removed block, the block's estimate (`BLOCK_ESTIMATES`). The knapsack picks one option per block with
the least total loss whose total cost lands within the budget window; the last block is never removed.
"""

from __future__ import annotations

import numpy as np

from vitshrink.compressor.core.errors import BudgetError
from vitshrink.compressor.core.surgery import PrunePlan
from vitshrink.compressor.planning import knapsack
from vitshrink.compressor.planning.planner import ModelCosts, WidthPlan, _neuron_groups, removal_chains
from vitshrink.compressor.scoring.importance import Scores

# How a removed block's loss is estimated, on the scale of the width units' Taylor scores:
# "ablation": the measured loss change with the block skipped (score_blocks, criterion ablation);
# "taylor": |dL/dg| of the block's gate (score_blocks, criterion taylor);
# "unit-sum": the summed Taylor scores of all the block's heads and neurons.
BLOCK_ESTIMATES = ("ablation", "taylor", "unit-sum")
# What `--stages joint` uses: on the reference CIFAR-10 ViT, the summed unit scores ranked the measured validation
# loss of 44 combined cuts (0-2 blocks removed, widths cut to 30% or 45% of the MACs) with Spearman 0.94, against
# 0.83 for ablation and 0.50 for the block gate's Taylor score, and its joint plans were never worse on validation
# than width-only plans at four budgets; ablation's and the gate's removed blocks that cost more than they saved.
# Taylor sums overestimate what a width cut costs (20x at 30% of the MACs), so an exact block estimate next to
# them makes blocks look cheap (research/results/joint/estimates/estimates.md).
JOINT_BLOCK_ESTIMATE = "unit-sum"


def block_losses(estimate: str, units: Scores, blocks: Scores | None) -> np.ndarray:
    """Each block's estimated loss when removed, by `estimate` (`BLOCK_ESTIMATES`); `blocks` holds the block
    scores of the criterion named by `estimate` (not needed for unit-sum)."""
    if estimate == "unit-sum":
        return np.array([h.sum() + n.sum() for h, n in zip(units.heads, units.neurons, strict=True)])
    if estimate not in BLOCK_ESTIMATES:
        raise BudgetError(f"unknown block estimate {estimate!r}; use one of {', '.join(BLOCK_ESTIMATES)}")
    if blocks is None or blocks.blocks.size != len(units.heads):
        raise BudgetError(f"the {estimate} block estimate needs a score for every block")
    return np.asarray(blocks.blocks, dtype=float)


def _block_options(costs: ModelCosts, scores: Scores, block: int, min_heads: int, round_to: int
                   ) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
    """The width options of one block: (heads removed, groups removed) pairs, their costs and losses."""
    heads, hidden = costs.num_heads[block], costs.hidden[block]
    head_loss, group_loss, neurons_gone = removal_chains(scores, block, min_heads, round_to)
    if costs.table is not None:
        table = costs.table
        head_cost = np.array([table.attention_cost(heads - k) for k in range(len(head_loss))])
        mlp_cost = np.array([table.mlp_cost(hidden - int(n)) for n in neurons_gone])
    else:  # MACs and parameters are linear in heads and neurons
        attention_share = costs.head[block] * heads
        head_cost = np.array([attention_share - costs.head[block] * k for k in range(len(head_loss))])
        mlp_cost = costs.blocks[block] - attention_share - costs.neuron[block] * neurons_gone
    pairs = [(k, n) for k in range(len(head_loss)) for n in range(len(group_loss))]
    cost = (head_cost[:, None] + mlp_cost[None, :]).ravel()
    loss = (head_loss[:, None] + group_loss[None, :]).ravel()
    return pairs, np.maximum(cost, 0.0), loss


def plan_joint(costs: ModelCosts, scores: Scores, removal_loss: np.ndarray, *, target_removed: float,
               reference_total: float, already_removed: float = 0.0, min_heads: int = 1, round_to: int = 8,
               tolerance: float | None = 0.01) -> WidthPlan:
    """Blocks to remove and widths to keep, together: at least `target_removed` of the cost goes, and at most
    `tolerance` x `reference_total` more (None: no upper limit). `removal_loss[i]` is block i's estimated loss
    when removed (`block_losses`). Refuses (BudgetError) a target no choice reaches. The plan's kept heads and
    neurons are those of the kept blocks; heads_kept/neurons_kept are 0 for a removed block."""
    if len(removal_loss) != costs.depth or len(scores.heads) != costs.depth:
        raise BudgetError(f"a joint plan needs unit scores and a removal estimate for all {costs.depth} blocks")
    per_block = [_block_options(costs, scores, i, min_heads, round_to) for i in range(costs.depth)]
    losses = [np.append(loss, float(removal_loss[i])) for i, (_, _, loss) in enumerate(per_block)]
    prices = [np.append(cost, 0.0) for _, cost, _ in per_block]
    room = costs.total - costs.fixed - target_removed  # what the kept blocks may cost together
    cheapest_kept = min(float(np.min(cost)) for _, cost, _ in per_block)  # one block at its narrowest, the rest gone
    if cheapest_kept > room:
        most = (already_removed + costs.total - costs.fixed - cheapest_kept) / reference_total
        raise BudgetError(f"removing blocks and narrowing the others can remove at most {most:.1%} of "
                          f"{costs.metric} with --min-heads {min_heads} and --round-to {round_to} (one block stays); "
                          "lower the target")
    floor = max(room - tolerance * reference_total, 0.0) if tolerance is not None else 0.0
    removed_index = [len(p) - 1 for p in prices]
    chosen = _solve_keeping_a_block(losses, prices, removed_index, room, floor)
    keep_heads, keep_neurons, drop = {}, {}, []
    heads_kept, neurons_kept = [], []
    for i, option in enumerate(chosen):
        if option == removed_index[i]:
            drop.append(i)
            heads_kept.append(0)
            neurons_kept.append(0)
            continue
        k, n = per_block[i][0][option]
        gone_heads = {int(h) for h in np.argsort(scores.heads[i], kind="stable")[:k]}
        gone_neurons = {int(j) for g in _neuron_groups(scores.neurons[i], round_to)[:n] for j in g}
        keep_heads[i] = tuple(h for h in range(costs.num_heads[i]) if h not in gone_heads)
        keep_neurons[i] = tuple(j for j in range(costs.hidden[i]) if j not in gone_neurons)
        heads_kept.append(len(keep_heads[i]))
        neurons_kept.append(len(keep_neurons[i]))
    after = costs.fixed + sum(float(p[c]) for p, c in zip(prices, chosen, strict=True))
    return WidthPlan(
        plan=PrunePlan(keep_heads=keep_heads, keep_neurons=keep_neurons, drop_blocks=tuple(drop)),
        metric=costs.metric,
        reference_total=reference_total,
        removed=costs.total - after,
        already_removed=already_removed,
        heads_kept=tuple(heads_kept),
        neurons_kept=tuple(neurons_kept),
    )


def _solve_keeping_a_block(losses, prices, removed_index, room: float, floor: float) -> list[int]:
    """The knapsack's choice; if it removes every block, the best choice that keeps one (each block in turn)."""
    try:
        chosen = knapsack.solve(losses, prices, room, floor=floor)
    except BudgetError as e:
        raise BudgetError(f"no plan of widths and blocks lands on this budget ({e}); use another --reduce or a "
                          "smaller --round-to") from None
    if any(c != r for c, r in zip(chosen, removed_index, strict=True)):
        return chosen
    best, best_loss = None, np.inf
    for keep in range(len(losses)):  # block `keep` loses its "remove" option
        trimmed_losses = [v[:-1] if i == keep else v for i, v in enumerate(losses)]
        trimmed_prices = [p[:-1] if i == keep else p for i, p in enumerate(prices)]
        try:
            option = knapsack.solve(trimmed_losses, trimmed_prices, room, floor=floor)
        except BudgetError:
            continue
        total = sum(float(v[c]) for v, c in zip(trimmed_losses, option, strict=True))
        if total < best_loss:
            best, best_loss = option, total
    if best is None:
        raise BudgetError("every plan that lands on this budget removes every block; lower the --reduce target")
    return best
