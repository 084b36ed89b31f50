"""Cut a plan into a supported timm ViT: dense, smaller modules of the same timm classes, no patched forward.

Heads: the q, k and v rows of each removed head leave `qkv`, its columns leave `proj`, its bias-table
entries leave the relative position bias. Neurons: rows of `fc1` (value and gate rows for a GLU), columns
of `fc2`. Blocks: removed from `model.blocks`. Which tensor holds what is declared once, in `families.py`.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

from torch import nn

from vitshrink.compressor.core.errors import BudgetError
from vitshrink.compressor.core.families import cut_heads, cut_neurons, head_dim, mlp_hidden
from vitshrink.compressor.core.spec import ArchSpec, BlockSpec
from vitshrink.compressor.core.supported_models import check_supported


@dataclass(frozen=True)
class PrunePlan:
    """What to keep; block indices refer to the model the plan is applied to."""

    keep_heads: dict[int, tuple[int, ...]] = field(default_factory=dict)  # absent block: keep all heads
    keep_neurons: dict[int, tuple[int, ...]] = field(default_factory=dict)  # absent block: keep all neurons
    drop_blocks: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        """Which heads and neurons stay, by index (lossless: `PrunePlan.from_dict` gives the plan back)."""
        return {
            "keep_heads": {str(k): list(v) for k, v in sorted(self.keep_heads.items())},
            "keep_neurons": {str(k): list(v) for k, v in sorted(self.keep_neurons.items())},
            "drop_blocks": list(self.drop_blocks),
        }

    @classmethod
    def from_dict(cls, d: dict) -> PrunePlan:
        """The plan `to_dict` wrote (shape checks only; `plan_file.check_plan` checks it against a model)."""
        if not isinstance(d, dict):
            raise BudgetError(f"plan is {_shown(d)}, not an object; {_PLAN_FORM}")
        unknown = set(d) - {"keep_heads", "keep_neurons", "drop_blocks"}
        if unknown:
            raise BudgetError(f"plan has unknown fields {sorted(unknown)}; it takes keep_heads, keep_neurons, drop_blocks")
        return cls(keep_heads=_kept_by_block(d, "keep_heads"), keep_neurons=_kept_by_block(d, "keep_neurons"),
                   drop_blocks=_indices(d.get("drop_blocks", []), "drop_blocks"))


_PLAN_FORM = ("keep_heads and keep_neurons map a block index to a list of indices to keep, drop_blocks is a list of "
              "block indices (whole numbers)")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _index(value, where: str) -> int:
    """A whole-number index as JSON gives it; 0.7, "1" or true are refused, not truncated or converted."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise BudgetError(f"plan is malformed: {where} holds {_shown(value)}, not a whole-number index; {_PLAN_FORM}")
    return int(value)


def _indices(values, where: str) -> tuple[int, ...]:
    if not isinstance(values, list | tuple):
        raise BudgetError(f"plan is malformed: {where} is {_shown(values)}, not a list; {_PLAN_FORM}")
    return tuple(_index(v, where) for v in values)


def _kept_by_block(d: dict, field_name: str) -> dict[int, tuple[int, ...]]:
    kept = d.get(field_name, {})
    if not isinstance(kept, dict):
        raise BudgetError(f"plan is malformed: {field_name} is {_shown(kept)}, not an object; {_PLAN_FORM}")
    by_block = {}
    for key, values in kept.items():
        try:  # JSON keys are strings: "3" is block 3
            block = _index(int(key) if isinstance(key, str) else key, f"{field_name} block {key!r}")
        except ValueError:
            raise BudgetError(f"plan is malformed: {field_name} has block {key!r}, not a whole-number index; "
                              f"{_PLAN_FORM}") from None
        by_block[block] = _indices(values, f"{field_name} of block {block}")
    return by_block


def prune_attention(attn: nn.Module, keep: tuple[int, ...]) -> nn.Module:
    """The attention `attn` with only the heads in `keep` (original head indices, any order)."""
    if not keep:
        raise BudgetError("cannot remove every head of a block; remove the block instead")
    heads = sorted(keep)
    if heads[0] < 0 or heads[-1] >= attn.num_heads or len(set(heads)) != len(heads):
        raise BudgetError(f"head indices {heads} do not fit a block with {attn.num_heads} heads")
    return cut_heads(attn, heads)


def prune_mlp(mlp: nn.Module, keep: tuple[int, ...]) -> nn.Module:
    """The MLP `mlp` with only the hidden neurons in `keep`."""
    if not keep:
        raise BudgetError("cannot remove every MLP neuron of a block; remove the block instead")
    index = sorted(keep)
    if index[0] < 0 or index[-1] >= mlp_hidden(mlp) or len(set(keep)) != len(keep):
        raise BudgetError(f"neuron indices do not fit an MLP with {mlp_hidden(mlp)} hidden neurons")
    return cut_neurons(mlp, index)


def apply_plan(model: nn.Module, spec: ArchSpec, plan: PrunePlan) -> ArchSpec:
    """Cut `model` in place as `plan` says and return the spec of the result."""
    check_supported(model)
    depth = len(model.blocks)
    bad = [i for i in (*plan.keep_heads, *plan.keep_neurons, *plan.drop_blocks) if not 0 <= i < depth]
    if bad:
        raise BudgetError(f"plan names blocks {sorted(set(bad))} but the model has {depth} blocks")
    if len(set(plan.drop_blocks)) >= depth:
        raise BudgetError(f"plan removes all {depth} blocks; at least one must remain")

    for i, keep in plan.keep_heads.items():
        if len(keep) != model.blocks[i].attn.num_heads:
            model.blocks[i].attn = prune_attention(model.blocks[i].attn, keep)
    for i, keep in plan.keep_neurons.items():
        if len(keep) != mlp_hidden(model.blocks[i].mlp):
            model.blocks[i].mlp = prune_mlp(model.blocks[i].mlp, keep)

    kept = [i for i in range(depth) if i not in set(plan.drop_blocks)]
    model.blocks = nn.Sequential(*[model.blocks[i] for i in kept])
    sources = [spec.blocks[i].source_index for i in kept]
    return ArchSpec.from_model(model, source_indices=sources)


def reshape_to_spec(model: nn.Module, spec: ArchSpec) -> None:
    """Give a freshly built timm model the block count and widths of `spec` (weights are loaded after)."""
    check_supported(model)
    if len(model.blocks) < spec.depth:
        raise BudgetError(f"spec has {spec.depth} blocks but the base model only {len(model.blocks)}")
    model.blocks = nn.Sequential(*list(model.blocks)[: spec.depth])
    for blk, b in zip(model.blocks, spec.blocks, strict=True):
        _reshape_block(blk, b)


def _reshape_block(blk: nn.Module, b: BlockSpec) -> None:
    if head_dim(blk.attn) != b.head_dim:
        raise BudgetError(f"spec head_dim {b.head_dim} differs from the base model's {head_dim(blk.attn)}")
    if b.num_heads > blk.attn.num_heads or b.mlp_hidden > mlp_hidden(blk.mlp):
        raise BudgetError(
            f"spec block ({b.num_heads} heads, MLP {b.mlp_hidden}) is wider than the base model's "
            f"({blk.attn.num_heads} heads, MLP {mlp_hidden(blk.mlp)})"
        )
    if b.num_heads != blk.attn.num_heads:
        blk.attn = prune_attention(blk.attn, tuple(range(b.num_heads)))
    if b.mlp_hidden != mlp_hidden(blk.mlp):
        blk.mlp = prune_mlp(blk.mlp, tuple(range(b.mlp_hidden)))
