"""The final table: teacher against each stage, for the terminal and as Markdown.

Two accuracies per row: `val` (held-out training images: what choices are made on) and `test` (the
dataset's test split: the reported number). "–" where there is no validation split (--val-split 0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vitshrink.compressor.jobs.pipeline import CompressReport

HEADER = ("model", "params (M)", "MACs (M)", "params -%", "MACs -%", "val top-1", "test top-1", "test top-5",
          "Δ test top-1", "kept/epochs", "img/s", "time (s)")
NO_VALUE = "–"


def _pct(metrics: dict | None) -> str:
    return f"{metrics['top1']:.2%}" if metrics else NO_VALUE


def _kept(stage) -> str:
    """"2/3": the stage kept epoch 2's weights of 3 ("0/3": the cut itself); older records: "3"."""
    return f"{stage.kept_epoch}/{stage.epochs}" if stage.kept_epoch is not None else str(stage.epochs)


def report_rows(report: CompressReport) -> list[tuple[str, ...]]:
    t = report.teacher
    rows = [("teacher", f"{t['params'] / 1e6:.3f}", f"{t['macs'] / 1e6:.1f}", "0.0", "0.0",
             _pct(t.get("val")), f"{t['top1']:.2%}", f"{t['top5']:.2%}", "", "", "", "")]
    for i, s in enumerate(report.stages, start=1):
        common = (f"{s.params / 1e6:.3f}", f"{s.macs / 1e6:.1f}",
                  f"{s.reduction_params:.1%}".rstrip("%"), f"{s.reduction_flops:.1%}".rstrip("%"))
        cut = s.after_cut
        rows.append((f"{i}. {s.name} cut", *common, _pct(s.val_after_cut), f"{cut['top1']:.2%}",
                     f"{cut['top5']:.2%}", f"{(cut['top1'] - t['top1']) * 100:+.2f}", "", "", ""))
        if s.after_distill:
            d = s.after_distill
            rate = f"{s.images_per_s:.0f}" if s.images_per_s else ""
            rows.append((f"{i}. {s.name} + distill", *common, _pct(s.val_after_distill), f"{d['top1']:.2%}",
                         f"{d['top5']:.2%}", f"{(d['top1'] - t['top1']) * 100:+.2f}", _kept(s), rate,
                         f"{s.distill_seconds:.0f}"))
    return rows


def format_table(rows: list[tuple[str, ...]], header: tuple[str, ...] = HEADER) -> str:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def markdown_table(rows: list[tuple[str, ...]], header: tuple[str, ...] = HEADER) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def markdown_report(report: CompressReport) -> str:
    val = ("val: held-out training images (never trained or calibrated on), what choices are made on"
           if report.teacher.get("val") else f"val: {NO_VALUE} (no validation split, --val-split 0)")
    note = ("MACs: multiply-accumulates per image (1 FMA = 1, fvcore convention). "
            f"{val}; test: the dataset's test split, the reported numbers; 'cut' rows are before distillation; "
            "img/s: distillation throughput (training steps, teacher included).\n")
    return f"# vitshrink compression report\n\nBudget: {report.budget}\n\n{markdown_table(report_rows(report))}\n{note}"
