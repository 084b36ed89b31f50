"""Training checkpoints: safetensors for tensors (weights, optimizer moments, RNG), JSON for the rest.

A checkpoint folder is written atomically, so an interrupted save leaves the previous one intact.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from compressor.atomic import atomic_dir
from compressor.errors import VitShrinkError

MODEL_FILE = "model.safetensors"
TENSORS_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"


def save_checkpoint(
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, state: dict
) -> None:
    """`state` holds JSON-able progress (epoch, step, history, config fingerprint)."""
    opt = optimizer.state_dict()
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    scalars: dict[str, dict] = {}
    for idx, param_state in opt["state"].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    np_state = np.random.get_state()
    record = {
        **state,
        "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
        "scheduler": scheduler.state_dict(),
        "rng": {
            "python": _to_json(random.getstate()),
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        },
    }
    with atomic_dir(folder) as tmp:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / MODEL_FILE))
        save_file(tensors, str(tmp / TENSORS_FILE))
        (tmp / STATE_FILE).write_text(json.dumps(record))


def has_checkpoint(folder: Path) -> bool:
    return all((Path(folder) / f).is_file() for f in (MODEL_FILE, TENSORS_FILE, STATE_FILE))


def load_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> dict:
    """Restore model, optimizer, scheduler and RNG states; return the progress `state`."""
    folder = Path(folder)
    if not has_checkpoint(folder):
        raise VitShrinkError(f"no complete checkpoint in {folder}; run without --resume to start over")
    record = json.loads((folder / STATE_FILE).read_text())
    model.load_state_dict(load_file(str(folder / MODEL_FILE)), strict=True)
    tensors = load_file(str(folder / TENSORS_FILE))
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
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    py = record["rng"]["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npr = record["rng"]["numpy"]
    np.random.set_state((npr[0], np.array(npr[1], dtype=np.uint32), *npr[2:]))
    return record


def _to_json(obj):
    if isinstance(obj, tuple | list):
        return [_to_json(v) for v in obj]
    return obj
