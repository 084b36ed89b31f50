"""The timing loop on a fake clock: warm-up, minimum count and time, caps, and A B A B order."""

from __future__ import annotations

from itertools import cycle

import pytest

from vitshrink.benchmarks.stats import latency_stats
from vitshrink.exporters.runtime.errors import MeasureError
from vitshrink.exporters.runtime.timing import Timer, TimingPolicy, measure


class FakeClock:
    """A clock that only moves when a fake call says how long it took."""

    def __init__(self) -> None:
        self.now = 0.0  # durations below are binary fractions, so sums are exact

    def __call__(self) -> float:
        return self.now


def fake_call(clock: FakeClock, durations, log: list, name: str):
    """A call that 'takes' the next of `durations` seconds and logs its name."""
    it = cycle(durations)

    def call() -> None:
        log.append(name)
        clock.now += next(it)

    return call


def policy(**kw) -> TimingPolicy:
    base = {"warmup_iters": 0, "warmup_s": 0.0, "min_iters": 1, "min_time_s": 0.0, "max_time_s": 1e9}
    return TimingPolicy(**{**base, **kw})


def test_timer_measures_call_and_sync_on_the_injected_clock():
    clock = FakeClock()
    synced = []

    def sync() -> None:
        synced.append(True)
        clock.now += 0.0005  # waiting for the device is part of the latency

    timer = Timer(clock, sync)
    assert timer(fake_call(clock, [0.002], [], "A")) == pytest.approx(0.0025)
    assert synced == [True]


def test_alternates_a_b_after_warm_up_and_returns_paired_samples():
    clock, log = FakeClock(), []
    calls = {"A": fake_call(clock, [0.002], log, "A"), "B": fake_call(clock, [0.001], log, "B")}
    samples = measure(calls, policy(warmup_iters=3, min_iters=5), Timer(clock))
    assert log == ["A", "B"] * (3 + 5)  # warm-up rounds, then timed rounds, always A B A B
    assert samples["A"] == pytest.approx([0.002] * 5)  # warm-up calls are not in the samples
    assert samples["B"] == pytest.approx([0.001] * 5)


def test_min_time_extends_beyond_min_iters():
    clock, log = FakeClock(), []
    samples = measure({"A": fake_call(clock, [0.125], log, "A")}, policy(min_iters=2, min_time_s=1.0), Timer(clock))
    assert len(samples["A"]) == 8  # 8 x 0.125 s reaches the 1 s minimum


def test_warm_up_time_is_per_model():
    clock, log = FakeClock(), []
    calls = {"A": fake_call(clock, [0.25], log, "A"), "B": fake_call(clock, [0.0625], log, "B")}
    samples = measure(calls, policy(warmup_iters=1, warmup_s=0.5, min_iters=2), Timer(clock))
    # B needs 8 x 0.0625 s of warm-up, so both get 8 warm-up calls (rounds stay paired)
    assert len(log) == 2 * (8 + 2)
    assert len(samples["A"]) == len(samples["B"]) == 2


def test_max_time_caps_a_slow_model():
    clock, log = FakeClock(), []
    calls = {"A": fake_call(clock, [1.0], log, "A"), "B": fake_call(clock, [0.0078125], log, "B")}
    samples = measure(calls, policy(min_iters=100, max_time_s=5.0), Timer(clock))
    assert len(samples["A"]) == len(samples["B"]) == 5


def test_max_iters_caps_a_fast_model():
    clock, log = FakeClock(), []
    samples = measure({"A": fake_call(clock, [1e-6], log, "A")}, policy(min_time_s=10.0, max_iters=50), Timer(clock))
    assert len(samples["A"]) == 50


def test_known_durations_flow_into_the_statistics():
    clock = FakeClock()
    durations = [0.001, 0.002, 0.003, 0.004]  # ms: 1 2 3 4, repeating (min_time 0: sums need not be exact)
    samples = measure({"A": fake_call(clock, durations, [], "A")}, policy(min_iters=8), Timer(clock))
    s = latency_stats(samples["A"], batch=4)
    assert s.n == 8
    assert s.p50_ms == pytest.approx(2.5)
    assert s.mean_ms == pytest.approx(2.5)
    assert s.p90_ms == pytest.approx(4.0)  # x[6.3] of 1 1 2 2 3 3 4 4
    assert s.throughput == pytest.approx(4 / 0.0025)


@pytest.mark.parametrize("kw", [{"min_iters": 0}, {"min_iters": 10, "max_iters": 5}, {"max_time_s": 0},
                                {"warmup_s": -1.0}])
def test_policy_rejects_bad_limits(kw):
    with pytest.raises(MeasureError):
        TimingPolicy(**kw)


def test_nothing_to_time():
    with pytest.raises(MeasureError):
        measure({}, TimingPolicy())
