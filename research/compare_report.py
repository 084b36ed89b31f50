"""compare.json, compare.md and compare.png, all rendered from the compare.json content (a dict)."""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vitshrink.compressor.core.atomic import atomic_file, write_json_atomic, write_text_atomic
from vitshrink.compressor.jobs.compress_report import markdown_table

COMPARE_JSON = "compare.json"
COMPARE_MD = "compare.md"
COMPARE_PNG = "compare.png"
MARKERS = "osD^vP<>"


def write_outputs(data: dict, out_dir: Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    paths = {"json": out_dir / COMPARE_JSON, "md": out_dir / COMPARE_MD, "png": out_dir / COMPARE_PNG}
    write_json_atomic(paths["json"], data)
    write_text_atomic(paths["md"], markdown(data))
    save_plot(data, paths["png"])
    return paths


def _value(s: dict, scale: float = 1.0, fmt: str = ".2f") -> str:
    """`mean` for one seed, `mean (min-max)` for several."""
    text = format(s["mean"] * scale, fmt)
    if s["n"] > 1:
        text += f" ({format(s['min'] * scale, fmt)}–{format(s['max'] * scale, fmt)})"
    return text


HEADER = ("method", "seeds", "top-1 after cut (%)", "val top-1 final (%)", "top-1 final (%)", "top-5 final (%)",
          "Δ top-1 (pp)",
          "params (M)", "params −%", "MACs (M)", "MACs −%")


def summary_rows(data: dict) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    batches = [str(b) for b in data["config"]["latency"]["batch_sizes"]]
    header = (*HEADER, *(f"ORT latency / teacher (b{b})" for b in batches), "wall (s)")
    t = data["teacher"]
    t_val = f"{t['val']['top1'] * 100:.2f}" if t.get("val") else "-"
    rows = [("teacher", "", "", t_val, f"{t['top1'] * 100:.2f}", f"{t['top5'] * 100:.2f}", "", f"{t['params'] / 1e6:.3f}",
             "0.0", f"{t['macs'] / 1e6:.1f}", "0.0", *("1.00" for _ in batches), "")]
    for name, s in data["summary"].items():
        delta = {k: s["final_top1"][k] - t["top1"] for k in ("mean", "min", "max")} | {"n": s["final_top1"]["n"]}
        rows.append((
            name, ",".join(str(x) for x in s["seeds"]), _value(s["after_cut_top1"], 100),
            _value(s["final_val_top1"], 100) if "final_val_top1" in s else "-", _value(s["final_top1"], 100),
            _value(s["final_top5"], 100), _value(delta, 100, "+.2f"), _value(s["params"], 1e-6, ".3f"),
            _value(s["reduction_params"], 100, ".1f"), _value(s["macs"], 1e-6, ".1f"),
            _value(s["reduction_flops"], 100, ".1f"),
            *(_value(s[f"latency_ratio_b{b}"]) if f"latency_ratio_b{b}" in s else "-" for b in batches),
            _value(s["wall_seconds"], 1, ".0f"),
        ))
    return header, rows


def stage_rows(data: dict) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    header = ("method", "seed", "stage", "top-1 after cut (%)", "top-1 after training (%)", "epochs",
              "train (s)", "TP ratio")
    rows = []
    for r in data["rows"]:
        ratio = r.get("details", {}).get("cut", {}).get("pruning_ratio")
        for s in r["stages"]:
            after = s.get("after_train")
            rows.append((r["method"], str(r["seed"]), s["name"], f"{s['after_cut']['top1'] * 100:.2f}",
                         f"{after['top1'] * 100:.2f}" if after else "-", str(s["epochs"]),
                         f"{s.get('train_seconds') or 0:.0f}", f"{ratio:.3f}" if ratio is not None else ""))
    return header, rows


def _setup(data: dict) -> list[str]:
    c = data["config"]
    paper, train, d = c["paper"], c["paper"]["train"], c["data"]
    env = data["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())
    timing = c["latency"]["timing"]
    where = f" at `{d['data_dir']}`" if d.get("data_dir") else ""
    return [
        f"- Teacher: `{c['teacher']}`; budget `{paper['budget']}`; dataset `{d['dataset']}`{where}; "
        f"train limit {d['train_limit']}, "
        f"eval limit {d['eval_limit']} (fixed subsets, data seed {d['seed']}); every method is evaluated on the same split.",
        f"- Calibration (scoring, Torch-Pruning's Taylor gradients): the same {paper['calib_batches']} batches of "
        f"{paper['calib_batch_size']} un-augmented training images for every method; scoring loss `{paper['scoring_loss']}`.",
        f"- Training budget: {c['total_distill_epochs']} epochs in total for every method (two-stage methods: "
        f"{train['epochs']} per stage; width-only, depth-only, torch-pruning: one stage of {c['total_distill_epochs']}; "
        f"scratch: {c['total_distill_epochs']} epochs of cross-entropy, no teacher). AdamW lr {train['lr']}, "
        f"weight decay {train['weight_decay']}, warm-up {train['warmup_epochs']} epoch then cosine to {train['min_lr']}, "
        f"batch {train['batch_size']}, max steps/epoch {train['max_steps_per_epoch']}, grad clip {train['grad_clip']}, "
        f"KD alpha {train['kd']['alpha']} T {train['kd']['temperature']}, augmentation of `vitshrink.compressor.data.datasets`, bf16 {train['amp']}.",
        f"- Latency: ONNX Runtime CPU FP32, {c['latency']['threads']} intra-op thread(s), teacher and student timed "
        f"alternately (warm-up {timing['warmup_iters']} calls, then at least {timing['min_iters']} calls and "
        f"{timing['min_time_s']} s each); ratio = student p50 / teacher p50 (< 1: faster).",
        f"- Machine: {env.get('cpu')}, {env.get('usable_cpus')} usable CPUs, load {env.get('load_average')}; {versions}.",
        f"- Seeds: {', '.join(str(s) for s in c['seeds'])}; with more than one, cells read mean (min–max).",
    ]


PAIRED_HEADER = ("method", "seed", "reference − method (pp)", "95% paired CI (pp)", "only reference right",
                 "only method right", "McNemar p", "verdict")


def paired_rows(data: dict) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The reference method against each other method on the same test images, per seed and over seeds."""
    rows = []
    for name, p in data.get("paired", {}).items():
        for seed, c in p["per_seed"].items():
            rows.append((name, seed, f"{c['delta'] * 100:+.2f}", f"{c['ci95'][0] * 100:+.2f} … {c['ci95'][1] * 100:+.2f}",
                         str(c["only_a"]), str(c["only_b"]), f"{c['mcnemar_p']:.3g}", c["verdict"]))
        pooled = p["pooled"]
        rows.append((name, "mean of " + ",".join(map(str, p["seeds"])), f"{pooled['delta'] * 100:+.2f}",
                     f"{pooled['ci95'][0] * 100:+.2f} … {pooled['ci95'][1] * 100:+.2f}", "", "", "", pooled["verdict"]))
    return PAIRED_HEADER, rows


def paired_markdown(data: dict) -> list[str]:
    header, rows = paired_rows(data)
    if not rows:
        return []
    reference = next(iter(data["paired"].values()))["reference"]
    n = next(iter(next(iter(data["paired"].values()))["per_seed"].values()))["n"]
    return [f"## Paired: `{reference}` against each method, same {n:,} test images", "",
            markdown_table(rows, header),
            "Positive: the reference is more accurate. CI: 95% bootstrap over images (both models resampled "
            "together; over seeds, the same images for every seed). A CI that contains 0 is a tie. McNemar: "
            "exact two-sided test on the images only one of the two got right.", ""]


def _notes(data: dict) -> list[str]:
    notes = []
    target = data["config"]["paper"]["budget"]
    for name, s in data["summary"].items():
        red = s["reduction_flops"]["mean"] if target.startswith("flops") else s["reduction_params"]["mean"]
        goal = float(target.split("=")[1])
        if abs(red - goal) > 0.01:
            notes.append(f"- {name}: achieved −{red:.1%} ({target.split('=')[0]}), not −{goal:.0%}"
                         + (" (whole blocks only: the block count closest to the target)" if name == "depth-only" else ""))
    if "scratch" in data["summary"]:
        notes.append("- scratch: 'after cut' is the accuracy at initialisation (nothing was cut).")
    loads = [r["latency"]["load_average_1min"] for r in data["rows"] if r["latency"].get("load_average_1min") is not None]
    cpus = data["environment"].get("usable_cpus") or 1
    if loads and max(loads) > 0.5 * cpus:
        notes.append(f"- latency: the machine was busy while timing (1-min load {min(loads):.1f}–{max(loads):.1f} on "
                     f"{cpus} usable CPUs): absolute times are noisy; the ratios of alternating runs less so.")
    seen = set()
    for r in data["rows"]:
        for n in r["latency"].get("notes", []):
            if n not in seen:
                seen.add(n)
                notes.append(f"- latency ({r['method']}): {n}")
    return notes


def markdown(data: dict) -> str:
    header, rows = summary_rows(data)
    stage_header, stages = stage_rows(data)
    state = "" if data["complete"] else "\n**Incomplete: some methods have not finished yet.**\n"
    lines = [
        f"# Method comparison: `{data['config']['teacher']}` at `{data['config']['paper']['budget']}`",
        state,
        "```",
        data["command"] or "(library call)",
        "```",
        "",
        markdown_table(rows, header),
        "MACs: multiply-accumulates per image (fvcore's convention, attention included). 'after cut' is the "
        "first cut, before any training. Δ top-1 is against the teacher on the same split.",
        "",
        "## Setup",
        "",
        *_setup(data),
        "",
        "## Methods",
        "",
        *(f"- `{name}`: {text}" for name, text in data["methods"].items()),
        "",
    ]
    lines += paired_markdown(data)
    notes = _notes(data)
    if notes:
        lines += ["## Notes", "", *notes, ""]
    lines += ["## Per seed and stage", "", markdown_table(stages, stage_header),
              f"Wall time of this run: {data['wall_seconds']:.0f} s (rows finished in earlier runs keep their own "
              f"time in compare.json).", ""]
    return "\n".join(lines)


def save_plot(data: dict, path: Path) -> Path:
    """Top-1 against MACs: the teacher, and one point per method (bars: min-max over seeds)."""
    fig = Figure(figsize=(7.5, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    t = data["teacher"]
    ax.scatter([t["macs"] / 1e6], [t["top1"] * 100], marker="*", s=220, color="black", label="teacher", zorder=3)
    for i, (name, s) in enumerate(data["summary"].items()):
        x, y = s["macs"]["mean"] / 1e6, s["final_top1"]["mean"] * 100
        several = s["final_top1"]["n"] > 1  # bars only where there is a spread to show
        err = [[y - s["final_top1"]["min"] * 100], [s["final_top1"]["max"] * 100 - y]] if several else None
        xerr = [[x - s["macs"]["min"] / 1e6], [s["macs"]["max"] / 1e6 - x]] if several else None
        ax.errorbar([x], [y], yerr=err, xerr=xerr, fmt=MARKERS[i % len(MARKERS)], color=f"C{i % 10}", capsize=3,
                    markersize=8, markerfacecolor="none", label=name, zorder=2)
        # methods often land on the same point: stagger the labels so each stays readable
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(8, 10 - 10 * (i % 4)), fontsize=8,
                    color=f"C{i % 10}")
    ax.set_xlabel("MACs per image (M)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"{data['config']['paper']['budget']}: final top-1 vs MACs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def readme_tables(data: dict) -> str:
    """The summary and the paired table of a compare.json, as markdown (what the README shows)."""
    header, rows = summary_rows(data)
    return "\n".join([markdown_table(rows, header), *paired_markdown(data)])


if __name__ == "__main__":  # python -m research.compare_report RESULTS/compare.json
    import sys

    print(readme_tables(json.loads(Path(sys.argv[1]).read_text())))
