"""The corner-model ablation on timings made up from a known runtime: labels, refusals, exact refits."""

from __future__ import annotations

import click
import pytest

from research.corner_models import compare, point_kinds
from tests.experiments.toy_table import DEPTH, HEADS, HIDDEN, toy_table
from vitshrink.compressor.core.latency_table import LatencyTable
from vitshrink.exporters.runtime.latency_profile import block_sums, fit_plans

ROUND_TO = 16


def _blocks(plan) -> list[tuple[int, int]]:
    return [(len(plan.keep_heads[i]), len(plan.keep_neurons[i])) for i in range(DEPTH) if i not in plan.drop_blocks]


def _result(runtime) -> dict:
    """A profile's fit points and three held-out models near the one-head corner, all timed on `runtime`."""
    shapes = [[(HEADS, HIDDEN)] * DEPTH, *(_blocks(p) for p in fit_plans(HEADS, HIDDEN, DEPTH, ROUND_TO, 8))]
    points = tuple((*block_sums(toy_table(round_to=ROUND_TO), s), runtime(s)) for s in shapes)
    held_out = [[(1, 64)] * DEPTH, [(1, 64), (1, 64), (2, 64), (1, 48)], [(2, 64)] * DEPTH]
    teacher = runtime(shapes[0])
    rows = [{"model": f"plan {i}", "heads": [h for h, _ in s], "mlp": [m for _, m in s], "measured": 1 - runtime(s) / teacher}
            for i, s in enumerate(held_out)]
    return {"table": toy_table(round_to=ROUND_TO, points=points).to_dict(), "rows": rows}


def _linear(blocks) -> float:
    n, att, mlp = block_sums(toy_table(round_to=ROUND_TO), blocks)
    return 2.0 - 0.2 * n + 0.9 * att + 0.8 * mlp


def test_points_are_labelled_by_the_plans_the_profile_timed():
    kinds = point_kinds(LatencyTable.from_dict(_result(_linear)["table"]))
    assert kinds == ["teacher", "corner", "corner", *["random"] * 6, "fewer blocks", "fewer blocks"]


def test_a_table_whose_points_are_other_models_is_refused():
    table = _result(_linear)["table"]
    first_corner = list(table["fit"]["points"][1])
    first_corner[1] += 0.5  # its attention sum: not what this code would time
    table["fit"]["points"] = [table["fit"]["points"][0], first_corner, *table["fit"]["points"][2:]]
    with pytest.raises(click.ClickException, match="another version of the profiler"):
        compare({**_result(_linear), "table": table})


def test_on_a_linear_runtime_every_fit_predicts_exactly():
    for fit in compare(_result(_linear)).values():
        assert max(map(abs, fit["errors"])) < 1e-9
    models = {name: fit["fit"]["models"] for name, fit in compare(_result(_linear)).items()}
    assert models == {"all (lands)": 11, "without corners": 9, "random widths only": 7}
