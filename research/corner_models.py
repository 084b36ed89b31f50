"""What the two corner fit models buy: the same profile's timings refitted with and without them.

Reads `table_accuracy` results made with corner fit models (each: one profile, every fit model's timing in
`fit.points`, and held-out models timed against the teacher) and refits each table three ways:

    all (lands)         every fit model: the teacher, the two corners (one head with the whole MLP; every
                        head with a quarter of the MLP), the random widths, and the corners' fewer-block copies
    without corners     all but the two corners (their fewer-block copies stay)
    random widths only  the teacher and the models of random widths

Nothing is timed; each fit is judged on the same held-out measurements, as the error of the predicted share
of the teacher (as `bench` reports predicted vs realised). The fits without corners see fewer models, so this
says what those models add to this profile, not what the same number of random models would.

    python -m research.corner_models research/results/latency-plan/corner-fit/table-accuracy-b*.json
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click
import numpy as np

from research.fit_rules import error_summary, fit_fields, held_out_errors
from vitshrink.compressor.core.atomic import write_json_atomic
from vitshrink.compressor.core.latency_table import LatencyTable
from vitshrink.exporters.runtime.latency_profile import DEPTH_FIT_MODELS, block_sums, fit_plans, robust_fit


def point_kinds(table: LatencyTable) -> list[str]:
    """The kind of each fit point ("teacher", "corner", "random", "fewer blocks"), from the plans the profile
    timed (`fit_plans`, rebuilt from the table); refuses a table whose points are not those plans."""
    arch = table.key.architecture
    heads, hidden, depth = arch["num_heads"], arch["mlp_hidden"], arch["depth"]
    count = len(table.fit.points) - 1 - DEPTH_FIT_MODELS
    plans = fit_plans(heads, hidden, depth, table.round_to, count)
    if count < 2 or len(plans) + 1 != len(table.fit.points):
        raise click.ClickException(f"{len(table.fit.points)} fit points: not a profile with corner fit models")
    for plan, point in zip(plans, table.fit.points[1:], strict=True):  # every fit plan names every block's width
        kept = [(len(plan.keep_heads[i]), len(plan.keep_neurons[i])) for i in range(depth) if i not in plan.drop_blocks]
        if not np.allclose(block_sums(table, kept), point[:3]):
            raise click.ClickException("the table's fit points are not the fit models this code would time: "
                                       "made by another version of the profiler")
    return ["teacher", "corner", "corner", *["random"] * (count - 2), *["fewer blocks"] * DEPTH_FIT_MODELS]


FITS = {"all (lands)": {"teacher", "corner", "random", "fewer blocks"},
        "without corners": {"teacher", "random", "fewer blocks"},
        "random widths only": {"teacher", "random"}}


def compare(result: dict) -> dict:
    """Per fit: the fit, and its held-out errors (predicted share of the teacher vs measured)."""
    table = LatencyTable.from_dict(result["table"])
    kinds = point_kinds(table)
    arch = table.key.architecture
    teacher = [(arch["num_heads"], arch["mlp_hidden"])] * arch["depth"]
    out = {}
    for name, wanted in FITS.items():
        chosen = [p for p, kind in zip(table.fit.points, kinds, strict=True) if kind in wanted]
        fit = robust_fit([tuple(p[:3]) for p in chosen], [p[3] for p in chosen], table.fixed,
                         (table.attention[1], table.mlp_ms[1]), log=lambda *a: None)
        predict = dataclasses.replace(table, fit=fit).predict
        out[name] = {"fit": fit_fields(fit), "errors": held_out_errors(result["rows"], predict, teacher)}
    return out


@click.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def main(results, json_path):
    """Held-out error of the table's fit with and without its corner models, on each `table_accuracy` result."""
    report = {}
    for path in results:
        result = json.loads(path.read_text())
        report[path.name] = compared = compare(result)
        click.echo(f"{path.name} (batch {result['batch']}):")
        for name, r in compared.items():
            click.echo(f"  {name:18s} {r['fit']['models']:2d} models, a {r['fit']['a']:+.3f}, attention "
                       f"x{r['fit']['b_attention']:.3f}, MLP x{r['fit']['b_mlp']:.3f}: "
                       f"{error_summary(r['errors'], result['rows'])}")
    if json_path is not None:
        write_json_atomic(json_path, report)


if __name__ == "__main__":
    main()
