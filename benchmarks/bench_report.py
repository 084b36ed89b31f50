"""bench.json, bench.md and the terminal tables, all rendered from the bench.json content (a dict)."""

from __future__ import annotations

from pathlib import Path

from vitshrink.benchmarks.gate import GateResult
from vitshrink.benchmarks.latency_plan_check import latency_plan_lines
from vitshrink.benchmarks.metrics import REFERENCE_BACKEND
from vitshrink.benchmarks.results import BENCH_JSON, BENCH_MD, BENCH_PNG
from vitshrink.benchmarks.stats import MIN_CI_ROUNDS
from vitshrink.compressor.core.atomic import write_json_atomic, write_text_atomic
from vitshrink.compressor.jobs.compress_report import format_table, markdown_table

MACS_NOTE = "MACs: multiply-accumulates per image (1 FMA = 1, fvcore's convention), attention (SDPA) included."


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _opt(v, fmt: str, none: str = "-") -> str:
    return none if v is None else format(v, fmt)


def model_rows(bench: dict) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    header = ("model", "params (M)", "MACs (M)", "fvcore MACs (M)", "blocks", "files")
    rows = []
    for role, m in bench["models"].items():
        files = ", ".join(f"{name} {_mb(f['bytes'])}{'*' if f['origin'] == 'exported' else ''}"
                          for name, f in m["files"].items())
        rows.append((role, f"{m['params'] / 1e6:.3f}", f"{m['macs'] / 1e6:.1f}",
                     _opt(m["macs_fvcore"] and m["macs_fvcore"] / 1e6, ".1f"), str(len(m["blocks"])), files or "-"))
    metrics = bench.get("metrics", {})
    if "flops_ratio" in metrics:
        rows.append(("reduction", f"-{metrics['params_reduction']:.1%}", f"-{metrics['flops_reduction']:.1%}",
                     f"ratio {metrics['flops_ratio']:.2f}x", "", "(* = exported by the bench)"))
    return header, rows


def latency_rows(bench: dict) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    header = ("backend", "batch", "model", "p50 ms", "p90 ms", "p99 ms", "mean ms", "std ms", "img/s", "n")
    rows = [(r["backend"], str(r["batch"]), r["model"], f"{r['p50_ms']:.3f}", f"{r['p90_ms']:.3f}",
             f"{r['p99_ms']:.3f}", f"{r['mean_ms']:.3f}", f"{r['std_ms']:.3f}", f"{r['throughput']:.1f}", str(r["n"]))
            for r in bench["latency"]]
    return header, rows


def _interval(row: dict) -> str:
    if row["pairs"] < MIN_CI_ROUNDS:
        return f"- (< {MIN_CI_ROUNDS} rounds)"
    return f"{row['ci_low']:.2f}-{row['ci_high']:.2f}"


def speedup_rows(bench: dict) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    header = ("backend", "batch", "speedup", "95% CI", "pair IQR", "FLOPs ratio", "realised", "pairs")
    rows = [(r["backend"], str(r["batch"]), f"{r['ratio']:.2f}x", _interval(r),
             f"{r['pair_q25']:.2f}-{r['pair_q75']:.2f}", f"{r['flops_ratio']:.2f}x", f"{r['realised']:.0%}",
             str(r["pairs"]))
            for r in bench["speedup"]]
    return header, rows


def precision_rows(bench: dict) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    header = ("student on", "against", "batch", "speedup", "95% CI", "pair IQR", "pairs")
    rows = [(r["backend"], r["against"], str(r["batch"]), f"{r['ratio']:.2f}x", _interval(r),
             f"{r['pair_q25']:.2f}-{r['pair_q75']:.2f}", str(r["pairs"]))
            for r in bench.get("precision_speedup", [])]
    return header, rows


def accuracy_rows(bench: dict) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    header = ("backend", "model", "top-1", "top-5", "Δ top-1 (pp)", "agree w/ PyTorch", "max |Δ logit|", "images")
    metrics = bench.get("metrics", {})
    rows = []
    for r in bench["accuracy"]:
        drop = metrics.get(f"top1_drop/{r['backend']}") if r["model"] == "student" else None
        rows.append((r["backend"] + (" (reference)" if r["backend"] == REFERENCE_BACKEND else ""), r["model"],
                     f"{r['top1']:.2%}", f"{r['top5']:.2%}", _opt(drop and -drop, "+.2f"),
                     _opt(r["agreement"], ".2%"), _opt(r["max_abs_diff"], ".2g"), str(r["n"])))
    return header, rows


def memory_rows(bench: dict) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    header = ("backend", "model", "batch", "peak RSS MiB", "added MiB", "CUDA MiB", "CUDA measured by")
    rows = [(r["backend"], r["model"], str(r["batch"]), _opt(r["rss_peak_mb"], ".1f"), _opt(r["rss_added_mb"], ".1f"),
             _opt(r["cuda_peak_mb"], ".1f"), r["cuda_method"] or ("failed: " + r["error"] if r["error"] else "-"))
            for r in bench["memory"]]
    return header, rows


