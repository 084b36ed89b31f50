"""Static Q/DQ INT8 export: where the Q/DQ nodes go, what stays in float, the accuracy refusal, and which
images calibration reads."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from test_export_helpers import PRUNED_WIDTHS, tiny_artifact

from vitshrink.cli import main
from vitshrink.compressor.data.datasets import split_train
from vitshrink.exporters import export_job, int8_data
from vitshrink.exporters.errors import ExportError
from vitshrink.exporters.export_job import ExportConfig, export
from vitshrink.exporters.int8 import OP_GROUPS, Int8Recipe, op_groups
from vitshrink.exporters.int8_accuracy import Int8AccuracyError, int8_accuracy
from vitshrink.exporters.layout import EXPORT_JSON, INT8_ONNX_FILE, ONNX_FILE
from vitshrink.exporters.trtexec import EngineProfile, trtexec_args

DIGITS = {"dataset": "digits", "limit": 32, "val_limit": 64}


def _quantized_inputs(path) -> dict[str, bool]:
    """Node name -> whether every input of a MatMul/Gemm/Conv node comes through a DequantizeLinear."""
    graph = onnx.load(str(path)).graph
    dq = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {
        n.name: all(i in dq for i in n.input[:2])
        for n in graph.node
        if n.op_type in ("MatMul", "Gemm", "Conv")
    }


@pytest.fixture(scope="module")
def static_export(tmp_path_factory):
    folder, _ = tiny_artifact(tmp_path_factory.mktemp("int8") / "artifact")
    report = export(folder, ExportConfig(target="onnx-int8", **DIGITS))
    return folder, report


def test_default_int8_puts_qdq_on_every_linear_layer_and_nothing_else(static_export):
    folder, report = static_export
    groups = op_groups(folder / ONNX_FILE)
    quantized = _quantized_inputs(folder / INT8_ONNX_FILE)

    assert len(groups["linear"]) == 4 * len(PRUNED_WIDTHS)  # qkv, proj, fc1, fc2 of every block
    assert len(groups["attention"]) == 2 * len(PRUNED_WIDTHS) and groups["patch_embed"] and groups["head"]
    assert all(quantized[n] for n in groups["linear"])
    assert not any(quantized[n] for g in ("patch_embed", "attention", "head") for n in groups[g])
    ops = {n.op_type for n in onnx.load(str(folder / INT8_ONNX_FILE)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "DynamicQuantizeLinear" not in ops
    graph = onnx.load(str(folder / INT8_ONNX_FILE)).graph
    zero_points = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and "zero_point" in t.name]
    assert zero_points and all(not onnx.numpy_helper.to_array(t).any() for t in zero_points)  # symmetric: TensorRT
    assert report.int8["quantized"] == {"linear": len(groups["linear"])}


def test_export_json_records_the_recipe_the_images_and_the_accuracy(static_export):
    folder, _ = static_export
    int8 = json.loads((folder / EXPORT_JSON).read_text())["int8"]

    assert int8["recipe"] == Int8Recipe().to_dict()
    assert int8["calibration"] == {"method": "minmax", "images": Int8Recipe().calibration_images}
    assert int8["data"]["split"] == "train" and int8["data"]["validation_images"] == 64
    acc = int8["accuracy"]
    assert acc["images"] == 64 and acc["passed"] is True
    assert acc["drop_points"] == pytest.approx((acc["fp32_top1"] - acc["int8_top1"]) * 100)
    assert acc["drop_ci95"][0] <= acc["drop_points"] <= acc["drop_ci95"][1]


def test_op_groups_named_are_quantized_and_the_rest_excluded(tmp_path):
    folder, _ = tiny_artifact(tmp_path / "artifact")
    export(folder, ExportConfig(target="onnx-int8", int8=Int8Recipe(ops=("attention", "head")), **DIGITS))
    groups = op_groups(folder / ONNX_FILE)
    quantized = _quantized_inputs(folder / INT8_ONNX_FILE)

    assert all(quantized[n] for g in ("attention", "head") for n in groups[g])
    assert not any(quantized[n] for g in ("linear", "patch_embed") for n in groups[g])


def test_an_int8_file_that_loses_accuracy_is_refused_and_nothing_is_published(tmp_path, monkeypatch):
    folder, _ = tiny_artifact(tmp_path / "artifact")
    real = export_job.int8_accuracy

    def broken(fp32, int8, labels, max_drop):  # the INT8 file now picks the FP32 model's least likely class
        return real(fp32, -int8, fp32.argmax(1), max_drop)

    monkeypatch.setattr(export_job, "int8_accuracy", broken)
    with pytest.raises(Int8AccuracyError, match=r"drop \+100.00 points .* allowed 1 point; nothing was written"):
        export(folder, ExportConfig(target="onnx-int8", **DIGITS))
    assert not (folder / INT8_ONNX_FILE).exists() and not (folder / EXPORT_JSON).exists()
    assert not (folder / ONNX_FILE).exists()

    result = CliRunner().invoke(main, ["export", str(folder), "--target", "onnx-int8", "--dataset", "digits",
                                       "--int8-max-drop", "0.5"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "allowed 0.5 points; nothing was written" in result.output
    assert not (folder / INT8_ONNX_FILE).exists()


def test_accuracy_drop_is_paired_per_image():
    labels = np.arange(10) % 3
    fp32 = np.eye(3)[labels]  # always right
    int8 = fp32.copy()
    int8[:2] = np.eye(3)[(labels[:2] + 1) % 3]  # two images wrong

    result = int8_accuracy(fp32, int8, labels, max_drop=20.0)

    assert result.drop_points == pytest.approx(20.0) and result.agreement == pytest.approx(0.8)
    assert result.passed and not int8_accuracy(fp32, int8, labels, max_drop=19.9).passed
    lo, hi = result.drop_ci95
    assert lo < 20.0 < hi and hi - lo == pytest.approx(2 * 1.96 * np.std([1, 1] + [0] * 8, ddof=1) / np.sqrt(10) * 100)


class _IndexImages:
    """A stand-in dataset whose image i is filled with the value i, so the images read give away their index."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return np.full((3, 4, 4), i, dtype=np.float32), i % 10


