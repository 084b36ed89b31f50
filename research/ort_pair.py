"""The experiments' timing step: a model exported to ONNX and timed against its teacher on ONNX Runtime CPU,
the two interleaved in one loop, as `bench` times them."""

from __future__ import annotations

from pathlib import Path

import torch

from vitshrink.benchmarks.stats import Speedup, latency_stats, speedup
from vitshrink.exporters.io_spec import IOSpec
from vitshrink.exporters.onnx_export import DEFAULT_OPSET, export_onnx
from vitshrink.exporters.runtime.backends import BackendSpec, Runtime, RuntimeOptions, Subject, build_runtime
from vitshrink.exporters.runtime.timing import TimingPolicy, measure


def ort_cpu_runtime(model: torch.nn.Module, io: IOSpec, path: Path, options: RuntimeOptions) -> Runtime:
    """`model` exported to `path` (legacy exporter, simplified) and loaded as bench's ort-cpu FP32 runtime."""
    export_for_ort(model, io, path)
    return load_ort_cpu(path, io, options)


def export_for_ort(model: torch.nn.Module, io: IOSpec, path: Path) -> Path:
    """`model` exported to `path` as `ort_cpu_runtime` exports it (legacy exporter, simplified)."""
    export_onnx(model, io, path, dynamo=False, opset=DEFAULT_OPSET, simplify=True)
    return path


def load_ort_cpu(path: Path, io: IOSpec, options: RuntimeOptions) -> Runtime:
    """An exported model (`ort_cpu_runtime`) loaded again: bench's ort-cpu FP32 runtime in a fresh session."""
    return build_runtime(BackendSpec("ort-cpu", "fp32"), Subject(path.stem, io.input_size, onnx={"fp32": path}),
                         options)


def time_pair(teacher: Runtime, student: Runtime, batch: int, policy: TimingPolicy,
              seed: int) -> tuple[float, float, Speedup]:
    """Teacher and student p50 ms at `batch`, and the student's speedup (with its bootstrap interval)."""
    calls = {"teacher": lambda: teacher.run(batch), "student": lambda: student.run(batch)}
    samples = measure(calls, policy, teacher.timer)
    return (latency_stats(samples["teacher"], batch).p50_ms, latency_stats(samples["student"], batch).p50_ms,
            speedup(samples["teacher"], samples["student"], seed=seed))
