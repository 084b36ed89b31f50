"""How close a latency table's prediction comes on models it was not fitted on, plans above all.

A timm ViT (random weights: speed does not depend on them) is profiled on ONNX Runtime (CPU) as
`vitshrink profile` does; then models the fit never saw are cut and timed against the teacher with the
latency check's clock (`measure_reduction`: exported as `bench` times them, median of per-round ratios):
knapsack plans on the table for Taylor scores of `--seeds` random-image batches at each `--aims`, and
`--random` models of random widths (another seed than the fit's). Reported per model: the reduction the
table predicts, the one measured, and the error of the predicted share of the teacher (what `bench`
calls predicted vs realised).

    python -m research.table_accuracy --batch 1 --json b1.json   # ~5 min at batch 1
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import numpy as np
import torch

from research.latency_plan import cut, random_scores
from vitshrink.compressor.core.atomic import write_json_atomic
from vitshrink.compressor.core.families import mlp_hidden
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.planning.planner import model_cost, model_costs, plan_width
from vitshrink.exporters.runtime.latency_profile import measure_reduction, profile, random_plans


def held_out_models(model: torch.nn.Module, table, seeds: int, aims: tuple[float, ...], random: int,
                    round_to: int) -> list[tuple[str, object]]:
    """(name, plan) of every model timed: knapsack plans, then models of random widths."""
    costs = model_costs(model, "latency", table)
    cases = []
    for seed in range(seeds):
        scores = random_scores(model, seed)
        for aim in aims:
            plan = plan_width(costs, scores, target_removed=aim * costs.total, reference_total=costs.total,
                              round_to=round_to)
            cases.append((f"plan seed {seed} -{aim:.0%}", plan.plan))
    blk = model.blocks[0]
    for i, plan in enumerate(random_plans(blk.attn.num_heads, mlp_hidden(blk.mlp), len(model.blocks), round_to,
                                          random, seed=1)):
        cases.append((f"random {i}", plan))
    return cases


@click.command()
@click.option("--model", "model_name", default="vit_small_patch16_224", show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--round-to", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--seeds", type=click.IntRange(min=0), default=4, show_default=True, help="Score seeds for plans.")
@click.option("--aims", default="0.2,0.3,0.4", show_default=True, help="Latency reductions the plans aim at.")
@click.option("--random", type=click.IntRange(min=0), default=4, show_default=True, help="Models of random widths.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def main(model_name, batch, threads, round_to, seeds, aims, random, json_path):
    """Predicted vs measured latency reduction of models the table's fit never saw."""
    torch.set_num_threads(threads)
    model = load_model(model_name).model.eval()
    table = profile(model, "ort-cpu", batch=batch, threads=threads, round_to=round_to, progress=False)
    teacher_ms = model_cost(model, "latency", table)
    rows = []
    for name, plan in held_out_models(model, table, seeds, tuple(float(a) for a in aims.split(",")), random, round_to):
        student = cut(model, plan)
        predicted = 1 - model_cost(student, "latency", table) / teacher_ms
        measured = measure_reduction(model, student, table)
        error = (1 - measured) / (1 - predicted) - 1
        rows.append({"model": name, "predicted": predicted, "measured": measured, "share_error": error,
                     "heads": [b.attn.num_heads for b in student.blocks],
                     "mlp": [mlp_hidden(b.mlp) for b in student.blocks]})
        click.echo(f"{name:20s} predicted -{predicted:.1%}  measured -{measured:.1%}  error {error:+.1%}")
    errors = np.abs([r["share_error"] for r in rows])
    click.echo(f"batch {batch}: |error| mean {errors.mean():.1%}, max {errors.max():.1%}, "
               f"within 5%: {int((errors <= 0.05).sum())} of {len(rows)}; fit {dataclasses.asdict(table.fit)}")
    if json_path is not None:
        write_json_atomic(json_path, {"batch": batch, "threads": threads, "table": table.to_dict(), "rows": rows})


if __name__ == "__main__":
    main()
