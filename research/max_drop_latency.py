"""`compress --max-drop --reduce latency` on the reference CIFAR-10 teacher, and the realised latency of what it delivers.

    python -m research.max_drop_latency --table runs/lut-cifar-b1.json --work runs --out research/results/max-drop

With the training budget of `research.max_drop_reference` (`BUDGET`), for each bound in `--bounds`:
- `compress --max-drop B --reduce latency --target ort-cpu` on `--table` (a table of the teacher measured on
  this machine, ONNX Runtime CPU, batch 1, 2 threads: `vitshrink profile ... --out TABLE`);
- `vitshrink bench` of the delivered student against the teacher on the table's target, batch and threads;
- the delivered student on all 10,000 test images against the teacher, paired.
Writes latency-summary.json and latency-summary.md, and the search's Pareto picture. Finished runs are read back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click

from research.max_drop_reference import BUDGET, ROOT, TEACHER, compress, test_correct
from research.paired import compare_correct
from vitshrink.compressor.core.artifact import load_artifact
from vitshrink.compressor.core.atomic import write_json_atomic, write_text_atomic
from vitshrink.compressor.core.latency_table import LatencyTable
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.jobs.max_drop import report_predicted


def bench(student: Path, out: Path, batch: int, threads: int) -> dict:
    if not (out / "bench.json").is_file():
        subprocess.run([sys.executable, str(ROOT / "cli.py"), "bench", str(student), "--teacher", str(TEACHER),
                        "--backends", "ort-cpu", "--batch-sizes", str(batch), "--threads", str(threads),
                        "--no-memory", "--limit", "0", "--out", str(out), "--no-progress"], check=True)
    return json.loads((out / "bench.json").read_text())


@click.command()
@click.option("--table", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--work", type=click.Path(path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--bounds", default="0.5", show_default=True)
def main(table: Path, work: Path, out: Path, bounds: str) -> None:
    key = LatencyTable.load(table).key
    teacher_correct = test_correct(load_model(str(TEACHER)).model)
    rows = {}
    for bound in bounds.split(","):
        folder = work / f"maxdrop-lat-{bound}"
        compress(folder, "--max-drop", bound, "--reduce", "latency", "--target", key.target, "--batch-size-target",
                 str(key.batch), "--target-threads", str(key.threads), "--latency-table", str(table))
        student = load_artifact(folder)
        record = student.compression
        search = record["max_drop"]
        delivered = next(r for r in search["levels"] if r["level"] == search["delivered"])
        timed = bench(folder, work / f"maxdrop-lat-{bound}-bench", key.batch, key.threads)
        rows[bound] = {
            "delivered": search["delivered"], "predicted_latency_reduction": report_predicted(folder),
            "latency_record": record.get("latency"), "bench": _speed(timed),
            "val_drop": search["teacher_top1"] - delivered["full"]["top1"],
            "test": compare_correct(teacher_correct, test_correct(student.model)),
            "samples": search["samples"], "samples_one_run": search["samples_one_run"],
            "reduction_flops": record["result"]["reduction_flops"], "levels": search["levels"]}
        (out / f"pareto-latency-{bound}.md").write_bytes((folder / "pareto.md").read_bytes())
        (out / f"pareto-latency-{bound}.png").write_bytes((folder / "pareto.png").read_bytes())
    summary = {"budget": BUDGET, "table": str(table), "table_key": {k: v for k, v in vars(key).items()
                                                                     if k != "architecture"},
               "teacher_test_top1": float(teacher_correct.mean()), "searches": rows}
    write_json_atomic(out / "latency-summary.json", summary)
    write_text_atomic(out / "latency-summary.md", markdown(summary))
    click.echo(markdown(summary))


def _speed(bench_record: dict) -> dict:
    """The ort-cpu row of a bench record: speedup (median of per-round ratios) and its interval."""
    (row,) = [r for r in bench_record["speedup"] if r["backend"].startswith("ort-cpu")]
    return row


def markdown(summary: dict) -> str:
    k = summary["table_key"]
    lines = [f"`--max-drop B --reduce latency --target {k['target']}` at batch {k['batch']}, {k['threads']} threads "
             f"({k['device']}), table `{summary['table']}`; training budget of every full distillation "
             f"`{' '.join(summary['budget'])}`; teacher test top-1 {summary['teacher_test_top1']:.2%} on all 10,000 "
             "test images. Realised: `vitshrink bench` of the delivered student against the teacher (ONNX Runtime "
             "CPU, interleaved; reduction = 1 − 1/speedup).", "",
             "| bound (pts) | delivered | latency − predicted | latency − realised (bench, 95% CI) | FLOPs − | "
             "val drop | test drop, 95% paired CI | search samples / one run |",
             "|---|---|---|---|---|---|---|---|"]
    for bound, s in summary["searches"].items():
        t, b = s["test"], s["bench"]
        realised = 1 - 1 / b["ratio"]
        interval = f" [{1 - 1 / b['ci_low']:.1%}, {1 - 1 / b['ci_high']:.1%}]" if b.get("ci_low") else ""
        predicted = s["predicted_latency_reduction"]
        lines.append(f"| {bound} | {s['delivered']:.0%} | {predicted:.1%} | {realised:.1%}{interval} | "
                     f"{s['reduction_flops']:.1%} | {s['val_drop'] * 100:+.2f} | {t['delta'] * 100:+.2f} "
                     f"[{t['ci95'][0] * 100:+.2f}, {t['ci95'][1] * 100:+.2f}] | "
                     f"{s['samples'] / s['samples_one_run']:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
