"""The latency plan against FLOPs plans at the same latency, each FLOPs plan timed against the latency plan itself.

Accuracy at equal latency (docs/latency.md) compares the latency plan's cut-only top-1 with the FLOPs plans' at
the same realised latency. Runs 1-15 of `latency_plan accuracy` (variants A-E in research/results/README.md)
timed every plan once against the teacher, in one pair of ONNX Runtime sessions, and interpolated the FLOPs
plans' top-1 at the latency plan's realised reduction. One such timing moves by more than its own interval
says: the FLOPs plans of run 12 (variant E; the CIFAR-10 ViT, 4-6 ms a call), each timed again four times
against the teacher in fresh sessions, moved by 0.8-2.1 points of realised reduction and sat 0.9-3.8 points
from the run's own values, where one timing's 95% interval spans about 0.5 point; their realised reductions
did not even rise with their MACs. One ONNX file timed against itself in fresh sessions spread with sd 2.9% in
one hour (a one-off script) and 0.6% in another (`session_noise.py`). A few points of latency are a few tenths
of a point of top-1 here: the size of the goal.

So here every FLOPs plan is timed against the latency plan (interleaved, as `bench` times a student against its
teacher) in `rounds` pairings, each in fresh sessions, the latency plan first in even rounds and second in odd
ones, and the median speedup is kept. A line through those speedups against the plans' MACs reduction (exact)
gives the MACs reduction at which a FLOPs plan runs as fast as the latency plan, and the FLOPs plans' top-1
(also exact) is interpolated there.

    python -m research.equal_latency RESULT.json...

re-times the plans of `latency_plan accuracy` results timed the single way (runs 5-15:
research/results/latency-plan/equal-latency/retime.json) and recomputes their comparison with their own top-1.
Timing needs only the shapes: each plan is rebuilt from the teacher keeping its first heads and neurons.
"""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path

import click
import numpy as np
import torch

from research.ort_pair import export_for_ort, load_ort_cpu, time_pair
from vitshrink.compressor.core.atomic import write_json_atomic
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.core.spec import ArchSpec
from vitshrink.compressor.core.surgery import PrunePlan, apply_plan
from vitshrink.exporters.io_spec import IOSpec
from vitshrink.exporters.runtime.backends import RuntimeOptions
from vitshrink.exporters.runtime.timing import TimingPolicy

ROUNDS = 12  # pairings per plan, each in fresh sessions: with 12 the five FLOPs plans' speedups rose with MACs in all 16 runs
ROUND_SECONDS = 1.0  # per model per round: more short pairings of fresh sessions rather than a few long ones


def time_rounds(reference: torch.nn.Module, others: dict[str, torch.nn.Module], io: IOSpec, batch: int,
                threads: int, policy: TimingPolicy, rounds: int, work: Path, seed: int) -> dict[str, dict]:
    """Per model of `others`: its speedup over `reference` (> 1: faster), the median of `rounds` interleaved
    pairings, each with both models loaded in fresh ONNX Runtime sessions, the reference first in even rounds
    and second in odd ones; and every round's pairing."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    work.mkdir(parents=True, exist_ok=True)
    options = RuntimeOptions(threads=threads, seed=seed)
    reference_path = export_for_ort(reference, io, work / "reference.onnx")
    paths = {name: export_for_ort(model, io, work / f"model-{i}.onnx") for i, (name, model) in enumerate(others.items())}
    pairings = {name: [] for name in others}
    for r in range(rounds):
        reference_first = r % 2 == 0
        for name, path in paths.items():
            first, second = (reference_path, path) if reference_first else (path, reference_path)
            first_ms, second_ms, s = time_pair(load_ort_cpu(first, io, options), load_ort_cpu(second, io, options),
                                               batch, policy, seed + r)
            reference_ms, ms = (first_ms, second_ms) if reference_first else (second_ms, first_ms)
            pairings[name].append({"reference_first": reference_first, "ratio": s.ratio if reference_first else 1 / s.ratio,
                                   "pairs": s.pairs, "reference_ms": reference_ms, "ms": ms})
    return {name: {"speedup": statistics.median(p["ratio"] for p in rounds_of), "rounds": rounds_of}
            for name, rounds_of in pairings.items()}


def flops_top1_at_equal_latency(flops_rows: list[dict]) -> dict:
    """The FLOPs plans' top-1 where they run as fast as the latency plan (their speedup over it,
    `over_latency_plan`, is 1). A line through their speedups against their MACs reduction (MACs are exact; each
    speedup carries its sessions' noise) gives the MACs reduction where the speedup is 1; their top-1 (also
    exact) is interpolated there. `interpolated`: that MACs reduction lies between the plans' (else the nearest
    plan's top-1). Also the plain interpolation of top-1 over the speedups, for comparison."""
    rows = sorted(flops_rows, key=lambda r: r["flops_reduction"])
    macs = np.array([r["flops_reduction"] for r in rows])
    speedups = np.array([r["over_latency_plan"] for r in rows])
    top1 = np.array([r["top1"] for r in rows])
    slope, intercept = np.polyfit(macs, speedups, 1)
    if slope <= 0:
        raise ValueError("the FLOPs plans do not get faster as they remove more MACs: time them again with more rounds")
    at_macs = (1.0 - intercept) / slope
    by_speed = np.argsort(speedups)
    return {"top1": float(np.interp(at_macs, macs, top1)), "macs_reduction": float(at_macs),
            "interpolated": bool(macs[0] <= at_macs <= macs[-1]), "slope": float(slope),
            "top1_interpolated_on_speedups": float(np.interp(1.0, speedups[by_speed], top1[by_speed]))}


