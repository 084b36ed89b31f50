"""The --amp auto rule (bf16 only where it is native), and the teacher run under inference_mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vitshrink.compressor.jobs.compress_command import compress_command as compress
from vitshrink.compressor.training.kd_loss import feature_loss
from vitshrink.compressor.training.precision import cpu_flags, native_bf16, resolve_amp
from vitshrink.compressor.training.train import TrainConfig

EPYC_AVX2 = {"fpu", "sse4_2", "avx", "avx2", "fma", "sha_ni"}  # e.g. this development machine
SAPPHIRE_RAPIDS = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}


@pytest.mark.parametrize("device, flags, cuda_bf16, expected", [
    ("cpu", EPYC_AVX2, True, False),
    ("cpu", set(), True, False),
    ("cpu", SAPPHIRE_RAPIDS, True, True),
    ("cpu", {"avx512f", "avx512_bf16"}, True, True),  # Cooper Lake / Zen 4: AVX512-BF16 without AMX
    ("cpu", {"amx_bf16"}, True, True),
    ("cuda", set(), True, True),
    ("cuda", SAPPHIRE_RAPIDS, False, False),  # a GPU without bf16 (pre-Ampere): the CPU's flags do not matter
    ("mps", SAPPHIRE_RAPIDS, True, False),
])
def test_auto_rule(device, flags, cuda_bf16, expected):
    assert native_bf16(device, frozenset(flags), cuda_bf16=cuda_bf16) is expected


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(info) == frozenset({"fpu", "avx2", "avx512_bf16"})
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_explicit_choice_wins_and_auto_follows_this_machine():
    assert resolve_amp(True, "cpu") is True and resolve_amp(False, "cpu") is False
    assert resolve_amp(None, "cpu") is native_bf16("cpu", cpu_flags())


def test_cli_default_is_auto():
    assert TrainConfig().amp is None
    kw = compress.make_context("compress", []).params
    assert kw["amp"] == "auto"
    from vitshrink.compressor.jobs.compress_command import compress_config

    assert compress_config(kw).train.amp is None
    assert compress_config({**kw, "amp": "on"}).train.amp is True


def test_feature_loss_accepts_inference_mode_teacher_outputs():
    """The teacher runs under torch.inference_mode; the hidden-state loss must still backpropagate."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 6)
    x = torch.randn(4, 3, 6)
    with torch.inference_mode():
        teacher_out = layer(x)
    student_out = torch.randn(4, 3, 6, requires_grad=True)
    loss = feature_loss([student_out], [teacher_out])
    loss.backward()
    torch.testing.assert_close(loss, F.mse_loss(student_out, teacher_out.clone()))
    torch.testing.assert_close(student_out.grad, 2 * (student_out - teacher_out.clone()).detach() / student_out.numel())
