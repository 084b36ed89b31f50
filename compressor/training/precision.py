"""Whether training runs under bf16 autocast: on where the hardware does bf16 natively, off elsewhere.

bf16 autocast is fast on CUDA GPUs with bf16 support and on CPUs with native bf16 instructions
(AVX512-BF16, AMX); on other CPUs (AVX2-only, e.g. many AMD EPYC) it is emulated and slower than fp32.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from pathlib import Path

import torch

AMP_CHOICES = ("auto", "on", "off")
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # /proc/cpuinfo flags of native bf16


def native_bf16(device_type: str, cpu_flags: Iterable[str] = (), cuda_bf16: bool = True) -> bool:
    """The `--amp auto` rule: on for CUDA with bf16 support, and for CPUs whose flags include native bf16."""
    if device_type == "cuda":
        return cuda_bf16
    if device_type == "cpu":
        return not NATIVE_BF16_CPU_FLAGS.isdisjoint(cpu_flags)
    return False


@cache
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU feature flags (empty where /proc/cpuinfo does not exist, e.g. macOS)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def resolve_amp(amp: bool | None, device: str | torch.device) -> bool:
    """`amp` as given (True/False), or for None ("auto") whether `device` does bf16 natively."""
    if amp is not None:
        return amp
    device_type = torch.device(device).type
    if device_type == "cuda":
        return native_bf16("cuda", cuda_bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return native_bf16(device_type, cpu_flags())


def amp_option(choice: str) -> bool | None:
    """The command-line spelling (auto/on/off) as `TrainConfig.amp` (None/True/False)."""
    return {"auto": None, "on": True, "off": False}[choice]
