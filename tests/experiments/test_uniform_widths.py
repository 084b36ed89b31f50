"""Uniform-width models: the shapes, and the table's predicted speedup against a measured one."""

from __future__ import annotations

import pytest

from research.uniform_widths import compare, uniform_shapes
from tests.experiments.toy_table import DEPTH, HEADS, HIDDEN, toy_table


def test_uniform_shapes_cut_heads_only_or_mlp_only_in_every_block():
    shapes = uniform_shapes(HEADS, HIDDEN, DEPTH, [16, 48])
    assert list(shapes) == ["heads 1", "heads 2", "heads 3", "mlp 16", "mlp 48"]
    assert shapes["heads 2"] == [(2, HIDDEN)] * DEPTH and shapes["mlp 16"] == [(HEADS, 16)] * DEPTH


def test_compare_reads_the_tables_speedup_over_the_teacher():
    shapes = uniform_shapes(HEADS, HIDDEN, DEPTH, [16])
    # toy table: teacher 2 + 4 * (2.5 + 2.0) = 20 ms; one head everywhere 2 + 4 * (1.0 + 2.0) = 14 ms: 1.4286x
    rows = {r["shape"]: r for r in compare(toy_table(), shapes, dict.fromkeys(shapes, 1.25))}
    assert rows["heads 1"]["predicted"] == pytest.approx(20 / 14)
    assert rows["heads 1"]["error"] == pytest.approx(20 / 14 / 1.25 - 1)
    assert rows["mlp 16"]["predicted"] == pytest.approx(20 / (2 + 4 * (2.5 + 0.5)))