def shaped(model: torch.nn.Module, heads: list[int], mlp: list[int]) -> torch.nn.Module:
    """`model` with block i keeping its first heads[i] heads and mlp[i] MLP neurons: a plan's shape."""
    cut = copy.deepcopy(model)
    apply_plan(cut, ArchSpec.from_model(cut), PrunePlan(keep_heads={i: tuple(range(h)) for i, h in enumerate(heads)},
                                                        keep_neurons={i: tuple(range(m)) for i, m in enumerate(mlp)}))
    return cut.eval()


def retime(result: dict, model: torch.nn.Module, io: IOSpec, batch: int, threads: int, policy: TimingPolicy,
           rounds: int, work: Path, seed: int) -> dict:
    """An accuracy run's comparison again, its FLOPs plans timed against its latency plan (`time_rounds`)."""
    latency, *flops = result["rows"]
    timed = time_rounds(shaped(model, latency["heads"], latency["mlp"]),
                        {r["plan"]: shaped(model, r["heads"], r["mlp"]) for r in flops}, io, batch, threads, policy,
                        rounds, work, seed)
    rows = [{"plan": r["plan"], "flops_reduction": r["flops_reduction"], "top1": r["top1"],
             "over_latency_plan": timed[r["plan"]]["speedup"], "rounds": timed[r["plan"]]["rounds"]} for r in flops]
    same = flops_top1_at_equal_latency(rows)
    twin = min(rows, key=lambda r: abs(r["flops_reduction"] - latency["flops_reduction"]))
    return {"latency_top1": latency["top1"], "latency_flops_reduction": latency["flops_reduction"], "rows": rows,
            "equal_latency": same, "difference_pt": 100 * (latency["top1"] - same["top1"]),
            "teacher_timed_difference_pt": result["difference_pt"],
            "same_macs_twin": twin["plan"], "latency_plan_over_twin": 1 / twin["over_latency_plan"]}


@click.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--teacher", default="../shared/models/cifar10-vit", show_default=True,
              help="The teacher the runs cut (their plans are rebuilt from it).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="The runs' --batch.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="The runs' --threads.")
@click.option("--rounds", type=click.IntRange(min=1), default=ROUNDS, show_default=True,
              help="Pairings per FLOPs plan, each in fresh sessions; the median speedup is kept.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/equal-latency"))
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def main(results, teacher, batch, threads, rounds, seed, work, json_path):
    """Re-time `latency_plan accuracy` runs: FLOPs plans against the latency plan, top-1 at equal latency."""
    torch.set_num_threads(threads)
    loaded = load_model(teacher)
    model = loaded.model.eval()
    io = IOSpec.from_model(model, loaded.data_config)
    policy = TimingPolicy(warmup_iters=3, warmup_s=0.0, min_iters=50, min_time_s=ROUND_SECONDS, max_time_s=120.0)
    out = {}
    for path in results:
        r = out[str(path)] = retime(json.loads(path.read_text()), model, io, batch, threads, policy, rounds, work, seed)
        click.echo(f"{path}: FLOPs plans over the latency plan "
                   + ", ".join(f"{row['plan']} {row['over_latency_plan']:.3f}x" for row in r["rows"])
                   + f"; latency plan {r['latency_plan_over_twin']:.3f}x the speed of {r['same_macs_twin']} (same MACs); "
                   f"equal latency at MACs -{r['equal_latency']['macs_reduction']:.1%}"
                   f"{'' if r['equal_latency']['interpolated'] else ' (EXTRAPOLATED)'}: top-1 "
                   f"{r['difference_pt']:+.2f} pt (timed against the teacher: {r['teacher_timed_difference_pt']:+.2f} pt)")
    diffs = np.array([r["difference_pt"] for r in out.values()])
    before = np.array([r["teacher_timed_difference_pt"] for r in out.values()])
    faster = np.array([r["latency_plan_over_twin"] for r in out.values()])
    click.echo(f"{len(diffs)} runs: at equal latency mean {diffs.mean():+.2f} pt, {int((diffs >= -0.5).sum())} of "
               f"{len(diffs)} no more than 0.5 pt below (timed against the teacher: mean {before.mean():+.2f} pt, "
               f"{int((before >= -0.5).sum())}); latency plan over its same-MACs FLOPs plan "
               f"{faster.min():.3f}-{faster.max():.3f}x, {int((faster > 1).sum())} of {len(faster)} faster")
    if json_path is not None:
        write_json_atomic(json_path, out)


if __name__ == "__main__":
    main()
