"""The budget split across stages, decided before any work: --depth-share and --depth-blocks decide how many
blocks go, --width-steps over how many width stages the rest is spread."""

from __future__ import annotations

import json
import re

import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import DataLoader, TensorDataset

from tests.conftest import TINY_ARGS, TINY_CFG
from vitshrink.cli import main
from vitshrink.compressor.core.artifact import load_artifact, save_artifact
from vitshrink.compressor.core.errors import BudgetError
from vitshrink.compressor.core.flops import block_macs_of, count_macs, num_tokens
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.jobs.pipeline import CompressConfig, CompressData, run_compress
from vitshrink.compressor.planning.planner import Budget
from vitshrink.compressor.scoring import importance
from vitshrink.compressor.training.train import TrainConfig

SHARES = (0.0, 0.25, 0.5, 0.75, 1.0, CompressConfig(Budget("flops", 0.5)).depth_share)


def _teacher(depth: int):
    torch.manual_seed(0)
    return load_model("vit_tiny_patch16_224", model_args={**TINY_ARGS, "depth": depth, "pretrained_cfg_overlay": TINY_CFG})


def _data() -> CompressData:
    g = torch.Generator().manual_seed(0)
    images = TensorDataset(torch.randn(64, 3, 16, 16, generator=g), torch.randint(0, 10, (64,), generator=g))
    return CompressData(train_set=images, calib_loader=DataLoader(images, batch_size=32),
                        eval_loader=DataLoader(images, batch_size=64))


def _compress(teacher, tmp_path, name: str, resume: bool = False, **config):
    lines: list[str] = []
    config = CompressConfig(**{"budget": Budget("flops", 0.5), "stages": ("width", "depth"), "calib_batches": 2,
                               "train": TrainConfig(epochs=0), **config})
    report = run_compress(teacher, _data(), config, tmp_path / name, tmp_path / f"{name}.work", resume=resume,
                          progress=False, log=lines.append)
    return report, "\n".join(lines)


def _blocks_that_fit(model, reduction: float) -> int:
    """The most whole blocks (cheapest first) whose MACs fit the target plus the 1-point tolerance."""
    total = count_macs(model)
    costs = sorted(block_macs_of(b, num_tokens(model)) for b in model.blocks)
    return max(k for k in range(len(costs)) if sum(costs[:k]) <= (reduction + 0.01) * total)


def test_depth_share_sweep_on_a_tiny_model(tmp_path):
    """6 blocks of ~16% each and a 50% target: 3 blocks fit. Share 0 is width-only; more share, more blocks."""
    teacher = _teacher(depth=6)
    width_only, _ = _compress(teacher, tmp_path, "width", stages=("width",))
    removed = []
    for share in SHARES:
        report, log = _compress(teacher, tmp_path, f"share{share}", depth_share=share)
        removed.append(6 - len(report.final.spec["blocks"]))
        assert 0.5 <= report.final.reduction_flops <= 0.51, (share, report.final.reduction_flops)
        if share == 0:
            assert [s.name for s in report.stages] == ["width"]
            assert report.final.plan == width_only.final.plan and report.final.spec == width_only.final.spec
            assert "depth stage skipped: --depth-share 0 asks for no block" in log and "depth plan" not in log
    by_share = dict(zip(SHARES, removed, strict=True))
    ordered = [by_share[s] for s in sorted(set(SHARES))]
    assert ordered == sorted(ordered), by_share  # never fewer blocks for a larger share
    assert by_share[0.0] == 0 and by_share[1.0] == _blocks_that_fit(teacher.model, 0.5) == 3, by_share
    assert len(set(ordered)) > 2, by_share  # the share makes a difference in between


def test_explicit_depth_blocks_including_zero(tmp_path):
    teacher = _teacher(depth=6)
    width_only, _ = _compress(teacher, tmp_path, "width", stages=("width",))
    none, log = _compress(teacher, tmp_path, "zero", depth_blocks=0)
    assert [s.name for s in none.stages] == ["width"] and none.final.spec == width_only.final.spec
    assert "depth stage skipped" in log
    two, _ = _compress(teacher, tmp_path, "two", depth_blocks=2)
    assert len(two.final.spec["blocks"]) == 4 and 0.5 <= two.final.reduction_flops <= 0.51
    with pytest.raises(BudgetError, match="--depth-blocks 4: the 4 cheapest blocks"):
        _compress(teacher, tmp_path, "four", depth_blocks=4)


def test_block_scoring_in_the_depth_stage_is_one_evaluation_per_block(tmp_path, monkeypatch):
    """Depth only, ablation: the baseline plus one evaluation per block, and no backward pass."""
    teacher = _teacher(depth=4)
    calls = {"loss": 0, "backward": 0}
    mean_loss, backward = importance._mean_loss, torch.Tensor.backward

    def counting_loss(*args, **kwargs):
        calls["loss"] += 1
        return mean_loss(*args, **kwargs)

    def counting_backward(self, *args, **kwargs):
        calls["backward"] += 1
        return backward(self, *args, **kwargs)

    monkeypatch.setattr(importance, "_mean_loss", counting_loss)
    monkeypatch.setattr(torch.Tensor, "backward", counting_backward)
    report, _ = _compress(teacher, tmp_path, "depth", stages=("depth",), depth_blocks=1)
    assert len(report.final.spec["blocks"]) == 3
    assert calls == {"loss": 4 + 1, "backward": 0}


