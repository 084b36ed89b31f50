"""The flat metrics of a bench run (`bench.json["metrics"]`), named once for the report and the gates.

Names are `family` or `family/<backend>[/b<batch>]`, e.g. `speedup/ort-cpu:fp32/b1`. Every
timing metric is a ratio between teacher and student measured in the same run, never an
absolute time, so a gate on it means the same on a laptop and in CI.
"""

from __future__ import annotations

from dataclasses import dataclass

from vitshrink.benchmarks.stats import MIN_CI_ROUNDS

REFERENCE_BACKEND = "torch-cpu:fp32"  # accuracy reference: PyTorch eager on the CPU


@dataclass(frozen=True)
class MetricKind:
    unit: str
    higher_is_better: bool
    machine_dependent: bool  # derived from timings or memory: baselines compare only on the same machine
    meaning: str


KINDS: dict[str, MetricKind] = {
    "params_reduction": MetricKind("fraction", True, False, "1 - student params / teacher params"),
    "flops_reduction": MetricKind("fraction", True, False, "1 - student MACs / teacher MACs"),
    "flops_ratio": MetricKind("x", True, False, "teacher MACs / student MACs (the speedup FLOPs promise)"),
    "speedup": MetricKind("x", True, True, "median over timing rounds of teacher latency / student latency "
                          "(the two timed alternately, same run)"),
    "speedup_ci_low": MetricKind("x", True, True, "lower end of the speedup's 95% bootstrap interval (none from "
                                 f"fewer than {MIN_CI_ROUNDS} timing rounds)"),
    "speedup_vs_fp32_teacher": MetricKind("x", True, True, "an INT8 student against the FP32 teacher: median over "
                                          "rounds of teacher FP32 latency / student INT8 latency (same runtime, same run)"),
    "speedup_vs_fp32": MetricKind("x", True, True, "an INT8 student against itself in FP32: median over rounds of "
                                  "student FP32 latency / student INT8 latency"),
    "int8_drop": MetricKind("pp", False, False, "student top-1 in PyTorch FP32 - student top-1 on int8_drop/<backend>, "
                            "percentage points"),
    "realised": MetricKind("fraction", True, True, "speedup / flops_ratio (1.0: every FLOP saved became speed)"),
    "top1": MetricKind("fraction", True, False, "top-1 accuracy of top1/<model>/<backend> on the eval split"),
    "top5": MetricKind("fraction", True, False, "top-5 accuracy"),
    "top1_drop": MetricKind("pp", False, False, "teacher top-1 - student top-1, percentage points (PyTorch, "
                            "or per backend as top1_drop/<backend>)"),
    "agreement": MetricKind("fraction", True, False, "student top-1 agreement with the PyTorch student"),
    "logit_max_diff": MetricKind("abs", False, False, "largest |student logit - PyTorch student logit|"),
    "rss_peak_mb": MetricKind("MiB", False, True, "peak resident memory of rss_peak_mb/<model>/<backend>"),
    "rss_ratio": MetricKind("x", False, True, "memory the student adds / memory the teacher adds"),
}


def kind_of(metric: str) -> MetricKind | None:
    return KINDS.get(metric.split("/", 1)[0])


def derive_metrics(bench: dict) -> dict[str, float]:
    """Flat name -> value from the rows of a bench.json (pure; missing parts give no metric)."""
    out: dict[str, float] = {}
    models = bench.get("models", {})
    teacher, student = models.get("teacher"), models.get("student")
    if teacher and student:
        out["params_reduction"] = 1 - student["params"] / teacher["params"]
        out["flops_reduction"] = 1 - student["macs"] / teacher["macs"]
        out["flops_ratio"] = teacher["macs"] / student["macs"]
    for row in bench.get("speedup", []):
        where = f"{row['backend']}/b{row['batch']}"
        out[f"speedup/{where}"] = row["ratio"]
        if row["pairs"] >= MIN_CI_ROUNDS:
            out[f"speedup_ci_low/{where}"] = row["ci_low"]
        out[f"realised/{where}"] = row["realised"]
    families = {"teacher fp32": "speedup_vs_fp32_teacher", "student fp32": "speedup_vs_fp32"}
    for row in bench.get("precision_speedup", []):
        out[f"{families[row['against']]}/{row['backend']}/b{row['batch']}"] = row["ratio"]
    top1: dict[tuple[str, str], float] = {}
    for row in bench.get("accuracy", []):
        top1[(row["model"], row["backend"])] = row["top1"]
        out[f"top1/{row['model']}/{row['backend']}"] = row["top1"]
        out[f"top5/{row['model']}/{row['backend']}"] = row["top5"]
        if row["model"] == "student" and row["agreement"] is not None:
            out[f"agreement/{row['backend']}"] = row["agreement"]
            out[f"logit_max_diff/{row['backend']}"] = row["max_abs_diff"]
    for (model, backend), value in top1.items():
        if model == "student" and ("teacher", backend) in top1:
            out[f"top1_drop/{backend}"] = (top1[("teacher", backend)] - value) * 100
    for (model, backend), value in top1.items():
        if model == "student" and backend.endswith(":int8") and ("student", REFERENCE_BACKEND) in top1:
            out[f"int8_drop/{backend}"] = (top1[("student", REFERENCE_BACKEND)] - value) * 100
    if f"top1_drop/{REFERENCE_BACKEND}" in out:
        out["top1_drop"] = out[f"top1_drop/{REFERENCE_BACKEND}"]
    added: dict[tuple[str, str], float] = {}
    for row in bench.get("memory", []):
        if row.get("rss_peak_mb") is not None:
            out[f"rss_peak_mb/{row['model']}/{row['backend']}"] = row["rss_peak_mb"]
            added[(row["model"], row["backend"])] = row["rss_added_mb"]
    for (model, backend), value in added.items():
        base = added.get(("teacher", backend))
        if model == "student" and base:
            out[f"rss_ratio/{backend}"] = value / base
    return {k: round(float(v), 6) for k, v in sorted(out.items())}


def unmeasured_metrics(bench: dict) -> dict[str, str]:
    """Metrics the run measured too little to give, name -> why (gates report them as not evaluated).

    Read from the rows, so a bench.json whose metrics still hold such a value is caught as well.
    """
    out: dict[str, str] = {}
    for row in bench.get("speedup", []):
        pairs = row.get("pairs") if isinstance(row, dict) else None
        if isinstance(pairs, int) and pairs < MIN_CI_ROUNDS:
            out[f"speedup_ci_low/{row['backend']}/b{row['batch']}"] = (
                f"a 95% interval needs at least {MIN_CI_ROUNDS} timing rounds and this run has {pairs} "
                "(raise --min-iters, or --max-time if timing stopped there)")
    return out
