"""timm attention classes whose forward assumes `num_heads * head_dim == embed_dim`, made to run with fewer heads.

timm's BEiT `Attention` and `RelPosAttention` reshape their output to the width of their *input*
(`reshape(B, N, C)`), so once heads are cut (fewer heads, same `head_dim`) they no longer run. The
subclasses below keep every parameter, buffer and name of the timm class (state dicts are
interchangeable) and differ only in `forward`, which reshapes to `num_heads * head_dim` instead.
The surgery builds them; nothing patches an instance's forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.beit import Attention as BeitAttention
from timm.models.vision_transformer_relpos import RelPosAttention
from torch import nn


def _attend(attn: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Softmax attention of (B, H, N, head_dim) q, k, v with an additive (1 or B, H, N, N) bias; returns (B, N, H * head_dim)."""
    b, _, n, _ = q.shape
    dropout = attn.attn_drop.p if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)  # (B, H, N, head_dim)
    return out.transpose(1, 2).reshape(b, n, -1)


def _add(bias: torch.Tensor | None, other: torch.Tensor | None) -> torch.Tensor | None:
    if bias is None:
        return other
    return bias if other is None else bias + other


class NarrowBeitAttention(BeitAttention):
    """timm BEiT `Attention` (q/v bias, per-head relative position bias table) with any number of heads."""

    def forward(self, x: torch.Tensor, shared_rel_pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        qkv_bias = None if self.q_bias is None else torch.cat((self.q_bias, self.k_bias, self.v_bias))
        qkv = F.linear(x, self.qkv.weight, qkv_bias).reshape(b, n, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, head_dim) each
        bias = self._get_rel_pos_bias() if self.relative_position_bias_table is not None else None
        out = _attend(self, q, k, v, _add(bias, shared_rel_pos_bias))
        return self.proj_drop(self.proj(out))


class NarrowRelPosAttention(RelPosAttention):
    """timm `RelPosAttention` (per-head relative position bias from a table or an MLP) with any number of heads."""

    def forward(self, x: torch.Tensor, shared_rel_pos: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, head_dim) each
        q, k = self.q_norm(q), self.k_norm(k)
        bias = self.rel_pos.get_bias() if self.rel_pos is not None else shared_rel_pos
        out = _attend(self, q, k, v, bias)
        return self.proj_drop(self.proj(out))


NARROW: dict[type, type] = {BeitAttention: NarrowBeitAttention, RelPosAttention: NarrowRelPosAttention}
