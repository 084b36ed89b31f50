"""The command line end to end on tiny models: compress writes an artifact that loads back; bad input fails cleanly."""

from __future__ import annotations

import json

import click
import pytest
import torch
from click.testing import CliRunner

from vitshrink.cli import main
from vitshrink.cli_errors import VitShrinkCommand
from vitshrink.compressor.core.artifact import load_artifact, save_artifact
from vitshrink.compressor.core.errors import BudgetError


@pytest.fixture
def teacher_dir(trained_digits, tmp_path):
    return save_artifact(tmp_path / "teacher", trained_digits, {"method": "test teacher"})


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_compress_width_then_depth_writes_a_loadable_artifact(teacher_dir, tmp_path, trained_digits):
    out = tmp_path / "student"
    result = _run("compress", "--model", teacher_dir, "--reduce", "flops=0.45", "--stages", "width,depth", "--epochs", "1",
                  "--max-steps-per-epoch", "3", "--calib-batches", "2", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "depth + distill" in result.output and "MACs" in result.output
    assert "width plan (flops" in result.output and "depth plan: remove blocks" in result.output
    record = json.loads((out / "compression.json").read_text())
    assert [s["name"] for s in record["stages"]] == ["width", "depth"]
    assert abs(record["result"]["reduction_flops"] - 0.45) < 0.01
    assert len(record["spec"]["blocks"]) == 2  # one of three blocks removed
    loaded = load_artifact(out)
    x = torch.randn(3, 3, 16, 16)
    again = load_artifact(out)
    torch.testing.assert_close(loaded.model(x), again.model(x), rtol=0, atol=0)
    assert (out / "report.md").read_text().startswith("# vitshrink compression report")


def test_width_only_lands_on_target(teacher_dir, tmp_path):
    out = tmp_path / "w"
    result = _run("compress", "--model", teacher_dir, "--reduce", "params=0.25", "--stages", "width", "--epochs", "0",
                  "--calib-batches", "2", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "compression.json").read_text())
    assert abs(record["result"]["reduction_params"] - 0.25) < 0.01


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "vit_tiny_patch16_22"], "unknown model"),
        (["--model", "/nonexistent/folder/x"], "unknown model"),
        (["--reduce", "flops=1.2"], "(0, 1)"),
        (["--reduce", "speed=0.3"], "unknown budget metric"),
        (["--stages", "width,foo"], "unknown stages"),
        (["--stages", "width,width"], "width may appear once; for iterative width pruning give the number of steps"),
        (["--width-steps", "0"], "0 is not in the range x>=1"),
        (["--stages", "depth", "--width-steps", "2"], "--width-steps 2 splits the width stage, but --stages depth"),
        (["--dataset", "imagefolder", "--data-dir", "/nonexistent", "--model", "vit_tiny_patch16_224"], "does not exist"),
    ],
)
def test_bad_input_is_one_clear_line(args, message, tmp_path):
    result = CliRunner().invoke(main, ["compress", *args, "--out", str(tmp_path / "o"), "--no-progress"])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_impossible_budget_says_so(teacher_dir, tmp_path):
    result = CliRunner().invoke(main, ["compress", "--model", str(teacher_dir), "--reduce", "flops=0.97", "--stages",
                                       "width", "--epochs", "0", "--calib-batches", "1", "--out", str(tmp_path / "o"),
                                       "--no-progress"])
    assert result.exit_code == 1
    assert "at most" in result.output
    assert not (tmp_path / "o").exists()


def test_depth_that_cannot_fit_is_refused_before_any_work(teacher_dir, tmp_path):
    """Each of the three blocks is about a third of the FLOPs: a 20% target leaves no room for one."""
    result = CliRunner().invoke(main, ["compress", "--model", str(teacher_dir), "--reduce", "flops=0.2",
                                       "--stages", "width,depth", "--calib-batches", "1", "--out", str(tmp_path / "o"), "--no-progress"])
    assert result.exit_code == 1
    assert "one block is" in result.output and "--stages width" in result.output


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_command_reports_errors_through_the_one_wrapper(name):
    assert isinstance(main.commands[name], VitShrinkCommand), f"{name}: declare it with cls=VitShrinkCommand"


def test_the_wrapper_turns_a_vitshrink_error_into_one_line_and_exit_1():
    @click.command(cls=VitShrinkCommand)
    def failing() -> None:
        raise BudgetError("what came in, what was expected, what to do")

    result = CliRunner().invoke(failing, [])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output == "Error: what came in, what was expected, what to do\n"


def test_help_lists_every_command():
    result = _run("--help")
    for command in ("compress", "finetune", "export", "bench", "gate"):
        assert command in result.output
    assert "--reduce" in _run("compress", "--help").output


def test_finetune_writes_a_teacher_artifact(tmp_path):
    out = tmp_path / "teacher"
    result = _run("finetune", "--model", "vit_tiny_patch16_224", "--model-arg", "img_size=16", "--model-arg", "patch_size=4",
                  "--model-arg", "embed_dim=32", "--model-arg", "depth=2", "--model-arg", "num_heads=2",
                  "--dataset", "digits", "--epochs", "1", "--train-limit", "128", "--batch-size", "32",
                  "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "resetting the classifier: 1000 -> 10 classes" in result.output
    loaded = load_artifact(out)
    assert loaded.model.num_classes == 10 and loaded.input_size == (3, 16, 16)
    record = json.loads((out / "compression.json").read_text())
    assert len(record["history"]) == 1 and 0.0 <= record["result"]["top1"] <= 1.0


def test_finetune_from_scratch_is_the_same_on_every_run_and_follows_the_seed(tmp_path):
    """A model trained from random init (and its reset classifier) starts from `--seed`: rerunning the same
    command gives the same teacher, bit for bit (CI's gate compares runs of the embedded default teacher)."""
    def teacher(name, *seed):
        out = tmp_path / name
        result = _run("finetune", "--model", "vit_tiny_patch16_224", "--model-arg", "img_size=16",
                      "--model-arg", "patch_size=4", "--model-arg", "embed_dim=32", "--model-arg", "depth=1",
                      "--model-arg", "num_heads=2", "--dataset", "digits", "--epochs", "1", "--train-limit", "64",
                      "--batch-size", "32", *seed, "--out", out, "--no-progress")
        assert result.exit_code == 0, result.output
        return (out / "model.safetensors").read_bytes()

    torch.manual_seed(123)  # whatever the process's generator holds before the command
    first = teacher("a")
    torch.manual_seed(456)
    assert teacher("b") == first
    assert teacher("c", "--seed", "1") != first
