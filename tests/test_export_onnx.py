"""ONNX export of tiny pruned ViTs: graph structure, pruned widths, dynamic batch and parity with PyTorch."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
import timm
import torch
from test_export_helpers import MODEL_ARGS, PRUNED_WIDTHS, synthetic_images, tiny_artifact, tiny_pruned_vit

from vitshrink.compressor.core.errors import VitShrinkError
from vitshrink.exporters.errors import ExportError, ParityError
from vitshrink.exporters.export_job import ExportConfig, export
from vitshrink.exporters.graph_checks import (
    check_graph,
    check_weight_count,
    expected_weight_elements,
    weight_elements,
)
from vitshrink.exporters.int8 import Int8Recipe
from vitshrink.exporters.io_spec import INPUT_NAME, OUTPUT_NAME, IOSpec
from vitshrink.exporters.layout import EXPORT_JSON, FP16_ONNX_FILE, INT8_ONNX_FILE, ONNX_FILE
from vitshrink.exporters.onnx_export import MAX_OPSET, export_onnx
from vitshrink.exporters.provenance import sha256_file
from vitshrink.exporters.validate import DEFAULT_TOLERANCE, InputCase, onnx_runner, validate


def _linear_shapes(model: torch.nn.Module) -> Counter:
    """Shapes of the 2-D weights (Linear layers), dims sorted: exporters may store them transposed."""
    return Counter(tuple(sorted(p.shape)) for p in model.parameters() if p.ndim == 2)


def _onnx_linear_shapes(proto: onnx.ModelProto) -> Counter:
    return Counter(tuple(sorted(t.dims)) for t in proto.graph.initializer if len(t.dims) == 2)


@pytest.mark.parametrize(
    "dynamo, opset",
    [(False, 17), (False, MAX_OPSET[False]), (True, 17), (True, MAX_OPSET[True])],
    ids=["torchscript-17", "torchscript-newest", "dynamo-17", "dynamo-newest"],
)
def test_pruned_vit_exports_with_its_widths_and_dynamic_batch(tmp_path, dynamo, opset):
    loaded = tiny_pruned_vit()
    model = loaded.model
    assert [(b.num_heads, b.mlp_hidden) for b in loaded.spec.blocks] == PRUNED_WIDTHS
    io = IOSpec.from_model(model, loaded.data_config)
    path = tmp_path / ONNX_FILE

    export_onnx(model, io, path, dynamo=dynamo, opset=opset, simplify=True)

    stats = check_graph(path, io, opset)
    proto = onnx.load(str(path))
    assert [f.name for f in path.parent.iterdir()] == [ONNX_FILE]  # one file, no external data
    parameters = sum(p.numel() for p in model.parameters())
    assert stats.weight_elements == weight_elements(proto) == parameters  # as small as the pruned model
    assert _onnx_linear_shapes(proto) == _linear_shapes(model)  # every block kept its own widths
    assert stats.op_counts["LayerNormalization"] == 2 * len(PRUNED_WIDTHS) + 1
    run = onnx_runner(path)
    for batch in (1, 5):
        x = torch.randn(batch, *io.input_size, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = model(x)
        torch.testing.assert_close(torch.from_numpy(run(x.numpy())), expected, atol=1e-4, rtol=1e-4)


def test_static_batch_graph_has_fixed_shapes(tmp_path):
    loaded = tiny_pruned_vit()
    io = IOSpec.from_model(loaded.model, loaded.data_config, static_batch=4)
    path = tmp_path / ONNX_FILE

    export_onnx(loaded.model, io, path, dynamo=False, opset=17, simplify=True)

    stats = check_graph(path, io, 17)  # input [4, 3, 32, 32], output [4, 10]
    low, high = expected_weight_elements(loaded.model, static_batch=4)
    assert low <= stats.weight_elements <= high
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = loaded.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(onnx_runner(path)(x), expected, atol=1e-4)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        onnx_runner(path)(x[:2])


def test_weight_count_tolerates_merged_constants_but_catches_a_wider_graph(tmp_path):
    """An untrained timm ViT has identical LayerNorm weights and a zero head bias, which optimizers merge or drop."""
    torch.manual_seed(0)
    fresh = timm.create_model("vit_tiny_patch16_224", **MODEL_ARGS)
    io = IOSpec((3, 32, 32), 10)
    export_onnx(fresh.eval(), io, tmp_path / "fresh.onnx", dynamo=True, opset=17, simplify=True)
    stats = check_graph(tmp_path / "fresh.onnx", io, 17)
    parameters = sum(p.numel() for p in fresh.parameters())

    assert stats.weight_elements < parameters  # merged/dropped by the exporter's optimizer ...
    check_weight_count(
        "fresh.onnx", stats, expected_weight_elements(fresh, None), parameters
    )  # ... and accepted

    pruned = tiny_pruned_vit().model
    with pytest.raises(ExportError, match="is not the pruned model"):
        check_weight_count("fresh.onnx", stats, expected_weight_elements(pruned, None), parameters)


def test_export_writes_validated_onnx_and_sidecar(tmp_path):
    folder, loaded = tiny_artifact(tmp_path / "artifact")

    report = export(folder, ExportConfig())

    path = folder / ONNX_FILE
    sidecar = json.loads((folder / EXPORT_JSON).read_text())
    assert sidecar["exporter"] == "torchscript" and sidecar["opset"] == 17 and sidecar["simplified"]
    assert sidecar["io"]["inputs"] == {INPUT_NAME: {"shape": ["batch", 3, 32, 32], "dtype": "float32"}}
    assert sidecar["io"]["outputs"] == {OUTPUT_NAME: {"shape": ["batch", 10], "dtype": "float32"}}
    assert sidecar["files"][ONNX_FILE]["sha256"] == sha256_file(path)
    assert sidecar["files"][ONNX_FILE]["graph"]["weight_elements"] == sidecar["model"]["parameters"]
    assert sidecar["model"]["spec"] == loaded.spec.to_dict()
    assert sidecar["versions"]["onnxruntime"] == __import__("onnxruntime").__version__
    (validation,) = sidecar["validation"]
    assert validation["passed"] and validation["top1_agreement"] == 1.0
    assert [c["samples"] for c in validation["cases"]] == [1, 16]
    assert validation["max_abs_diff"] < 1e-5  # ORT vs eager FP32, measured ~1e-6
    assert report.validations[0].max_abs_diff == validation["max_abs_diff"]
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_broken_parity_raises_every_mismatch_and_writes_nothing(tmp_path, monkeypatch):
    """An exporter that writes a slightly wrong graph (here: a perturbed copy of the model) must be caught."""
    folder, _ = tiny_artifact(tmp_path / "artifact")
    real_export = export_onnx

    def export_perturbed(model, io, path, **options):
        with torch.no_grad():
            model.head.bias[3] += 0.01  # the model the graph is made from, not the reference
        real_export(model, io, path, **options)

    monkeypatch.setattr("vitshrink.exporters.export_job.export_onnx", export_perturbed)
    with pytest.raises(ParityError) as caught:
        export(folder, ExportConfig())

    assert len(caught.value.mismatches) == 2  # one per random batch, each with its numbers
    assert all("max abs diff 0.01," in m and "atol=0.0001" in m for m in caught.value.mismatches)
    assert "random batch 1:" in str(caught.value) and "random batch 16:" in str(caught.value)
    assert not (folder / ONNX_FILE).exists() and not (folder / EXPORT_JSON).exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_fp16_graph_keeps_fp32_io_and_matches(tmp_path):
    folder, _ = tiny_artifact(tmp_path / "artifact")

    report = export(folder, ExportConfig(target="onnx-fp16"))

    proto = onnx.load(str(folder / FP16_ONNX_FILE))
    weights = [t for t in proto.graph.initializer if len(t.dims) > 1]
    assert {t.data_type for t in weights} == {onnx.TensorProto.FLOAT16}
    assert Counter(n.op_type for n in proto.graph.node)["Cast"] == 2  # only at the input and the output
    assert "LayerNormalization" in {n.op_type for n in proto.graph.node}
    fp32, fp16 = report.validations
    assert fp16.precision == "fp16" and fp16.top1_agreement == 1.0
    assert (
        fp32.max_abs_diff < 1e-5 < fp16.max_abs_diff < DEFAULT_TOLERANCE["fp16"].atol
    )  # really computed in FP16
    files = json.loads((folder / EXPORT_JSON).read_text())["files"]
    assert files[FP16_ONNX_FILE]["graph"]["weight_elements"] == files[ONNX_FILE]["graph"]["weight_elements"]


def test_user_tolerance_applies_to_the_file_the_target_produces(tmp_path):
    folder, _ = tiny_artifact(tmp_path / "artifact")

    with pytest.raises(ParityError) as caught:
        export(folder, ExportConfig(target="onnx-fp16", atol=1e-6, rtol=0.0))

    assert caught.value.what == "model.fp16.onnx (ONNX Runtime)"  # the FP32 file passed at its default
    assert "atol=1e-06 + rtol=0" in str(caught.value)
    assert not (folder / ONNX_FILE).exists() and not (folder / FP16_ONNX_FILE).exists()


def test_dynamic_int8_graph_is_quantized_and_agrees_on_top1(tmp_path):
    folder, _ = tiny_artifact(tmp_path / "artifact")

    report = export(folder, ExportConfig(target="onnx-int8", int8=Int8Recipe(mode="dynamic")))

    proto = onnx.load(str(folder / INT8_ONNX_FILE))
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["MatMulInteger"] >= 4 * len(PRUNED_WIDTHS)  # qkv, proj, fc1, fc2 of every block
    assert onnx.TensorProto.INT8 in {t.data_type for t in proto.graph.initializer}
    int8 = report.validations[-1]
    assert int8.precision == "int8" and int8.tolerance.atol is None
    assert int8.top1_agreement >= DEFAULT_TOLERANCE["int8"].min_agreement
    assert int8.max_abs_diff > 1e-3  # quantized for real: far from the FP32 graph's ~1e-6


def test_int8_reports_accuracy_change_on_labelled_images(tmp_path):
    folder, loaded = tiny_artifact(tmp_path / "artifact")
    export(folder, ExportConfig(target="onnx-int8", int8=Int8Recipe(mode="dynamic")))
    images, labels = synthetic_images(128, seed=999)
    case = InputCase("synthetic (128 images)", images.numpy(), labels.numpy())
    with torch.no_grad():
        reference = loaded.model(images).numpy()

    report = validate(
        "int8", "int8", onnx_runner(folder / INT8_ONNX_FILE), [case], [reference], DEFAULT_TOLERANCE["int8"]
    )

    (result,) = report.cases
    assert result.reference_top1 == pytest.approx(float(np.mean(reference.argmax(1) == labels.numpy())))
    assert result.reference_top1 > 0.5  # the tiny model did learn the task, so accuracy means something
    assert abs(result.top1 - result.reference_top1) <= 1 - result.top1_agreement
    assert report.to_dict()["cases"][0]["top1"] == result.top1


def test_export_validates_on_real_images_when_a_dataset_is_given(tmp_path):
    """scikit-learn's bundled digits (no download); the model was not trained on them, only the plumbing is."""
    folder, _ = tiny_artifact(tmp_path / "artifact")

    report = export(folder, ExportConfig(target="onnx-int8", dataset="digits", limit=48))

    for validation in report.validations:
        images = validation.cases[-1]
        assert images.name == "digits eval (48 images)" and images.samples == 48
        assert images.reference_top1 is not None and images.top1 is not None
    assert "accuracy" in report.summary() and "on digits eval (48 images)" in report.summary()


