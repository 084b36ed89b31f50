"""MAC counts: the analytic formula against fvcore with the SDPA handle, on known and pruned models."""

from __future__ import annotations

import pytest
import timm

from tests.conftest import tiny_vit
from vitshrink.compressor.flops import count_macs, count_macs_fvcore
from vitshrink.compressor.spec import ArchSpec
from vitshrink.compressor.surgery import PrunePlan, apply_plan


@pytest.mark.parametrize("name, gmacs", [("vit_small_patch16_224", 4.6), ("vit_base_patch16_224", 17.6)])
def test_known_models(name, gmacs):
    model = timm.create_model(name, pretrained=False)
    analytic = count_macs(model)
    assert analytic / 1e9 == pytest.approx(gmacs, abs=0.05)
    assert count_macs_fvcore(model, (3, 224, 224)) == pytest.approx(analytic, rel=0.01)


@pytest.mark.parametrize("overrides", [{}, {"qk_norm": True, "reg_tokens": 1}, {"class_token": False, "global_pool": "avg"}])
def test_pruned_models_agree(overrides):
    model = tiny_vit(**overrides)
    apply_plan(model, ArchSpec.from_model(model),
               PrunePlan(keep_heads={0: (2,), 2: (0, 1, 3)}, keep_neurons={1: tuple(range(24))}, drop_blocks=(2,)))
    assert count_macs_fvcore(model, (3, 16, 16)) == pytest.approx(count_macs(model), rel=0.01)
