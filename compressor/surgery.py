"""Cut a plan into a timm VisionTransformer: dense, smaller timm modules, no patched forward.

Heads: the q, k and v rows of each removed head leave `qkv`, and its columns leave `proj`.
Neurons: rows of `fc1`, columns of `fc2`. Blocks: removed from `model.blocks`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from timm.layers import Attention, Mlp
from torch import nn

from vitshrink.compressor.errors import BudgetError, UnsupportedModelError
from vitshrink.compressor.spec import ArchSpec, BlockSpec
from vitshrink.compressor.support import check_supported


@dataclass(frozen=True)
class PrunePlan:
    """What to keep; block indices refer to the model the plan is applied to."""

    keep_heads: dict[int, tuple[int, ...]] = field(default_factory=dict)  # absent block: keep all heads
    keep_neurons: dict[int, tuple[int, ...]] = field(default_factory=dict)  # absent block: keep all neurons
    drop_blocks: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        return {
            "keep_heads": {str(k): list(v) for k, v in sorted(self.keep_heads.items())},
            "keep_neurons": {str(k): len(v) for k, v in sorted(self.keep_neurons.items())},
            "drop_blocks": list(self.drop_blocks),
        }


def _select(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear holding the chosen output rows / input columns of `linear`."""
    weight = linear.weight.detach()
    bias = linear.bias.detach() if linear.bias is not None else None
    if rows is not None:
        weight = weight[rows]
        bias = bias[rows] if bias is not None else None
    if cols is not None:
        weight = weight[:, cols]
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    new = new.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def _select_norm(norm: nn.Module, index: torch.Tensor) -> nn.Module:
    """The same LayerNorm/RMSNorm-like module over the chosen channels of the pruned dimension only.

    Its per-channel weight and bias (when it has them) keep the chosen entries; a norm without weights
    (`elementwise_affine=False`) is the same norm at the new size. Identity passes through.
    """
    if isinstance(norm, nn.Identity):
        return norm
    shape = tuple(getattr(norm, "normalized_shape", ()))
    if len(shape) != 1:  # check_supported refuses these first; this guards direct callers
        raise UnsupportedModelError(
            f"{type(norm).__name__} does not normalize over the last dimension alone; only LayerNorm/RMSNorm-style "
            "norms can be cut with their channels"
        )
    new = copy.deepcopy(norm)
    new.normalized_shape = (len(index),)
    for name, param in norm.named_parameters(recurse=False):
        kept = param.detach()[index.to(param.device)].clone()
        setattr(new, name, nn.Parameter(kept, requires_grad=param.requires_grad))
    return new


def prune_attention(attn: Attention, keep: tuple[int, ...]) -> Attention:
    """A timm `Attention` with only the heads in `keep` (original head indices, any order)."""
    if not keep:
        raise BudgetError("cannot remove every head of a block; remove the block instead")
    heads = sorted(keep)
    if heads[0] < 0 or heads[-1] >= attn.num_heads or len(set(heads)) != len(heads):
        raise BudgetError(f"head indices {heads} do not fit a block with {attn.num_heads} heads")
    hd, dim = attn.head_dim, attn.qkv.in_features
    head_cols = torch.tensor([h * hd + j for h in heads for j in range(hd)])  # indices into attn_dim
    # qkv rows are laid out (3, num_heads, head_dim): q block, then k, then v
    qkv_rows = torch.cat([head_cols + part * attn.attn_dim for part in range(3)])
    new = Attention(
        dim,
        num_heads=len(heads),
        attn_head_dim=hd,
        dim_out=attn.proj.out_features,
        qkv_bias=attn.qkv.bias is not None,
        proj_bias=attn.proj.bias is not None,
        attn_drop=attn.attn_drop.p,
        proj_drop=attn.proj_drop.p,
    )
    new.fused_attn = attn.fused_attn
    new.qkv = _select(attn.qkv, rows=qkv_rows)
    new.q_norm, new.k_norm = attn.q_norm, attn.k_norm  # per-head norms are shared across heads
    new.norm = _select_norm(attn.norm, head_cols)
    new.proj = _select(attn.proj, cols=head_cols)
    return new.to(attn.qkv.weight.device)


def prune_mlp(mlp: Mlp, keep: tuple[int, ...]) -> Mlp:
    """A timm `Mlp` with only the hidden neurons in `keep`."""
    if not keep:
        raise BudgetError("cannot remove every MLP neuron of a block; remove the block instead")
    index = torch.tensor(sorted(keep))
    if index[0] < 0 or index[-1] >= mlp.fc1.out_features or len(set(keep)) != len(keep):
        raise BudgetError(f"neuron indices do not fit an MLP with {mlp.fc1.out_features} hidden neurons")
    new = Mlp(
        mlp.fc1.in_features,
        hidden_features=len(index),
        out_features=mlp.fc2.out_features,
        act_layer=type(mlp.act),
        bias=(mlp.fc1.bias is not None, mlp.fc2.bias is not None),
        drop=(mlp.drop1.p, mlp.drop2.p),
    )
    new.act = mlp.act
    new.fc1 = _select(mlp.fc1, rows=index)
    new.norm = _select_norm(mlp.norm, index)
    new.fc2 = _select(mlp.fc2, cols=index)
    return new.to(mlp.fc1.weight.device)


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
        if len(keep) != model.blocks[i].mlp.fc1.out_features:
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
    if blk.attn.head_dim != b.head_dim:
        raise BudgetError(f"spec head_dim {b.head_dim} differs from the base model's {blk.attn.head_dim}")
    if b.num_heads > blk.attn.num_heads or b.mlp_hidden > blk.mlp.fc1.out_features:
        raise BudgetError(
            f"spec block ({b.num_heads} heads, MLP {b.mlp_hidden}) is wider than the base model's "
            f"({blk.attn.num_heads} heads, MLP {blk.mlp.fc1.out_features})"
        )
    if b.num_heads != blk.attn.num_heads:
        blk.attn = prune_attention(blk.attn, tuple(range(b.num_heads)))
    if b.mlp_hidden != blk.mlp.fc1.out_features:
        blk.mlp = prune_mlp(blk.mlp, tuple(range(b.mlp_hidden)))
