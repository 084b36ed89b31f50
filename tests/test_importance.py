"""Importance: gates are exact stand-ins for removal, Taylor tracks exact ablation, baselines behave."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from compressor.errors import VitShrinkError
from compressor.gates import gated
from compressor.importance import ScoringLoss, score
from compressor.spec import ArchSpec
from compressor.surgery import PrunePlan, apply_plan


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
