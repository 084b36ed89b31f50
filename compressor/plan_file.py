"""The plan as a document: `plan.json` is written before anything is cut, and `compress --plan FILE` applies one.

The file says which heads and MLP neurons of each block stay and which blocks go, by index, and the
shape of the model it was made for (heads and MLP width of every block), so a plan edited by hand is
checked against the model before any weight changes: one message names what does not fit.

    {"format": "vitshrink-plan", "version": 1,
     "model": {"heads": [6, 6, ...], "mlp_hidden": [768, 768, ...]},
     "plan": {"keep_heads": {"0": [0, 2, 3]}, "keep_neurons": {"0": [0, 1, ...]}, "drop_blocks": [4]},
     "note": "stage 1 (width): flops -15.1%"}
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from vitshrink.compressor.atomic import write_json_atomic
from vitshrink.compressor.errors import BudgetError
from vitshrink.compressor.reading import read_json
from vitshrink.compressor.surgery import PrunePlan

FORMAT = "vitshrink-plan"
VERSION = 1


def model_shape(model: nn.Module) -> dict:
    """Heads and MLP hidden width of every block: what a plan's indices refer to."""
    return {"heads": [blk.attn.num_heads for blk in model.blocks],
            "mlp_hidden": [blk.mlp.fc2.in_features for blk in model.blocks]}


def write_plan(path: Path, plan: PrunePlan, model: nn.Module, note: str = "") -> None:
    write_json_atomic(path, {"format": FORMAT, "version": VERSION, "model": model_shape(model),
                             "plan": plan.to_dict(), "note": note})


def read_plan(path: Path) -> PrunePlan:
    """The plan in `path` (a `plan.json` or a hand-written file of the same form)."""
    record = read_json(Path(path), fix="give a plan.json that vitshrink compress wrote, or one of its form")
    if record.get("format") != FORMAT or record.get("version") != VERSION or "plan" not in record:
        raise BudgetError(f"{path} is not a vitshrink plan (format {record.get('format')!r}, version "
                          f"{record.get('version')!r}); expected format {FORMAT!r}, version {VERSION}")
    return PrunePlan.from_dict(record["plan"])


def check_plan(plan: PrunePlan, model: nn.Module, source: str = "the plan") -> None:
    """Every index of `plan` exists in `model`, no block loses all heads or neurons, one block stays."""
    shape = model_shape(model)
    depth = len(shape["heads"])
    problems = []
    for what, keep, sizes in (("heads", plan.keep_heads, shape["heads"]),
                              ("MLP neurons", plan.keep_neurons, shape["mlp_hidden"])):
        for block, kept in sorted(keep.items()):
            if not 0 <= block < depth:
                problems.append(f"block {block} does not exist (the model has {depth})")
            elif not kept:
                problems.append(f"block {block} keeps no {what} (remove the block with drop_blocks instead)")
            elif len(set(kept)) != len(kept) or not all(0 <= i < sizes[block] for i in kept):
                problems.append(f"block {block} keeps {what} {list(kept)}, which must be distinct indices in "
                                f"0..{sizes[block] - 1}")
    dropped = set(plan.drop_blocks)
    if any(not 0 <= b < depth for b in dropped):
        problems.append(f"drop_blocks {sorted(dropped)} name blocks outside 0..{depth - 1}")
    elif len(dropped) >= depth:
        problems.append(f"drop_blocks removes all {depth} blocks; at least one must stay")
    if problems:
        raise BudgetError(f"{source} does not fit this model: " + "; ".join(problems))

