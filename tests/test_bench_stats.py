"""Latency statistics and the paired speedup on samples with known values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vitshrink.benchmarks.errors import BenchError
from vitshrink.benchmarks.stats import latency_stats, speedup


def test_latency_stats_of_1_to_100_ms():
    samples = [i / 1000 for i in range(100, 0, -1)]  # 100 ms .. 1 ms, unsorted on purpose
    s = latency_stats(samples, batch=8)
    assert s.n == 100
    assert s.min_ms == pytest.approx(1.0) and s.max_ms == pytest.approx(100.0)
    # linear interpolation at (n - 1) * q: x[49.5] = 50.5, x[89.1] = 90.1, x[98.01] = 99.01
    assert s.p50_ms == pytest.approx(50.5)
    assert s.p90_ms == pytest.approx(90.1)
    assert s.p99_ms == pytest.approx(99.01)
    assert s.mean_ms == pytest.approx(50.5)
    assert s.std_ms == pytest.approx(math.sqrt(100 * 101 / 12))  # sample std (ddof=1) of 1..100
    assert s.throughput == pytest.approx(8 / 0.0505)  # images per second at the mean


def test_latency_stats_of_constant_samples():
    s = latency_stats([0.004] * 7, batch=1)
    assert (s.p50_ms, s.p90_ms, s.p99_ms, s.std_ms) == pytest.approx((4.0, 4.0, 4.0, 0.0))
    assert s.throughput == pytest.approx(250.0)
    assert latency_stats([0.004], batch=1).std_ms == 0.0  # one sample: no spread, not NaN


@pytest.mark.parametrize("samples, batch", [([], 1), ([0.001, -0.001], 1), ([0.001, float("nan")], 1), ([0.001], 0)])
def test_latency_stats_rejects_bad_input(samples, batch):
    with pytest.raises(BenchError):
        latency_stats(samples, batch)


def test_speedup_cancels_drift_that_hits_both_models():
    # the machine slows down 3x over the run; every round the teacher takes exactly twice the student
    drift = np.linspace(1.0, 3.0, 50)
    teacher, student = 0.010 * drift, 0.005 * drift
    s = speedup(teacher, student)
    assert s.ratio == pytest.approx(2.0)
    assert (s.pair_q25, s.pair_q75) == pytest.approx((2.0, 2.0))
    assert (s.ci_low, s.ci_high) == pytest.approx((2.0, 2.0))
    assert s.pairs == 50


def test_speedup_cancels_load_that_hits_single_rounds():
    # a neighbour's load slows each round differently, both calls of the round alike, and in three rounds
    # the teacher's call alone: the median of the per-round ratios stays at the true 2x, the ratio of the two
    # medians moves with those three rounds
    load = np.random.default_rng(0).permutation(np.linspace(1.0, 1.9, 10))
    teacher, student = 0.010 * load, 0.005 * load
    teacher[np.argsort(load)[:3]] *= 1.3
    s = speedup(teacher, student)
    assert s.ratio == pytest.approx(2.0)
    assert np.median(teacher) / np.median(student) == pytest.approx(2.11, abs=0.01)


def test_speedup_interval_is_deterministic_and_brackets_the_ratio():
    rng = np.random.default_rng(1)
    teacher = 0.012 * (1 + 0.2 * rng.random(200))
    student = 0.008 * (1 + 0.2 * rng.random(200))
    a, b = speedup(teacher, student), speedup(teacher, student)
    assert a == b  # fixed bootstrap seed
    assert a.ci_low < a.ratio < a.ci_high
    assert a.ratio == pytest.approx(np.median(teacher / student))
    assert 1.3 < a.ci_low and a.ci_high < 1.7  # true ratio 1.5
    slower = speedup(student, teacher)
    assert slower.ratio == pytest.approx(1 / a.ratio)  # < 1: the "student" is slower


def test_speedup_needs_paired_samples():
    with pytest.raises(BenchError, match="paired"):
        speedup([0.01, 0.01, 0.01], [0.01, 0.01])
