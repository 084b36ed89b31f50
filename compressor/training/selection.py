"""Which distilled student a stage keeps: the best on the validation split, the cut itself included.

Distillation after a cut is only worth keeping if it helps. With `keep="best"` the training loop offers
the weights it starts from (the cut, epoch 0) and those at the end of every epoch; the kept student is
the one with the highest validation top-1 (ties: the lower validation loss, then the earlier epoch). So a
stage can return the cut unchanged, but never a student the validation split says is worse than it.
The choice reads only the validation split (held out of the training split), never the test split.

The best weights live in `<work dir>/best/` (safetensors + JSON, written atomically by process 0), so a
resumed run keeps choosing among every epoch, those before the interruption included.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from vitshrink.compressor.core.atomic import atomic_dir
from vitshrink.compressor.core.reading import read_safetensors

KEEP_CHOICES = ("best", "last")
WEIGHTS_FILE = "model.safetensors"
META_FILE = "best.json"


def _rank_key(top1: float, loss: float) -> tuple[float, float]:
    return (top1, -loss)


class BestOnValidation:
    """The best weights seen so far on the validation split, kept in `folder`."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def meta(self) -> dict | None:
        """{"epoch", "top1", "loss"} of the kept weights; None before anything was offered."""
        path = self.folder / META_FILE
        if not (path.is_file() and (self.folder / WEIGHTS_FILE).is_file()):
            return None
        return json.loads(path.read_text())

    def clear(self) -> None:
        for name in (META_FILE, WEIGHTS_FILE):
            (self.folder / name).unlink(missing_ok=True)

    def offer(self, model: nn.Module, epoch: int, top1: float, loss: float) -> bool:
        """Keep `model`'s weights if they beat the kept ones; True when they were kept."""
        best = self.meta()
        if best is not None and _rank_key(top1, loss) <= _rank_key(best["top1"], best["loss"]):
            return False
        with atomic_dir(self.folder) as tmp:
            weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            save_file(weights, str(tmp / WEIGHTS_FILE))
            (tmp / META_FILE).write_text(json.dumps({"epoch": epoch, "top1": top1, "loss": loss}))
        return True

    def restore(self, model: nn.Module) -> dict:
        """Load the kept weights into `model` (strict); return their meta."""
        meta = self.meta()
        if meta is None:
            raise FileNotFoundError(f"no kept weights in {self.folder}")
        state = read_safetensors(self.folder / WEIGHTS_FILE, fix="rerun without --resume to start over")
        device = next(model.parameters()).device
        with torch.no_grad():
            model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)
        return meta
