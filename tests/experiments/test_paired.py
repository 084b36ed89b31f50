"""Paired comparisons on the same test images: McNemar, paired bootstrap, packing, the compare table."""

from __future__ import annotations

import numpy as np
import pytest

from research.compare import paired
from research.compare_report import paired_rows
from research.paired import (
    compare_correct,
    mcnemar_exact_p,
    pack_correct,
    paired_bootstrap_ci,
    unpack_correct,
)


def test_packed_correctness_round_trips_any_length():
    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 9, 10_000):
        correct = rng.random(n) < 0.6
        assert np.array_equal(unpack_correct(pack_correct(correct)), correct)


def test_mcnemar_exact_values():
    assert mcnemar_exact_p(0, 0) == 1.0 and mcnemar_exact_p(5, 5) == 1.0
    assert mcnemar_exact_p(10, 0) == pytest.approx(2 / 1024)
    assert mcnemar_exact_p(3, 9) == pytest.approx(mcnemar_exact_p(9, 3))
    assert mcnemar_exact_p(3, 9) == pytest.approx(2 * (1 + 12 + 66 + 220) / 4096)  # sum C(12,k), k <= 3
    assert mcnemar_exact_p(1000, 1000) == 1.0 and mcnemar_exact_p(900, 1100) == pytest.approx(8.457e-6, rel=1e-3)  # scipy binomtest: 8.457e-06
    assert 0.0 <= mcnemar_exact_p(0, 3000) < 1e-300  # thousands of discordant images: no overflow


def test_bootstrap_interval_sees_pairing():
    rng = np.random.default_rng(1)
    a = rng.random(2000) < 0.7
    b = a.copy()
    flip = rng.choice(2000, 30, replace=False)  # b loses 30 images a gets right, gains none
    b[flip[a[flip]]] = False
    low, high = paired_bootstrap_ci(a, b)
    assert 0 < low <= (a.mean() - b.mean()) <= high  # 1 pp lost on 2,000 images: beyond noise when paired
    assert paired_bootstrap_ci(a, a) == (0.0, 0.0)
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap_ci(a, b[:-1])


def test_compare_correct_counts_and_verdicts():
    a = np.array([1, 1, 1, 0, 0, 1] * 50, dtype=bool)
    b = np.array([1, 0, 1, 0, 1, 1] * 50, dtype=bool)
    c = compare_correct(a, b)
    assert (c["only_a"], c["only_b"], c["n"]) == (50, 50, 300) and c["delta"] == 0 and c["verdict"] == "tie"
    worse = compare_correct(b & ~a, a)  # right on 50 images against 200
    assert worse["verdict"] == "worse" and worse["delta"] < 0


def _row(method: str, seed: int, correct: np.ndarray) -> dict:
    return {"method": method, "seed": seed, "test_correct": pack_correct(correct)}


def test_paired_table_per_seed_and_pooled():
    rng = np.random.default_rng(2)
    rows = []
    for seed in (0, 1, 2):
        ref = rng.random(3000) < 0.66
        other = ref.copy()
        other[rng.choice(np.flatnonzero(ref), 40, replace=False)] = False  # 40 lost per seed
        rows += [_row("vitshrink", seed, ref), _row("width-only", seed, other), _row("solo", 9, ref)]
    result = paired(rows)
    assert set(result) == {"width-only"}  # "solo" shares no seed with the reference
    w = result["width-only"]
    assert w["seeds"] == [0, 1, 2] and all(c["only_a"] == 40 and c["only_b"] == 0 for c in w["per_seed"].values())
    assert w["pooled"]["delta"] == pytest.approx(40 / 3000) and w["pooled"]["verdict"] == "better"
    header, table = paired_rows({"paired": result})
    assert len(table) == 4 and table[-1][0] == "width-only" and table[-1][-1] == "better"
    assert table[0][2] == "+1.33" and table[0][4:6] == ("40", "0")


def test_full_test_tables_from_per_image_rows():
    from research.paired_test import table

    rng = np.random.default_rng(3)
    ref = rng.random(1000) < 0.6
    worse = ref & (rng.random(1000) < 0.9)  # loses about a tenth of what ref gets right
    rows = [{"method": "vitshrink", "seed": 0, "test_correct": pack_correct(ref)},
            {"method": "width-only", "seed": 0, "test_correct": pack_correct(worse)}]
    text = table({"rows": rows, "teacher_top1": 0.66})
    assert "Top-1 on all 1,000 test images (teacher 66.00%)" in text
    assert f"| vitshrink | 0 | {ref.mean() * 100:.2f} |" in text and "| width-only | mean of 0 |" in text
    assert text.rstrip().splitlines()[-1].startswith("Positive: the reference is more accurate")
