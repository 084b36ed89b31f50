"""Predicted vs realised: what a latency-planned student's table promised, next to what bench measured.

`compress --reduce latency=...` records in compression.json the target (runtime, precision, batch,
threads), the predicted milliseconds of teacher and student and, when compress timed the plan (the
latency check), the reduction that measured. Bench finds the speedup row of that
runtime and batch and sets the realised reduction (1 - 1 / speedup, from the interleaved timing)
beside the predicted one, with the student's measured time against its prediction.
"""

from __future__ import annotations

from vitshrink.benchmarks.results import LatencyRow, SpeedupRow
from vitshrink.compressor.core.latency_table import current_target_name
from vitshrink.exporters.runtime.latency_profile import target_backend


def latency_plan_check(compression: dict | None, threads: int, latency: tuple[LatencyRow, ...] | list,
                       speedups: tuple[SpeedupRow, ...] | list) -> dict | None:
    """The comparison for a student planned on latency; None for any other student."""
    plan = (compression or {}).get("latency")
    if not plan:
        return None
    target = current_target_name(plan["target"])  # an older student's compression.json may say trt-fp16
    backend, batch = target_backend(target).key, plan["batch"]  # bench's row name: ort-cpu:fp32, tensorrt:fp16
    predicted = plan["predicted_ms"]
    out = {
        "backend": backend,
        "batch": batch,
        "threads_planned": plan.get("threads"),
        "threads_bench": threads,
        "predicted_ms": predicted,
        "predicted_reduction": 1 - predicted["student"] / predicted["teacher"],
    }
    if plan.get("checked_reduction") is not None:  # compress timed the plan against the teacher (latency check)
        out["checked_reduction"] = plan["checked_reduction"]
    if plan.get("threads") not in (None, threads):
        out["note"] = f"planned for {plan['threads']} threads, benched with {threads}: the numbers are not comparable"
    row = next((s for s in speedups if s.backend == backend and s.batch == batch), None)
    if row is None:
        out["note"] = (f"bench did not time {backend} at batch {batch} with a teacher: run it with "
                       f"--backends {target} --batch-sizes {batch} --threads {plan.get('threads')} and the teacher")
        return out
    times = {r.model: r.stats.p50_ms for r in latency if r.backend == backend and r.stats.batch == batch}
    out["realised_ms"] = times
    out["realised_reduction"] = 1 - 1 / row.speedup.ratio
    if "student" in times:
        out["student_prediction_error"] = times["student"] / predicted["student"] - 1
    return out


def latency_plan_lines(check: dict | None) -> list[str]:
    """One or two lines for the terminal and markdown reports."""
    if not check:
        return []
    head = (f"latency plan ({check['backend']}, batch {check['batch']}): predicted -{check['predicted_reduction']:.1%}")
    if "checked_reduction" in check:
        head += f" by the table, measured -{check['checked_reduction']:.1%} by compress's latency check"
    if "realised_reduction" in check:
        head += f", realised -{check['realised_reduction']:.1%} (interleaved with the teacher)"
        if "student_prediction_error" in check:
            head += (f"; student {check['realised_ms']['student']:.2f} ms measured vs "
                     f"{check['predicted_ms']['student']:.2f} ms predicted ({check['student_prediction_error']:+.1%})")
    return [head] + ([f"note: {check['note']}"] if check.get("note") else [])
