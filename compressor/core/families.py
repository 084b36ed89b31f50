"""Which tensors hold a head or an MLP neuron, per timm module class: the one table the surgery and the
cost model read.

A head of any supported attention owns `head_dim` rows of each of q, k and v (fused `qkv` laid out
(3, heads, head_dim), EVA's separate `q_proj`/`k_proj`/`v_proj`, q/v biases), `head_dim` channels of a
norm inside the attention width, its `head_dim` columns of `proj`, and — with relative position bias —
its column of the bias table or its output row of the bias MLP. A neuron owns one row of `fc1` (two for
a GLU: value and gate), one channel of a norm inside the hidden width and one column of `fc2`. Cutting =
copying the module and keeping the chosen entries of exactly those tensors; everything else (head_dim,
q/k norms, rotary embedding, layer scale) is untouched.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from timm.layers import Attention, GluMlp, Mlp, SwiGLU
from timm.layers.pos_embed_rel import RelPosBias, RelPosMlp
from timm.models.beit import Attention as BeitAttention
from timm.models.eva import EvaAttention
from timm.models.vision_transformer_relpos import RelPosAttention
from torch import nn

from vitshrink.compressor.core.errors import UnsupportedModelError
from vitshrink.compressor.core.narrow_attention import NARROW, rel_pos_with_heads

# what `head_slices` knows (and their narrow subclasses)
ATTENTIONS = (Attention, BeitAttention, RelPosAttention, EvaAttention)
MLPS = (Mlp, GluMlp, SwiGLU)


@dataclass(frozen=True)
class Slice:
    """One tensor cut along `dim`, laid out there as (groups, units, width): keep the chosen units of every group."""

    module: nn.Module  # owner of the tensor
    name: str  # parameter or buffer name on `module`
    dim: int
    width: int = 1  # entries per unit along `dim` (head_dim for projections, 1 for a bias-table column)
    groups: int = 1  # e.g. 3 for fused qkv rows (q, k, v), 2 for a packed GLU fc1 (value, gate)


def head_dim(attn: nn.Module) -> int:
    return attn.proj.in_features // attn.num_heads


def mlp_hidden(mlp: nn.Module) -> int:
    """Hidden units of an MLP: the width of its `fc2` input (a GLU's gate/value pairs count once)."""
    return mlp.fc2.in_features


def fc1_rows(mlp: nn.Module) -> int:
    """Input-projection rows per hidden unit: 2 for a GLU (value and gate), else 1."""
    return 2 if isinstance(mlp, GluMlp | SwiGLU) else 1


def attention_kind(attn: nn.Module) -> type | None:
    """The timm attention class `attn` is (or narrows), or None when the surgery does not know it."""
    kind = next((base for base, narrow in NARROW.items() if type(attn) is narrow), type(attn))
    return kind if kind in ATTENTIONS else None


def head_slices(attn: nn.Module) -> tuple[list[Slice], list[nn.Module]]:
    """The tensors that hold the heads of `attn`, and the norms over the attention width (cut with them)."""
    hd = head_dim(attn)
    out = [Slice(attn.proj, "weight", 1, hd)]
    if getattr(attn, "qkv", None) is not None:  # fused, rows laid out (q|k|v, heads, head_dim)
        projections = [(attn.qkv, 3)]
    else:  # EVA's separate q_proj / k_proj / v_proj, rows laid out (heads, head_dim)
        projections = [(attn.q_proj, 1), (attn.k_proj, 1), (attn.v_proj, 1)]
    for fc, groups in projections:
        biased = ("weight", "bias") if fc.bias is not None else ("weight",)
        out.extend(Slice(fc, name, 0, hd, groups) for name in biased)
    for name in ("q_bias", "k_bias", "v_bias"):  # BEiT, EVA: fused qkv without bias, separate q/v biases
        if getattr(attn, name, None) is not None:
            out.append(Slice(attn, name, 0, hd))
    if getattr(attn, "relative_position_bias_table", None) is not None:  # BEiT: (distances, heads)
        out.append(Slice(attn, "relative_position_bias_table", 1))
    rel_pos = getattr(attn, "rel_pos", None)
    if isinstance(rel_pos, RelPosBias):
        out.append(Slice(rel_pos, "relative_position_bias_table", 1))
    elif isinstance(rel_pos, RelPosMlp):  # the bias MLP's output unit h is head h's bias
        out.append(Slice(rel_pos.mlp.fc2, "weight", 0))
        if rel_pos.mlp.fc2.bias is not None:
            out.append(Slice(rel_pos.mlp.fc2, "bias", 0))
    norms = [attn.norm] if isinstance(getattr(attn, "norm", None), nn.Module) else []
    return out, norms


def neuron_slices(mlp: nn.Module) -> tuple[list[Slice], list[nn.Module]]:
    """The tensors that hold the hidden units of `mlp`, and the norm over the hidden width (cut with them)."""
    if isinstance(mlp, SwiGLU):
        ins = [mlp.fc1_g, mlp.fc1_x]
    else:  # Mlp, or GluMlp whose fc1 rows are (value, gate) halves, each `hidden` long
        ins = [mlp.fc1]
    groups = 2 if isinstance(mlp, GluMlp) else 1
    out = [Slice(fc, name, 0, 1, groups) for fc in ins for name in ("weight", "bias") if getattr(fc, name) is not None]
    out.append(Slice(mlp.fc2, "weight", 1))
    return out, [mlp.norm]


def unit_magnitude(slices: list[Slice], units: int) -> torch.Tensor:
    """Sum of |entries| each unit (head or neuron) holds across `slices`: the `l1` importance, shape (units,)."""
    total = torch.zeros(units)
    for s in slices:
        t = getattr(s.module, s.name).detach().abs().movedim(s.dim, 0).float().cpu()
        total += t.reshape(s.groups, units, -1).sum(dim=(0, 2))
    return total


def _index(s: Slice, units: int, keep: list[int]) -> torch.Tensor:
    return torch.tensor([g * units * s.width + u * s.width + j for g in range(s.groups) for u in keep for j in range(s.width)])


def _cut(module: nn.Module, slices: list[Slice], norms: list[nn.Module], units: int, keep: list[int]) -> nn.Module:
    """A copy of `module` holding only units `keep` (sorted) of every slice and cut-width norm."""
    new = copy.deepcopy(module)
    new_of = dict(zip(module.modules(), new.modules(), strict=True))
    for s in slices:
        owner = new_of[s.module]
        old = getattr(s.module, s.name).detach()
        kept = old.index_select(s.dim, _index(s, units, keep).to(old.device)).clone()
        if s.name in owner._parameters:
            setattr(owner, s.name, nn.Parameter(kept, requires_grad=getattr(s.module, s.name).requires_grad))
        else:
            owner.register_buffer(s.name, kept, persistent=s.name not in s.module._non_persistent_buffers_set)
    for m in new.modules():  # Linear metadata follows its (possibly cut) weight
        if isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
    for norm in norms:
        _resize_norm(new_of[norm], units, keep)
    return new


def _resize_norm(norm: nn.Module, units: int, keep: list[int]) -> None:
    """A LayerNorm/RMSNorm-like norm over the cut width keeps the channels of the kept units (in place, on the copy)."""
    if isinstance(norm, nn.Identity):
        return
    width = norm.normalized_shape[0] // units
    index = _index(Slice(norm, "", 0, width), units, keep)
    norm.normalized_shape = (len(index),)
    for name, param in list(norm.named_parameters(recurse=False)):
        setattr(norm, name, nn.Parameter(param.detach()[index.to(param.device)].clone(), requires_grad=param.requires_grad))


def cut_heads(attn: nn.Module, keep: list[int]) -> nn.Module:
    """`attn` with only heads `keep` (sorted original indices); head_dim, q/k norms and rotary layout unchanged."""
    kind = attention_kind(attn)
    if kind is None:  # check_supported refuses these first; this guards direct callers
        raise UnsupportedModelError(f"{type(attn).__name__} is not an attention the surgery can cut")
    slices, norms = head_slices(attn)
    hd = head_dim(attn)
    new = _cut(attn, slices, norms, attn.num_heads, keep)  # same class, cut tensors, stale head counts
    if isinstance(getattr(new, "rel_pos", None), RelPosBias | RelPosMlp):  # reshapes by its own head count
        new.rel_pos = rel_pos_with_heads(new.rel_pos, len(keep))
    if kind in NARROW:  # timm's forward reshapes to the input width: rebuild as the subclass that does not
        return NARROW[kind].from_cut(new, len(keep), hd)
    # timm `Attention` reshapes by its attributes only (its forward runs with fewer heads as it is)
    new.num_heads = len(keep)
    if hasattr(new, "attn_dim"):
        new.attn_dim = len(keep) * hd
    return new


def cut_neurons(mlp: nn.Module, keep: list[int]) -> nn.Module:
    """`mlp` with only hidden units `keep` (sorted original indices); for a GLU, each unit's value and gate rows."""
    if not isinstance(mlp, MLPS):
        raise UnsupportedModelError(f"{type(mlp).__name__} is not an MLP the surgery can cut")
    slices, norms = neuron_slices(mlp)
    return _cut(mlp, slices, norms, mlp_hidden(mlp), keep)
