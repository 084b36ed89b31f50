"""The `timm.create_model` arguments that rebuild a supported model, read off the model itself.

An artifact rebuilds its model as `timm.create_model(name, **model_args)`; a model the user built in memory
records only its name (`pretrained_cfg['architecture']`), so the arguments that fix its tensors and its
layers are read back here, one reader per supported model class (supported_models.BLOCKS). Arguments the
model does not show (drop rates, init scales) are left to the name's own defaults; `wrap_module` checks
the result by rebuilding the model.
"""

from __future__ import annotations

from collections.abc import Callable

from timm.layers import GluMlp, RelPosMlp, SwiGLU
from timm.models.beit import Beit
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer_relpos import VisionTransformerRelPos
from torch import nn

from vitshrink.compressor.core.errors import UnsupportedModelError
from vitshrink.compressor.core.families import mlp_hidden


def rebuild_args(model: nn.Module) -> dict:
    """The create_model arguments of `model` (a supported timm ViT, unpruned), by its model class."""
    reader = next((READERS[cls] for cls in type(model).__mro__ if cls in READERS), None)
    if reader is None:
        raise UnsupportedModelError(
            f"cannot read the timm.create_model arguments of a {type(model).__name__}; "
            f"supported: {', '.join(cls.__name__ for cls in READERS)}"
        )
    return reader(model)


def _has(module: nn.Module | None) -> bool:
    """Whether an optional layer is there (not None, not nn.Identity)."""
    return module is not None and not isinstance(module, nn.Identity)


def _common(model: nn.Module) -> dict:
    """Input, classifier and trunk size: the same names in every family."""
    return {
        "img_size": tuple(model.patch_embed.img_size),
        "patch_size": tuple(model.patch_embed.patch_size),
        "in_chans": model.patch_embed.proj.in_channels,
        "num_classes": model.num_classes,
        "global_pool": model.global_pool,
        "embed_dim": model.embed_dim,
        "depth": len(model.blocks),
        "num_heads": model.blocks[0].attn.num_heads,
    }


def _vit(model: VisionTransformer) -> dict:
    block = model.blocks[0]
    return {
        **_common(model),
        "mlp_ratio": block.mlp.fc1.out_features / model.embed_dim,
        "qkv_bias": block.attn.qkv.bias is not None,
        "qk_norm": _has(block.attn.q_norm),
        "class_token": model.cls_token is not None,
        "reg_tokens": model.num_reg_tokens,
        "no_embed_class": model.no_embed_class,
        "pre_norm": _has(model.norm_pre),
        "fc_norm": _has(model.fc_norm),
        "init_values": 1e-5 if _has(block.ls1) else None,  # the weights overwrite the value
        "dynamic_img_size": model.dynamic_img_size,
    }


def _relpos(model: VisionTransformerRelPos) -> dict:
    block = model.blocks[0]
    rel_pos = block.attn.rel_pos
    args = {
        **_common(model),
        "mlp_ratio": block.mlp.fc1.out_features / model.embed_dim,
        "qkv_bias": block.attn.qkv.bias is not None,
        "qk_norm": _has(block.attn.q_norm),
        "init_values": 1e-6 if _has(block.ls1) else None,
        "class_token": model.cls_token is not None,
        "fc_norm": _has(model.fc_norm),
        "shared_rel_pos": model.shared_rel_pos is not None,
    }
    if isinstance(rel_pos, RelPosMlp):
        args["rel_pos_type"] = "mlp_swin" if rel_pos.mode == "swin" else "mlp"
        args["rel_pos_dim"] = rel_pos.mlp.fc1.out_features
    elif rel_pos is not None:
        args["rel_pos_type"] = "bias"
    return args


def _beit(model: Beit) -> dict:
    block = model.blocks[0]
    return {
        **_common(model),
        "qkv_bias": block.attn.q_bias is not None,
        "mlp_ratio": mlp_hidden(block.mlp) / model.embed_dim,
        "swiglu_mlp": isinstance(block.mlp, SwiGLU),
        "scale_mlp": _has(block.mlp.norm),
        "init_values": 0.1 if block.gamma_1 is not None else None,  # the weights overwrite the value
        "use_abs_pos_emb": model.pos_embed is not None,
        "use_rel_pos_bias": block.attn.relative_position_bias_table is not None,
        "use_shared_rel_pos_bias": model.rel_pos_bias is not None,
        "use_fc_norm": _has(model.fc_norm),
    }


def _eva(model: Eva) -> dict:
    block = model.blocks[0]
    attn = block.attn
    fused = attn.qkv is not None
    return {
        **_common(model),
        "qkv_fused": fused,
        "qkv_bias": (attn.q_bias if fused else attn.q_proj.bias) is not None,
        "qk_norm": _has(getattr(attn, "q_norm", None)),
        "mlp_ratio": mlp_hidden(block.mlp) / model.embed_dim,
        "swiglu_mlp": isinstance(block.mlp, GluMlp | SwiGLU),
        "scale_mlp": _has(block.mlp.norm),
        "scale_attn_inner": _has(attn.norm),
        "init_values": 1e-5 if block.gamma_1 is not None else None,  # the weights overwrite the value
        "class_token": model.cls_token is not None,
        "num_reg_tokens": model.reg_token.shape[1] if model.reg_token is not None else 0,
        "no_embed_class": model.no_embed_class,
        "use_abs_pos_emb": model.pos_embed is not None,
        "use_rot_pos_emb": model.rope is not None,
        "use_pre_transformer_norm": _has(model.norm_pre),
        "use_fc_norm": _has(model.fc_norm),
        "dynamic_img_size": model.dynamic_img_size,
    }


READERS: dict[type, Callable[[nn.Module], dict]] = {
    VisionTransformerRelPos: _relpos,
    VisionTransformer: _vit,
    Beit: _beit,
    Eva: _eva,
}
