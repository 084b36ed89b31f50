"""`python -m research.latency_plan`: does a plan made on measured latency land where it says?

Speed (`speed`): a timm ViT (random weights: speed does not depend on them) is profiled on ONNX Runtime
(CPU) at each batch size (`vitshrink profile`, timed), then cut two ways on the same Taylor scores (of
random images: an untrained model), each exported with the exporter's settings and timed alternately
with the unpruned model alone (teacher, student, teacher, ...: as `bench` times them):

    latency    `--reduce latency=R`: the knapsack on the table
    flops      `--reduce flops=F` at the FLOPs reduction F the latency plan ended at

Reported: profiling time; predicted vs realised latency reduction (realised = 1 - 1/speedup); the
student's measured vs predicted ms; and for both plans the realised share of the FLOPs ratio.

Speed plans are the knapsack's alone: random weights give no validation split to choose on (`plan_choice`).

Accuracy (`accuracy`): on a trained teacher and its dataset, the latency plan at -R next to FLOPs plans
around the same FLOPs, each evaluated on the test split without any training. The latency plan is chosen
as `compress` chooses it: the knapsack's or the FLOPs planner's at the same predicted latency, whichever
has the lower loss on the 2000 validation images (`--no-choice`: the knapsack's). The latency plan is timed
against the teacher (its realised reduction) and every FLOPs plan against the latency plan, each in
`--rounds` pairings of fresh sessions (median kept); the FLOPs plans' accuracy is read where a line through
their speedups says they run as fast as the latency plan (`equal_latency`, which says why).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import click
import torch

from research.equal_latency import (
    ROUND_SECONDS,
    ROUNDS,
    flops_top1_at_equal_latency,
    time_rounds,
)
from research.ort_pair import ort_cpu_runtime, time_pair
from vitshrink.compressor.core.atomic import write_json_atomic
from vitshrink.compressor.core.flops import count_macs
from vitshrink.compressor.core.latency_table import LatencyTable
from vitshrink.compressor.core.loaded_model import LoadedModel
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.core.spec import ArchSpec
from vitshrink.compressor.core.surgery import PrunePlan, apply_plan
from vitshrink.compressor.jobs.compress_report import format_table
from vitshrink.compressor.planning.choice import PlanChoice, plan_and_choose
from vitshrink.compressor.planning.choice import describe as describe_choice
from vitshrink.compressor.planning.landing import LatencyCheck, land_on_target
from vitshrink.compressor.planning.planner import TOLERANCE, model_cost, model_costs, plan_width
from vitshrink.compressor.scoring.importance import Scores, score
from vitshrink.exporters.io_spec import IOSpec
from vitshrink.exporters.runtime.backends import RuntimeOptions
from vitshrink.exporters.runtime.latency_profile import measure_reduction, profile
from vitshrink.exporters.runtime.timing import TimingPolicy


def random_scores(model: torch.nn.Module, seed: int) -> Scores:
    """Taylor scores on random images with random labels (what `compress` would score on an untrained model)."""
    g = torch.Generator().manual_seed(seed)
    size = model.patch_embed.img_size
    batches = [(torch.randn(8, 3, *size, generator=g), torch.randint(0, model.num_classes, (8,), generator=g))
               for _ in range(2)]
    return score(model, batches, "taylor", seed=seed)


def latency_cut(model: torch.nn.Module, scores: Scores, table: LatencyTable, reduction: float,
                round_to: int, check: bool = True, log: Callable[[str], None] = print,
                val_metrics: Callable[[PrunePlan], dict] | None = None,
                ) -> tuple[PrunePlan, float, list[LatencyCheck], list[PlanChoice]]:
    """The latency plan, its predicted reduction and, with `check` (as `compress` does by default), the checks
    that timed it against the teacher on the table's target and re-aimed it (`land_on_target`). With
    `val_metrics` (plan -> validation metrics), each plan is chosen as `compress` chooses it when it has a
    validation split (`plan_choice`), and the choices come back."""
    costs = model_costs(model, "latency", table)
    flops = model_costs(model, "flops")
    choices = []

    def plan_for(aim: float) -> tuple[PrunePlan, float]:
        plan, choice = plan_and_choose(costs, flops, scores, target_removed=aim * costs.total, tolerance=TOLERANCE,
                                       min_heads=1, round_to=round_to, val_metrics=val_metrics)
        if choice is not None:
            choices.append(choice)
            log(describe_choice(choice))
        return plan.plan, plan.removed / costs.total

    if not check:
        return (*plan_for(reduction), [], choices)
    plan, checks = land_on_target(plan_for, lambda p: measure_reduction(model, cut(model, p), table), reduction,
                                  log=log)
    return plan, next(c.predicted for c in checks if c.kept), checks, choices


def flops_cut(model: torch.nn.Module, scores: Scores, reduction: float, round_to: int) -> PrunePlan:
    total = count_macs(model)
    return plan_width(model_costs(model, "flops"), scores, target_removed=reduction * total, reference_total=total,
                      round_to=round_to, tolerance=None).plan


def cut(model: torch.nn.Module, plan: PrunePlan) -> torch.nn.Module:
    student = copy.deepcopy(model)
    apply_plan(student, ArchSpec.from_model(student), plan)
    return student.eval()


def time_against_teacher(teacher: torch.nn.Module, students: dict[str, torch.nn.Module], io: IOSpec, batch: int,
                         threads: int, policy: TimingPolicy, work: Path, seed: int) -> dict[str, dict]:
    """Per student: teacher and student p50 ms and the speedup, the two timed in one interleaved loop."""
    options = RuntimeOptions(threads=threads, seed=seed)
    work.mkdir(parents=True, exist_ok=True)
    runtimes = {name: ort_cpu_runtime(model, io, work / f"{name}.onnx", options)
                for name, model in {"teacher": teacher, **students}.items()}
    out = {}
    for name in students:  # each with the teacher alone, as `bench` times them: a model that runs alone keeps
        # its weights in the CPU caches, which a loop over seven models (the accuracy run) would not let it do
        teacher_ms, student_ms, s = time_pair(runtimes["teacher"], runtimes[name], batch, policy, seed)
        out[name] = {"teacher_ms": teacher_ms, "student_ms": student_ms, **s.to_dict(),
                     "realised_reduction": 1 - 1 / s.ratio}
    return out


def speed(model_name: str, reduction: float, batch_sizes: tuple[int, ...], threads: int, round_to: int,
          policy: TimingPolicy, seed: int, work: Path, log: Callable[[str], None], check: bool = True) -> list[dict]:
    torch.set_num_threads(threads)
    teacher: LoadedModel = load_model(model_name)
    model = teacher.model.eval()
    io = IOSpec.from_model(model, teacher.data_config)
    macs = count_macs(model)
    scores = random_scores(model, seed)
    rows = []
    for batch in batch_sizes:
        started = time.perf_counter()
        table = profile(model, "ort-cpu", batch=batch, threads=threads, round_to=round_to, log=log)
        profile_s = time.perf_counter() - started
        started = time.perf_counter()
        lat_plan, predicted, checks, _ = latency_cut(model, scores, table, reduction, round_to, check, log)
        check_s = time.perf_counter() - started
        lat_student = cut(model, lat_plan)
        flops_reduction = 1 - count_macs(lat_student) / macs
        flops_student = cut(model, flops_cut(model, scores, flops_reduction, round_to))
        log(f"batch {batch}: profiled in {profile_s:.0f} s; latency plan predicts -{predicted:.1%} at MACs "
            f"-{flops_reduction:.1%}; FLOPs plan at MACs -{1 - count_macs(flops_student) / macs:.1%}")
        timed = time_against_teacher(model, {"latency": lat_student, "flops": flops_student}, io, batch, threads,
                                     policy, work / f"b{batch}", seed)
        for name, student in (("latency", lat_student), ("flops", flops_student)):
            ratio = macs / count_macs(student)
            t = timed[name]
            row = {"plan": name, "batch": batch, "threads": threads, "profile_seconds": round(profile_s, 1),
                   "fit_mean_abs_error": table.fit.mean_abs_error, "fit": dataclasses.asdict(table.fit),
                   "heads": [b.attn.num_heads for b in student.blocks],
                   "mlp": [b.mlp.fc1.out_features for b in student.blocks],
                   "flops_reduction": 1 - 1 / ratio, "flops_ratio": ratio, **t, "realised_share": t["ratio"] / ratio}
            if name == "latency":
                predicted_ms = model_cost(student, "latency", table)
                # the VM's speed drifts between profiling and timing: also as a share of the teacher timed with
                # it, the realised line's own measure (1 / speedup) against the table's (1 - predicted reduction)
                relative = (1 / t["ratio"]) / (predicted_ms / model_cost(model, "latency", table)) - 1
                row.update(table=table.to_dict(),  # its fit's points and entries: the fit can be redone offline
                           predicted_reduction=predicted, predicted_student_ms=predicted_ms,
                           prediction_error=t["student_ms"] / predicted_ms - 1, relative_prediction_error=relative,
                           checks=[c.to_dict() for c in checks], check_seconds=round(check_s, 1))
            rows.append(row)
            log(f"  {name}: speedup {t['ratio']:.3f}x ({t['ci_low']:.3f}-{t['ci_high']:.3f}), latency "
                f"-{t['realised_reduction']:.1%}, {t['ratio'] / ratio:.0%} of the {ratio:.3f}x FLOPs ratio"
                + (f"; student {t['student_ms']:.2f} ms vs {row['predicted_student_ms']:.2f} ms predicted "
                   f"({row['prediction_error']:+.1%}; {row['relative_prediction_error']:+.1%} as a share of the "
                   "teacher timed with it)" if name == "latency" else ""))
    return rows


def speed_table(rows: list[dict]) -> str:
    header = ("plan", "batch", "MACs -%", "predicted -%", "realised -%", "speedup (95% CI)", "of FLOPs ratio",
              "student ms (pred.)", "profile s")
    body = [(r["plan"], str(r["batch"]), f"{r['flops_reduction']:.1%}",
             f"{r['predicted_reduction']:.1%}" if "predicted_reduction" in r else "",
             f"{r['realised_reduction']:.1%}", f"{r['ratio']:.3f}x ({r['ci_low']:.3f}-{r['ci_high']:.3f})",
             f"{r['realised_share']:.0%}",
             f"{r['student_ms']:.2f} ({r['predicted_student_ms']:.2f})" if "predicted_student_ms" in r
             else f"{r['student_ms']:.2f}", f"{r['profile_seconds']:.0f}") for r in rows]
    return format_table(body, header)


def teacher_data_and_scores(teacher_path: str, data_dir: str, reduction: float, seed: int,
                            test_limit: int | None = None):
    """The accuracy experiment's teacher, its ImageFolder data (`seed`'s split) and the Taylor scores it plans
    with: one place, so that `same_macs_taylor` recomputes exactly what a run planned with."""
    from vitshrink.compressor.jobs.compress_job import DataOptions, build_compress_data
    from vitshrink.compressor.jobs.pipeline import CompressConfig
    from vitshrink.compressor.planning.planner import Budget
    from vitshrink.compressor.scoring.importance import ScoringLoss, calibration_batches, score_units

    teacher = load_model(teacher_path)
    config = CompressConfig(budget=Budget("flops", reduction))
    data = build_compress_data(teacher, DataOptions(dataset="imagefolder", data_dir=data_dir, train_limit=20000,
                                                    val_split=2000, eval_limit=test_limit, seed=seed), config)
    calib = calibration_batches(data.calib_loader, config.calib_batches, 0, 1)
    return teacher, data, score_units(teacher.model.eval(), calib, "taylor", ScoringLoss("ce"), seed=seed)


def accuracy(teacher_path: str, data_dir: str, reduction: float, batch: int, threads: int, round_to: int,
             offsets: tuple[float, ...], policy: TimingPolicy, seed: int, work: Path,
             log: Callable[[str], None], test_limit: int | None = None, check: bool = True,
             rounds: int = ROUNDS, choose: bool = True) -> dict:
    from vitshrink.compressor.training.evaluate import evaluate

    torch.set_num_threads(threads)
    teacher, data, scores = teacher_data_and_scores(teacher_path, data_dir, reduction, seed, test_limit)
    model = teacher.model.eval()
    io = IOSpec.from_model(model, teacher.data_config)
    table = profile(model, "ort-cpu", batch=batch, threads=threads, round_to=round_to, log=log)
    val_metrics = (lambda plan: evaluate(cut(model, plan), data.val_loader)) if choose else None
    lat_plan, predicted, checks, choices = latency_cut(model, scores, table, reduction, round_to, check, log,
                                                       val_metrics)
    students = {"latency": cut(model, lat_plan)}
    macs = count_macs(model)
    f = 1 - count_macs(students["latency"]) / macs
    for off in offsets:
        students[f"flops{f + off:.3f}"] = cut(model, flops_cut(model, scores, f + off, round_to))
    latency = students["latency"]
    flops = {name: student for name, student in students.items() if name != "latency"}
    realised = time_rounds(model, {"latency": latency}, io, batch, threads, policy, rounds, work / "teacher", seed)
    latency_reduction = 1 - 1 / realised["latency"]["speedup"]
    timed = {"latency": {"realised_reduction": latency_reduction, "over_teacher": realised["latency"]["speedup"],
                         "rounds": realised["latency"]["rounds"]}}
    for name, t in time_rounds(latency, flops, io, batch, threads, policy, rounds, work / "latency", seed).items():
        # its latency is the latency plan's over its speedup: a share of the teacher's, as the latency plan's is
        timed[name] = {"realised_reduction": 1 - (1 - latency_reduction) / t["speedup"],
                       "over_latency_plan": t["speedup"], "rounds": t["rounds"]}
    rows = []
    for name, student in students.items():
        top1 = evaluate(student, data.eval_loader)["top1"]
        rows.append({"plan": name, "flops_reduction": 1 - count_macs(student) / macs, "top1": top1,
                     "heads": [b.attn.num_heads for b in student.blocks],
                     "mlp": [b.mlp.fc1.out_features for b in student.blocks], **timed[name]})
        log(f"{name}: MACs -{rows[-1]['flops_reduction']:.1%}, latency -{timed[name]['realised_reduction']:.1%}"
            + (f" ({timed[name]['over_latency_plan']:.3f}x the latency plan's speed)" if name != "latency" else "")
            + f", test top-1 {top1:.2%}")
    same = flops_top1_at_equal_latency(rows[1:])
    teacher_top1 = evaluate(model, data.eval_loader)["top1"]
    passed_over = None  # the knapsack's plan where the choice kept the FLOPs plan: its test top-1, untimed
    kept_aim = next((c.aim for c in checks if c.kept), reduction)
    if any(c.chosen == "flops" and abs(c.aim - kept_aim) < 1e-9 for c in choices):
        knapsack, _, _, _ = latency_cut(model, scores, table, kept_aim, round_to, check=False, log=log)
        student = cut(model, knapsack)
        passed_over = {"plan": "knapsack", "aim": kept_aim, "flops_reduction": 1 - count_macs(student) / macs,
                       "top1": evaluate(student, data.eval_loader)["top1"]}
        log(f"the knapsack's plan the choice passed over: MACs -{passed_over['flops_reduction']:.1%}, test top-1 "
            f"{passed_over['top1']:.2%}")
    return {"teacher_top1": teacher_top1, "predicted_reduction": predicted, "rows": rows,
            "checks": [c.to_dict() for c in checks], "plan_choices": [c.to_dict() for c in choices],
            "knapsack_passed_over": passed_over,
            "fit": dataclasses.asdict(table.fit), "table": table.to_dict(), "profile_seconds": table.seconds,
            "equal_latency": same, "flops_top1_at_same_latency": same["top1"], "interpolated": same["interpolated"],
            "difference_pt": 100 * (rows[0]["top1"] - same["top1"])}


@click.group()
def main() -> None:
    """Latency planning: where the plans land, how fast they are, what they cost in accuracy."""


@main.command("speed")
@click.option("--model", "model_name", default="vit_small_patch16_224", show_default=True)
@click.option("--reduction", type=float, default=0.3, show_default=True, help="Latency to remove.")
@click.option("--batch-sizes", default="1,8", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--round-to", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--min-iters", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--min-time", type=float, default=3.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/latency-plan"))
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--no-check", is_flag=True, help="Plan on the table alone (compress --no-latency-check).")
def speed_command(model_name, reduction, batch_sizes, threads, round_to, min_iters, min_time, seed, work, json_path,
                  no_check):
    """Predicted vs realised latency, and the share of the FLOPs ratio realised, latency plan vs FLOPs plan."""
    policy = TimingPolicy(warmup_iters=3, warmup_s=0.0, min_iters=min_iters, min_time_s=min_time, max_time_s=120.0)
    batches = tuple(int(b) for b in batch_sizes.split(","))
    rows = speed(model_name, reduction, batches, threads, round_to, policy, seed, work, click.echo, check=not no_check)
    click.echo("\n" + speed_table(rows))
    if json_path is not None:
        write_json_atomic(json_path, rows)


@main.command("accuracy")
@click.option("--teacher", default="../shared/models/cifar10-vit", show_default=True)
@click.option("--data-dir", default="../shared/datasets/cifar10", show_default=True)
@click.option("--reduction", type=float, default=0.3, show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--round-to", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--offsets", default="-0.04,-0.02,0,0.02,0.04", show_default=True,
              help="FLOPs plans at the latency plan's MACs reduction plus these.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--test-limit", type=click.IntRange(min=1), default=None, help="Test images [default: all].")
@click.option("--rounds", type=click.IntRange(min=1), default=ROUNDS, show_default=True,
              help="Pairings per timed plan, each in fresh sessions; the median speedup is kept.")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/latency-accuracy"))
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--no-check", is_flag=True, help="Plan on the table alone (compress --no-latency-check).")
@click.option("--no-choice", is_flag=True,
              help="The knapsack's plan, not chosen on validation against the FLOPs plan (compress --val-split 0).")
def accuracy_command(teacher, data_dir, reduction, batch, threads, round_to, offsets, seed, test_limit, rounds, work,
                     json_path, no_check, no_choice):
    """Cut-only test accuracy of the latency plan vs FLOPs plans at the same latency (timed against it)."""
    policy = TimingPolicy(warmup_iters=3, warmup_s=0.0, min_iters=50, min_time_s=ROUND_SECONDS, max_time_s=120.0)
    offs = tuple(float(o) for o in offsets.split(","))
    work.mkdir(parents=True, exist_ok=True)
    result = accuracy(teacher, data_dir, reduction, batch, threads, round_to, offs, policy, seed, work, click.echo,
                      test_limit, check=not no_check, rounds=rounds, choose=not no_choice)
    same = result["equal_latency"]
    click.echo(f"teacher {result['teacher_top1']:.2%}; latency plan {result['rows'][0]['top1']:.2%} vs FLOPs plans "
               f"{same['top1']:.2%} where they run as fast (MACs -{same['macs_reduction']:.1%}, "
               f"{'interpolated' if same['interpolated'] else 'EXTRAPOLATED: widen --offsets'}): "
               f"{result['difference_pt']:+.2f} pt")
    if json_path is not None:
        write_json_atomic(json_path, result)


if __name__ == "__main__":
    main()