def test_calibration_reads_training_images_outside_the_validation_split_and_never_the_test_split(monkeypatch):
    splits_read = []

    def fake_build_dataset(name, data_dir, split, data_config, **kwargs):
        splits_read.append(split)
        return _IndexImages(500)

    monkeypatch.setattr(int8_data, "build_dataset", fake_build_dataset)
    images = int8_data.int8_images("digits", None, {}, calibration_images=400, validation_images=50,
                                   val_split=100, seed=3)
    split = split_train(500, 100, 3)
    calibrated = {int(x[0, 0, 0]) for x in images.calibration}
    validated = {int(x[0, 0, 0]) for x in images.validation}

    assert splits_read == ["train"]
    assert len(calibrated) == 400 and calibrated <= set(split.train) and not calibrated & set(split.val)
    assert len(validated) == 50 and validated <= set(split.val)
    assert images.record["calibration_images"] == 400 and images.record["val_images"] == 100


def test_the_split_comes_from_the_compress_run_on_the_same_dataset():
    record = {"data": {"dataset": "digits", "val_split": 200, "seed": 7}}
    assert int8_data.split_settings(None, None, record, "digits") == (200, 7, "compression.json")
    assert int8_data.split_settings(None, None, record, "cifar10") == (None, 0, "default")
    assert int8_data.split_settings(0.2, 1, record, "digits") == (0.2, 1, "given")


def test_export_calibrates_only_on_what_int8_images_returns(tmp_path, monkeypatch):
    folder, _ = tiny_artifact(tmp_path / "artifact")
    seen = {}
    real = export_job.quantize_int8

    def spy(src, dst, recipe, calibration=None):
        seen["calibration"] = calibration
        return real(src, dst, recipe, calibration)

    monkeypatch.setattr(export_job, "quantize_int8", spy)
    export(folder, ExportConfig(target="onnx-int8", int8=Int8Recipe(calibration_images=40), **DIGITS))
    loaded_images = int8_data.int8_images("digits", None, export_job._load(folder).data_config,
                                          calibration_images=40, validation_images=64, val_split=None, seed=0)
    np.testing.assert_array_equal(seen["calibration"], loaded_images.calibration)


