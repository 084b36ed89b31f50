"""What one `vitshrink bench` run found, and its persisted form (bench.json, `"schema": 1`).

Renderers (report.py, plot.py) and gates (gate.py) read the JSON form, so a bench.json written on
a Jetson can be gated, re-rendered or compared anywhere.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vitshrink.benchmarks.errors import BenchError
from vitshrink.benchmarks.memory import MemoryResult
from vitshrink.benchmarks.metrics import derive_metrics
from vitshrink.benchmarks.stats import LatencyStats, Speedup
from vitshrink.compressor.core.reading import read_json

SCHEMA = 1
BENCH_JSON = "bench.json"
BENCH_MD = "bench.md"
BENCH_PNG = "bench.png"


@dataclass(frozen=True)
class ModelInfo:
    role: str  # "teacher" | "student"
    source: str  # what the user named: folder or timm name
    architecture: str  # timm architecture
    params: int
    macs: int  # per image, analytic (1 multiply-add = 1)
    macs_fvcore: int | None  # per image, fvcore with the SDPA op counted (None: not run)
    input_size: tuple[int, int, int]
    blocks: tuple[tuple[int, int], ...]  # (heads, MLP hidden) per block
    files: dict[str, dict] = field(default_factory=dict)  # name -> {"bytes", "origin": "folder" | "exported"}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["blocks"] = [{"heads": h, "mlp": m} for h, m in self.blocks]
        return d


@dataclass(frozen=True)
class LatencyRow:
    model: str
    backend: str  # "runtime:precision"
    device: str
    timer: str  # "perf_counter" | "cuda_events"
    stats: LatencyStats

    def to_dict(self) -> dict:
        return {"model": self.model, "backend": self.backend, "device": self.device, "timer": self.timer,
                **self.stats.to_dict()}


@dataclass(frozen=True)
class SpeedupRow:
    backend: str
    batch: int
    speedup: Speedup
    flops_ratio: float  # teacher MACs / student MACs: the speedup the FLOPs promise

    @property
    def realised(self) -> float:
        """Share of the FLOPs ratio that became speed: 1.0 = the student is as much faster as it is smaller."""
        return self.speedup.ratio / self.flops_ratio

    def to_dict(self) -> dict:
        return {"backend": self.backend, "batch": self.batch, **self.speedup.to_dict(),
                "flops_ratio": round(self.flops_ratio, 6), "realised": round(self.realised, 6)}


@dataclass(frozen=True)
class PrecisionSpeedupRow:
    """The student at a lower precision against an FP32 model, timed alternately in the same rounds."""

    backend: str  # the student's backend, e.g. "ort-cpu:int8"
    batch: int
    against: str  # "teacher fp32" | "student fp32" (same runtime, FP32 file)
    speedup: Speedup  # median over rounds of FP32 latency / student latency

    def to_dict(self) -> dict:
        return {"backend": self.backend, "batch": self.batch, "against": self.against, **self.speedup.to_dict()}


@dataclass(frozen=True)
class AccuracyRow:
    model: str
    backend: str
    dataset: str
    n: int  # images
    top1: float  # fraction
    top5: float
    agreement: float | None  # top-1 agreement with the same model in PyTorch (None: this is PyTorch)
    max_abs_diff: float | None  # largest |logit - PyTorch logit|

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class BenchReport:
    created: str  # UTC, ISO 8601
    config: dict
    environment: dict
    models: dict[str, ModelInfo]
    backends: dict[str, dict]  # backend -> model -> how it ran (device, timer, file, threads, providers, ...)
    latency: tuple[LatencyRow, ...]
    speedups: tuple[SpeedupRow, ...]
    accuracy: tuple[AccuracyRow, ...]
    memory: tuple[MemoryResult, ...]
    skipped: tuple[dict, ...]  # {"backend", "model", "batch", "reason"}: what did not run and why
    notes: tuple[str, ...]
    latency_plan: dict | None = None  # a latency-planned student: predicted vs realised (latency_check.py)
    precision_speedups: tuple[PrecisionSpeedupRow, ...] = ()  # INT8 student against the FP32 teacher and student

    def to_dict(self) -> dict:
        """The content of bench.json."""
        d = {
            "schema": SCHEMA,
            "tool": "vitshrink bench",
            "created": self.created,
            "config": self.config,
            "environment": self.environment,
            "models": {role: m.to_dict() for role, m in self.models.items()},
            "backends": self.backends,
            "latency": [r.to_dict() for r in self.latency],
            "speedup": [r.to_dict() for r in self.speedups],
            "precision_speedup": [r.to_dict() for r in self.precision_speedups],
            "accuracy": [r.to_dict() for r in self.accuracy],
            "memory": [r.to_dict() for r in self.memory],
            "skipped": list(self.skipped),
            "notes": list(self.notes),
            "latency_plan": self.latency_plan,
        }
        d["metrics"] = derive_metrics(d)
        return json.loads(json.dumps(d))  # tuples -> lists: the dict equals what bench.json holds


def read_bench_json(path: str | Path) -> dict:
    """A bench.json (or the folder holding one), checked for its schema version."""
    path = Path(path)
    if path.is_dir():
        path = path / BENCH_JSON
    if not path.is_file():
        raise BenchError(f"{path} does not exist; run `vitshrink bench ARTIFACT --out DIR` first")
    data = read_json(path, fix="run `vitshrink bench` again to rewrite it")
    if data.get("schema") != SCHEMA:
        found = data.get("schema")
        raise BenchError(f"{path}: bench.json schema {found!r}; this vitshrink reads schema {SCHEMA}")
    if "metrics" not in data:
        data["metrics"] = derive_metrics(data)
    return data
