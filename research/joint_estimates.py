"""Which estimate of a removed block's loss lets the joint plan (`--stages joint`) predict and pick best cuts.

    python -m research.joint_estimates --table runs/lut-cifar-b1.json --out research/results/joint/estimates

On the reference CIFAR-10 teacher, with the calibration batches and the 2,000-image validation split that
`compress --train-limit 5000 --val-split 2000 --calib-batches 8` uses:
1. Prediction: combined cuts (every set of 0, 1 or 2 removed blocks, with a width cut of the kept blocks that
   brings the total to 30% or 45% of the MACs) are cut and evaluated on validation; the loss each estimate
   predicts for a cut (summed unit scores of the heads and neurons removed plus the estimate of each removed
   block) is compared with the measured loss change: Spearman rank correlation and the mean ratio.
2. Choice: the joint plan that each estimate makes at FLOPs and latency budgets is cut and evaluated on
   validation, beside the width-only plan at the same budget.
Writes estimates.json and estimates.md. The test split is not read.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import click
import numpy as np
import torch
from scipy.stats import spearmanr

from research.latency_plan import cut
from research.max_drop_reference import DATA, TEACHER
from vitshrink.compressor.core.atomic import write_json_atomic, write_text_atomic
from vitshrink.compressor.core.latency_table import LatencyTable
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.core.surgery import PrunePlan
from vitshrink.compressor.jobs.compress_job import DataOptions, build_compress_data
from vitshrink.compressor.jobs.pipeline import CompressConfig
from vitshrink.compressor.planning.joint import BLOCK_ESTIMATES, block_losses, plan_joint
from vitshrink.compressor.planning.planner import Budget, model_costs, plan_width
from vitshrink.compressor.scoring.importance import (
    ScoringLoss,
    calibration_batches,
    score_blocks,
    score_units,
)
from vitshrink.compressor.training.evaluate import evaluate


def _unit_loss(scores, plan: PrunePlan, depth: int) -> float:
    """Summed unit scores of the heads and neurons the plan removes from the blocks it keeps."""
    total = 0.0
    for i in range(depth):
        if i in plan.drop_blocks:
            continue
        kept_heads = plan.keep_heads.get(i, range(len(scores.heads[i])))
        kept_neurons = plan.keep_neurons.get(i, range(len(scores.neurons[i])))
        total += scores.heads[i].sum() - scores.heads[i][list(kept_heads)].sum()
        total += scores.neurons[i].sum() - scores.neurons[i][list(kept_neurons)].sum()
    return float(total)


def _with_blocks_dropped(width: PrunePlan, kept: list[int], drop: tuple[int, ...]) -> PrunePlan:
    """A width plan made on the kept blocks (numbered 0..), renumbered to the teacher's, with `drop` removed."""
    return PrunePlan(keep_heads={kept[k]: v for k, v in width.keep_heads.items()},
                     keep_neurons={kept[k]: v for k, v in width.keep_neurons.items()}, drop_blocks=drop)


@click.command()
@click.option("--table", type=click.Path(exists=True, path_type=Path), required=True,
              help="Latency table of the teacher (vitshrink profile), for the latency budgets.")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--levels", default="0.3,0.45", show_default=True, help="MACs removed by the combined cuts.")
