"""`vitshrink export`: options reach the library, errors become one line and exit code 1."""

from __future__ import annotations

import json
import sys

import torch
from click.testing import CliRunner
from test_export_helpers import tiny_artifact

from vitshrink.exporters.export_command import export_command
from vitshrink.exporters.layout import EXPORT_JSON, ONNX_FILE
from vitshrink.exporters.onnx_export import export_onnx


def test_export_command_writes_onnx_and_prints_the_summary(tmp_path):
    folder, _ = tiny_artifact(tmp_path / "artifact")
    out = tmp_path / "deploy"

    result = CliRunner().invoke(export_command, [str(folder), "--out", str(out), "--static-batch", "2"])

    assert result.exit_code == 0, result.output
    assert "model.onnx" in result.output and "static batch 2" in result.output
    sidecar = json.loads((out / EXPORT_JSON).read_text())
    assert sidecar["io"]["inputs"]["input"]["shape"] == [2, 3, 32, 32]
    assert sidecar["config"]["static_batch"] == 2 and not (folder / ONNX_FILE).exists()


def test_export_command_turns_errors_into_one_message(tmp_path, monkeypatch):
    folder, _ = tiny_artifact(tmp_path / "artifact")
    runner = CliRunner()

    unknown = runner.invoke(export_command, [str(folder), "--target", "tflite"])
    assert (
        unknown.exit_code == 2
        and "'tflite' is not one of 'onnx', 'onnx-fp16', 'onnx-int8', 'trt'" in unknown.output
    )

    not_artifact = runner.invoke(export_command, [str(tmp_path / "nothing-here")])
    assert (
        not_artifact.exit_code == 1
        and "Error: " in not_artifact.output
        and "is not a folder" in not_artifact.output
    )
    assert "Traceback" not in not_artifact.output

    bad_profile = runner.invoke(export_command, [str(folder), "--target", "trt", "--min-batch", "8"])
    assert bad_profile.exit_code == 1 and "1 <= min <= opt <= max" in bad_profile.output

    def export_wrong_graph(model, io, path, **options):
        with torch.no_grad():
            model.head.bias[0] -= 1.0
        export_onnx(model, io, path, **options)

    monkeypatch.setattr("vitshrink.exporters.export_job.export_onnx", export_wrong_graph)
    parity = runner.invoke(export_command, [str(folder)])
    assert parity.exit_code == 1 and "does not match the PyTorch model" in parity.output
    assert "random batch 16:" in parity.output and not (folder / ONNX_FILE).exists()


def test_trt_export_without_tensorrt_exits_zero_unless_an_engine_is_required(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on any machine without TensorRT
    folder, _ = tiny_artifact(tmp_path / "artifact")
    runner = CliRunner()

    prepared = runner.invoke(export_command, [str(folder), "--target", "trt"])
    required = runner.invoke(export_command, [str(folder), "--target", "trt", "--require-engine"])

    assert prepared.exit_code == 0 and "./build_engine.sh" in prepared.output
    assert "trtexec --onnx=model.onnx --saveEngine=model.fp16.engine" in prepared.output
    assert required.exit_code == 1 and "no TensorRT engine was built" in required.output
