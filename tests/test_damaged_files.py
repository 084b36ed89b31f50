"""Damaged weight and JSON files end in one line naming the file and exit code 1, never a traceback."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from tests.conftest import TINY_ARGS, TINY_CFG
from vitshrink.cli import main
from vitshrink.compressor.core.artifact import save_artifact
from vitshrink.compressor.core.errors import UnreadableFileError
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.core.reading import read_json, read_safetensors, read_torch_weights


def _truncate(path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: keep if keep is not None else len(data) // 2])


@pytest.fixture(scope="module")
def tiny():
    return load_model("vit_tiny_patch16_224", model_args={**TINY_ARGS, "pretrained_cfg_overlay": TINY_CFG})


@pytest.fixture
def artifact(tiny, tmp_path):
    return save_artifact(tmp_path / "model", tiny, {"method": "test"})


def _damage(folder, what: str):
    """Damage one file of an artifact folder; returns its path."""
    if what == "weights, cut short":
        path = folder / "model.safetensors"
        _truncate(path)
    elif what == "weights, header cut":
        path = folder / "model.safetensors"
        _truncate(path, 100)
    else:
        path = folder / what
        path.write_text(path.read_text()[:40])  # JSON cut in the middle of an object
    return path


def _cli(*args) -> tuple[int, str]:
    # catch_exceptions=False: an exception the CLI does not turn into a message fails the test
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def _assert_one_line_naming(path, code: int, output: str) -> None:
    assert code == 1, output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    assert str(path) in errors[0], output


DAMAGE = ["weights, cut short", "weights, header cut", "config.json", "compression.json"]


@pytest.mark.parametrize("what", DAMAGE)
def test_compress_on_a_damaged_artifact(artifact, tmp_path, what):
    path = _damage(artifact, what)
    code, output = _cli("compress", "--model", artifact, "--epochs", "0", "--out", tmp_path / "out", "--no-progress")
    _assert_one_line_naming(path, code, output)
    assert "truncated or corrupt" in output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("what", DAMAGE)
def test_export_of_a_damaged_artifact(artifact, tmp_path, what):
    path = _damage(artifact, what)
    code, output = _cli("export", artifact, "--target", "onnx", "--out", tmp_path / "deploy")
    _assert_one_line_naming(path, code, output)
    assert not (tmp_path / "deploy" / "model.onnx").exists()


@pytest.mark.parametrize("damaged", ["student", "teacher"])
def test_bench_with_a_damaged_model(tiny, tmp_path, damaged):
    student = save_artifact(tmp_path / "student", tiny, {"method": "test"})
    teacher = save_artifact(tmp_path / "teacher", tiny, {"method": "test"})
    path = _damage(student if damaged == "student" else teacher, "weights, cut short")
    code, output = _cli("bench", student, "--teacher", teacher, "--backends", "torch-cpu", "--batch-sizes", "1",
                        "--no-memory", "--no-fvcore", "--no-plot", "--no-progress", "--out", tmp_path / "bench")
    _assert_one_line_naming(path, code, output)


def test_timm_folder_with_cut_weights(tiny, tmp_path):
    folder = save_artifact(tmp_path / "timm", tiny, {"method": "test"})
    (folder / "compression.json").unlink()  # a plain timm folder: config.json + model.safetensors
    path = _damage(folder, "weights, cut short")
    code, output = _cli("compress", "--model", folder, "--epochs", "0", "--out", tmp_path / "out", "--no-progress")
    _assert_one_line_naming(path, code, output)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_compress_with_a_cut_checkpoint(tiny, tmp_path, suffix):
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in tiny.model.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    _truncate(path)
    code, output = _cli("compress", "--model", "vit_tiny_patch16_224", "--checkpoint", path, "--epochs", "0",
                        "--out", tmp_path / "out", "--no-progress")
    _assert_one_line_naming(path, code, output)
    assert "truncated or corrupt" in output
    assert "pickled module" not in output  # a cut file is not a pickled module; the old message said so


def test_gate_on_a_cut_bench_json(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"schema": 1, "metrics": {"flops_reduction": 0.3}})[:20])
    code, output = _cli("gate", path)
    _assert_one_line_naming(path, code, output)


@pytest.mark.parametrize(
    "content, reader, message",
    [
        (b"", read_safetensors, "not a readable safetensors file"),
        (b"\x08\x00\x00\x00\x00\x00\x00\x00{}", read_safetensors, "not a readable safetensors file"),
        (b"hello", read_torch_weights, "not a readable PyTorch checkpoint"),
        (b"PK\x03\x04 cut zip", read_torch_weights, "not a readable PyTorch checkpoint"),
        (b"{\"a\": ", read_json, "not a readable JSON file"),
        (b"\xff\xfe\x00garbage", read_json, "not a readable JSON file"),
        (b"[1, 2]", read_json, "holds a JSON list, not an object"),
    ],
)
def test_readers_name_the_file_and_the_fix(tmp_path, content, reader, message):
    path = tmp_path / "file.bin"
    path.write_bytes(content)
    with pytest.raises(UnreadableFileError, match=message) as info:
        reader(path)
    assert str(path) in str(info.value)


def test_readers_still_read_good_files(tiny, tmp_path):
    state = {k: v.contiguous() for k, v in tiny.model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pth")
    (tmp_path / "c.json").write_text(json.dumps({"a": [1, 2]}))
    for back in (read_safetensors(tmp_path / "w.safetensors"), read_torch_weights(tmp_path / "w.pth")):
        assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    assert read_json(tmp_path / "c.json") == {"a": [1, 2]}


def test_cut_training_checkpoint_says_how_to_start_over(tmp_path):
    from vitshrink.compressor.training.checkpoint import load_checkpoint, save_checkpoint

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    save_checkpoint(tmp_path / "ckpt", model, optimizer, scheduler, {"epoch": 1})
    _truncate(tmp_path / "ckpt" / "model.safetensors", 50)
    with pytest.raises(UnreadableFileError, match="without --resume") as info:
        load_checkpoint(tmp_path / "ckpt", model, optimizer, scheduler)
    assert "model.safetensors" in str(info.value)
