"""How much one teacher/student speedup moves from timing to timing, by estimator.

One ViT pair (the teacher and a copy with every MLP cut to `--mlp` neurons), both on bench's ONNX Runtime CPU
runtime, timed alternately with bench's loop `--repeats` times. For each timing, two estimates of the
reduction 1 - student / teacher: the ratio of the two medians, and the median of the per-round ratios
(bench's speedup since 2026-11-30). Their spread over the repeats is the noise a single timing carries.

    python -m research.timing_noise --batch 8 --rounds 10,20 --repeats 5   # ~5 min
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import click
import numpy as np
import torch

from research.ort_pair import ort_cpu_runtime
from vitshrink.benchmarks.stats import speedup
from vitshrink.compressor.core.atomic import write_json_atomic
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.core.surgery import prune_mlp
from vitshrink.exporters.io_spec import IOSpec
from vitshrink.exporters.runtime.backends import RuntimeOptions
from vitshrink.exporters.runtime.timing import TimingPolicy, measure


def reductions(teacher_s: list[float], student_s: list[float]) -> dict[str, float]:
    """1 - student / teacher by the ratio of the two medians and by the median of the per-round ratios."""
    return {"ratio_of_medians": 1 - float(np.median(student_s) / np.median(teacher_s)),
            "median_of_ratios": 1 - 1 / speedup(teacher_s, student_s).ratio}


@click.command()
@click.option("--model", "model_name", default="vit_small_patch16_224", show_default=True)
@click.option("--mlp", type=click.IntRange(min=1), default=900, show_default=True, help="MLP neurons the student keeps.")
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--rounds", default="10,20", show_default=True, help="Rounds per timing (comma-separated).")
@click.option("--repeats", type=click.IntRange(min=2), default=5, show_default=True, help="Timings per round count.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def main(model_name, mlp, batch, threads, rounds, repeats, seed, json_path):
    """Spread of repeated speedup timings of one pair, ratio of medians vs median of per-round ratios."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    teacher = load_model(model_name)
    student = copy.deepcopy(teacher.model)
    for block in student.blocks:
        block.mlp = prune_mlp(block.mlp, tuple(range(mlp)))
    io = IOSpec.from_model(teacher.model, teacher.data_config)
    options = RuntimeOptions(threads=threads, seed=seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vitshrink-noise-") as tmp:
        runtimes = {name: ort_cpu_runtime(model.eval(), io, Path(tmp) / f"{name}.onnx", options)
                    for name, model in (("teacher", teacher.model), ("student", student))}
        calls = {name: (lambda r=r: r.run(batch)) for name, r in runtimes.items()}
        for n in (int(r) for r in rounds.split(",")):
            policy = TimingPolicy(warmup_iters=2, warmup_s=0.0, min_iters=n, min_time_s=0.0, max_iters=n)
            timings = [reductions(**{f"{k}_s": v for k, v in measure(calls, policy).items()})
                       for _ in range(repeats)]
            row = {"batch": batch, "rounds": n, "repeats": repeats}
            for estimator in ("ratio_of_medians", "median_of_ratios"):
                values = [t[estimator] for t in timings]
                row[estimator] = {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)), "values": values}
            rows.append(row)
            click.echo(f"batch {batch}, {n} rounds x {repeats}: reduction sd "
                       f"{100 * row['ratio_of_medians']['sd']:.2f} points as the ratio of medians, "
                       f"{100 * row['median_of_ratios']['sd']:.2f} as the median of per-round ratios "
                       f"(means {row['ratio_of_medians']['mean']:.1%} / {row['median_of_ratios']['mean']:.1%})")
    if json_path is not None:
        write_json_atomic(json_path, rows)


if __name__ == "__main__":
    main()
