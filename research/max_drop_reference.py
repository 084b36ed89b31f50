"""`compress --max-drop` on the reference CIFAR-10 teacher: the searches, a ground-truth ladder, paired test drops.

    python -m research.max_drop_reference --work runs/max-drop --out research/results/max-drop

Runs, each with one stated training budget (`BUDGET`; the same for every full distillation):
- `--max-drop B --reduce flops=UPPER` for each bound B in `--bounds`;
- the ladder: `--reduce flops=L` for the levels L of the search's grid, from UPPER down until one is within the
  bound on validation, each with the full budget the search gives its final run: the ground truth;
- every delivered student and ladder student on all 10,000 test images against the teacher, paired
  (95% bootstrap interval over images, `research.paired`).
Writes `summary.json` and `summary.md`. Finished runs are read back (each compress resumes), so a rerun
continues.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import torch

from research.paired import compare_correct
from vitshrink.compressor.core.artifact import load_artifact
from vitshrink.compressor.core.atomic import write_json_atomic, write_text_atomic
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.data.datasets import build_dataset, build_loader

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TEACHER = SHARED / "models" / "cifar10-vit"
DATA = SHARED / "datasets" / "cifar10"
BUDGET = ["--train-limit", "5000", "--epochs", "4", "--batch-size", "128", "--val-split", "2000",
          "--eval-limit", "2000", "--calib-batches", "8"]


def compress(out: Path, *args: str) -> None:
    command = [sys.executable, str(ROOT / "cli.py"), "compress", "--model", str(TEACHER), "--dataset", "imagefolder",
               "--data-dir", str(DATA), *BUDGET, *args, "--out", str(out), "--no-progress"]
    resume = ["--resume"] if (out.parent / f"{out.name}.work").is_dir() and not (out / "compression.json").is_file() \
        else []
    if (out / "compression.json").is_file():
        return
    log = out.parent / f"{out.name}.log"
    with log.open("a") as f:
        f.write(" ".join(command + resume) + "\n")
        f.flush()
        subprocess.run(command + resume, check=True, stdout=f, stderr=subprocess.STDOUT)


def test_correct(model) -> np.ndarray:
    """Per-image correctness on all 10,000 test images."""
    loaded = load_model(str(TEACHER))
    test = build_dataset("imagefolder", DATA, "eval", loaded.data_config)
    correct = []
    model = model.eval()
    with torch.inference_mode():
        for x, y in build_loader(test, 500):
            correct.append((model(x).argmax(1) == y).numpy())
    return np.concatenate(correct)


@click.command()
@click.option("--work", type=click.Path(path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--bounds", default="0.5,1.0", show_default=True)
@click.option("--upper", type=float, default=0.5, show_default=True)
def main(work: Path, out: Path, bounds: str, upper: float) -> None:
    from vitshrink.compressor.jobs.max_drop import LEVEL_STEP
    from vitshrink.compressor.planning.level_search import level_grid

    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    searches = {b: work / f"search-{b}" for b in bounds.split(",")}
    ladder: dict[float, Path] = {}
    for bound, folder in searches.items():
        compress(folder, "--max-drop", bound, "--reduce", f"flops={upper}")
        # the ladder from the top down, until a level meets this bound on validation: the levels below it
        # cannot be the largest one within the bound
        for level in sorted(level_grid(upper, LEVEL_STEP), reverse=True):
            ladder[level] = work / f"ladder-{level:.2f}"
            compress(ladder[level], "--reduce", f"flops={level}")
            record = load_artifact(ladder[level]).compression
            if record["teacher"]["val"]["top1"] - record["stages"][-1]["val_after_distill"]["top1"] <= \
                    float(bound) / 100 + 1e-12:
                break
    ladder = dict(sorted(ladder.items()))

    teacher_correct = test_correct(load_model(str(TEACHER)).model)
    summary = {"budget": BUDGET, "teacher_test_top1": float(teacher_correct.mean()), "searches": {}, "ladder": {}}
    for level, folder in ladder.items():
        record = load_artifact(folder).compression
        stage = record["stages"][-1]
        correct = test_correct(load_artifact(folder).model)
        summary["ladder"][f"{level:.2f}"] = {
            "val_top1": stage["val_after_distill"]["top1"], "teacher_val_top1": record["teacher"]["val"]["top1"],
            "reduction_flops": record["result"]["reduction_flops"], "test": compare_correct(teacher_correct, correct)}
    for bound, folder in searches.items():
        student = load_artifact(folder)
        search = student.compression["max_drop"]
        within = [level for level, r in summary["ladder"].items()
                  if r["teacher_val_top1"] - r["val_top1"] <= float(bound) / 100 + 1e-12]
        summary["searches"][bound] = {
            "delivered": search["delivered"], "ladder_largest_within": max(map(float, within), default=None),
            "samples": search["samples"], "samples_one_run": search["samples_one_run"],
            "cost_ratio": search["samples"] / search["samples_one_run"],
            "val_drop": search["teacher_top1"] - next(r["full"]["top1"] for r in search["levels"]
                                                      if r["level"] == search["delivered"]),
            "test": compare_correct(teacher_correct, test_correct(student.model)),
            "levels": search["levels"]}
        (out / f"pareto-{bound}.md").write_bytes((folder / "pareto.md").read_bytes())
        (out / f"pareto-{bound}.png").write_bytes((folder / "pareto.png").read_bytes())
    write_json_atomic(out / "summary.json", summary)
    write_text_atomic(out / "summary.md", markdown(summary))
    click.echo(markdown(summary))


def markdown(summary: dict) -> str:
    lines = [f"Training budget of every full distillation: `{' '.join(summary['budget'])}`; teacher test top-1 "
             f"{summary['teacher_test_top1']:.2%} on all 10,000 test images.", "",
             "| bound (pts) | delivered | ladder: largest within the bound (val) | val drop | test drop (teacher − student), 95% paired CI | search samples / one run |",
             "|---|---|---|---|---|---|"]
    for bound, s in summary["searches"].items():
        t = s["test"]
        lines.append(f"| {bound} | {s['delivered']:.0%} | {s['ladder_largest_within'] or 0:.0%} | "
                     f"{s['val_drop'] * 100:+.2f} | {t['delta'] * 100:+.2f} [{t['ci95'][0] * 100:+.2f}, "
                     f"{t['ci95'][1] * 100:+.2f}] | {s['cost_ratio']:.2f}x |")
    lines += ["", "| ladder level | FLOPs − | val top-1 (teacher) | test drop, 95% paired CI |", "|---|---|---|---|"]
    for level, r in summary["ladder"].items():
        t = r["test"]
        lines.append(f"| {float(level):.0%} | {r['reduction_flops']:.1%} | {r['val_top1']:.2%} "
                     f"({r['teacher_val_top1']:.2%}) | {t['delta'] * 100:+.2f} [{t['ci95'][0] * 100:+.2f}, "
                     f"{t['ci95'][1] * 100:+.2f}] |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
