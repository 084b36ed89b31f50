"""Parameter and MAC counts. Convention: MACs (1 multiply-add = 1), per image, as fvcore reports.

Two counters that must agree within 1%: an analytic formula read off the modules, and fvcore with a
handle for `scaled_dot_product_attention` (fvcore silently skips it: ViT-S/16 comes out at 4.25
GMACs instead of 4.6 without it). Both count linear/conv/matmul MACs and LayerNorm as 5 ops per
element (fvcore's `norm_flop_jit`); both ignore GELU, softmax, adds and elementwise products (a GLU's
gate, layer scale), and the gather of a relative position bias table (the bias MLP of
`VisionTransformerRelPos` is counted: it is two Linear layers).
"""

from __future__ import annotations

import math
import warnings

import torch
from timm.layers.pos_embed_rel import RelPosMlp
from torch import nn

from vitshrink.compressor.core.families import fc1_rows, head_dim, head_slices, mlp_hidden, neuron_slices


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def num_tokens(model: nn.Module) -> int:
    """Sequence length seen by the blocks: patches + class/distillation/register tokens."""
    return model.patch_embed.num_patches + model.num_prefix_tokens


def block_macs(n: int, dim: int, heads: int, head_dim: int, hidden: int, norms: int = 2, fc1_rows: int = 1) -> int:
    """MACs of one pre-norm block on `n` tokens of width `dim`.

    `norms` counts the LayerNorms over `dim` (norm1, norm2); per-head and scale norms are added by the caller.
    `fc1_rows` is 2 for a GLU MLP (a value and a gate row per hidden unit).
    """
    attn_dim = heads * head_dim
    qkv = n * dim * 3 * attn_dim
    scores = n * n * attn_dim  # q @ k^T over all heads
    mix = n * n * attn_dim  # attn @ v
    proj = n * attn_dim * dim
    mlp = (fc1_rows + 1) * n * dim * hidden
    return qkv + scores + mix + proj + mlp + norms * 5 * n * dim


def _is_norm(module: nn.Module | None) -> bool:
    return module is not None and not isinstance(module, nn.Identity)


def block_macs_of(block: nn.Module, n: int, heads: int | None = None, hidden: int | None = None) -> int:
    """MACs of a supported block on `n` tokens; with `heads` / `hidden`, of the same block cut to that many
    heads / MLP neurons (what the surgery would leave)."""
    attn, mlp = block.attn, block.mlp
    hd = head_dim(attn)
    heads = attn.num_heads if heads is None else heads
    hidden = mlp_hidden(mlp) if hidden is None else hidden
    total = block_macs(n, attn.proj.out_features, heads, hd, hidden, fc1_rows=fc1_rows(mlp))
    if _is_norm(getattr(attn, "q_norm", None)):
        total += 2 * 5 * n * heads * hd
    if _is_norm(getattr(attn, "norm", None)):
        total += 5 * n * heads * hd
    if _is_norm(mlp.norm):
        total += 5 * n * hidden
    rel_pos = getattr(attn, "rel_pos", None)
    if isinstance(rel_pos, RelPosMlp):  # the bias MLP runs on the (2Wh-1, 2Ww-1) relative coordinates
        points = rel_pos.rel_coords_log.shape[0] * rel_pos.rel_coords_log.shape[1]
        fc1, fc2 = rel_pos.mlp.fc1, rel_pos.mlp.fc2
        total += points * (fc1.in_features * fc1.out_features + fc2.in_features * heads)
    return total


def block_params_of(block: nn.Module, heads: int | None = None, hidden: int | None = None) -> int:
    """Parameters of a supported block; with `heads` / `hidden`, of the same block cut to that many heads /
    MLP neurons. A head or a neuron holds exactly the tensors `families.py` declares for it."""
    attn, mlp = block.attn, block.mlp
    per_head, per_neuron = _sliced_params(*head_slices(attn)), _sliced_params(*neuron_slices(mlp))
    heads = attn.num_heads if heads is None else heads
    hidden = mlp_hidden(mlp) if hidden is None else hidden
    fixed = count_params(block) - per_head - per_neuron
    return fixed + per_head * heads // attn.num_heads + per_neuron * hidden // mlp_hidden(mlp)


def _sliced_params(slices: list, norms: list[nn.Module]) -> int:
    """Parameters (not buffers) in the cut tensors and cut-width norms."""
    sliced = sum(getattr(s.module, s.name).numel() for s in slices if s.name in s.module._parameters)
    return sliced + sum(p.numel() for norm in norms for p in norm.parameters())


def attn_pool_macs(pool: nn.Module, n: int) -> int:
    """MACs of timm's `AttentionPoolLatent` (SigLIP's `global_pool='map'`) reading `n` tokens."""
    latents, dim = pool.latent_len, pool.kv.in_features
    total = n * dim * pool.kv.out_features + 2 * latents * n * dim  # k, v of every token; scores and mix
    if isinstance(pool.q, nn.Linear):
        total += latents * pool.q.in_features * pool.q.out_features
    if _is_norm(pool.q_norm):
        total += 5 * (latents + n) * dim
    if isinstance(pool.proj, nn.Linear):
        total += latents * pool.proj.in_features * pool.proj.out_features
    if _is_norm(pool.norm):
        total += 5 * latents * pool.out_features
    if pool.mlp is not None:
        total += latents * sum(fc.in_features * fc.out_features for fc in (pool.mlp.fc1, pool.mlp.fc2))
    return total


def count_macs(model: nn.Module, input_size: tuple[int, int, int] | None = None) -> int:
    """Analytic MACs per image for a supported timm ViT at its configured image size."""
    n = num_tokens(model)
    conv = model.patch_embed.proj
    stem = conv.weight.numel() * model.patch_embed.num_patches
    dim = model.embed_dim
    total = stem + sum(block_macs_of(blk, n) for blk in model.blocks)
    for norm in (getattr(model, "norm_pre", None), model.norm):
        if _is_norm(norm):
            total += 5 * n * dim
    if getattr(model, "attn_pool", None) is not None:
        total += attn_pool_macs(model.attn_pool, n)
    if _is_norm(model.fc_norm):
        total += 5 * dim
    for head_name in ("head", "head_dist"):
        head = getattr(model, head_name, None)
        if isinstance(head, nn.Linear):
            total += head.in_features * head.out_features
    return total


def _sdpa_macs(inputs, outputs) -> int:
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(inputs[i]) for i in range(3))  # (B, H, Nq, d), (B, H, Nk, d), (B, H, Nk, dv)
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * q[-1] + batch * q[-2] * k[-2] * v[-1]


def count_macs_fvcore(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """MACs per image by fvcore's tracer, with the SDPA op counted."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore's import warns about torch.jit.script
        from fvcore.nn import FlopCountAnalysis

    device = next(model.parameters()).device
    x = torch.zeros(1, *input_size, device=device)
    was_training = model.training
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis = FlopCountAnalysis(model, x)
        analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_macs)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        total = int(analysis.total())
    model.train(was_training)
    return total