def _one_block_dir(tmp_path):
    return save_artifact(tmp_path / "one-block", _teacher(depth=1), {"method": "test teacher"})


def test_one_block_model_cannot_lose_a_block(tmp_path):
    teacher = _teacher(depth=1)
    for stages in (("depth",), ("width", "depth")):
        with pytest.raises(BudgetError, match="the model has one block; depth pruning needs at least two"):
            _compress(teacher, tmp_path, "one", stages=stages)


def test_one_block_model_on_the_command_line(tmp_path):
    result = CliRunner().invoke(main, ["compress", "--model", str(_one_block_dir(tmp_path)), "--stages", "depth",
                                       "--epochs", "0", "--calib-batches", "1", "--out", str(tmp_path / "o"),
                                       "--no-progress"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # a clean exit, not an uncaught exception
    assert "the model has one block; depth pruning needs at least two" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()


def test_depth_alone_that_cannot_land_is_refused_in_one_line_before_any_work(tmp_path):
    """3 blocks of ~33% each: depth alone at -1% would remove a third of the MACs; --depth-blocks 1 says to."""
    teacher = save_artifact(tmp_path / "teacher", _teacher(depth=3), {"method": "test teacher"})
    args = ["compress", "--model", str(teacher), "--stages", "depth", "--reduce", "flops=0.01", "--epochs", "0",
            "--calib-batches", "1", "--no-progress"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    line = result.output.strip()
    assert "\n" not in line and "Traceback" not in line
    share = block_macs_of(_teacher(depth=3).model.blocks[0], 17) / count_macs(_teacher(depth=3).model)
    assert f"cannot land within 1 point of flops -1.0%: the nearest block count, 1, removes {share:.1%}" in line
    assert "use --stages width" in line and "teacher:" not in line  # refused before the teacher is evaluated
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.work").exists()
    result = CliRunner().invoke(main, [*args, "--depth-blocks", "1", "--out", str(tmp_path / "one")])
    assert result.exit_code == 0, result.output
    assert len(load_artifact(tmp_path / "one").spec.blocks) == 2


@pytest.mark.parametrize("stages", [("width",), ("width", "depth")])
@pytest.mark.parametrize("width_steps", [1, 2])
def test_width_steps_are_numbered_stages_that_share_the_width_target(tmp_path, stages, width_steps):
    """N width steps: stages 1..N are width (stageK-width), each cutting 1/N of the width part more; the records
    read as they did when the steps were written out in `stages` (one "width" per step), and they resume."""
    teacher = _teacher(depth=4)
    report, _ = _compress(teacher, tmp_path, "run", stages=stages, width_steps=width_steps)
    names = ["width"] * width_steps + (["depth"] if "depth" in stages else [])
    assert [s.name for s in report.stages] == names
    assert sorted(p.name for p in (tmp_path / "run.work").glob("stage*")) == [
        f"stage{i}-{name}" for i, name in enumerate(names, start=1)]
    widths = [s.reduction_flops for s in report.stages if s.name == "width"]
    for k, reduction in enumerate(widths, start=1):  # step k removes k/N of what the width steps remove
        assert abs(reduction - widths[-1] * k / width_steps) < 0.02, widths
    assert 0.5 <= report.final.reduction_flops <= 0.51
    config = json.loads((tmp_path / "run" / "compression.json").read_text())["config"]
    assert config["stages"] == names and "width_steps" not in config
    again, log = _compress(teacher, tmp_path, "run", stages=stages, width_steps=width_steps, resume=True)
    assert [s.to_dict() for s in again.stages] == [s.to_dict() for s in report.stages]
    assert log.count("finished earlier") == len(names)


def test_default_is_one_width_step():
    config = CompressConfig(Budget("flops", 0.3))
    assert config.width_steps == 1 and config.run_stages == ("width",)
    assert CompressConfig(Budget("flops", 0.3), stages=("depth",), width_steps=1).run_stages == ("depth",)


@pytest.mark.parametrize("settings, message", [
    ({"width_steps": 0}, "width_steps (--width-steps) must be a whole number >= 1, got 0"),
    ({"width_steps": 1.5}, "width_steps (--width-steps) must be a whole number >= 1, got 1.5"),
    ({"stages": ("width", "width")}, "width may appear once; for iterative width pruning give the number of steps"),
    ({"stages": ("depth",), "width_steps": 3}, "--width-steps 3 splits the width stage, but --stages depth has none"),
])
def test_width_steps_below_one_and_repeated_width_stages_are_refused(settings, message):
    with pytest.raises(BudgetError, match=re.escape(message)):
        CompressConfig(Budget("flops", 0.3), **settings)
