"""`compress --max-drop PTS`: the largest reduction whose distilled student stays within PTS points of the
teacher's validation top-1, found by `planning.level_search` on runs of the ordinary pipeline.

Each level the search prices is one `run_compress` in the work folder, `levels/<level>/<cut|probe|full>/`:
the cut alone (no distillation, no latency check), a probe (a quarter of the distillation epochs, at least
one) or the full distillation. A finished run is read back, never rerun, so `--resume` continues the search
where it stopped, and an interrupted distillation continues from its checkpoint. The delivered level's
full run becomes the artifact, with the search in its compression.json (`max_drop`) and drawn in
pareto.md / pareto.png.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

from vitshrink.compressor.core import distributed as ddp
from vitshrink.compressor.core.artifact import COMPRESSION_FILE, is_artifact, load_artifact
from vitshrink.compressor.core.atomic import atomic_dir
from vitshrink.compressor.core.errors import BudgetError
from vitshrink.compressor.jobs.pipeline import CompressConfig, CompressData, CompressReport, run_compress
from vitshrink.compressor.planning.level_search import SearchResult, level_grid, search_level
from vitshrink.compressor.planning.planner import Budget
from vitshrink.compressor.training.evaluate import evaluate

PROBE_SHARE = 0.25  # a probe distils for this share of the epochs (at least one)
LEVEL_STEP = 0.05  # the levels searched: 5%, 10%, ... up to the --reduce fraction
DEFAULT_UPPER = 0.7  # the largest level searched when --reduce names only the metric


def searched_budget(reduce: str) -> Budget:
    """What `--max-drop` searches: "latency" (a metric alone) up to DEFAULT_UPPER, "latency=0.5" up to 0.5."""
    text = reduce.strip().lower()
    return Budget.parse(text) if "=" in text else Budget(text, DEFAULT_UPPER)


def probe_epochs(epochs: int) -> int:
    return max(1, round(PROBE_SHARE * epochs))


def compress_max_drop(teacher, data: CompressData, config: CompressConfig, out: Path, work_dir: Path, *,
                      resume: bool = False, device: str = "cpu", progress: bool = True, log=print) -> CompressReport:
    """Search the level (see the module docstring); write the delivered student to `out`; return its report.
    `run_job` has checked the validation split, and `CompressConfig` that no plan is given."""
    max_drop = config.max_drop / 100
    teacher_val = evaluate(teacher.model.to(device).eval(), data.val_loader, device=device)
    teacher_test = evaluate(teacher.model, data.eval_loader, device=device)
    teacher_metrics = {k: round(teacher_test[k], 5) for k in ("top1", "top5", "loss")}
    teacher_metrics["val"] = {k: round(teacher_val[k], 5) for k in ("top1", "top5", "loss")}
    levels = level_grid(config.budget.reduction, LEVEL_STEP)
    runs: dict[tuple[float, str], CompressReport] = {}

    def run(level: float, kind: str) -> dict:
        settings = _settings(config, level, kind)
        folder = work_dir / "levels" / f"{level:.2f}" / kind
        report = run_compress(teacher, data, settings, folder / "artifact", folder / "work", resume=resume,
                              device=device, progress=progress, log=_prefixed(log, f"[{level:.0%} {kind}] "),
                              teacher_metrics=teacher_metrics)
        runs[(level, kind)] = report
        final = report.final
        val = final.val_after_distill or final.val_after_cut
        return {**val, "samples": _samples(settings, data), "predicted": report_predicted(folder / "artifact")}

    def cut(level: float) -> dict:
        try:
            return run(level, "cut")
        except BudgetError as e:  # this level cannot be cut (width pruning cannot remove that much)
            log(f"max-drop search: level {level:.0%} cannot be cut ({e}); it counts as missing the bound")
            return {"top1": -math.inf, "loss": math.inf, "samples": 0, "predicted": None, "error": str(e)}

    result = search_level(levels, teacher_val["top1"], max_drop, cut=cut, probe=lambda x: run(x, "probe"),
                          full=lambda x: run(x, "full"), log=log)
    delivered = runs[(result.delivered, "full")]
    source = work_dir / "levels" / f"{result.delivered:.2f}" / "full" / "artifact"
    spent = sum(r.get("samples", 0) for rec in result.levels for r in (rec.probe, rec.full) if r)
    one_run = _samples(_settings(config, result.delivered, "full"), data)
    if ddp.is_main():
        _publish(source, Path(out), result, spent, one_run)
    ddp.barrier()
    log(summary(result, spent, one_run))
    return dataclasses.replace(delivered, artifact=Path(out) if ddp.is_main() else None)


def _settings(config: CompressConfig, level: float, kind: str) -> CompressConfig:
    budget = dataclasses.replace(config.budget, reduction=level)
    train = config.train
    if kind == "cut":
        train = dataclasses.replace(train, epochs=0)
    elif kind == "probe":
        train = dataclasses.replace(train, epochs=probe_epochs(train.epochs))
    return dataclasses.replace(config, budget=budget, train=train, max_drop=None,
                               latency_check=config.latency_check and kind == "full")


def _samples(config: CompressConfig, data: CompressData) -> int:
    """Training images one run at these settings distils on (all epochs, all processes)."""
    train = config.train
    per_process = math.ceil(len(data.train_set) / ddp.world_size())
    steps = math.ceil(per_process / train.batch_size)
    if train.max_steps_per_epoch is not None:
        steps = min(steps, train.max_steps_per_epoch)
    return train.epochs * steps * train.batch_size * ddp.world_size()


def report_predicted(artifact: Path) -> float | None:
    """The predicted latency reduction a latency plan recorded (None for FLOPs/params budgets)."""
    latency = load_artifact_record(artifact).get("latency") or {}
    predicted = latency.get("predicted_ms")
    return round(1 - predicted["student"] / predicted["teacher"], 5) if predicted else None


def load_artifact_record(artifact: Path) -> dict:
    path = Path(artifact) / COMPRESSION_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _prefixed(log, prefix: str):
    return lambda message="", *a, **k: log(f"{prefix}{message}", *a, **k)


def _publish(source: Path, out: Path, result: SearchResult, spent: int, one_run: int) -> None:
    """Copy the delivered run's artifact to `out` with the search recorded and drawn, atomically."""
    if not is_artifact(source):
        raise BudgetError(f"the delivered level's artifact {source} is missing; rerun with --resume")
    with atomic_dir(out) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        record = json.loads((tmp / COMPRESSION_FILE).read_text())
        record["max_drop"] = {**result.to_dict(), "samples": spent, "samples_one_run": one_run}
        (tmp / COMPRESSION_FILE).write_text(json.dumps(record, indent=2))
        (tmp / "pareto.md").write_text(pareto_markdown(result, spent, one_run))
        _pareto_png(result, tmp / "pareto.png")
    load_artifact(out)  # what was published loads


