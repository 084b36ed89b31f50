"""PyTorch's own distributed stack, used when launched by torchrun (WORLD_SIZE > 1); a no-op otherwise."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def init_from_env() -> str:
    """Join the process group torchrun describes; return the device this process should use."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return "cpu"


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def gather(obj: object) -> list:
    """Every process's `obj` (picklable), indexed by rank, on every process; `[obj]` without torchrun."""
    if not is_distributed():
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """True on every process when `flag` is true on any one (so all of them stop at the same step)."""
    if not is_distributed():
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def wrap(model: nn.Module) -> nn.Module:
    """DistributedDataParallel under torchrun, the model itself otherwise."""
    if not is_distributed():
        return model
    device_ids = [torch.cuda.current_device()] if torch.cuda.is_available() else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
