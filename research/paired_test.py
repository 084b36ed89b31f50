"""Evaluate finished students on a whole test split, image by image, and compare them paired.

`compare_methods` may evaluate on a fixed subset of the test split to fit many runs on a small machine;
this re-evaluates the saved students (the artifacts a comparison left in its work folder) on every test
image and writes the per-image correctness and the paired tables (`research.paired`):

    python -m research.paired_test --work runs/compare-30/work --dataset imagefolder \\
        --data-dir ../shared/datasets/cifar10 --out research/results/compare-flops30/full-test.json
    python -m research.paired_test --table research/results/compare-flops30/full-test.json

Folders under `--work` are named `<method>-seed<k>` and hold `artifact/` (what `compare_methods` writes).
Finished students are resumed by name: a rerun evaluates only those not in the JSON file yet.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import numpy as np

from research.compare import REFERENCE_METHOD, paired
from research.compare_report import paired_markdown
from research.paired import pack_correct, unpack_correct
from vitshrink.cli_errors import VitShrinkCommand
from vitshrink.compressor.core.artifact import load_artifact
from vitshrink.compressor.core.atomic import write_json_atomic
from vitshrink.compressor.data.datasets import build_dataset, build_loader
from vitshrink.compressor.jobs.compress_report import markdown_table
from vitshrink.compressor.training.evaluate import predict_logits

FOLDER = re.compile(r"(?P<method>.+)-seed(?P<seed>\d+)$")


def table(results: dict) -> str:
    rows = [{"method": r["method"], "seed": r["seed"], "test_correct": r["test_correct"]} for r in results["rows"]]
    by_method: dict[str, list[float]] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(float(unpack_correct(r["test_correct"]).mean()))
    n = results["rows"][0]["test_correct"]["n"]
    summary = [(m, ",".join(str(r["seed"]) for r in rows if r["method"] == m),
                f"{np.mean(v) * 100:.2f}", f"{min(v) * 100:.2f}–{max(v) * 100:.2f}") for m, v in by_method.items()]
    teacher = results.get("teacher_top1")
    head = [f"Top-1 on all {n:,} test images" + (f" (teacher {teacher:.2%})" if teacher else "") + ":", "",
            markdown_table(summary, ("method", "seeds", "top-1 mean (%)", "min–max (%)"))]
    return "\n".join([*head, *paired_markdown({"paired": paired(rows, REFERENCE_METHOD)})])


@click.command(cls=VitShrinkCommand)
@click.option("--work", type=click.Path(exists=True, file_okay=False, path_type=Path), help="A comparison's work folder.")
@click.option("--teacher", default=None, help="Teacher (folder or artifact) to evaluate on the same images too.")
@click.option("--dataset", default="imagefolder", show_default=True)
@click.option("--data-dir", default=None)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Results JSON.")
@click.option("--table", "table_of", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Print the markdown tables of a results JSON and exit.")
def main(work, teacher, dataset, data_dir, out, table_of):
    if table_of:
        click.echo(table(json.loads(table_of.read_text())))
        return
    if work is None or out is None:
        raise click.UsageError("give --work and --out (or --table FILE)")
    results = json.loads(out.read_text()) if out.exists() else {"work": str(work), "rows": []}
    done = {(r["method"], r["seed"]) for r in results["rows"]}
    loader = None
    for folder in sorted(p for p in work.iterdir() if FOLDER.match(p.name) and (p / "artifact").is_dir()):
        match = FOLDER.match(folder.name)
        method, seed = match["method"], int(match["seed"])
        if (method, seed) in done:
            continue
        student = load_artifact(folder / "artifact")
        if loader is None:
            loader = build_loader(build_dataset(dataset, data_dir, "eval", student.data_config), 250)
        logits, labels = predict_logits(student.model, loader)
        correct = (logits.argmax(1) == labels).numpy()
        results["rows"].append({"method": method, "seed": seed, "top1": float(correct.mean()),
                                "test_correct": pack_correct(correct)})
        write_json_atomic(out, results)
        click.echo(f"{method} seed {seed}: top-1 {correct.mean():.2%} on {correct.size} images")
    if teacher and "teacher_top1" not in results:
        from vitshrink.compressor.core.model_loading import load_model

        model = load_model(teacher)
        logits, labels = predict_logits(model.model, loader or build_loader(
            build_dataset(dataset, data_dir, "eval", model.data_config), 250))
        results["teacher_top1"] = float((logits.argmax(1) == labels).float().mean())
        write_json_atomic(out, results)
    click.echo(table(results))


if __name__ == "__main__":
    main()
