"""Which plan gives up more of the Taylor proxy at the same MACs: the latency plan or the FLOPs plan?

Recomputes the Taylor scores a `latency_plan accuracy` run planned with (same teacher, data and `--seed`) and
sums, for the latency plan and the FLOPs plan nearest its MACs, the scores of the units each removes (the
lowest-scored heads and neurons of each block, as both planners remove them). If the latency plan removed
less score and still lost more accuracy, the knapsack would be over-fitting the proxy; if it removed more,
it paid score for latency its table promised.

    python -m research.same_macs_taylor --teacher ../shared/models/cifar10-vit \\
        --data-dir ../shared/datasets/cifar10 research/results/latency-plan/corner-fit/accuracy-run1.json:0 ...
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import torch

from vitshrink.compressor.scoring.importance import Scores


def removed_score(scores: Scores, heads: list[int], mlp: list[int]) -> float:
    """Summed score of the lowest-scored heads and neurons a plan keeping `heads` and `mlp` per block removes."""
    total = 0.0
    for block, (kept_heads, kept_neurons) in enumerate(zip(heads, mlp, strict=True)):
        head_scores, neuron_scores = np.sort(scores.heads[block]), np.sort(scores.neurons[block])
        total += float(head_scores[:len(head_scores) - kept_heads].sum() + neuron_scores[:len(neuron_scores) - kept_neurons].sum())
    return total


@click.command()
@click.option("--teacher", "teacher_path", required=True)
@click.option("--data-dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.argument("runs", nargs=-1, required=True)
def main(teacher_path, data_dir, threads, runs):
    """RUNS: accuracy result JSON:seed pairs (the --seed each accuracy run was made with)."""
    from research.latency_plan import teacher_data_and_scores
    from research.same_macs import latency_and_twin

    torch.set_num_threads(threads)
    for run in runs:
        path, _, seed_text = run.rpartition(":")
        if not path or not seed_text.isdigit():
            raise click.BadParameter(f"{run!r}: give RESULT.json:SEED", param_hint="RUNS")
        result = json.loads(Path(path).read_text())
        # the budget only names the run's config; the scores depend on the teacher, the data and the seed
        _, _, scores = teacher_data_and_scores(teacher_path, str(data_dir), 0.3, int(seed_text))
        for row in latency_and_twin(result):
            click.echo(f"{Path(path).name} seed {seed_text} {row['plan']:11s} MACs -{row['flops_reduction']:.1%} top-1 "
                       f"{row['top1']:.2%} removed Taylor {removed_score(scores, row['heads'], row['mlp']):.4f} "
                       f"heads {row['heads']} mlp {row['mlp']}")


if __name__ == "__main__":
    main()
