"""Joint plans (blocks and widths, `--stages joint`) against width-only plans on the reference CIFAR-10 teacher.

    python -m research.joint_vs_width --table runs/lut-cifar-b1.json --work runs/joint --out research/results/joint

For each budget (`--budgets`; a latency budget is planned on `--table`, ORT CPU at its batch):
- the joint plan and the width-only plan for the same predicted budget, made as `compress` makes them from the
  same calibration batches (`compress --train-limit 5000 --val-split 2000 --calib-batches 8`); the width-only
  plan on a latency table is the better on validation of the knapsack's and the FLOPs planner's, as
  `compress --stages width` keeps it (without the timing check, so both plans stand at the same prediction);
- both cuts timed against the teacher in one interleaved ONNX Runtime CPU run (batch and threads of the table),
  and their table predictions beside;
- both plans distilled with the same budget (`research.max_drop_reference.BUDGET`, `compress --plan`) for each seed;
- every cut and distilled student on all 10,000 test images, joint − width paired per seed and over seeds.
Where the two plans are the same plan, nothing is distilled twice: the comparison is a tie by identity.
Writes summary.json and summary.md; finished compress runs are read back, so a rerun continues.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import torch

from research.equal_latency import time_rounds
from research.latency_plan import cut
from research.max_drop_reference import BUDGET, DATA, TEACHER, compress
from research.paired import compare_correct, paired_bootstrap_ci
from vitshrink.compressor.core.artifact import load_artifact
from vitshrink.compressor.core.atomic import write_json_atomic, write_text_atomic
from vitshrink.compressor.core.latency_table import LatencyTable
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.data.datasets import build_dataset, build_loader
from vitshrink.compressor.jobs.compress_job import DataOptions, build_compress_data
from vitshrink.compressor.jobs.pipeline import CompressConfig
from vitshrink.compressor.planning.choice import choose_plan, width_candidates
from vitshrink.compressor.planning.joint import JOINT_BLOCK_ESTIMATE, block_losses, plan_joint
from vitshrink.compressor.planning.plan_file import write_plan
from vitshrink.compressor.planning.planner import TOLERANCE, Budget, model_costs
from vitshrink.compressor.scoring.importance import (
    ScoringLoss,
    calibration_batches,
    score_blocks,
    score_units,
)
from vitshrink.compressor.training.evaluate import evaluate
from vitshrink.exporters.io_spec import IOSpec
from vitshrink.exporters.runtime.timing import TimingPolicy


def _plans(teacher, budget: Budget, table: LatencyTable | None) -> dict:
    """The joint and the width-only plan for `budget`, from the calibration batches compress uses."""
    model = teacher.model.eval()
    config = CompressConfig(budget, calib_batches=8)
    data = build_compress_data(teacher, DataOptions(dataset="imagefolder", data_dir=str(DATA), train_limit=5000,
                                                    val_split=2000, eval_limit=2000), config)
    calib = calibration_batches(data.calib_loader, config.calib_batches)
    loss = ScoringLoss("ce")
    units = score_units(model, calib, "taylor", loss)
    blocks = None if JOINT_BLOCK_ESTIMATE == "unit-sum" else score_blocks(model, calib, JOINT_BLOCK_ESTIMATE, loss)
    removal = block_losses(JOINT_BLOCK_ESTIMATE, units, blocks)
    costs = model_costs(model, budget.metric, table)
    flops = model_costs(model, "flops") if table is not None else None
    target = budget.reduction * costs.total
    joint = plan_joint(costs, units, removal, target_removed=target, reference_total=costs.total)
    metrics = lambda plan: evaluate(cut(model, plan), data.val_loader)  # noqa: E731
    candidates = width_candidates(costs, flops, units, target_removed=target, tolerance=TOLERANCE, min_heads=1,
                                  round_to=8)
    width, choice = choose_plan(candidates, metrics, budget.reduction)
    return {"joint": joint, "width": width, "width_choice": choice.to_dict(), "removal": removal.tolist(),
            "val": {name: metrics(p.plan) for name, p in (("joint", joint), ("width", width))}}


def _test_correct(model, test_loader) -> np.ndarray:
    correct = []
    with torch.inference_mode():
        for x, y in test_loader:
            correct.append((model.eval()(x).argmax(1) == y).numpy())
    return np.concatenate(correct)


def _shape(plan, depth: int) -> list[str]:
    return ["removed" if h == 0 else f"{h}h/{m}" for h, m in zip(plan.heads_kept, plan.neurons_kept, strict=True)]


@click.command()
@click.option("--table", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--work", type=click.Path(path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--budgets", default="latency=0.3,flops=0.3", show_default=True)
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--rounds", default=12, show_default=True, help="Interleaved timing rounds.")
def main(table: Path, work: Path, out: Path, budgets: str, seeds: str, rounds: int) -> None:
    torch.manual_seed(0)
    teacher = load_model(str(TEACHER))
    latency_table = LatencyTable.load(table)
    test_loader = build_loader(build_dataset("imagefolder", DATA, "eval", teacher.data_config), 500)
    teacher_correct = _test_correct(teacher.model, test_loader)
    io = IOSpec.from_model(teacher.model, teacher.data_config)
    policy = TimingPolicy(warmup_iters=3, warmup_s=0.0, min_iters=50, min_time_s=1.0, max_time_s=120.0)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for text in budgets.split(","):
        budget = Budget.parse(text)
        plans = _plans(teacher, budget, latency_table if budget.metric == "latency" else None)
        same = plans["joint"].plan == plans["width"].plan
        name = text.replace("=", "")
        cuts = {k: cut(teacher.model, plans[k].plan) for k in ("joint", "width")}
        timed = time_rounds(teacher.model, cuts, io, latency_table.key.batch, latency_table.key.threads or 2, policy,
                            rounds, work / f"timing-{name}", seed=0)
        row = {"budget": text, "same_plan": same, "width_choice": plans["width_choice"],
               "removal_estimates": plans["removal"]}
        correct = {}
        for kind in ("joint", "width"):
            write_plan(work / f"{name}-{kind}.json", plans[kind].plan, teacher.model, note=f"{kind} plan for {text}")
        for kind in ("joint", "width"):
            plan = plans[kind]
            predicted = 1 - latency_table.predict([(h, m) for h, m in zip(plan.heads_kept, plan.neurons_kept,
                                                                           strict=True) if h]) / \
                latency_table.predict([(b.attn.num_heads, b.mlp.fc1.out_features) for b in teacher.model.blocks])
            cut_correct = _test_correct(cuts[kind], test_loader)
            students = []
            for seed in (int(s) for s in seeds.split(",")):
                folder = work / f"{name}-{'width' if same else kind}-s{seed}"
                compress(folder, "--plan", str(work / f"{name}-{'width' if same else kind}.json"), "--seed", str(seed))
                students.append(_test_correct(load_artifact(folder).model, test_loader))
            correct[kind] = {"cut": cut_correct, "distilled": np.stack(students)}
            speedup = timed[kind]["speedup"]
            row[kind] = {
                "blocks_removed": list(plan.plan.drop_blocks), "shape": _shape(plan, len(teacher.model.blocks)),
                "predicted_latency_reduction": predicted, "measured_latency_reduction": 1 - 1 / speedup,
                "flops_reduction": 1 - model_costs(cuts[kind], "flops").total / model_costs(teacher.model, "flops").total,
                "val_after_cut": plans["val"][kind], "test_top1_cut": float(cut_correct.mean()),
                "test_top1_distilled": [float(c.mean()) for c in students],
                "timing_rounds": [r["ratio"] for r in timed[kind]["rounds"]],
            }
        row["cut_joint_minus_width"] = compare_correct(correct["joint"]["cut"], correct["width"]["cut"])
        per_seed = [compare_correct(a, b) for a, b in zip(correct["joint"]["distilled"], correct["width"]["distilled"],
                                                          strict=True)]
        low, high = paired_bootstrap_ci(correct["joint"]["distilled"], correct["width"]["distilled"])
        delta = float(correct["joint"]["distilled"].mean() - correct["width"]["distilled"].mean())
        row["distilled_joint_minus_width"] = {"per_seed": per_seed, "mean": delta, "ci95": [low, high],
                                              "verdict": "tie" if low <= 0 <= high else ("better" if low > 0 else "worse")}
        row["teacher_test_top1"] = float(teacher_correct.mean())
        rows.append(row)
        print(row)
        write_json_atomic(out / "summary.json", {"budget_per_run": BUDGET, "seeds": seeds, "rows": rows,
                                                 "table": str(table), "table_key": latency_table.to_dict()["key"]})
    write_text_atomic(out / "summary.md", _markdown(rows))


def _pct(v: float) -> str:
    return f"{v:+.2f}"


def _markdown(rows: list[dict]) -> str:
    lines = [f"Distillation budget of every run: `{' '.join(BUDGET)}`; seeds {{0, 1, 2}}; all 10,000 test images. "
             "Latency: ONNX Runtime CPU, timed against the teacher in one interleaved run (median of per-round "
             "ratios).", "",
             "| budget | plan | blocks removed | per block (heads/MLP) | latency − predicted / measured | FLOPs − | "
             "val loss after cut | test top-1 cut | test top-1 distilled (3 seeds) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for kind in ("joint", "width"):
            r = row[kind]
            lines.append(
                f"| {row['budget']} | {kind} | {r['blocks_removed'] or '-'} | {' '.join(r['shape'])} | "
                f"{r['predicted_latency_reduction']:.1%} / {r['measured_latency_reduction']:.1%} | "
                f"{r['flops_reduction']:.1%} | {r['val_after_cut']['loss']:.4f} | {r['test_top1_cut']:.2%} | "
                f"{', '.join(f'{v:.2%}' for v in r['test_top1_distilled'])} |")
    lines += ["", "| budget | same plan | joint − width, cut (pts, 95% CI) | joint − width, distilled, mean of 3 seeds "
              "(pts, 95% CI) | verdict |", "|---|---|---|---|---|"]
    for row in rows:
        cut, dist = row["cut_joint_minus_width"], row["distilled_joint_minus_width"]
        lines.append(f"| {row['budget']} | {row['same_plan']} | {_pct(100 * cut['delta'])} "
                     f"[{_pct(100 * cut['ci95'][0])}, {_pct(100 * cut['ci95'][1])}] | {_pct(100 * dist['mean'])} "
                     f"[{_pct(100 * dist['ci95'][0])}, {_pct(100 * dist['ci95'][1])}] | {dist['verdict']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