def headline(bench: dict) -> str | None:
    """The number that matters: realised speedup next to the FLOPs ratio, per backend."""
    rows = bench["speedup"]
    if not rows:
        return None
    per_backend: dict[str, list[str]] = {}
    for r in rows:
        per_backend.setdefault(r["backend"], []).append(f"{r['ratio']:.2f}x @{r['batch']} ({r['realised']:.0%})")
    parts = "; ".join(f"{b}: {', '.join(v)}" for b, v in per_backend.items())
    return (f"Speedup vs teacher (realised share of the {rows[0]['flops_ratio']:.2f}x FLOPs ratio) at each batch "
            f"size: {parts}")


def _sections(bench: dict) -> list[tuple[str, tuple, list]]:
    memory_batch = bench["memory"][0]["batch"] if bench["memory"] else None
    acc = bench["accuracy"]
    return [
        ("Models", *model_rows(bench)),
        ("Latency per batch (timed teacher/student alternately)", *latency_rows(bench)),
        ("Speedup = median over timing rounds of teacher time / student time, same run", *speedup_rows(bench)),
        ("INT8 student against FP32 = median over timing rounds of FP32 time / INT8 student time", *precision_rows(bench)),
        (f"Accuracy ({acc[0]['dataset']} eval, {acc[0]['n']} images)" if acc else "Accuracy", *accuracy_rows(bench)),
        (f"Peak memory (batch {memory_batch}, one process per model and backend)", *memory_rows(bench)),
    ]


def _footer(bench: dict) -> list[str]:
    lines = [f"skipped {s['backend']}" + (f" ({s['model']})" if s.get("model") else "")
             + (f" batch {s['batch']}" if s.get("batch") else "") + f": {s['reason']}" for s in bench["skipped"]]
    return lines + [f"note: {n}" for n in bench["notes"]]


def terminal_report(bench: dict) -> str:
    env = bench["environment"]
    gpu = env["gpu"]["name"] if env.get("gpu") else "no GPU"
    out = [f"vitshrink bench on {env['cpu']} ({env['threads']} threads, {gpu}"
           + (f", {env['power_mode']}" if env.get("power_mode") else "") + ")"]
    for title, header, rows in _sections(bench):
        if rows:
            out += ["", title, format_table(rows, header)]
    line = headline(bench)
    if line:
        out += ["", line]
    out += latency_plan_lines(bench.get("latency_plan"))
    footer = _footer(bench)
    return "\n".join(out + ([""] + footer if footer else []))


def markdown_report(bench: dict) -> str:
    env = bench["environment"]
    cfg = bench["config"]
    out = ["# vitshrink bench", "",
           f"Student `{cfg['student']}`" + (f", teacher `{bench['models']['teacher']['source']}`"
                                             if "teacher" in bench["models"] else ", no teacher") + ".", ""]
    line = headline(bench)
    if line:
        out += [f"**{line}**", ""]
    plan = latency_plan_lines(bench.get("latency_plan"))
    if plan:
        out += [f"**{plan[0]}**", *plan[1:], ""]
    for title, header, rows in _sections(bench):
        if rows:
            out += [f"## {title}", "", markdown_table(rows, header)]
    out += ["## Machine", "", markdown_table(
        [(k, str(env.get(k))) for k in ("cpu", "usable_cpus", "threads", "load_average", "gpu", "board", "power_mode",
                                        "fingerprint")] + [(f"version {k}", v) for k, v in env["versions"].items()],
        ("what", "value"))]
    timing = cfg["timing"]
    out += [MACS_NOTE,
            f"Timing: warm-up {timing['warmup_iters']} calls and {timing['warmup_s']} s, then at least "
            f"{timing['min_iters']} calls and {timing['min_time_s']} s per model (at most {timing['max_time_s']} s); "
            "percentiles by linear interpolation, std with ddof=1, img/s = batch / mean. "
            "Speedup: median of the per-round ratios; CI: 95% bootstrap over the rounds (none from fewer than "
            f"{MIN_CI_ROUNDS}).", ""]
    out += [f"- {line}" for line in _footer(bench)]
    return "\n".join(out).rstrip() + "\n"


def gate_table(results: list[GateResult]) -> str:
    """What each gate required, what was measured, and by how much a failure missed."""
    rows = [(r.status.upper() if r.failed else r.status, r.metric, _opt(r.value, ".4g"), r.limit,
             _opt(r.shortfall, ".4g"), r.detail) for r in results]
    failed = sum(r.failed for r in results)
    summary = f"{failed} of {len(results)} gates failed" if failed else f"all {len(results)} gates passed"
    return format_table(rows, ("status", "metric", "value", "limit", "missed by", "detail")) + "\n" + summary


def write_outputs(bench: dict, out_dir: Path, *, plot: bool = True) -> dict[str, Path]:
    """bench.json, bench.md and (with `plot`) bench.png in `out_dir`."""
    out_dir = Path(out_dir)
    paths = {"json": out_dir / BENCH_JSON, "md": out_dir / BENCH_MD}
    write_json_atomic(paths["json"], bench)
    write_text_atomic(paths["md"], markdown_report(bench))
    if plot:
        from vitshrink.benchmarks.plot import save_plot

        paths["png"] = out_dir / BENCH_PNG
        save_plot(bench, paths["png"])
    return paths
