"""Surgery against references: zeroed parts of the unpruned model, skipped blocks, analytic param counts."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.layers import GatedMlp

from tests.conftest import tiny_vit
from vitshrink.compressor.core.errors import BudgetError, UnsupportedModelError
from vitshrink.compressor.core.spec import ArchSpec
from vitshrink.compressor.core.surgery import PrunePlan, apply_plan

CONFIGS = {
    "plain": {},
    "no_qkv_bias": {"qkv_bias": False},
    "layerscale": {"init_values": 0.1},
    "qk_norm": {"qk_norm": True},
    "avg_pool_no_cls": {"class_token": False, "global_pool": "avg"},
    "registers": {"reg_tokens": 2},
    "rect_img": {"img_size": (16, 24)},
}


def _zero_heads_and_neurons(model, heads: dict, neurons: dict) -> None:
    """Reference: the unpruned model with removed heads' proj columns and neurons' fc2 columns zeroed."""
    with torch.no_grad():
        for i, hs in heads.items():
            attn = model.blocks[i].attn
            for h in hs:
                attn.proj.weight[:, h * attn.head_dim : (h + 1) * attn.head_dim] = 0
        for i, ns in neurons.items():
            model.blocks[i].mlp.fc2.weight[:, list(ns)] = 0


def _analytic_params(model, spec: ArchSpec) -> int:
    """Unpruned parameter count minus exactly what the removed heads/neurons/blocks held."""
    d = spec.embed_dim
    stem = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("blocks."))
    total = stem
    for b, blk in zip(spec.blocks, model.blocks, strict=True):
        qkv_bias = blk.attn.qkv.bias is not None
        attn = 3 * b.num_heads * b.head_dim * d + (3 * b.num_heads * b.head_dim if qkv_bias else 0)
        attn += b.num_heads * b.head_dim * d + d
        mlp = d * b.mlp_hidden + b.mlp_hidden + b.mlp_hidden * d + d
        norms = 4 * d + sum(p.numel() for m in (blk.ls1, blk.ls2, blk.attn.q_norm, blk.attn.k_norm) for p in m.parameters())
        total += attn + mlp + norms
    return total


@pytest.mark.parametrize("name", CONFIGS)
def test_keep_everything_is_identical(name):
    model = tiny_vit(**CONFIGS[name])
    reference = copy.deepcopy(model)
    x = torch.randn(2, 3, *model.patch_embed.img_size)
    spec = ArchSpec.from_model(model)
    plan = PrunePlan(
        keep_heads={i: tuple(range(4)) for i in range(3)}, keep_neurons={i: tuple(range(256)) for i in range(3)}
    )
    assert apply_plan(model, spec, plan) == spec
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", CONFIGS)
def test_removing_heads_and_neurons_equals_zeroing_them(name):
    model = tiny_vit(**CONFIGS[name])
    reference = copy.deepcopy(model)
    x = torch.randn(3, 3, *model.patch_embed.img_size)
    removed_heads = {0: (1, 2), 2: (0,)}
    removed_neurons = {1: tuple(range(0, 256, 3)), 2: (5, 17, 200)}
    _zero_heads_and_neurons(reference, removed_heads, removed_neurons)
    plan = PrunePlan(
        keep_heads={i: tuple(h for h in range(4) if h not in hs) for i, hs in removed_heads.items()},
        keep_neurons={i: tuple(n for n in range(256) if n not in ns) for i, ns in removed_neurons.items()},
    )
    spec = apply_plan(model, ArchSpec.from_model(model), plan)
    assert [b.num_heads for b in spec.blocks] == [2, 4, 3]
    assert [b.mlp_hidden for b in spec.blocks] == [256, 256 - 86, 253]
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-5)
    # dense timm modules, no patched forward
    assert type(model.blocks[0].attn) is timm.layers.Attention
    assert model.blocks[0].attn.qkv.weight.shape == (3 * 2 * 16, 64)
    assert "forward" not in vars(model.blocks[0].attn)


def test_removing_a_block_equals_skipping_it():
    model = tiny_vit()
    reference = copy.deepcopy(model)
    x = torch.randn(2, 3, 16, 16)
    spec = apply_plan(model, ArchSpec.from_model(model), PrunePlan(drop_blocks=(1,)))
    assert [b.source_index for b in spec.blocks] == [0, 2]
    reference.blocks = torch.nn.Sequential(reference.blocks[0], reference.blocks[2])
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["plain", "no_qkv_bias", "layerscale", "qk_norm"])
def test_param_count_matches_analytic_formula(name):
    model = tiny_vit(**CONFIGS[name])
    plan = PrunePlan(keep_heads={0: (0,), 1: (1, 3)}, keep_neurons={2: tuple(range(40))}, drop_blocks=(1,))
    spec = apply_plan(model, ArchSpec.from_model(model), plan)
    assert sum(p.numel() for p in model.parameters()) == _analytic_params(model, spec)


def test_scale_norms_are_cut_with_their_channels():
    model = tiny_vit(scale_attn_norm=True, scale_mlp_norm=True)
    plan = PrunePlan(keep_heads={0: (0, 3)}, keep_neurons={0: tuple(range(64))})
    apply_plan(model, ArchSpec.from_model(model), plan)
    assert model.blocks[0].attn.norm.weight.shape == (32,)
    assert model.blocks[0].mlp.norm.weight.shape == (64,)
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 10)


def test_distilled_deit_with_two_heads():
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8,
                              depth=2, num_classes=5).eval()
    reference = copy.deepcopy(model)
    _zero_heads_and_neurons(reference, {1: (0,)}, {})
    spec = apply_plan(model, ArchSpec.from_model(model), PrunePlan(keep_heads={1: (1, 2)}))
    assert spec.blocks[1].num_heads == 2
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-5)


def test_unsupported_module_raises_before_touching_weights():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, depth=2,
                              mlp_layer=GatedMlp, mlp_ratio=2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsupportedModelError, match="block 0 MLP is GatedMlp"):
        apply_plan(model, ArchSpec.from_model(model), PrunePlan(keep_heads={0: (0,)}))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_plans_are_refused():
    model = tiny_vit()
    spec = ArchSpec.from_model(model)
    with pytest.raises(BudgetError, match="every head"):
        apply_plan(model, spec, PrunePlan(keep_heads={0: ()}))
    with pytest.raises(BudgetError, match="blocks"):
        apply_plan(model, spec, PrunePlan(drop_blocks=(0, 1, 2)))
    with pytest.raises(BudgetError, match="model has 3 blocks"):
        apply_plan(model, spec, PrunePlan(keep_heads={7: (0,)}))
