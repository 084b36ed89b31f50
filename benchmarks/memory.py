"""Peak memory per backend, each measured in its own process (`vitshrink.benchmarks.memory_probe`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import vitshrink
from vitshrink.benchmarks.errors import BenchError

# the folder that holds the `vitshrink` package (site-packages, or a checkout's root), so that the probe's
# `-m vitshrink.benchmarks.memory_probe` imports this same code in the fresh process
PACKAGE_PARENT = Path(vitshrink.__file__).resolve().parent.parent


@dataclass(frozen=True)
class MemoryResult:
    model: str  # "teacher" | "student"
    backend: str  # e.g. "ort-cpu:fp32"
    batch: int
    rss_peak_mb: float | None  # peak resident set size of the probe process
    rss_baseline_mb: float | None  # peak RSS with the backend's libraries imported, before the model was loaded
    cuda_peak_mb: float | None = None
    cuda_method: str | None = None  # how cuda_peak_mb was measured
    error: str | None = None  # why the probe failed (the numbers are then None)

    @property
    def rss_added_mb(self) -> float | None:
        """What loading and running the model added to the process."""
        if self.rss_peak_mb is None or self.rss_baseline_mb is None:
            return None
        return self.rss_peak_mb - self.rss_baseline_mb

    def to_dict(self) -> dict:
        return {**asdict(self), "rss_added_mb": self.rss_added_mb}


def probe_memory(request: dict, *, timeout_s: float = 900.0) -> dict:
    """Run the probe in a fresh Python process and return what it printed (see memory_probe)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_PARENT), env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = str(request["threads"])
    command = [sys.executable, "-m", "vitshrink.benchmarks.memory_probe", json.dumps(request)]
    what = f"memory probe of the {request['role']} on {request['runtime']}:{request['precision']}"
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{what} did not finish in {timeout_s:.0f} s") from e
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise BenchError(f"{what} failed (exit {done.returncode}): {tail}")
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError) as e:
        raise BenchError(f"{what} printed no JSON result: {done.stdout[-200:]!r}") from e


def measure_memory(request: dict, *, timeout_s: float = 900.0) -> MemoryResult:
    """Probe one (model, backend); a failed probe is recorded with its reason instead of numbers."""
    backend = f"{request['runtime']}:{request['precision']}"
    try:
        raw = probe_memory(request, timeout_s=timeout_s)
    except BenchError as e:
        return MemoryResult(request["role"], backend, int(request["batch"]), None, None, error=str(e))
    mb = lambda v: None if v is None else round(v / 2**20, 1)  # noqa: E731
    return MemoryResult(
        model=request["role"],
        backend=backend,
        batch=int(request["batch"]),
        rss_peak_mb=mb(raw["rss_peak_bytes"]),
        rss_baseline_mb=mb(raw["rss_baseline_bytes"]),
        cuda_peak_mb=mb(raw.get("cuda_peak_bytes")),
        cuda_method=raw.get("cuda_method"),
    )
