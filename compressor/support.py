"""Check, then act: is this a timm ViT whose heads, neurons and blocks the surgery can cut?"""

from __future__ import annotations

from timm.layers import Attention, Mlp
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from vitshrink.compressor.errors import UnsupportedModelError


def check_supported(model: nn.Module) -> None:
    """Raise `UnsupportedModelError` naming the first module type we cannot prune; change nothing."""
    if not isinstance(model, VisionTransformer):
        raise UnsupportedModelError(
            f"{type(model).__name__} is not a timm VisionTransformer; vitshrink prunes vit_* and deit_* models"
        )
    if model.attn_pool is not None:
        raise UnsupportedModelError("global_pool='map' (attention pooling head) is not supported")
    for i, blk in enumerate(model.blocks):
        if type(blk) is not Block:
            raise UnsupportedModelError(
                f"block {i} is {type(blk).__name__}; only timm's pre-norm `Block` is supported"
            )
        if type(blk.attn) is not Attention:
            raise UnsupportedModelError(
                f"block {i} attention is {type(blk.attn).__name__} (e.g. separate q/k/v or rotary); "
                "only timm's fused-qkv `Attention` is supported"
            )
        if getattr(blk.attn, "gate", None) is not None:
            raise UnsupportedModelError(f"block {i} uses gated attention, which is not supported")
        if type(blk.mlp) is not Mlp:
            raise UnsupportedModelError(
                f"block {i} MLP is {type(blk.mlp).__name__} (e.g. SwiGLU/GLU); only timm's `Mlp` is supported"
            )
        if not isinstance(blk.mlp.fc1, nn.Linear):
            raise UnsupportedModelError(f"block {i} MLP uses 1x1 convolutions, which are not supported")
        _check_cut_norm(blk.attn.norm, f"block {i} attention norm", blk.attn.num_heads * blk.attn.head_dim)
        _check_cut_norm(blk.mlp.norm, f"block {i} MLP norm", blk.mlp.fc1.out_features)


def _check_cut_norm(norm: nn.Module, where: str, width: int) -> None:
    """A norm inside the pruned width is cut with its channels: it must be per-channel over the last dim."""
    if isinstance(norm, nn.Identity):
        return
    shape = tuple(getattr(norm, "normalized_shape", ()))
    params = dict(norm.named_parameters(recurse=False))
    if shape != (width,) or any(tuple(p.shape) != (width,) for p in params.values()) or list(norm.children()):
        raise UnsupportedModelError(
            f"{where} is {type(norm).__name__}; the surgery cuts only LayerNorm/RMSNorm-style norms over the "
            f"last dimension ({width} channels, with or without per-channel weights), so this model cannot be pruned"
        )
