"""timm attention classes whose forward assumes `num_heads * head_dim == embed_dim`, made to run with fewer heads.

timm's BEiT `Attention`, `RelPosAttention` and EVA's `EvaAttention` reshape their output to the width of
their *input* (`reshape(B, N, C)`), so once heads are cut (fewer heads, same `head_dim`) they no longer
run. The subclasses below keep every parameter, buffer and name of the timm class (state dicts are
interchangeable) and differ only in `forward`, which reshapes to `num_heads * head_dim` instead.

A cut attention is built by `from_cut`: timm's own `__init__` runs for the kept head count (so `head_dim`,
`scale`, flags and non-persistent buffers such as BEiT's `relative_position_index` or the zero `k_bias` are
what timm computes), the cut submodules are adopted, and the module's own cut tensors (q/v biases, bias
table) are loaded with `strict=True`, which fails on any name or shape the constructor and the cut disagree
on. Nothing patches an instance's class or forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import apply_rot_embed_cat
from timm.layers.pos_embed_rel import RelPosBias, RelPosMlp
from timm.models.beit import Attention as BeitAttention
from timm.models.eva import EvaAttention
from timm.models.vision_transformer_relpos import RelPosAttention
from torch import nn


def _attend(
    attn: nn.Module,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    is_causal: bool = False,
) -> torch.Tensor:
    """Softmax attention of (B, H, N, head_dim) q, k, v with an additive (1 or B, H, N, N) bias; returns (B, N, H * head_dim)."""
    b, _, n, _ = q.shape
    dropout = attn.attn_drop.p if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, is_causal=is_causal)
    return out.transpose(1, 2).reshape(b, n, -1)  # (B, H, N, head_dim) -> (B, N, H * head_dim)


def _add(bias: torch.Tensor | None, other: torch.Tensor | None) -> torch.Tensor | None:
    if bias is None:
        return other
    return bias if other is None else bias + other


def _factory(module: nn.Module) -> dict[str, Any]:
    p = next(module.parameters())
    return {"device": p.device, "dtype": p.dtype}


class _FromCut:
    """`from_cut` for the subclasses below; each says which timm constructor arguments rebuild it."""

    @classmethod
    def _config(cls, cut: nn.Module, num_heads: int, head_dim: int) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_cut(cls, cut: nn.Module, num_heads: int, head_dim: int) -> nn.Module:
        """An instance of `cls` holding the tensors of `cut`, a timm attention of the base class whose tensors
        were cut to `num_heads` heads of `head_dim` (its submodules' metadata already match, its own
        head-count attributes and non-persistent buffers may not: those come from timm's constructor)."""
        # timm's __init__ at the kept head count: head_dim, scale, flags, non-persistent buffers
        new = cls(**cls._config(cut, num_heads, head_dim), **_factory(cut))
        for name, child in cut.named_children():  # cut projections, norms, bias modules: adopted as they are
            setattr(new, name, child)
        new.load_state_dict(cut.state_dict(), strict=True)  # the module's own tensors (q/v bias, bias table)
        return new.train(cut.training)


class NarrowBeitAttention(_FromCut, BeitAttention):
    """timm BEiT `Attention` (q/v bias, per-head relative position bias table) with any number of heads."""

    @classmethod
    def _config(cls, cut: BeitAttention, num_heads: int, head_dim: int) -> dict[str, Any]:
        return {
            "dim": cut.qkv.in_features,
            "num_heads": num_heads,
            "qkv_bias": cut.q_bias is not None,
            "qkv_bias_separate": cut.qkv_bias_separate,
            "attn_drop": cut.attn_drop.p,
            "proj_drop": cut.proj_drop.p,
            "window_size": cut.window_size,
            "attn_head_dim": head_dim,
        }

    def forward(self, x: torch.Tensor, shared_rel_pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        qkv_bias = None if self.q_bias is None else torch.cat((self.q_bias, self.k_bias, self.v_bias))
        qkv = F.linear(x, self.qkv.weight, qkv_bias).reshape(b, n, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, head_dim) each
        bias = self._get_rel_pos_bias() if self.relative_position_bias_table is not None else None
        out = _attend(self, q, k, v, _add(bias, shared_rel_pos_bias))
        return self.proj_drop(self.proj(out))


class NarrowRelPosAttention(_FromCut, RelPosAttention):
    """timm `RelPosAttention` (per-head relative position bias from a table or an MLP) with any number of heads."""

    @classmethod
    def _config(cls, cut: RelPosAttention, num_heads: int, head_dim: int) -> dict[str, Any]:
        # timm derives head_dim from `dim`, so the constructor gets the attention width; `qkv`, `proj`, the q/k
        # norms and the bias module it builds are then replaced by the cut ones (adopted in `from_cut`)
        return {
            "dim": num_heads * head_dim,
            "num_heads": num_heads,
            "qkv_bias": cut.qkv.bias is not None,
            "attn_drop": cut.attn_drop.p,
            "proj_drop": cut.proj_drop.p,
        }

    def forward(self, x: torch.Tensor, shared_rel_pos: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, head_dim) each
        q, k = self.q_norm(q), self.k_norm(k)
        bias = self.rel_pos.get_bias() if self.rel_pos is not None else shared_rel_pos
        out = _attend(self, q, k, v, bias)
        return self.proj_drop(self.proj(out))


class NarrowEvaAttention(_FromCut, EvaAttention):
    """EVA's `EvaAttention` (fused or separate q/k/v, q/v bias, optional q/k norm and inner norm, rotary
    embedding on the non-prefix tokens) with any number of heads. Rotary acts within each head, on
    `head_dim` channels, so it is the same for every kept head."""

    @classmethod
    def _config(cls, cut: EvaAttention, num_heads: int, head_dim: int) -> dict[str, Any]:
        fused = cut.qkv is not None
        return {
            "dim": cut.proj.out_features,
            "num_heads": num_heads,
            "qkv_bias": cut.q_bias is not None if fused else cut.q_proj.bias is not None,
            "qkv_fused": fused,
            "qkv_bias_separate": cut.qkv_bias_separate,
            "num_prefix_tokens": cut.num_prefix_tokens,
            "attn_drop": cut.attn_drop.p,
            "proj_drop": cut.proj_drop.p,
            "attn_head_dim": head_dim,
            "rotate_half": cut.rotate_half,
            # timm's default is True; the q/k norms, the inner norm and a gate are adopted from `cut`
            "scale_norm": False,
        }

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        b, n, _ = x.shape
        if self.qkv is not None:
            qkv_bias = None if self.q_bias is None else torch.cat((self.q_bias, self.k_bias, self.v_bias))
            qkv = F.linear(x, self.qkv.weight, qkv_bias).reshape(b, n, 3, self.num_heads, -1)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, head_dim) each
        else:
            q, k, v = (
                p(x).reshape(b, n, self.num_heads, -1).transpose(1, 2)
                for p in (self.q_proj, self.k_proj, self.v_proj)
            )
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:  # prefix (class/register) tokens get no rotation
            npt, half = self.num_prefix_tokens, self.rotate_half
            q = torch.cat(
                [q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope, half=half)], dim=2
            ).type_as(v)
            k = torch.cat(
                [k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], dim=2
            ).type_as(v)
        out = self.norm(_attend(self, q, k, v, attn_mask, is_causal))
        return self.proj_drop(self.proj(out))


NARROW: dict[type, type] = {
    BeitAttention: NarrowBeitAttention,
    RelPosAttention: NarrowRelPosAttention,
    EvaAttention: NarrowEvaAttention,
}


def rel_pos_with_heads(cut: RelPosBias | RelPosMlp, num_heads: int) -> nn.Module:
    """A timm relative position bias module built for `num_heads` heads, holding the tensors of `cut` (whose
    per-head table columns or bias-MLP output rows were cut to `num_heads`)."""
    if isinstance(cut, RelPosMlp):
        new = RelPosMlp(
            cut.window_size,
            num_heads,
            hidden_dim=cut.mlp.fc1.out_features,
            prefix_tokens=cut.prefix_tokens,
            mode=cut.mode,
            pretrained_window_size=cut.pretrained_window_size,
            **_factory(cut),
        )
    else:
        new = RelPosBias(cut.window_size, num_heads, prefix_tokens=cut.prefix_tokens, **_factory(cut))
    new.load_state_dict(cut.state_dict(), strict=True)
    return new.train(cut.training)
