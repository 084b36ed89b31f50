"""Paired accuracy comparisons: two models classified the *same* images, so compare them image by image.

Two accuracies on one test set are not independent: most images are right (or wrong) for both models,
and only the discordant images (right for one, wrong for the other) carry the difference. So the
difference is judged from those, by
- an exact McNemar test (two-sided binomial test of the discordant counts at p = 1/2), and
- a 95% paired bootstrap interval of the accuracy difference (resampling images, both models together).
A difference whose interval contains 0 is reported as a tie.

Per-image correctness travels in result JSON files as packed bits (`pack_correct` / `unpack_correct`).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np


def pack_correct(correct: Sequence[bool] | np.ndarray) -> dict:
    """{"n", "bits"}: per-image correctness as base64 of packed bits (1.3 KB for 10,000 images)."""
    arr = np.asarray(correct, dtype=bool)
    return {"n": int(arr.size), "bits": base64.b64encode(np.packbits(arr).tobytes()).decode("ascii")}


def unpack_correct(packed: dict) -> np.ndarray:
    bits = np.frombuffer(base64.b64decode(packed["bits"]), dtype=np.uint8)
    return np.unpackbits(bits)[: packed["n"]].astype(bool)


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b images only model A got right and c only model B got right."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = Fraction(sum(math.comb(n, i) for i in range(k + 1)), 2**n)  # exact: 2.0**n overflows past n = 1023
    return min(1.0, float(2 * tail))


def paired_bootstrap_ci(a: np.ndarray, b: np.ndarray, *, rounds: int = 2000, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float]:
    """Interval of mean(a) - mean(b) over images resampled with replacement (a[i], b[i] stay together).

    `a` and `b` may be (images,) or (seeds, images): with seeds, the statistic is the mean difference
    over seeds, and the same resampled images are used for every seed.
    """
    a, b = np.atleast_2d(np.asarray(a, dtype=np.float64)), np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs the same images: shapes {a.shape} and {b.shape}")
    diff = (a - b).mean(axis=0)  # per image, mean over seeds
    rng = np.random.default_rng(seed)
    n = diff.size
    stats = np.empty(rounds)
    for r in range(rounds):
        stats[r] = diff[rng.integers(0, n, n)].mean()
    tail = (1 - level) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    return float(low), float(high)


def compare_correct(a: np.ndarray, b: np.ndarray, *, seed: int = 0) -> dict:
    """Model A against model B on the same images: difference, interval, discordant counts, verdict."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    low, high = paired_bootstrap_ci(a, b, seed=seed)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    verdict = "tie" if low <= 0.0 <= high else ("better" if low > 0 else "worse")
    return {"delta": float(a.mean() - b.mean()), "ci95": [low, high], "only_a": only_a, "only_b": only_b,
            "mcnemar_p": mcnemar_exact_p(only_a, only_b), "verdict": verdict, "n": int(a.size)}
