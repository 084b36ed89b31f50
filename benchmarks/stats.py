"""Latency statistics and the teacher/student speedup, as pure functions of timed samples (seconds).

Percentiles use numpy's default linear interpolation; `std` is the sample standard deviation
(ddof=1); throughput is images per second at the mean latency (batch / mean), as timm and
optimum-benchmark report it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from vitshrink.benchmarks.errors import BenchError

BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95
# Fewest timing rounds whose speedup interval is reported and gated. Below 6 no interval of the median
# reaches 95%: even [min, max] of the per-round ratios holds it with probability 1 - 2 * 0.5**n (5 rounds:
# 93.8%), and the bootstrap's interval is narrower still (1 round: zero width).
MIN_CI_ROUNDS = 6


@dataclass(frozen=True)
class LatencyStats:
    """Summary of the timed calls of one model on one backend at one batch size (times in ms)."""

    batch: int
    n: int  # timed calls
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    throughput: float  # images per second: batch / mean latency

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> LatencyStats:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def _check(samples: Sequence[float], what: str) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise BenchError(f"{what}: no timed samples (got shape {x.shape}); was the timing policy too short?")
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise BenchError(f"{what}: timed samples must be finite and >= 0, got min {x.min()}")
    return x


def latency_stats(samples_s: Sequence[float], batch: int) -> LatencyStats:
    """Summarise per-call durations in seconds for calls that each processed `batch` images."""
    if batch < 1:
        raise BenchError(f"batch size must be >= 1, got {batch}")
    x = _check(samples_s, "latency") * 1e3
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    mean = float(x.mean())
    return LatencyStats(
        batch=batch,
        n=int(x.size),
        mean_ms=mean,
        std_ms=float(x.std(ddof=1)) if x.size > 1 else 0.0,
        min_ms=float(x.min()),
        max_ms=float(x.max()),
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        throughput=batch / (mean / 1e3) if mean > 0 else float("inf"),
    )


@dataclass(frozen=True)
class Speedup:
    """How much faster the student is: the median over rounds of teacher_i / student_i.

    Samples are paired (teacher and student timed back to back in each round), so the ratio is taken
    within each round, where both models met the same machine, and the median of those ratios is
    reported: a neighbour's load that slows one round slows both of its calls and cancels, where the two
    medians need not come from the same rounds (measured spreads of both: docs/benchmarks.md, "Why the
    median of per-round ratios"; `research/timing_noise.py`).
    The spread: a 95% bootstrap interval of that median (rounds resampled, fixed seed), and the
    interquartile range of the per-round ratios. From fewer than MIN_CI_ROUNDS rounds the interval is
    computed but is no 95% interval: the bench report shows none and gates do not evaluate it.
    """

    ratio: float  # median of teacher_i / student_i; > 1 means the student is faster
    ci_low: float
    ci_high: float
    pair_q25: float
    pair_q75: float
    pairs: int

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Speedup:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def speedup(teacher_s: Sequence[float], student_s: Sequence[float], *, seed: int = 0) -> Speedup:
    """Median of the per-round ratios with its spread; the i-th samples of both lists must come from one
    A/B round."""
    t = _check(teacher_s, "teacher latency")
    s = _check(student_s, "student latency")
    if t.size != s.size:
        raise BenchError(
            f"speedup needs paired samples (timed alternately), got {t.size} teacher and {s.size} student samples"
        )
    if np.any(s <= 0):
        raise BenchError("student samples of 0 s: the clock is too coarse for this model; raise the batch size")
    per_round = t / s
    ratio = float(np.median(per_round))
    rng = np.random.default_rng(seed)
    index = rng.integers(0, t.size, size=(BOOTSTRAP_RESAMPLES, t.size))  # (R, n): resampled round indices
    boot = np.median(per_round[index], axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    q25, q75 = np.percentile(per_round, [25, 75])
    return Speedup(ratio, float(low), float(high), float(q25), float(q75), int(t.size))
