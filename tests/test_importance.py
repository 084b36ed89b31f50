"""Importance: gates are exact stand-ins for removal, Taylor tracks exact ablation, baselines behave."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from tests.conftest import tiny_vit
from vitshrink.compressor.core.errors import VitShrinkError
from vitshrink.compressor.core.spec import ArchSpec
from vitshrink.compressor.core.structure_gates import gated
from vitshrink.compressor.core.surgery import PrunePlan, apply_plan
from vitshrink.compressor.scoring.importance import ScoringLoss, score, score_blocks, score_units


def test_gates_at_one_change_nothing_and_at_zero_equal_the_cut(digits_teacher):
    model = digits_teacher.model
    x = torch.randn(4, 3, 16, 16)
    expected = model(x)
    with gated(model, requires_grad=False) as gates:
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-6)  # x + 1 * (f(x) - x) rounds
        gates.heads[1][2] = 0.0
        gates.neurons[0][[3, 9]] = 0.0
        gates.blocks[2] = 0.0
        gated_out = model(x)
    cut = copy.deepcopy(model)
    keep_n = tuple(n for n in range(cut.blocks[0].mlp.fc1.out_features) if n not in (3, 9))
    apply_plan(cut, ArchSpec.from_model(cut), PrunePlan({1: (0, 1, 3)}, {0: keep_n}, (2,)))
    torch.testing.assert_close(gated_out, cut(x), rtol=0, atol=1e-5)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)  # hooks are gone


def test_taylor_tracks_exact_ablation_on_a_trained_model(digits_teacher, digits_calib):
    taylor = score(digits_teacher.model, digits_calib, "taylor")
    exact = score(digits_teacher.model, digits_calib, "ablation")
    rho_heads = spearmanr(np.concatenate(taylor.heads), np.concatenate(exact.heads)).statistic
    # a loose bound: the point is that Taylor ranks heads like the exact loss change does
    assert rho_heads > 0.5, rho_heads
    assert all((h >= 0).all() for h in taylor.heads)
    assert exact.blocks.shape == (3,) and taylor.neurons[0].shape == (256,)


def test_kl_scoring_needs_no_labels(digits_teacher, digits_calib):
    scrambled = [(x, torch.zeros_like(y)) for x, y in digits_calib]
    a = score(digits_teacher.model, digits_calib, "taylor", ScoringLoss("kl"))
    b = score(digits_teacher.model, scrambled, "taylor", ScoringLoss("kl"))
    np.testing.assert_allclose(np.concatenate(a.heads), np.concatenate(b.heads))
    assert np.concatenate(a.heads).max() > 0


def test_baselines_and_unknown_criterion(digits_teacher, digits_calib):
    r1 = score(digits_teacher.model, digits_calib, "random", seed=1)
    r2 = score(digits_teacher.model, digits_calib, "random", seed=1)
    np.testing.assert_array_equal(r1.heads[0], r2.heads[0])
    l1 = score(digits_teacher.model, digits_calib, "l1")
    w = digits_teacher.model.blocks[0].mlp
    expected = (w.fc1.weight[5].abs().sum() + w.fc2.weight[:, 5].abs().sum()).item()
    assert l1.neurons[0][5] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(VitShrinkError, match="taylor"):
        score(digits_teacher.model, digits_calib, "hessian")


def _batches(n: int = 2) -> list:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


def _count_passes(model, monkeypatch) -> dict:
    """Count forward passes of `model` and backward passes of anything, from now on."""
    counts = {"forward": 0, "backward": 0}
    model.register_forward_hook(lambda *_: counts.__setitem__("forward", counts["forward"] + 1))
    backward = torch.Tensor.backward

    def counting_backward(self, *args, **kwargs):
        counts["backward"] += 1
        return backward(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", counting_backward)
    return counts


@torch.no_grad()
def _mean_ce(model, batches) -> float:
    return float(np.mean([F.cross_entropy(model(x), y).item() for x, y in batches]))


def test_block_ablation_is_one_evaluation_per_block_and_no_backward(monkeypatch):
    model, batches = tiny_vit(depth=3), _batches()
    base = _mean_ce(model, batches)
    expected = []
    for i in range(3):  # reference: the loss of the model with block i cut out, less the whole model's
        cut = copy.deepcopy(model)
        apply_plan(cut, ArchSpec.from_model(cut), PrunePlan(drop_blocks=(i,)))
        expected.append(_mean_ce(cut, batches) - base)
    counts = _count_passes(model, monkeypatch)
    scores = score_blocks(model, batches, "ablation")
    assert counts == {"forward": (3 + 1) * len(batches), "backward": 0}
    np.testing.assert_allclose(scores.blocks, expected, rtol=1e-4, atol=1e-6)
    assert scores.heads == () and scores.neurons == ()


def test_width_ablation_does_not_ablate_blocks(monkeypatch):
    model, batches = tiny_vit(depth=3), _batches()
    full = score(model, batches, "ablation")
    counts = _count_passes(model, monkeypatch)
    units = score_units(model, batches, "ablation")
    heads = sum(b.attn.num_heads for b in model.blocks)
    # one Taylor pass (neurons), the baseline, one evaluation per head: no block is ablated
    assert counts == {"forward": (1 + 1 + heads) * len(batches), "backward": len(batches)}
    assert units.blocks.size == 0
    for a, b in zip((*units.heads, *units.neurons), (*full.heads, *full.neurons), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("criterion", ["taylor", "l1", "random"])
def test_block_scores_alone_equal_those_of_a_full_scoring(criterion):
    model, batches = tiny_vit(depth=3), _batches()
    full = score(model, batches, criterion, seed=3)
    blocks = score_blocks(model, batches, criterion, seed=3)
    np.testing.assert_allclose(blocks.blocks, full.blocks, rtol=1e-6, atol=1e-9)
    assert blocks.heads == () and blocks.to_dict()["blocks"] == full.to_dict()["blocks"]
