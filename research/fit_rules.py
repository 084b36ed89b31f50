"""Two rules for a latency table's fit, on the same timings: which predicts models it never saw better?

Reads `table_accuracy` results (each: one profile with every fit model's timing in `fit.points`, and
held-out models timed against the teacher) and refits each table's timings two ways:

    per sub-block   the rule in use (variant D on): measured = fixed + a x kept sub-blocks + b_att x Σ attention
                    + b_mlp x Σ MLP, constrained least squares (`latency_profile.robust_fit`)
    once per model  variant C's rule: measured = fixed + a + b_att x Σ attention + b_mlp x Σ MLP, where a
                    may not take the stem below 0 ms (else two scales through the origin, then one), on the
                    models of full depth only (variant C timed no others); the same outlier rule

Variants C and D are those of research/results/README.md ("Variants of the table, planner and check").

Nothing is timed: both rules see the same fit models, and are judged on the same held-out measurements,
as the error of the predicted share of the teacher (as `bench` reports predicted vs realised).

    python -m research.fit_rules research/results/latency-plan/per-sub-block/table-accuracy-b*.json
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np

from vitshrink.compressor.core.atomic import write_json_atomic
from vitshrink.compressor.core.latency_table import Fit, LatencyTable
from vitshrink.exporters.runtime.latency_profile import OUTLIER_ERROR, block_sums, robust_fit


def once_per_model_fit(sums: list[tuple[float, float]], measured: list[float], fixed: float) -> Fit:
    """Variant C's `fit_table`: intercept once per model and >= -fixed, else two scales, else one."""
    x, y = np.asarray(sums, dtype=float), np.asarray(measured, dtype=float) - fixed
    total = x.sum(axis=1)
    scale = float(np.sum(total * y) / np.sum(total * total))
    a, b_att, b_mlp = 0.0, (scale if scale > 0 else 1.0), (scale if scale > 0 else 1.0)
    if len(y) >= 5:
        (a_fit, att_fit, mlp_fit), *_ = np.linalg.lstsq(np.column_stack([np.ones(len(y)), x]), y, rcond=None)
        (att_0, mlp_0), *_ = np.linalg.lstsq(x, y, rcond=None)
        if att_fit > 0 and mlp_fit > 0 and a_fit >= -fixed:
            a, b_att, b_mlp = float(a_fit), float(att_fit), float(mlp_fit)
        elif att_0 > 0 and mlp_0 > 0:
            b_att, b_mlp = float(att_0), float(mlp_0)
    return Fit(a=a, b_attention=b_att, b_mlp=b_mlp, models=len(y))


def once_per_model_predict(fit: Fit, fixed: float, att: float, mlp: float) -> float:
    return fixed + fit.a + fit.b_attention * att + fit.b_mlp * mlp


def once_per_model_robust(sums: list[tuple[float, float]], measured: list[float], fixed: float) -> Fit:
    """Variant C's outlier rule around `once_per_model_fit` (leave out the worst leave-one-out miss > 8%)."""
    def errors(fit: Fit, idx: list[int]) -> list[float]:
        return [abs(once_per_model_predict(fit, fixed, *sums[i]) - measured[i]) / measured[i] for i in idx]

    everyone = list(range(len(measured)))
    fit = once_per_model_fit(sums, measured, fixed)
    if len(measured) < 6 or max(errors(fit, everyone)) <= OUTLIER_ERROR:
        return fit
    misses = [errors(once_per_model_fit([sums[j] for j in everyone if j != i], [measured[j] for j in everyone if j != i],
                                        fixed), [i])[0] for i in everyone]
    worst = max(everyone[1:], key=misses.__getitem__)
    if misses[worst] <= OUTLIER_ERROR:
        return fit
    rest = [i for i in everyone if i != worst]
    return once_per_model_fit([sums[i] for i in rest], [measured[i] for i in rest], fixed)


def compare(result: dict) -> dict:
    """Per rule: the held-out errors (predicted share of the teacher vs measured), and the fit."""
    table = LatencyTable.from_dict(result["table"])
    points = table.fit.points
    depth = table.key.architecture["depth"]
    sums, measured = [tuple(p[:3]) for p in points], [p[3] for p in points]
    new = robust_fit(sums, measured, table.fixed, (table.attention[1], table.mlp_ms[1]), log=lambda *a: None)
    full = [i for i, p in enumerate(points) if p[0] == 2 * depth]
    old = once_per_model_robust([sums[i][1:] for i in full], [measured[i] for i in full], table.fixed)
    teacher = [(table.key.architecture["num_heads"], table.key.architecture["mlp_hidden"])] * depth
    rules = {"per sub-block": (new, dataclasses.replace(table, fit=new).predict),
             "once per model": (old, lambda blocks: once_per_model_predict(old, table.fixed, *block_sums(table, blocks)[1:]))}
    return {name: {"fit": fit_fields(fit), "errors": held_out_errors(result["rows"], predict, teacher)}
            for name, (fit, predict) in rules.items()}


def held_out_errors(rows: list[dict], predict: Callable[[list[tuple[int, int]]], float],
                    teacher: list[tuple[int, int]]) -> list[float]:
    """Per held-out model of a `table_accuracy` result: its measured share of the teacher over the share
    `predict` (ms of a model whose blocks keep (heads, hidden) each) gives it, minus 1."""
    return [(1 - row["measured"]) / (predict(list(zip(row["heads"], row["mlp"], strict=True))) / predict(teacher)) - 1
            for row in rows]


def fit_fields(fit: Fit) -> dict:
    return {k: v for k, v in dataclasses.asdict(fit).items() if k != "points"}


def error_summary(errors: list[float], rows: list[dict]) -> str:
    """|error| mean, max and within 5% over all held-out models, and mean and max over the plans."""
    e = np.abs(errors)
    plans = np.abs([x for x, row in zip(errors, rows, strict=True) if row["model"].startswith("plan")])
    return (f"|error| mean {e.mean():.1%}, max {e.max():.1%}, within 5% {int((e <= 0.05).sum())} of {len(e)}; "
            f"plans: mean {plans.mean():.1%}, max {plans.max():.1%}")


@click.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def main(results, json_path):
    """Held-out error of both fit rules on the timings of each `table_accuracy` result."""
    report = {}
    for path in results:
        result = json.loads(path.read_text())
        report[path.name] = compared = compare(result)
        click.echo(f"{path.name} (batch {result['batch']}):")
        for name, r in compared.items():
            click.echo(f"  {name:15s} a {r['fit']['a']:+.3f}, attention x{r['fit']['b_attention']:.3f}, MLP "
                       f"x{r['fit']['b_mlp']:.3f}: {error_summary(r['errors'], result['rows'])}")
    if json_path is not None:
        write_json_atomic(json_path, report)


if __name__ == "__main__":
    main()
