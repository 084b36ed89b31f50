"""What machine a result came from, so that two bench.json files can be told apart.

CPU model, cores and threads, load average, GPU, library versions, and on a Jetson the board
and its power mode (`nvpmodel -q`). `fingerprint` hashes the parts that change timings; gates
compare baselines of timing-derived metrics only between equal fingerprints.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

from vitshrink.exporters.provenance import library_versions as export_versions

EXTRA_LIBRARIES = ("onnxruntime-gpu", "tensorrt", "fvcore")  # beyond those export.json records
FINGERPRINT_KEYS = ("cpu", "logical_cpus", "threads", "gpu", "power_mode", "board", "versions")


def cpu_model() -> str:
    """The CPU's marketing name ("model name" in /proc/cpuinfo), or what platform knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    """The versions export.json records, plus the GPU runtimes; packages that are not installed are left out."""
    versions = {k: v for k, v in export_versions().items() if v is not None}
    for name in EXTRA_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def gpu_info() -> dict | None:
    """Name, memory and CUDA version of GPU 0 as PyTorch sees it; None without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "memory_gb": round(props.total_memory / 2**30, 1),
        "compute_capability": f"{props.major}.{props.minor}",
        "cuda": torch.version.cuda,
        "count": torch.cuda.device_count(),
    }


def jetson_info() -> tuple[str | None, str | None]:
    """(board model, power mode) on a Jetson; (None, None) elsewhere."""
    model_file = Path("/proc/device-tree/model")
    board = model_file.read_text(errors="replace").strip("\x00 \n") if model_file.is_file() else None
    power = None
    if shutil.which("nvpmodel"):
        try:
            out = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=5, check=False).stdout
            power = " ".join(line.strip() for line in out.splitlines() if line.strip()) or None
        except (OSError, subprocess.TimeoutExpired):
            power = "unreadable (nvpmodel -q failed)"
    return board, power


def collect_environment(threads: int) -> dict:
    """Everything about this machine and process that bears on the numbers."""
    import torch

    board, power = jetson_info()
    env = {
        "hostname": platform.node(),
        "os": platform.platform(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "gpu": gpu_info(),
        "board": board,
        "power_mode": power,
        "versions": library_versions(),
    }
    env["fingerprint"] = fingerprint(env)
    return env


def fingerprint(env: dict) -> str:
    """A short hash of the hardware, power mode, thread count and library versions."""
    key = {k: env.get(k) for k in FINGERPRINT_KEYS}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