def _row(record, teacher_top1: float) -> list[str]:
    def cell(metrics):
        if not metrics or not math.isfinite(metrics["top1"]):
            return "–" if not metrics else "cannot cut"
        return f"{metrics['top1']:.2%} ({(metrics['top1'] - teacher_top1) * 100:+.2f})"

    predicted = next((m.get("predicted") for m in (record.full, record.probe, record.cut) if m and m.get("predicted")),
                     None)
    samples = sum(m.get("samples", 0) for m in (record.probe, record.full) if m)
    return [f"{record.level:.0%}", f"{predicted:.1%}" if predicted is not None else "–", cell(record.cut),
            cell(record.probe), cell(record.full), f"{samples:,}"]


def pareto_markdown(result: SearchResult, spent: int, one_run: int) -> str:
    header = ["level", "predicted latency −", "val top-1 after cut", "after probe", "after full distillation",
              "samples"]
    lines = [f"# The --max-drop search: within {result.max_drop * 100:g} points of the teacher's validation top-1 "
             f"({result.teacher_top1:.2%})", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for record in result.levels:
        row = _row(record, result.teacher_top1)
        if record.level == result.delivered:
            row = [f"**{c}**" for c in row]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"Delivered: **{result.delivered:.0%}**. Not delivered above it:"]
    lines += [f"- {why}" for why in result.why] or ["- (no level above it was searched)"]
    lines += ["", f"Distillation spent by the search: {spent:,} samples; one run at the delivered level: "
                  f"{one_run:,} ({spent / max(one_run, 1):.2f}x).",
              "The bound holds on the validation split (a point estimate); the test split only reports."]
    return "\n".join(lines) + "\n"


def summary(result: SearchResult, spent: int, one_run: int) -> str:
    return pareto_markdown(result, spent, one_run).split("\n", 2)[2]


def _pareto_png(result: SearchResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for stage, style in (("cut", "o:"), ("probe", "s--"), ("full", "D-")):
        points = [(r.level, getattr(r, stage)["top1"]) for r in result.levels
                  if getattr(r, stage) and math.isfinite(getattr(r, stage)["top1"])]
        if points:
            ax.plot(*zip(*[(x * 100, y * 100) for x, y in points], strict=True), style, label=f"after {stage}")
    ax.axhline(result.teacher_top1 * 100, color="black", lw=1, label="teacher")
    ax.axhline((result.teacher_top1 - result.max_drop) * 100, color="red", lw=1, ls="--", label="bound")
    delivered = result.record(result.delivered).full
    ax.plot([result.delivered * 100], [delivered["top1"] * 100], "*", ms=16, color="gold", mec="black",
            label="delivered")
    ax.set_xlabel("reduction level (%)")
    ax.set_ylabel("validation top-1 (%)")
    shown = [m["top1"] * 100 for r in result.levels for m in (r.cut, r.probe, r.full)
             if m and math.isfinite(m["top1"])] + [result.teacher_top1 * 100]
    bound = (result.teacher_top1 - result.max_drop) * 100
    ax.set_ylim(max(min(shown), bound - 15) - 1, max(shown) + 1)  # cuts far below the bound are cut off
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("accuracy against reduction (--max-drop search)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