def test_dynamic_mode_needs_no_dataset_and_says_accuracy_was_not_checked(tmp_path):
    folder, _ = tiny_artifact(tmp_path / "artifact")
    report = export(folder, ExportConfig(target="onnx-int8", int8=Int8Recipe(mode="dynamic")))
    assert report.int8["mode"] == "dynamic" and report.int8["accuracy"] is None
    assert "accuracy not checked: no --dataset" in report.summary()


@pytest.mark.parametrize("kwargs, message", [
    ({"target": "onnx-int8"}, "static INT8 calibrates on training images .* pass --dataset"),
    ({"target": "trt", "precision": "int8"}, "static INT8 calibrates on training images"),
    ({"target": "trt", "precision": "int8", "dataset": "digits", "int8": Int8Recipe(mode="dynamic")},
     "TensorRT builds INT8 engines from the static Q/DQ graph"),
    ({"int8_max_drop": -0.1}, "--int8-max-drop must be >= 0"),
    ({"val_limit": 0}, "--val-limit >= 1"),
])
def test_bad_int8_configs_are_refused(kwargs, message):
    with pytest.raises(ExportError, match=message):
        ExportConfig(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "qat"}, "unknown INT8 mode 'qat'"),
    ({"calibration_method": "mse"}, "unknown calibration method 'mse'"),
    ({"calibration_images": 0}, "calibration images must be >= 1"),
    ({"ops": ("softmax",)}, r"unknown op group\(s\) \['softmax'\]"),
    ({"ops": ()}, "no op group to quantize"),
])
def test_bad_recipes_are_refused(kwargs, message):
    with pytest.raises(ExportError, match=message):
        Int8Recipe(**kwargs)


@pytest.mark.parametrize("args, message", [
    (["--int8-ops", "linear,softmax"], "give a comma-separated list of " + ", ".join(OP_GROUPS)),
    (["--int8-ops", ","], "give a comma-separated list"),
    (["--calib-images", "0"], "--calib-images"),
    (["--int8-max-drop", "-1"], "--int8-max-drop"),
    (["--val-split", "1.5"], "a fraction must be in [0, 1)"),
    (["--calib-method", "mse"], "--calib-method"),
])
def test_int8_flags_are_checked_at_parse_time(tmp_path, args, message):
    result = CliRunner().invoke(main, ["export", str(tmp_path), "--target", "onnx-int8", "--dataset", "digits", *args])
    assert result.exit_code == 2 and message in result.output


def test_tensorrt_int8_builds_from_the_qdq_graph():
    from vitshrink.exporters.io_spec import IOSpec

    io = IOSpec((3, 32, 32), 10)
    profile = EngineProfile(1, 1, 8)
    trt10 = trtexec_args(io, profile, "int8", 10, 1024)
    trt11 = trtexec_args(io, profile, "int8", 11, 1024)
    assert f"--onnx={INT8_ONNX_FILE}" in trt10 and "--int8" in trt10 and "--saveEngine=model.int8.engine" in trt10
    assert f"--onnx={INT8_ONNX_FILE}" in trt11 and "--stronglyTyped" in trt11 and "--int8" not in trt11


@pytest.mark.parametrize("version", ["10.3.0", "11.4.0"])
def test_int8_engine_is_built_from_the_qdq_graph_with_a_fake_tensorrt(tmp_path, monkeypatch, version):
    """FAKE TensorRT: only which file and flags reach the builder; no real TensorRT builds or runs anything."""
    import sys

    from tests.fake_tensorrt import fake_tensorrt
    from vitshrink.exporters import tensorrt_build
    from vitshrink.exporters.validate import onnx_runner

    calls: dict = {}
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version, calls))
    monkeypatch.setattr(tensorrt_build, "cuda_device", lambda: ("Fake Orin", "8.7"))
    monkeypatch.setattr(tensorrt_build, "engine_runner", lambda path: onnx_runner(path.parent / calls["parsed"]))
    folder, _ = tiny_artifact(tmp_path / "artifact")

    report = export(folder, ExportConfig(target="trt", precision="int8", max_batch=8, **DIGITS))

    assert calls["parsed"] == INT8_ONNX_FILE
    assert calls["flags"] == (["INT8", "FP16"] if version.startswith("10.") else [])
    assert (folder / "model.int8.engine").is_file() and report.int8["mode"] == "static"
    assert report.validations[-1].what == "model.int8.engine (TensorRT)"