def test_bad_inputs_raise_one_clear_error(tmp_path):
    folder, _ = tiny_artifact(tmp_path / "artifact")
    with pytest.raises(ExportError, match="not a folder"):
        export(tmp_path / "missing", ExportConfig())
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    with pytest.raises(VitShrinkError, match="neither a timm model folder"):
        export(tmp_path / "junk", ExportConfig())
    with pytest.raises(
        ExportError, match="unknown target 'tflite'; choose one of onnx, onnx-fp16, onnx-int8, trt"
    ):
        ExportConfig(target="tflite")
    with pytest.raises(ExportError, match="opset 16 is not supported .* use 17..20"):
        ExportConfig(opset=16)
    with pytest.raises(ExportError, match="opset 23 is not supported with the torchscript exporter"):
        ExportConfig(opset=23)
    with pytest.raises(ExportError, match="--require-engine applies to --target trt, not onnx"):
        ExportConfig(require_engine=True)
    with pytest.raises(ExportError, match="min <= opt <= max"):
        ExportConfig(target="trt", min_batch=8, max_batch=4)
    wrong_size = {"input_size": (3, 224, 224)}  # a data config that does not fit the 32x32 model
    with pytest.raises(ExportError, match="input size 224x224 but the model only accepts 32x32"):
        IOSpec.from_model(tiny_pruned_vit().model, wrong_size)
    assert not (folder / ONNX_FILE).exists()
