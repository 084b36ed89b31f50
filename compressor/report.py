"""The final table: teacher against each stage, for the terminal and as Markdown."""

from __future__ import annotations

from compressor.pipeline import CompressReport

HEADER = ("model", "params (M)", "MACs (M)", "params -%", "MACs -%", "top-1", "top-5", "Δ top-1", "epochs", "time (s)")


def report_rows(report: CompressReport) -> list[tuple[str, ...]]:
    t = report.teacher
    rows = [("teacher", f"{t['params'] / 1e6:.3f}", f"{t['macs'] / 1e6:.1f}", "0.0", "0.0",
             f"{t['top1']:.2%}", f"{t['top5']:.2%}", "", "", "")]
    for i, s in enumerate(report.stages, start=1):
        common = (f"{s.params / 1e6:.3f}", f"{s.macs / 1e6:.1f}",
                  f"{s.reduction_params:.1%}".rstrip("%"), f"{s.reduction_flops:.1%}".rstrip("%"))
        cut = s.after_cut
        rows.append((f"{i}. {s.name} cut", *common, f"{cut['top1']:.2%}", f"{cut['top5']:.2%}",
                     f"{(cut['top1'] - t['top1']) * 100:+.2f}", "", ""))
        if s.after_distill:
            d = s.after_distill
            rows.append((f"{i}. {s.name} + distill", *common, f"{d['top1']:.2%}", f"{d['top5']:.2%}",
                         f"{(d['top1'] - t['top1']) * 100:+.2f}", str(s.epochs), f"{s.distill_seconds:.0f}"))
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
    note = ("MACs: multiply-accumulates per image (1 FMA = 1, fvcore convention). "
            "top-1/top-5 on the evaluation split; 'cut' rows are before distillation.\n")
    return f"# vitshrink compression report\n\nBudget: {report.budget}\n\n{markdown_table(report_rows(report))}\n{note}"
