"""What `--resume` must match, and one line naming what differs when it does not.

A work folder records the run it belongs to in `run.json` (a fingerprint of the teacher's weights and
the data options); a training checkpoint records its own (the training settings). `--resume` into a
folder made by another run stops before anything is loaded, instead of silently reusing its stages.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import torch
from torch import nn

from vitshrink.compressor.core import distributed as ddp
from vitshrink.compressor.core.atomic import write_json_atomic
from vitshrink.compressor.core.errors import VitShrinkError
from vitshrink.compressor.core.reading import read_json

RUN_FILE = "run.json"
# what a run leaves in its work folder besides run.json (removed when a run starts over there without --resume)
_RUN_ENTRIES = re.compile(r"(stage\d+-(width|depth|plan)|checkpoint|log\.jsonl)")

# the command-line option each recorded setting comes from (settings without one are named as they are)
FLAGS = {
    "budget": "--reduce", "stages": "--stages", "depth_share": "--depth-share", "depth_blocks": "--depth-blocks",
    "criterion": "--criterion", "block_criterion": "--block-criterion", "scoring_loss": "--scoring-loss",
    "calib_batches": "--calib-batches", "min_heads": "--min-heads", "round_to": "--round-to",
    "epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "weight_decay": "--weight-decay",
    "warmup_epochs": "--warmup-epochs", "label_smoothing": "--label-smoothing", "amp": "--amp", "seed": "--seed",
    "num_workers": "--workers", "max_steps_per_epoch": "--max-steps-per-epoch", "alpha": "--alpha",
    "temperature": "--temperature", "feature_weight": "--feature-weight", "dataset": "--dataset",
    "data_dir": "--data-dir", "train_limit": "--train-limit", "eval_limit": "--eval-limit", "augment": "--augment",
    "val_split": "--val-split", "keep": "--keep", "model": "--model", "checkpoint": "--checkpoint", "pretrained": "--pretrained",
}
_WORDS = {
    "teacher_sha256": "a teacher whose weights have sha256 {:.12}",
    "model_sha256": "starting weights with sha256 {:.12}",
    "train_size": "{} training images",
    "world_size": "{} processes",
    "latency_table": "a latency table with sha256 {:.12}",
}
_SWITCHES = {"latency_check": ("the latency check", "--no-latency-check")}  # a flag that turns a default off


class ResumeMismatch(VitShrinkError):
    """`--resume` into a folder or checkpoint that another run (other teacher, data or settings) made."""


def weights_sha256(model: nn.Module) -> str:
    """sha256 over the state dict: every tensor's name, dtype, shape and bytes, in order."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _show(key: str, value) -> str:
    field = key.rsplit(".", 1)[-1]
    if field in _WORDS:
        return _WORDS[field].format(value) if value is not None else f"no {field.replace('_', ' ')}"
    if field in _SWITCHES:
        on, off = _SWITCHES[field]
        return on if value else off
    flag = FLAGS.get(field)
    if flag is None:
        return f"{key} {value}"
    if value is None or value is False:
        return f"no {flag}"
    if value is True:
        return flag
    if isinstance(value, list):
        return f"{flag} {','.join(map(str, value))}"
    return f"{flag} {value}"


def _comparable(record: dict) -> dict:
    """`record` as JSON reads it back, a latency table (hundreds of timings) as the sha256 of its JSON."""
    record = json.loads(json.dumps(record))
    if record.get("latency_table") is not None:
        record["latency_table"] = hashlib.sha256(json.dumps(record["latency_table"], sort_keys=True).encode()).hexdigest()
    return record


def check_same(where: str, recorded: dict, current: dict) -> None:
    """Raise `ResumeMismatch` naming every setting in which `current` differs from what `where` recorded."""
    old, new = _flatten(_comparable(recorded)), _flatten(_comparable(current))
    keys = [k for k in dict.fromkeys([*new, *old]) if old.get(k) != new.get(k)]
    if keys:
        raise ResumeMismatch(
            f"--resume: {where} was made with {' and '.join(_show(k, old.get(k)) for k in keys)}, this run has "
            f"{' and '.join(_show(k, new.get(k)) for k in keys)}; rerun with the same options, or without --resume"
        )


def start_work_dir(work_dir: Path, record: dict, resume: bool, log=print) -> None:
    """Bind `work_dir` to the run `record` describes (teacher fingerprint, data options); call on every rank.

    With `resume`, a folder recorded for another run is refused (`ResumeMismatch`) and one holding
    results but no record (an older vitshrink) too. Without, what an earlier run left there is removed
    first, so a later `--resume` cannot pick up a stage or checkpoint of that earlier run.
    """
    work_dir = Path(work_dir)
    path = work_dir / RUN_FILE
    leftovers = sorted(p for p in work_dir.iterdir() if _RUN_ENTRIES.fullmatch(p.name)) if work_dir.is_dir() else []
    if resume and path.is_file():
        check_same(f"the work folder {work_dir}", read_json(path, fix="rerun without --resume to start over"), record)
    elif resume and leftovers:
        raise ResumeMismatch(
            f"--resume: the work folder {work_dir} has no {RUN_FILE} (made by an older vitshrink), so it cannot be "
            "checked against this run's teacher and data; rerun without --resume to start over"
        )
    ddp.barrier()  # every rank has read the folder before rank 0 changes it
    if ddp.is_main():
        if not resume and leftovers:
            log(f"starting over in {work_dir}: removing {', '.join(p.name for p in leftovers)} of an earlier run")
            for p in leftovers:
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        if not path.is_file() or not resume:
            write_json_atomic(path, record)
    ddp.barrier()
