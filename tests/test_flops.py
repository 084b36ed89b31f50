"""MAC counts (what the bench reports as FLOPs): the analytic formula against known models and against
fvcore with the SDPA handle, on known and pruned models."""

from __future__ import annotations

import warnings

import pytest
import timm

from tests.conftest import tiny_vit
from vitshrink.compressor.core.flops import count_macs, count_macs_fvcore
from vitshrink.compressor.core.spec import ArchSpec
from vitshrink.compressor.core.surgery import PrunePlan, apply_plan

# ViT-S/16 and ViT-B/16 at 224: 4.6 and 17.6 GMACs (fvcore convention, attention included;
# timm's published 4.61 / 17.58; Torch-Pruning's readme: 17.59 for ViT-B/16)
KNOWN_GMACS = {"vit_small_patch16_224": 4.608, "vit_base_patch16_224": 17.583}


@pytest.mark.parametrize("name", sorted(KNOWN_GMACS))
def test_macs_of_known_vits(name):
    model = timm.create_model(name, pretrained=False).eval()
    analytic = count_macs(model)
    assert analytic / 1e9 == pytest.approx(KNOWN_GMACS[name], abs=0.005)
    assert count_macs_fvcore(model, (3, 224, 224)) == pytest.approx(analytic, rel=0.01)


@pytest.mark.parametrize("overrides", [{}, {"qk_norm": True, "reg_tokens": 1}, {"class_token": False, "global_pool": "avg"}])
def test_pruned_models_agree(overrides):
    model = tiny_vit(**overrides)
    apply_plan(model, ArchSpec.from_model(model),
               PrunePlan(keep_heads={0: (2,), 2: (0, 1, 3)}, keep_neurons={1: tuple(range(24))}, drop_blocks=(2,)))
    assert count_macs_fvcore(model, (3, 16, 16)) == pytest.approx(count_macs(model), rel=0.01)


def test_fvcore_without_the_sdpa_handle_misses_attention():
    """Why the bench uses the SDPA-aware counter: plain fvcore drops q @ k^T and attn @ v (~8% of ViT-S)."""
    import torch
    from fvcore.nn import FlopCountAnalysis

    model = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = FlopCountAnalysis(model, torch.zeros(1, 3, 224, 224))
        plain.unsupported_ops_warnings(False)
        plain.uncalled_modules_warnings(False)
        missed = count_macs_fvcore(model, (3, 224, 224)) - plain.total()
    assert missed == 2 * 197**2 * 384 * 12  # both attention matmuls: 2 * N^2 * D per block, 12 blocks
