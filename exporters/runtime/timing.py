"""Warm-up, then timed calls until a minimum count and time are reached; teacher and student in turn.

Every duration comes from a `Timer`: it reads a clock (injectable, so tests can drive it), makes
one call, waits for the device when the call is asynchronous, and reads the clock again. GPU
runtimes pass a timer built on CUDA events instead (see `runtimes.CudaEventTimer`).

`measure` takes several calls (teacher and student) and runs them alternately, A B A B ..., in
the warm-up and in the timed rounds, so slow drift of the machine (thermal throttling, other
jobs, frequency scaling) hits both the same way and cancels in each round's ratio (`stats.speedup`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

from vitshrink.exporters.runtime.errors import MeasureError

Clock = Callable[[], float]  # seconds, monotonic
Call = Callable[[], None]  # one inference; returns when the result is ready (or `sync` is called)


class Timer:
    """Seconds one call takes: clock, call, `sync()` (wait for the device), clock."""

    name = "perf_counter"

    def __init__(self, clock: Clock = time.perf_counter, sync: Callable[[], None] | None = None):
        self.clock = clock
        self.sync = sync

    def __call__(self, fn: Call) -> float:
        start = self.clock()
        fn()
        if self.sync is not None:
            self.sync()
        return self.clock() - start


@dataclass(frozen=True)
class TimingPolicy:
    """When warm-up ends and when timing stops; every limit applies to each model separately."""

    warmup_iters: int = 5  # untimed calls, at least ...
    warmup_s: float = 0.2  # ... and at least this long (trtexec's default warm-up is 200 ms)
    min_iters: int = 20  # timed calls, at least ...
    min_time_s: float = 1.0  # ... and at least this many timed seconds
    max_time_s: float = 30.0  # stop warm-up or timing after this many seconds even if a minimum is not met
    max_iters: int = 5000  # never more timed calls than this (bounds memory and bootstrap cost)

    def __post_init__(self) -> None:
        if min(self.warmup_iters, self.warmup_s, self.min_time_s) < 0:
            raise MeasureError(f"warm-up and minimum time must be >= 0, got {self}")
        if not 1 <= self.min_iters <= self.max_iters:
            raise MeasureError(f"need 1 <= min_iters <= max_iters, got {self.min_iters} and {self.max_iters}")
        if self.max_time_s <= 0:
            raise MeasureError(f"max_time_s must be > 0, got {self.max_time_s}")

    def to_dict(self) -> dict:
        return asdict(self)


def _rounds(calls: Mapping[str, Call], timer: Timer, done: Callable[[dict, dict], bool]) -> dict[str, list[float]]:
    """Run every call once per round, in the mapping's order, until `done(counts, seconds)`."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    seconds = dict.fromkeys(calls, 0.0)
    while True:
        for name, fn in calls.items():
            duration = timer(fn)
            samples[name].append(duration)
            seconds[name] += duration
        if done({k: len(v) for k, v in samples.items()}, seconds):
            return samples


def measure(calls: Mapping[str, Call], policy: TimingPolicy, timer: Timer | None = None) -> dict[str, list[float]]:
    """Warm up, then time `calls` alternately; returns the timed durations (s) of each, paired by round."""
    if not calls:
        raise MeasureError("nothing to time: no calls given")
    timer = timer or Timer()
    p = policy

    def warm(counts: dict, seconds: dict) -> bool:
        reached = all(counts[k] >= p.warmup_iters and seconds[k] >= p.warmup_s for k in counts)
        return reached or max(seconds.values()) >= p.max_time_s

    def timed(counts: dict, seconds: dict) -> bool:
        reached = all(counts[k] >= p.min_iters and seconds[k] >= p.min_time_s for k in counts)
        over = max(seconds.values()) >= p.max_time_s and min(counts.values()) >= 2
        return reached or over or max(counts.values()) >= p.max_iters

    if p.warmup_iters > 0 or p.warmup_s > 0:
        _rounds(calls, timer, warm)
    return _rounds(calls, timer, timed)
