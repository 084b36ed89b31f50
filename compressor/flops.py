"""Parameter and MAC counts. Convention: MACs (1 multiply-add = 1), per image, as fvcore reports.

Two counters that must agree within 1%: an analytic formula read off the modules, and fvcore with a
handle for `scaled_dot_product_attention` (fvcore silently skips it: ViT-S/16 comes out at 4.25
GMACs instead of 4.6 without it). Both count linear/conv/matmul MACs and LayerNorm as 5 ops per
element (fvcore's `norm_flop_jit`); both ignore GELU, softmax and adds.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def num_tokens(model: nn.Module) -> int:
    """Sequence length seen by the blocks: patches + class/distillation/register tokens."""
    return model.patch_embed.num_patches + model.num_prefix_tokens


def block_macs(n: int, dim: int, heads: int, head_dim: int, hidden: int, norms: int = 2) -> int:
    """MACs of one pre-norm block on `n` tokens of width `dim`.

    `norms` counts the LayerNorms over `dim` (norm1, norm2); per-head and scale norms are added by the caller.
    """
    attn_dim = heads * head_dim
    qkv = n * dim * 3 * attn_dim
    scores = n * n * attn_dim  # q @ k^T over all heads
    mix = n * n * attn_dim  # attn @ v
    proj = n * attn_dim * dim
    mlp = 2 * n * dim * hidden
    return qkv + scores + mix + proj + mlp + norms * 5 * n * dim


def block_macs_of(block: nn.Module, n: int, heads: int | None = None, hidden: int | None = None) -> int:
    """MACs of a timm `Block` on `n` tokens; with `heads` / `hidden`, of the same block cut to that many
    heads / MLP neurons (what the surgery would leave)."""
    attn, mlp = block.attn, block.mlp
    heads = attn.num_heads if heads is None else heads
    hidden = mlp.fc1.out_features if hidden is None else hidden
    total = block_macs(n, attn.qkv.in_features, heads, attn.head_dim, hidden)
    if not isinstance(attn.q_norm, nn.Identity):
        total += 2 * 5 * n * heads * attn.head_dim
    if not isinstance(attn.norm, nn.Identity):
        total += 5 * n * heads * attn.head_dim
    if not isinstance(mlp.norm, nn.Identity):
        total += 5 * n * hidden
    return total


def block_params_of(block: nn.Module, heads: int | None = None, hidden: int | None = None) -> int:
    """Parameters of a timm `Block`; with `heads` / `hidden`, of the same block cut to that many heads /
    MLP neurons. Per head: its rows of `qkv` (and bias), its columns of `proj`, its channels of the
    attention norm; per neuron: its row of `fc1` (and bias), its column of `fc2`, its MLP-norm channels."""
    attn, mlp = block.attn, block.mlp
    per_head = sum(p.numel() for p in (*attn.qkv.parameters(), attn.proj.weight, *attn.norm.parameters()))
    per_neuron = sum(p.numel() for p in (*mlp.fc1.parameters(), mlp.fc2.weight, *mlp.norm.parameters()))
    heads = attn.num_heads if heads is None else heads
    hidden = mlp.fc1.out_features if hidden is None else hidden
    fixed = count_params(block) - per_head - per_neuron
    return fixed + per_head * heads // attn.num_heads + per_neuron * hidden // mlp.fc1.out_features


def count_macs(model: nn.Module, input_size: tuple[int, int, int] | None = None) -> int:
    """Analytic MACs per image for a timm VisionTransformer at its configured image size."""
    n = num_tokens(model)
    conv = model.patch_embed.proj
    stem = conv.weight.numel() * model.patch_embed.num_patches
    dim = model.embed_dim
    total = stem + sum(block_macs_of(blk, n) for blk in model.blocks)
    for norm in (model.norm_pre, model.norm):
        if not isinstance(norm, nn.Identity):
            total += 5 * n * dim
    if not isinstance(model.fc_norm, nn.Identity):
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
