"""Training checkpoints: safetensors for tensors (weights, optimizer moments, RNG), JSON for the rest.

RNG states are kept per process (`rng.<rank>.*`): under torchrun every rank resumes its own stream.

A checkpoint folder is written atomically, so an interrupted save leaves the previous one intact.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from vitshrink.compressor.core.atomic import atomic_dir
from vitshrink.compressor.core.errors import VitShrinkError
from vitshrink.compressor.core.reading import read_safetensors

MODEL_FILE = "model.safetensors"
TENSORS_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
FORMAT_VERSION = 2  # 2: RNG states per process


def rng_state() -> dict:
    """This process's RNG states: torch (CPU and every CUDA device), Python's, NumPy's."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "python": _to_json(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned (CUDA states only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npr = state["numpy"]
    np.random.set_state((npr[0], np.array(npr[1], dtype=np.uint32), *npr[2:]))


def save_checkpoint(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    state: dict,
    rng_states: list[dict] | None = None,
) -> None:
    """`state` holds JSON-able progress (epoch, step, history, config fingerprint).

    `rng_states[r]` is process r's `rng_state()` (all of them, gathered: each process resumes its own
    stream); default: this process's alone.
    """
    rng_states = rng_states if rng_states is not None else [rng_state()]
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for r, rs in enumerate(rng_states):
        tensors[f"rng.{r}.torch"] = rs["torch"].cpu()
        for i, s in enumerate(rs["cuda"]):
            tensors[f"rng.{r}.cuda.{i}"] = s.cpu()
    scalars: dict[str, dict] = {}
    for idx, param_state in opt["state"].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    record = {
        **state,
        "format_version": FORMAT_VERSION,
        "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
        "scheduler": scheduler.state_dict(),
        "rng": [{"python": rs["python"], "numpy": rs["numpy"]} for rs in rng_states],
    }
    with atomic_dir(folder) as tmp:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / MODEL_FILE))
        save_file(tensors, str(tmp / TENSORS_FILE))
        (tmp / STATE_FILE).write_text(json.dumps(record))


def has_checkpoint(folder: Path) -> bool:
    return all((Path(folder) / f).is_file() for f in (MODEL_FILE, TENSORS_FILE, STATE_FILE))


def read_state(folder: Path) -> dict:
    """The JSON progress record of a checkpoint (to check its fingerprint before loading anything)."""
    folder = Path(folder)
    if not has_checkpoint(folder):
        raise VitShrinkError(f"no complete checkpoint in {folder}; run without --resume to start over")
    record = json.loads((folder / STATE_FILE).read_text())
    if record.get("format_version") != FORMAT_VERSION:
        raise VitShrinkError(
            f"checkpoint in {folder} has format {record.get('format_version', 1)}, this vitshrink reads "
            f"{FORMAT_VERSION} (an older vitshrink wrote it); rerun without --resume to start over"
        )
    return record


def load_checkpoint(
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, rank: int = 0
) -> dict:
    """Restore model, optimizer, scheduler and process `rank`'s RNG states; return the progress `state`."""
    folder = Path(folder)
    record = read_state(folder)
    tensors = read_safetensors(folder / TENSORS_FILE, fix="rerun without --resume to start over")
    saved = record.get("rng")
    if not isinstance(saved, list) or f"rng.{rank}.torch" not in tensors or rank >= len(saved):
        raise VitShrinkError(
            f"checkpoint in {folder} holds no RNG state for process {rank} (written by an older vitshrink or "
            "with fewer processes); rerun without --resume to start over"
        )
    model.load_state_dict(read_safetensors(folder / MODEL_FILE, fix="rerun without --resume to start over"), strict=True)
    device = next(model.parameters()).device
    opt_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = value.to(device) if name != "step" else value
    for idx, scalars in record["optimizer"]["scalars"].items():
        opt_state.setdefault(int(idx), {}).update(scalars)
    optimizer.load_state_dict({"state": opt_state, "param_groups": record["optimizer"]["param_groups"]})
    scheduler.load_state_dict(record["scheduler"])
    cuda = sorted((k for k in tensors if k.startswith(f"rng.{rank}.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    set_rng_state({"torch": tensors[f"rng.{rank}.torch"], "cuda": [tensors[k] for k in cuda], **saved[rank]})
    return record


def _to_json(obj):
    if isinstance(obj, tuple | list):
        return [_to_json(v) for v in obj]
    return obj
