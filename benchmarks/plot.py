"""bench.png: accuracy against latency, latency per image by batch size, and speedup against the FLOPs ratio.

Drawn with matplotlib's object API on a bare `Figure` (Agg canvas): no pyplot state, no display.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vitshrink.benchmarks.stats import MIN_CI_ROUNDS
from vitshrink.compressor.core.atomic import atomic_file

MARKERS = {"teacher": "o", "student": "^"}
STYLES = {"teacher": "--", "student": "-"}


def _colors(backends: list[str]) -> dict[str, str]:
    return {b: f"C{i % 10}" for i, b in enumerate(backends)}


def _batch_axis(ax, batches: list[int]) -> None:
    """Log-2 x axis labelled with the batch sizes that were run."""
    ax.set_xscale("log", base=2)
    ticks = sorted(set(batches))
    ax.set_xticks(ticks, [str(b) for b in ticks])
    ax.minorticks_off()


def save_plot(bench: dict, path: Path) -> Path:
    """Write the three panels for the bench dict to `path` (PNG)."""
    latency = bench["latency"]
    backends = list(dict.fromkeys(r["backend"] for r in latency))
    color = _colors(backends)
    fig = Figure(figsize=(15, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    acc_ax, lat_ax, spd_ax = fig.subplots(1, 3)

    smallest = min((r["batch"] for r in latency), default=None)
    p50 = {(r["model"], r["backend"]): r["p50_ms"] for r in latency if r["batch"] == smallest}
    top1 = {(r["model"], r["backend"]): r["top1"] * 100 for r in bench["accuracy"]}
    drawn = False
    for backend in backends:
        points = [(p50[(m, backend)], top1[(m, backend)], m) for m in MARKERS if (m, backend) in p50 and (m, backend) in top1]
        for x, y, model in points:
            acc_ax.scatter(x, y, marker=MARKERS[model], color=color[backend], s=60,
                           label=f"{backend} {model}")
            drawn = True
        if len(points) == 2:
            acc_ax.annotate("", xy=points[1][:2], xytext=points[0][:2],
                            arrowprops={"arrowstyle": "->", "color": color[backend], "alpha": 0.6})
    if drawn:
        acc_ax.set_xscale("log")
        acc_ax.set_xlabel(f"p50 latency at batch {smallest} (ms)")
        acc_ax.set_ylabel("top-1 (%)")
        acc_ax.legend(fontsize=7)
    else:
        acc_ax.text(0.5, 0.5, "no accuracy measured\n(run with --dataset)", ha="center", va="center",
                    transform=acc_ax.transAxes)
    acc_ax.set_title("accuracy vs latency (teacher -> student)")

    for backend in backends:
        for model in MARKERS:
            rows = sorted((r["batch"], r["p50_ms"] / r["batch"]) for r in latency
                          if r["backend"] == backend and r["model"] == model)
            if rows:
                lat_ax.plot(*zip(*rows, strict=True), STYLES[model], marker=MARKERS[model], color=color[backend],
                            label=f"{backend} {model}")
    _batch_axis(lat_ax, [r["batch"] for r in latency])
    lat_ax.set_yscale("log")
    lat_ax.set_xlabel("batch size")
    lat_ax.set_ylabel("p50 latency per image (ms)")
    lat_ax.set_title("latency by batch size")
    if backends:
        lat_ax.legend(fontsize=7)

    speedups = bench["speedup"]
    for backend in dict.fromkeys(r["backend"] for r in speedups):
        rows = sorted((r["batch"], r["ratio"], r["ci_low"], r["ci_high"], r["pairs"])
                      for r in speedups if r["backend"] == backend)
        batches, ratios, lows, highs, pairs = zip(*rows, strict=True)
        spd_ax.errorbar(batches, ratios, yerr=error_bars(ratios, lows, highs, pairs), marker="o", capsize=3,
                        color=color.get(backend), label=backend)
    if speedups:
        spd_ax.axhline(speedups[0]["flops_ratio"], color="black", linestyle=":",
                       label=f"FLOPs ratio {speedups[0]['flops_ratio']:.2f}x")
        spd_ax.axhline(1.0, color="grey", linewidth=0.8)
        _batch_axis(spd_ax, [r["batch"] for r in speedups])
        spd_ax.legend(fontsize=7)
    else:
        spd_ax.text(0.5, 0.5, "no speedup (no teacher)", ha="center", va="center", transform=spd_ax.transAxes)
    spd_ax.set_xlabel("batch size")
    spd_ax.set_ylabel("speedup (median per-round teacher / student)")
    spd_ax.set_title("realised speedup vs FLOPs ratio")

    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def error_bars(ratios, lows, highs, pairs) -> list[list[float]] | None:
    """matplotlib's (below, above) extents of each speedup's 95% interval; None where a point has fewer than
    MIN_CI_ROUNDS rounds, which give no 95% interval (the bench report shows none either)."""
    if not all(n >= MIN_CI_ROUNDS for n in pairs):
        return None
    return [[r - lo for r, lo in zip(ratios, lows, strict=True)], [hi - r for r, hi in zip(ratios, highs, strict=True)]]
