"""Choose the distillation recipe on the validation split: run `vitshrink compress` once per setting.

Every run is the product's own command (a subprocess of `cli.py compress`), on the same teacher, data,
seed and training subset; only the settings named by the variant change. Each run keeps the last epoch
(`--keep last`), so the numbers measure what the recipe does, not what the best-epoch selection hides.
The result that counts is the final stage's validation top-1 (images held out of the training split);
test images are never looked at here (`--eval-limit` keeps their evaluation small, the number unused).

    python -m research.recipe_sweep --model ../shared/models/cifar10-vit --data-dir ../shared/datasets/cifar10 \\
        --sweep width --out research/results/recipe-width.json
    python -m research.recipe_sweep --table research/results/recipe-width.json   # markdown table

Variants are resumed by name: rerunning the same command skips the variants already in the JSON file.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import click

from vitshrink.cli_errors import VitShrinkCommand
from vitshrink.compressor.core.atomic import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]  # the checkout (this file is research/)

# name -> extra `compress` arguments; the first of each sweep is the current default recipe
SWEEPS: dict[str, dict[str, list[str]]] = {
    "width": {  # one width stage at half the -30% target (what stage 1 of the default method cuts)
        "default (lr 1e-4, alpha 0.7, T 2)": [],
        "lr 2e-4": ["--lr", "2e-4"],
        "lr 5e-5": ["--lr", "5e-5"],
        "alpha 1.0": ["--alpha", "1.0"],
        "T 4": ["--temperature", "4"],
    },
    "depth-share": {  # the whole method at -30%: how much of it whole blocks should deliver
        "depth share 0.5": ["--depth-share", "0.5"],
        "depth share 0.25": ["--depth-share", "0.25"],
        "depth share 0 (width only, 2 epochs)": ["--stages", "width", "--epochs", "2"],
    },
}
BASE = {"width": ["--reduce", "flops=0.15", "--stages", "width"], "depth-share": ["--reduce", "flops=0.3"]}


def _run(python: str, common: list[str], extra: list[str], out: Path) -> dict:
    cmd = [python, str(ROOT / "cli.py"), "compress", *common, *extra, "--out", str(out), "--no-progress"]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    record = json.loads((out / "compression.json").read_text())
    stages = [{"name": s["name"], "val_after_cut": s["val_after_cut"]["top1"],
               "val_after_distill": (s["val_after_distill"] or {}).get("top1"),
               "epochs": [r.get("eval_top1") for r in s["history"]], "images_per_s": s["images_per_s"]}
              for s in record["stages"]]
    return {"args": extra, "command": " ".join(cmd), "teacher_val": record["teacher"]["val"]["top1"],
            "val_images": record["data"]["val_images"], "reduction_flops": record["result"]["reduction_flops"],
            "final_val": record["result"]["val_top1"], "stages": stages,
            "minutes": round((time.perf_counter() - started) / 60, 1)}


def table(results: dict) -> str:
    runs = results["runs"]
    first = next(iter(runs.values()))
    n = first["val_images"]
    lines = [f"Validation top-1 on {n:,} images held out of the training split (teacher: "
             f"{first['teacher_val']:.2%}); one seed; a single accuracy's standard error here is about "
             f"{math.sqrt(first['final_val'] * (1 - first['final_val']) / n):.1%}.", "",
             "| setting | FLOPs −% | val after each cut | val after each distillation | final val |",
             "| --- | --- | --- | --- | --- |"]
    for name, r in runs.items():
        cut = " → ".join(f"{s['val_after_cut']:.2%}" for s in r["stages"])
        dist = " → ".join(f"{s['val_after_distill']:.2%}" if s["val_after_distill"] is not None else "–"
                          for s in r["stages"])
        lines.append(f"| {name} | {r['reduction_flops']:.1%} | {cut} | {dist} | {r['final_val']:.2%} |")
    return "\n".join(lines)


@click.command(cls=VitShrinkCommand)
@click.option("--model", default=str(ROOT.parent / "shared" / "models" / "cifar10-vit"), show_default=True)
@click.option("--data-dir", default=str(ROOT.parent / "shared" / "datasets" / "cifar10"), show_default=True)
@click.option("--sweep", type=click.Choice(sorted(SWEEPS)), default="width", show_default=True)
@click.option("--train-limit", type=int, default=5000, show_default=True, help="Training images per epoch.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Results JSON.")
@click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/recipe-sweep"),
              show_default=True)
@click.option("--table", "table_of", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Print the markdown table of a results JSON and exit.")
def main(model, data_dir, sweep, train_limit, seed, out, runs_dir, table_of):
    if table_of:
        click.echo(table(json.loads(table_of.read_text())))
        return
    out = out or Path(f"research/results/recipe-{sweep}.json")
    common = ["--model", model, "--dataset", "imagefolder", "--data-dir", data_dir, "--train-limit", str(train_limit),
              "--eval-limit", "500", "--epochs", "1", "--keep", "last", "--seed", str(seed), *BASE[sweep]]
    results = json.loads(out.read_text()) if out.exists() else {"sweep": sweep, "common": common, "runs": {}}
    if results["common"] != common:
        raise click.ClickException(f"{out} holds a sweep with other settings ({results['common']}); use another --out")
    for name, extra in SWEEPS[sweep].items():
        if name in results["runs"]:
            continue
        slug = "".join(c if c.isalnum() else "-" for c in name)
        results["runs"][name] = _run(sys.executable, common, extra, runs_dir / sweep / slug)
        write_json_atomic(out, results)
        click.echo(f"{name}: final val {results['runs'][name]['final_val']:.2%}")
    click.echo(table(results))


if __name__ == "__main__":
    main()
