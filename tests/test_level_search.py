"""`--max-drop`'s search over reduction levels, against fake accuracy curves (no model is trained)."""

from __future__ import annotations

import numpy as np
import pytest

from vitshrink.compressor.core.errors import BudgetError
from vitshrink.compressor.planning.level_search import level_grid, search_level

LEVELS = level_grid(0.7, 0.1)  # 0.1 ... 0.7
TEACHER = 0.90


class FakeRuns:
    """Validation top-1 after the cut, a probe and a full distillation, as functions of the level; counts calls."""

    def __init__(self, cut, probe, full):
        self.curves = {"cut": cut, "probe": probe, "full": full}
        self.calls: dict[str, list[float]] = {"cut": [], "probe": [], "full": []}

    def measure(self, stage):
        def run(level: float) -> dict:
            self.calls[stage].append(level)
            return {"top1": self.curves[stage](level), "loss": 0.0}

        return run

    def search(self, max_drop: float):
        return search_level(LEVELS, TEACHER, max_drop, cut=self.measure("cut"), probe=self.measure("probe"),
                            full=self.measure("full"), log=lambda *a: None)


def monotone():
    """Cut loses 20 points per 10% removed; a probe recovers most, full distillation a bit more."""
    return FakeRuns(cut=lambda x: TEACHER - 2.0 * x, probe=lambda x: TEACHER - 0.02 * x - 0.01 * (x > 0.45),
                    full=lambda x: TEACHER - 0.01 * x - 0.012 * (x > 0.45))


def test_monotone_curve_delivers_the_highest_level_within_the_bound():
    runs = monotone()
    result = runs.search(0.01)
    # full drop: 0.1 -> 0.001, ..., 0.4 -> 0.004, 0.5 -> 0.017: 0.4 is the highest within 1 point
    assert result.delivered == pytest.approx(0.4)
    assert runs.calls["cut"] == LEVELS  # every level cut once
    assert len(runs.calls["probe"]) <= 3  # bisection over 7 levels
    assert runs.calls["full"] == [pytest.approx(0.4)]  # one full distillation: the level the probes chose
    assert all(len(set(c)) == len(c) for c in runs.calls.values())  # no level measured twice at one price


def test_a_level_that_misses_after_full_distillation_steps_back_to_one_that_met_its_probe():
    # probes are optimistic up to 0.5; full distillation at 0.5 misses; 0.4 met its probe and meets in full
    runs = FakeRuns(cut=lambda x: TEACHER - 2.0 * x, probe=lambda x: TEACHER - 0.001 * (x <= 0.55) - 0.1 * (x > 0.55),
                    full=lambda x: TEACHER - 0.001 - 0.05 * (x > 0.45))
    result = runs.search(0.005)
    assert result.delivered is not None and result.delivered < 0.5
    assert any("50%" in why and "full" in why for why in result.why)
    assert result.record(0.5).full is not None and result.record(result.delivered).full["top1"] >= TEACHER - 0.005


def test_noisy_curve_delivers_a_level_measured_within_the_bound():
    rng = np.random.default_rng(0)
    noise = {round(x, 6): rng.normal(0, 0.003) for x in LEVELS}
    runs = FakeRuns(cut=lambda x: TEACHER - 2.0 * x, probe=lambda x: TEACHER - 0.02 * x + noise[round(x, 6)],
                    full=lambda x: TEACHER - 0.015 * x + noise[round(x, 6)])
    result = runs.search(0.005)
    delivered = result.record(result.delivered)
    assert TEACHER - delivered.full["top1"] <= 0.005 + 1e-12


def test_non_monotone_curve_still_delivers_a_level_that_met_the_bound():
    bumpy = {0.1: 0.001, 0.2: 0.02, 0.3: 0.002, 0.4: 0.03, 0.5: 0.001, 0.6: 0.05, 0.7: 0.05}
    runs = FakeRuns(cut=lambda x: TEACHER - 1.0, probe=lambda x: TEACHER - bumpy[round(x, 1)],
                    full=lambda x: TEACHER - bumpy[round(x, 1)])
    result = runs.search(0.005)
    assert result.delivered is not None and bumpy[round(result.delivered, 1)] <= 0.005


def test_a_bound_met_at_every_level_delivers_the_top_level_on_the_cut_alone():
    runs = FakeRuns(cut=lambda x: TEACHER - 0.001, probe=lambda x: 0.0, full=lambda x: TEACHER - 0.001)
    result = runs.search(0.01)
    assert result.delivered == pytest.approx(0.7)
    assert runs.calls["probe"] == [] and runs.calls["full"] == [pytest.approx(0.7)]


def test_a_bound_met_at_no_level_is_refused_naming_the_smallest_level_and_its_drop():
    runs = FakeRuns(cut=lambda x: TEACHER - 0.5, probe=lambda x: TEACHER - 0.2, full=lambda x: TEACHER - 0.1)
    with pytest.raises(BudgetError, match=r"no level stays within the bound; the smallest level tried, 10%, loses "
                                          r"10\.00 points"):
        runs.search(0.005)
    assert runs.calls["full"] == [pytest.approx(0.1)]  # the smallest level got its full distillation first


def test_max_drop_zero_needs_no_loss_at_all():
    runs = FakeRuns(cut=lambda x: TEACHER - 2 * x, probe=lambda x: TEACHER + 0.01 * (x <= 0.3) - 0.01 * (x > 0.3),
                    full=lambda x: TEACHER + 0.01 * (x <= 0.3) - 0.01 * (x > 0.3))
    assert runs.search(0.0).delivered == pytest.approx(0.3)


def test_a_negative_bound_is_refused():
    with pytest.raises(BudgetError, match="max-drop"):
        monotone().search(-0.001)


def test_the_grid_ends_on_the_upper_level():
    assert level_grid(0.7, 0.1) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    assert level_grid(0.33, 0.1) == pytest.approx([0.1, 0.2, 0.3, 0.33])
    assert level_grid(0.05, 0.1) == pytest.approx([0.05])
    with pytest.raises(BudgetError):
        level_grid(1.0)
