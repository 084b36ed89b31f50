"""The fit-rule comparison on timings made up from a known model: the rule that matches it predicts exactly."""

from __future__ import annotations

import numpy as np
import pytest

from research.fit_rules import compare
from tests.experiments.toy_table import DEPTH, HEADS, HIDDEN, toy_table
from vitshrink.exporters.runtime.latency_profile import block_sums


def _ms(blocks: list[tuple[int, int]]) -> float:
    """The 'runtime': every kept sub-block runs 0.2 ms faster than alone, attention x0.9, MLP x0.8."""
    n, att, mlp = block_sums(toy_table(), blocks)
    return 2.0 - 0.2 * n + 0.9 * att + 0.8 * mlp


def test_the_per_sub_block_rule_predicts_a_per_sub_block_runtime_and_the_old_one_does_not():
    rng = np.random.default_rng(0)
    shapes = [[(HEADS, HIDDEN)] * DEPTH]
    shapes += [[(int(rng.integers(1, HEADS + 1)), int(rng.choice([16, 32, 48, 64]))) for _ in range(DEPTH)] for _ in range(8)]
    shapes += [shapes[1][:3], shapes[2][:2]]  # two models of fewer blocks
    points = tuple((*block_sums(toy_table(), s), _ms(s)) for s in shapes)
    held_out = [[(1, 64)] * DEPTH, [(2, 32)] * DEPTH, [(1, 16), (4, 64), (2, 48), (1, 32)]]
    teacher = _ms([(HEADS, HIDDEN)] * DEPTH)
    rows = [{"model": f"plan {i}", "heads": [h for h, _ in s], "mlp": [m for _, m in s], "measured": 1 - _ms(s) / teacher}
            for i, s in enumerate(held_out)]

    result = compare({"table": toy_table(points=points).to_dict(), "rows": rows})

    new, old = result["per sub-block"], result["once per model"]
    assert new["fit"]["a"] == pytest.approx(-0.2) and max(map(abs, new["errors"])) < 1e-9
    # the old rule may not take the stem (2 ms) below 0 with its once-per-model intercept (-0.2 x 8 = -1.6 ms is
    # allowed here), so it fits the full-depth models exactly too: it predicts these as well
    assert old["fit"]["a"] == pytest.approx(-1.6) and max(map(abs, old["errors"])) < 1e-9
    # on a stem cheaper than the sub-blocks' gap (as on ViT-S at batch 1), it must drop the intercept, and misses
    cheap_stem = {**toy_table(points=points).to_dict(), "fixed": 1.0}
    shifted = tuple((*p[:3], p[3] - 1.0) for p in points)
    cheap_stem["fit"] = {**cheap_stem["fit"], "points": [list(p) for p in shifted]}
    rows_cheap = [{**r, "measured": 1 - (_ms(s) - 1.0) / (teacher - 1.0)} for r, s in zip(rows, held_out, strict=True)]
    result = compare({"table": cheap_stem, "rows": rows_cheap})
    assert max(map(abs, result["per sub-block"]["errors"])) < 1e-9
    assert result["once per model"]["fit"]["a"] == 0 and max(map(abs, result["once per model"]["errors"])) > 0.01
