"""Does the table price heads against MLP neurons as whole models run? Models that differ from the teacher only in
heads, or only in MLP width, in every block alike, timed against it, next to the table's prediction.

Written to ask whether the table overprices what cutting heads saves (the knapsack's plan on the CIFAR-10 ViT
pays more Taylor score than the FLOPs planner for about 1% of speed). Three runs answered no: no steady bias
between heads and MLP, but each profile off by up to about 3% on some shapes, either way (docs/latency.md,
point 3). Here one profile, then a model with h
heads in every block (whole MLPs) for every h, and models with every head and one MLP width in every block, each
timed against the teacher in `--rounds` pairings of fresh sessions (`equal_latency.time_rounds`).

    python -m research.uniform_widths --teacher ../shared/models/cifar10-vit --batch 1
"""

from __future__ import annotations

from pathlib import Path

import click
import torch

from research.equal_latency import ROUND_SECONDS, shaped, time_rounds
from vitshrink.compressor.core.atomic import write_json_atomic
from vitshrink.compressor.core.latency_table import LatencyTable
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.exporters.io_spec import IOSpec
from vitshrink.exporters.runtime.latency_profile import profile
from vitshrink.exporters.runtime.timing import TimingPolicy


def uniform_shapes(heads: int, hidden: int, depth: int, widths: list[int]) -> dict[str, list[tuple[int, int]]]:
    """h heads (whole MLPs) in every block for h = 1..heads-1, and every head with each MLP width of `widths`."""
    shapes = {f"heads {h}": [(h, hidden)] * depth for h in range(1, heads)}
    return {**shapes, **{f"mlp {w}": [(heads, w)] * depth for w in widths}}


def compare(table: LatencyTable, shapes: dict[str, list[tuple[int, int]]], measured: dict[str, float]) -> list[dict]:
    """Per shape: the table's predicted speedup over the teacher, the measured one, and the table's error."""
    heads, hidden = len(table.attention) - 1, table.mlp_widths[-1]
    teacher = table.predict([(heads, hidden)] * len(next(iter(shapes.values()))))
    rows = []
    for name, blocks in shapes.items():
        predicted = teacher / table.predict(blocks)
        rows.append({"shape": name, "predicted": predicted, "measured": measured[name],
                     "error": predicted / measured[name] - 1})
    return rows


@click.command()
@click.option("--teacher", default="../shared/models/cifar10-vit", show_default=True, help="A model folder or timm name.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--widths", default="96,192,384,576", show_default=True, help="MLP widths of the MLP-only models.")
@click.option("--rounds", type=click.IntRange(min=1), default=6, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/uniform-widths"))
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def main(teacher, batch, threads, widths, rounds, seed, work, json_path):
    """Predicted vs measured speedup of models cut in heads only or MLP only, every block alike."""
    torch.set_num_threads(threads)
    loaded = load_model(teacher)
    model = loaded.model.eval()
    io = IOSpec.from_model(model, loaded.data_config)
    table = profile(model, "ort-cpu", batch=batch, threads=threads, log=click.echo)
    spec = table.key.architecture
    shapes = uniform_shapes(spec["num_heads"], spec["mlp_hidden"], spec["depth"], [int(w) for w in widths.split(",")])
    policy = TimingPolicy(warmup_iters=3, warmup_s=0.0, min_iters=50, min_time_s=ROUND_SECONDS, max_time_s=120.0)
    timed = time_rounds(model, {name: shaped(model, [h for h, _ in b], [m for _, m in b]) for name, b in shapes.items()},
                        io, batch, threads, policy, rounds, work, seed)
    rows = compare(table, shapes, {name: t["speedup"] for name, t in timed.items()})
    for r in rows:
        click.echo(f"{r['shape']:>9}: table {r['predicted']:.3f}x, measured {r['measured']:.3f}x "
                   f"({r['error']:+.1%} the table's error)")
    if json_path is not None:
        write_json_atomic(json_path, {"table": table.to_dict(), "rows": rows,
                                      "rounds": {n: t["rounds"] for n, t in timed.items()}})


if __name__ == "__main__":
    main()
