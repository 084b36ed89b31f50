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

from vitshrink.compressor.core.atomic import write_json_atomic
from vitshrink.compressor.core.errors import BudgetError
from vitshrink.compressor.core.reading import read_json
from vitshrink.compressor.core.surgery import PrunePlan

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
    return read_plan_file(path)[0]


def read_plan_file(path: Path) -> tuple[PrunePlan, dict]:
    """The plan in `path` and the shape of the model it was made for (`model_shape`'s form), which
    `check_plan(..., made_for=)` compares with the model it is applied to."""
    record = read_json(Path(path), fix="give a plan.json that vitshrink compress wrote, or one of its form")
    if record.get("format") != FORMAT or record.get("version") != VERSION or "plan" not in record:
        raise BudgetError(f"{path} is not a vitshrink plan (format {record.get('format')!r}, version "
                          f"{record.get('version')!r}); expected format {FORMAT!r}, version {VERSION}")
    try:
        plan = PrunePlan.from_dict(record["plan"])
    except BudgetError as e:
        raise BudgetError(f"{path}: {e}") from None
    return plan, _recorded_shape(record.get("model"), path)


def _recorded_shape(shape, path: Path) -> dict:
    """The "model" entry of a plan file: heads and MLP width of every block, positive whole numbers."""
    def counts(key: str) -> list | None:
        values = shape.get(key) if isinstance(shape, dict) else None
        ok = isinstance(values, list) and values and all(type(v) is int and v > 0 for v in values)
        return values if ok else None

    heads, hidden = counts("heads"), counts("mlp_hidden")
    if heads is None or hidden is None or len(heads) != len(hidden):
        raise BudgetError(f'{path}: "model" must give the heads and MLP width of every block of the model the plan '
                          f'was made for, e.g. {{"heads": [6, 6], "mlp_hidden": [768, 768]}}, got {shape!r:.80}; '
                          "copy it from the plan.json of a run on that model")
    return {"heads": heads, "mlp_hidden": hidden}


def check_plan(plan: PrunePlan, model: nn.Module, source: str = "the plan", made_for: dict | None = None) -> None:
    """Every index of `plan` exists in `model`, no block loses all heads or neurons, one block stays; with
    `made_for` (the shape recorded beside the plan), the model has that shape: indices of another model's
    heads and neurons would name other heads and neurons here."""
    shape = model_shape(model)
    if made_for is not None and made_for != shape:
        raise BudgetError(
            f"{source} was made for a model of {_described(made_for)}, but this model has {_described(shape)}; "
            "make the plan on this model (compress writes it to <out>.work/stageN-*/plan.json) or apply it to "
            "the model it was made for"
        )
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


def _described(shape: dict) -> str:
    return f"{len(shape['heads'])} blocks with heads {shape['heads']} and MLP widths {shape['mlp_hidden']}"
