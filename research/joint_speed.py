"""Do joint plans (blocks and widths, `--stages joint`) land where the latency table says?

    python -m research.joint_speed --out research/results/joint/speed-vit-s.json

ViT-S/16 (random weights: speed does not depend on them) is profiled on ONNX Runtime CPU at each batch size
(`vitshrink profile`). Joint plans for `--reduce latency=R` are made on the table from Taylor scores of random
images and block removal estimates drawn at random between 0 and half a block's summed unit scores (an untrained
model has no meaningful ones; cheap random ones make plans that remove blocks, which is what is checked here: the
price of a removed block). Tables are saved beside `--out` and read back by a rerun. Each
plan is landed as `compress` lands a latency plan (timed against the teacher on the target and re-aimed by its
miss, `land_on_target`), then the kept plan is timed against the teacher once more, alone, as `bench` times
it. Reported per plan: blocks removed, predicted and realised reduction, the student's measured ms against the
table's prediction.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch

from research.latency_plan import cut, random_scores, time_against_teacher
from vitshrink.compressor.core.atomic import write_json_atomic, write_text_atomic
from vitshrink.compressor.core.latency_table import LatencyTable
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.planning.joint import block_losses, plan_joint
from vitshrink.compressor.planning.landing import CHECK_TIMINGS, land_on_target
from vitshrink.compressor.planning.planner import TOLERANCE, model_cost, model_costs
from vitshrink.exporters.io_spec import IOSpec
from vitshrink.exporters.runtime.latency_profile import measure_reduction, profile
from vitshrink.exporters.runtime.timing import TimingPolicy

# the kept plan timed against the teacher alone, as `bench` times a pair
FINAL_TIMING = TimingPolicy(warmup_iters=3, warmup_s=0.0, min_iters=20, min_time_s=2.0, max_time_s=120.0)


def random_removal(scores, draw: int) -> np.ndarray:
    """Block removal estimates drawn between 0 and half of each block's summed unit scores: some blocks are cheap
    to remove, so that the plans remove blocks (what is checked here)."""
    unit_sum = block_losses("unit-sum", scores, None)
    return unit_sum * np.random.default_rng(draw).uniform(0.0, 0.5, len(unit_sum))


def land_joint(model, costs, scores, removal, reduction: float, timings: int = CHECK_TIMINGS):
    """The joint plan for `reduction` on `costs.table`, landed as `compress` lands a latency plan (each plan timed
    `timings` times)."""

    def plan_for(aim: float):
        plan = plan_joint(costs, scores, removal, target_removed=aim * costs.total, reference_total=costs.total,
                          tolerance=TOLERANCE)
        return plan, plan.removed / costs.total

    return land_on_target(plan_for, lambda p: measure_reduction(model, cut(model, p.plan), costs.table), reduction,
                          timings=timings, log=print)


@click.command()
@click.option("--model", "model_name", default="vit_small_patch16_224", show_default=True)
@click.option("--reductions", default="0.3,0.5", show_default=True)
@click.option("--batch-sizes", default="1,8", show_default=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--draws", default=2, show_default=True, help="Random removal estimates per reduction.")
@click.option("--timings", default=CHECK_TIMINGS, show_default=True, help="Timings per plan in the latency check.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="JSON file; a .md beside it.")
@click.option("--report-only", is_flag=True, help="Write the .md from an existing JSON file.")
def main(model_name: str, reductions: str, batch_sizes: str, threads: int, draws: int, timings: int, out: Path,
         report_only: bool) -> None:
    if report_only:
        write_text_atomic(out.with_suffix(".md"), markdown(json.loads(out.read_text())))
        return
    torch.set_num_threads(threads)
    teacher = load_model(model_name)
    model = teacher.model.eval()
    io = IOSpec.from_model(model, teacher.data_config)
    scores = random_scores(model, seed=0)
    rows = []
    for batch in (int(b) for b in batch_sizes.split(",")):
        table_file = out.parent / f"{out.stem}-table-b{batch}.json"
        started = time.perf_counter()
        if table_file.is_file():  # profiled by an earlier run: read back
            table = LatencyTable.load(table_file)
        else:
            table = profile(model, "ort-cpu", batch=batch, threads=threads, round_to=8, log=print)
            table.save(table_file)
        profile_s = table.seconds or time.perf_counter() - started
        costs = model_costs(model, "latency", table)
        for reduction in (float(r) for r in reductions.split(",")):
            for draw in range(draws):
                removal = random_removal(scores, draw)
                plan, checks = land_joint(model, costs, scores, removal, reduction, timings)
                student = cut(model, plan.plan)
                with tempfile.TemporaryDirectory(prefix="joint-speed-") as work:  # ONNX files, 88 MB each
                    timed = time_against_teacher(model, {"joint": student}, io, batch, threads, FINAL_TIMING,
                                                 Path(work), seed=draw)["joint"]
                predicted_ms = model_cost(student, "latency", table)
                relative = (1 / timed["ratio"]) / (predicted_ms / costs.total) - 1
                row = {"batch": batch, "target": reduction, "draw": draw, "blocks_removed": list(plan.plan.drop_blocks),
                       "heads": list(plan.heads_kept), "mlp": list(plan.neurons_kept),
                       "predicted_reduction": plan.removed / costs.total,
                       "realised_reduction": timed["realised_reduction"], "speedup": timed["ratio"],
                       "speedup_ci": [timed["ci_low"], timed["ci_high"]],
                       "relative_prediction_error": relative, "checks": [c.to_dict() for c in checks],
                       "profile_seconds": round(profile_s, 1), "fit": table.to_dict()["fit"]}
                rows.append(row)
                print(f"batch {batch}, -{reduction:.0%} draw {draw}: blocks {row['blocks_removed']}, predicted "
                      f"-{row['predicted_reduction']:.1%}, realised -{row['realised_reduction']:.1%} "
                      f"(prediction error {relative:+.1%} of the student's time)")
                write_json_atomic(out, {"model": model_name, "threads": threads, "timings": timings, "rows": rows})
    write_text_atomic(out.with_suffix(".md"), markdown({"model": model_name, "threads": threads, "timings": timings,
                                                        "rows": rows}))


def markdown(record: dict) -> str:
    timings = record.get("timings", 1)  # records before the check averaged timings took one per plan
    lines = [f"Joint plans on {record['model']} (random weights), ONNX Runtime CPU, {record['threads']} threads: each "
             f"plan landed by the latency check as `compress` lands it ({timings} timing{'s' * (timings > 1)} per "
             "plan), then timed against the teacher alone (`python -m research.joint_speed`). Prediction error: the "
             "student's measured share of the teacher's time against the table's.", "",
             "| batch | target | blocks removed | checks: aim → measured | predicted − | realised − (speedup 95% CI) "
             "| prediction error |",
             "|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        lo, hi = r["speedup_ci"]
        checks = ", ".join(f"{c['aim']:.1%} → {c['measured']:.1%}" + (" (kept)" if c["kept"] else "")
                           for c in r["checks"])
        lines.append(f"| {r['batch']} | {r['target']:.0%} | {r['blocks_removed'] or '-'} | {checks} | "
                     f"{r['predicted_reduction']:.1%} | {r['realised_reduction']:.1%} ({lo:.3f}–{hi:.3f}x) | "
                     f"{r['relative_prediction_error']:+.1%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