@click.option("--budgets", default="flops=0.3,flops=0.5,latency=0.3,latency=0.5", show_default=True)
def main(table: Path, out: Path, levels: str, budgets: str) -> None:
    torch.manual_seed(0)
    teacher = load_model(str(TEACHER))
    model = teacher.model.eval()
    config = CompressConfig(Budget("flops", 0.3), calib_batches=8)
    data = build_compress_data(teacher, DataOptions(dataset="imagefolder", data_dir=str(DATA), train_limit=5000,
                                                    val_split=2000, eval_limit=2000), config)
    calib = calibration_batches(data.calib_loader, config.calib_batches)
    loss = ScoringLoss("ce")
    units = score_units(model, calib, "taylor", loss)
    estimates = {e: block_losses(e, units, None if e == "unit-sum" else score_blocks(model, calib, e, loss))
                 for e in BLOCK_ESTIMATES}
    base = evaluate(model, data.val_loader)
    print(f"teacher val loss {base['loss']:.4f}, top-1 {base['top1']:.2%}")
    print({e: np.round(v, 4).tolist() for e, v in estimates.items()})
    depth = len(model.blocks)
    flops = model_costs(model, "flops")

    # 1. prediction over combined cuts
    cuts = []
    for level in (float(v) for v in levels.split(",")):
        for count in (0, 1, 2):
            for drop in itertools.combinations(range(depth), count):
                kept = [i for i in range(depth) if i not in drop]
                rest = flops.without_blocks(drop)
                target = level * flops.total - (flops.total - rest.total)
                if target < 0:
                    continue
                kept_units = type(units)("taylor", tuple(units.heads[i] for i in kept),
                                         tuple(units.neurons[i] for i in kept), np.zeros(0))
                width = plan_width(rest, kept_units, target_removed=target, reference_total=flops.total,
                                   already_removed=flops.total - rest.total, tolerance=None) if target > 0 else None
                plan = _with_blocks_dropped(width.plan, kept, drop) if width else PrunePlan(drop_blocks=drop)
                metrics = evaluate(cut(model, plan), data.val_loader)
                row = {"level": level, "drop": list(drop), "true": metrics["loss"] - base["loss"],
                       "top1": metrics["top1"], "unit_loss": _unit_loss(units, plan, depth)}
                cuts.append(row)
                print(f"cut {level:.0%} drop {drop}: loss +{row['true']:.4f}, top-1 {row['top1']:.2%}")
    prediction = {}
    for name, removal in estimates.items():
        predicted = [c["unit_loss"] + sum(removal[i] for i in c["drop"]) for c in cuts]
        true = [c["true"] for c in cuts]
        with_blocks = [k for k, c in enumerate(cuts) if c["drop"]]
        prediction[name] = {
            "spearman_all": float(spearmanr(predicted, true).statistic),
            "spearman_per_level": {str(lv): float(spearmanr([p for p, c in zip(predicted, cuts, strict=True)
                                                              if c["level"] == lv],
                                                             [c["true"] for c in cuts if c["level"] == lv]).statistic)
                                   for lv in sorted({c["level"] for c in cuts})},
            "mean_ratio_with_blocks": float(np.mean([predicted[k] / true[k] for k in with_blocks])),
        }

    # 2. the plans each estimate chooses
    latency_table = LatencyTable.load(table)
    choices = []
    for text in budgets.split(","):
        budget = Budget.parse(text)
        costs = model_costs(model, budget.metric, latency_table if budget.metric == "latency" else None)
        target = budget.reduction * costs.total
        width = plan_width(costs, units, target_removed=target, reference_total=costs.total)
        row = {"budget": text, "width": evaluate(cut(model, width.plan), data.val_loader)["loss"]}
        for name, removal in estimates.items():
            joint = plan_joint(costs, units, removal, target_removed=target, reference_total=costs.total)
            same = joint.plan == width.plan
            row[name] = {"val_loss": row["width"] if same else evaluate(cut(model, joint.plan), data.val_loader)["loss"],
                         "drop": list(joint.plan.drop_blocks), "heads": list(joint.heads_kept),
                         "mlp": list(joint.neurons_kept)}
        choices.append(row)
        print(row)

    out.mkdir(parents=True, exist_ok=True)
    record = {"teacher_val": base, "estimates": {e: v.tolist() for e, v in estimates.items()}, "cuts": cuts,
              "prediction": prediction, "choices": choices}
    write_json_atomic(out / "estimates.json", record)
    write_text_atomic(out / "estimates.md", _markdown(record))


def _markdown(record: dict) -> str:
    lines = ["Block removal estimates on the reference CIFAR-10 teacher (validation split, 2,000 images; "
             "`python -m research.joint_estimates`).", "",
             "| estimate | Spearman, all cuts | per MACs level | predicted / measured loss, cuts with blocks |",
             "|---|---|---|---|"]
    for name, p in record["prediction"].items():
        per = ", ".join(f"{float(k):.0%}: {v:.2f}" for k, v in p["spearman_per_level"].items())
        lines.append(f"| {name} | {p['spearman_all']:.2f} | {per} | {p['mean_ratio_with_blocks']:.2f} |")
    lines += ["", "Validation loss of the cut each estimate's joint plan makes (width-only plan beside it):", "",
              "| budget | width-only | " + " | ".join(BLOCK_ESTIMATES) + " |",
              "|---|---|" + "---|" * len(BLOCK_ESTIMATES)]
    for row in record["choices"]:
        cells = [f"{row[e]['val_loss']:.4f} (blocks {row[e]['drop'] or '-'})" for e in BLOCK_ESTIMATES]
        lines.append(f"| {row['budget']} | {row['width']:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
