"""How far one pair of ONNX Runtime sessions moves a speedup: one model timed against itself (A/A).

One ONNX file is loaded twice, in fresh sessions every round, and the two are timed as `time_pair` times a
teacher and its student (interleaved, bench's ONNX Runtime CPU settings). Every ratio should be 1: their spread
is what one pairing of sessions carries beyond its own bootstrap interval, and their median is any advantage of
being timed second (`bench` times the student second).

    python -m research.session_noise --model ../shared/models/cifar10-vit --batch-sizes 1 --rounds 16
    python -m research.session_noise --model vit_small_patch16_224 --batch-sizes 1,8 --rounds 10
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import torch

from research.ort_pair import export_for_ort, load_ort_cpu, time_pair
from vitshrink.compressor.core.atomic import write_json_atomic
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.exporters.io_spec import IOSpec
from vitshrink.exporters.runtime.backends import RuntimeOptions
from vitshrink.exporters.runtime.timing import TimingPolicy


def a_a(path: Path, io: IOSpec, batch: int, threads: int, policy: TimingPolicy, rounds: int, seed: int) -> list[dict]:
    """Per round: the second session's speedup over the first (both fresh sessions of `path`) and its interval."""
    options = RuntimeOptions(threads=threads, seed=seed)
    out = []
    for r in range(rounds):
        _, _, s = time_pair(load_ort_cpu(path, io, options), load_ort_cpu(path, io, options), batch, policy, seed + r)
        out.append(s.to_dict())
    return out


def spread(pairings: list[dict]) -> dict:
    """Median, sd and range of the per-round ratios, and the median width of their own 95% intervals."""
    ratios = np.array([p["ratio"] for p in pairings])
    widths = np.array([p["ci_high"] - p["ci_low"] for p in pairings])
    return {"rounds": len(ratios), "median": float(np.median(ratios)),
            "sd": float(ratios.std(ddof=1)) if len(ratios) > 1 else 0.0,
            "low": float(ratios.min()), "high": float(ratios.max()), "median_interval_width": float(np.median(widths))}


@click.command()
@click.option("--model", "model_name", default="../shared/models/cifar10-vit", show_default=True,
              help="A timm name (random weights) or a model folder.")
@click.option("--batch-sizes", default="1", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--rounds", type=click.IntRange(min=2), default=16, show_default=True, help="Pairs of fresh sessions.")
@click.option("--seconds", type=float, default=1.0, show_default=True,
              help="Each session timed for at least this long per round (and 10 calls).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/session-noise"))
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def main(model_name, batch_sizes, threads, rounds, seconds, seed, work, json_path):
    """A/A: one model against itself in fresh sessions; the spread of the ratios is the sessions' noise."""
    torch.set_num_threads(threads)
    loaded = load_model(model_name)
    model = loaded.model.eval()
    io = IOSpec.from_model(model, loaded.data_config)
    work.mkdir(parents=True, exist_ok=True)
    path = export_for_ort(model, io, work / "model.onnx")
    policy = TimingPolicy(warmup_iters=2, warmup_s=0.0, min_iters=10, min_time_s=seconds, max_time_s=120.0)
    out = {}
    for batch in (int(b) for b in batch_sizes.split(",")):
        pairings = a_a(path, io, batch, threads, policy, rounds, seed)
        s = spread(pairings)
        out[batch] = {**s, "pairings": pairings}
        click.echo(f"{model_name} batch {batch}: second session over first, {s['rounds']} pairs of fresh sessions: "
                   f"median {s['median']:.4f}, sd {s['sd']:.4f}, {s['low']:.4f}-{s['high']:.4f} (one pairing's own "
                   f"95% interval: {s['median_interval_width']:.4f} wide, median)")
    if json_path is not None:
        write_json_atomic(json_path, out)


if __name__ == "__main__":
    main()
