"""Norms inside the pruned width (scale_attn_norm / scale_mlp_norm) are cut with their channels, with or
without weights; norms the surgery cannot cut are refused with one line, also from the CLI."""

from __future__ import annotations

import json
from functools import partial

import pytest
import timm
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from safetensors.torch import save_file
from torch import nn

from tests.conftest import TINY_ARGS
from vitshrink.cli import main
from vitshrink.compressor.core.errors import UnsupportedModelError
from vitshrink.compressor.core.spec import ArchSpec
from vitshrink.compressor.core.supported_models import check_supported
from vitshrink.compressor.core.surgery import PrunePlan, apply_plan, prune_attention, prune_mlp

NORMS = {
    "layernorm_no_weights": partial(nn.LayerNorm, elementwise_affine=False),
    "layernorm_no_bias": partial(nn.LayerNorm, bias=False),
    "layernorm": nn.LayerNorm,
    "timm_rmsnorm_no_weights": partial(timm.layers.RmsNorm, affine=False),
    "timm_rmsnorm": timm.layers.RmsNorm,
}


def _vit(norm_layer) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_ARGS, norm_layer=norm_layer,
                              scale_attn_norm=True, scale_mlp_norm=True).eval()
    with torch.no_grad():  # non-trivial affine parameters, so that slicing the wrong entries shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p))
    return model


def _norm_reference(norm: nn.Module, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """What the original norm would compute over only the `keep` channels, with torch's functional ops."""
    weight = norm.weight[keep] if getattr(norm, "weight", None) is not None else None
    if isinstance(norm, nn.LayerNorm):
        bias = norm.bias[keep] if norm.bias is not None else None
        return F.layer_norm(h, (len(keep),), weight, bias, norm.eps)
    return F.rms_norm(h, (len(keep),), weight, norm.eps)


def _mlp_reference(mlp, keep: list[int], x: torch.Tensor) -> torch.Tensor:
    idx = torch.tensor(keep)
    h = mlp.act(F.linear(x, mlp.fc1.weight[idx], mlp.fc1.bias[idx]))
    return F.linear(_norm_reference(mlp.norm, h, idx), mlp.fc2.weight[:, idx], mlp.fc2.bias)


def _attention_reference(attn, heads: list[int], x: torch.Tensor) -> torch.Tensor:
    B, N, _ = x.shape
    hd, total = attn.head_dim, attn.num_heads * attn.head_dim
    cols = torch.tensor([h * hd + j for h in heads for j in range(hd)])
    rows = torch.cat([cols + part * total for part in range(3)])
    qkv = F.linear(x, attn.qkv.weight[rows], attn.qkv.bias[rows]).reshape(B, N, 3, len(heads), hd)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, H, N, head_dim) each
    out = (torch.softmax(q @ k.transpose(-2, -1) * hd**-0.5, dim=-1) @ v).transpose(1, 2).reshape(B, N, -1)
    return F.linear(_norm_reference(attn.norm, out, cols), attn.proj.weight[:, cols], attn.proj.bias)


@pytest.mark.parametrize("name", NORMS)
def test_mlp_norm_is_cut_with_its_neurons(name):
    mlp = _vit(NORMS[name]).blocks[0].mlp
    keep = list(range(0, 256, 3))
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        expected = _mlp_reference(mlp, keep, x)
        new = prune_mlp(mlp, tuple(keep))
        torch.testing.assert_close(new(x), expected, rtol=1e-5, atol=1e-5)
    assert tuple(new.norm.normalized_shape) == (len(keep),)
    assert sum(p.numel() for p in new.norm.parameters()) == len(keep) * len(list(mlp.norm.parameters()))


@pytest.mark.parametrize("name", NORMS)
def test_attention_norm_is_cut_with_its_heads(name):
    attn = _vit(NORMS[name]).blocks[1].attn
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        expected = _attention_reference(attn, [1, 3], x)
        new = prune_attention(attn, (3, 1))
        torch.testing.assert_close(new(x), expected, rtol=1e-5, atol=1e-5)
    assert tuple(new.norm.normalized_shape) == (2 * attn.head_dim,)


def test_plan_on_a_vit_with_weightless_norms_runs_end_to_end():
    model = _vit(NORMS["layernorm_no_weights"])
    spec = apply_plan(model, ArchSpec.from_model(model),
                      PrunePlan(keep_heads={0: (0, 2)}, keep_neurons={1: tuple(range(0, 256, 2))}, drop_blocks=(2,)))
    assert [(b.num_heads, b.mlp_hidden) for b in spec.blocks] == [(2, 256), (4, 128)]
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


@pytest.mark.parametrize("norm_layer", ["groupnorm1", "batchnorm1d"])
def test_norm_that_cannot_be_cut_is_refused_before_any_change(norm_layer):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_ARGS, norm_layer=norm_layer,
                              scale_mlp_norm=True)
    with pytest.raises(UnsupportedModelError, match="block 0 MLP norm is"):
        check_supported(model)


def test_cli_refuses_a_norm_it_cannot_cut_in_one_line(tmp_path):
    args = {**TINY_ARGS, "norm_layer": "groupnorm1", "scale_mlp_norm": True}
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **args)
    folder = tmp_path / "teacher"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "architecture": "vit_tiny_patch16_224", "num_classes": 10, "model_args": args,
        "pretrained_cfg": {"input_size": [3, 16, 16], "mean": [0.5] * 3, "std": [0.5] * 3},
    }))
    result = CliRunner().invoke(main, ["compress", "--model", str(folder), "--epochs", "0",
                                       "--out", str(tmp_path / "out"), "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 1
    assert result.output.startswith("Error: block 0 MLP norm is GroupNorm1") and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
