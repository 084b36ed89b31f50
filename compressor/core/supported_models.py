"""Check, then act: is this a timm ViT whose heads, neurons and blocks the surgery can cut?

Supported (model class: block class, attention class), each with a timm `Mlp`, `GluMlp`/`SwiGLUPacked`
or `SwiGLU` MLP:
- `VisionTransformer`: `Block`, `Attention`; global pool avg/token/none or the attention-pool head
  `AttentionPoolLatent` (`global_pool='map'`, SigLIP), which reads the unpruned embedding and is kept as is.
- `VisionTransformerRelPos`: `RelPosBlock`, `RelPosAttention` with a per-block bias (MLP or table).
- `Beit`: BEiT's `Block` and `Attention` (q/v bias, per-block relative position bias table, layer scale).
- `Eva` (EVA, EVA02, timm's `vit_*_rope_*` SBB models): `EvaBlock`, `EvaAttention` (fused or separate q/k/v,
  rotary embedding `RotaryEmbeddingCat` shared by all heads and blocks; other rotary kinds refused).
Anything else is refused here, naming the module type, before any weight changes.
"""

from __future__ import annotations

from timm.layers import AttentionPoolLatent, RotaryEmbeddingCat
from timm.models.beit import Beit
from timm.models.beit import Block as BeitBlock
from timm.models.eva import Eva, EvaBlock
from timm.models.vision_transformer import Block, VisionTransformer
from timm.models.vision_transformer_relpos import RelPosBlock, VisionTransformerRelPos
from torch import nn

from vitshrink.compressor.core.errors import UnsupportedModelError
from vitshrink.compressor.core.families import MLPS, attention_kind, head_dim, mlp_hidden

BLOCKS: dict[type, type] = {
    VisionTransformer: Block,
    VisionTransformerRelPos: RelPosBlock,
    Beit: BeitBlock,
    Eva: EvaBlock,
}
SUPPORTED = ", ".join(cls.__name__ for cls in BLOCKS)


def check_supported(model: nn.Module) -> None:
    """Raise `UnsupportedModelError` naming the first module type we cannot prune; change nothing."""
    family = next((cls for cls in type(model).__mro__ if cls in BLOCKS), None)  # e.g. distilled DeiT is a ViT
    if family is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} is not a model class vitshrink can cut; supported timm classes: {SUPPORTED}"
        )
    block_cls = BLOCKS[family]
    _check_model_level(model)
    for i, blk in enumerate(model.blocks):
        if type(blk) is not block_cls:
            raise UnsupportedModelError(
                f"block {i} is {type(blk).__name__}; {type(model).__name__} is supported with its pre-norm "
                f"`{block_cls.__name__}` only"
            )
        if attention_kind(blk.attn) is None:
            raise UnsupportedModelError(
                f"block {i} attention is {type(blk.attn).__name__}, which the surgery cannot cut"
            )
        if getattr(blk.attn, "gate", None) is not None:
            raise UnsupportedModelError(f"block {i} uses gated attention, which is not supported")
        if type(blk.mlp) not in MLPS:
            raise UnsupportedModelError(
                f"block {i} MLP is {type(blk.mlp).__name__}; only timm's `Mlp`, `GluMlp` (SwiGLUPacked) and "
                "`SwiGLU` are supported"
            )
        if not isinstance(blk.mlp.fc2, nn.Linear):
            raise UnsupportedModelError(f"block {i} MLP uses 1x1 convolutions, which are not supported")
        attn_norm = getattr(blk.attn, "norm", nn.Identity())
        _check_cut_norm(attn_norm, f"block {i} attention norm", blk.attn.num_heads * head_dim(blk.attn))
        _check_cut_norm(blk.mlp.norm, f"block {i} MLP norm", mlp_hidden(blk.mlp))


def _check_model_level(model: nn.Module) -> None:
    """Parts outside the blocks that would make a per-block cut wrong."""
    pool = getattr(model, "attn_pool", None)
    if pool is not None and type(pool) is not AttentionPoolLatent:
        raise UnsupportedModelError(f"attention-pool head {type(pool).__name__} is not supported")
    for name in ("shared_rel_pos", "rel_pos_bias"):  # one bias for every block: heads would differ per block
        if getattr(model, name, None) is not None:
            raise UnsupportedModelError(
                f"{type(model).__name__} shares one relative position bias ({type(getattr(model, name)).__name__}) "
                "across all blocks, so heads cannot be cut per block; build it with a bias per block"
            )
    rope = getattr(model, "rope", None)  # rotary embedding (Eva): only the tested kind, shared by all heads
    if rope is not None and type(rope) is not RotaryEmbeddingCat:
        kind = "mixed rotary embedding (frequencies per block and head)" if getattr(model, "rope_mixed", False) \
            else "a rotary embedding the surgery is not tested with"
        raise UnsupportedModelError(
            f"{type(model).__name__} uses {kind}: {type(rope).__name__}; only RotaryEmbeddingCat "
            "(rope_type='cat', one embedding shared by all heads and blocks) is supported"
        )


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
