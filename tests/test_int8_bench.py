"""INT8 in bench and profile: the INT8 student timed against the FP32 teacher and student in the same rounds,
accuracy per backend with its INT8 drop, and INT8 latency tables."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from test_bench_helpers import tiny_pair

from vitshrink.benchmarks.bench_job import BenchConfig, run_bench
from vitshrink.benchmarks.errors import BenchError
from vitshrink.benchmarks.metrics import derive_metrics
from vitshrink.benchmarks.model_files import onnx_file
from vitshrink.cli import main
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.exporters.int8 import op_groups
from vitshrink.exporters.runtime import latency_profile
from vitshrink.exporters.runtime.latency_profile import (
    AttentionPart,
    parse_target,
    table_key,
    target_precision,
)
from vitshrink.exporters.runtime.timing import TimingPolicy

QUICK = TimingPolicy(warmup_iters=1, warmup_s=0.0, min_iters=3, min_time_s=0.0, max_time_s=5.0)


@pytest.fixture(scope="module")
def int8_bench(tmp_path_factory) -> dict:
    pair = tiny_pair(tmp_path_factory.mktemp("models"))
    config = BenchConfig(student=str(pair[1]), backends=("ort-cpu:int8",), batch_sizes=(1, 4), threads=1,
                         timing=QUICK, memory=False, dataset="digits", limit=40, eval_batch=16, progress=False)
    return run_bench(config).to_dict()


def test_int8_student_is_timed_against_the_fp32_teacher_and_student(int8_bench):
    rows = {(r["against"], r["batch"]): r for r in int8_bench["precision_speedup"]}
    assert set(rows) == {(who, b) for who in ("teacher fp32", "student fp32") for b in (1, 4)}
    assert all(r["backend"] == "ort-cpu:int8" and r["ratio"] > 0 and r["pairs"] >= 3 for r in rows.values())
    metrics = int8_bench["metrics"]
    for b in (1, 4):
        assert metrics[f"speedup_vs_fp32_teacher/ort-cpu:int8/b{b}"] == pytest.approx(rows[("teacher fp32", b)]["ratio"])
        assert metrics[f"speedup_vs_fp32/ort-cpu:int8/b{b}"] == pytest.approx(rows[("student fp32", b)]["ratio"])
        assert f"speedup/ort-cpu:int8/b{b}" in metrics  # INT8 teacher against INT8 student, as before


def test_int8_accuracy_is_reported_per_backend_with_its_drop(int8_bench):
    top1 = {(r["model"], r["backend"]): r["top1"] for r in int8_bench["accuracy"]}
    assert {("student", "ort-cpu:int8"), ("teacher", "ort-cpu:int8"), ("student", "torch-cpu:fp32")} <= set(top1)
    drop = (top1[("student", "torch-cpu:fp32")] - top1[("student", "ort-cpu:int8")]) * 100
    assert int8_bench["metrics"]["int8_drop/ort-cpu:int8"] == pytest.approx(drop, abs=1e-4)


def test_int8_metrics_derive_from_the_rows_alone():
    bench = {
        "precision_speedup": [{"backend": "ort-cpu:int8", "batch": 8, "against": "teacher fp32", "ratio": 2.0},
                              {"backend": "ort-cpu:int8", "batch": 8, "against": "student fp32", "ratio": 1.5}],
        "accuracy": [{"model": "student", "backend": "torch-cpu:fp32", "top1": 0.70, "top5": 0.9, "agreement": None},
                     {"model": "student", "backend": "ort-cpu:int8", "top1": 0.69, "top5": 0.9, "agreement": 0.98,
                      "max_abs_diff": 0.1}],
    }
    metrics = derive_metrics(bench)
    assert metrics["speedup_vs_fp32_teacher/ort-cpu:int8/b8"] == 2.0
    assert metrics["speedup_vs_fp32/ort-cpu:int8/b8"] == 1.5
    assert metrics["int8_drop/ort-cpu:int8"] == pytest.approx(1.0)


def test_bench_without_an_int8_file_or_a_dataset_says_what_to_do(tmp_path):
    loaded = load_model("vit_tiny_patch16_224", model_args={"img_size": 16, "patch_size": 4, "depth": 1})
    with pytest.raises(BenchError, match="has no model.int8.onnx: export it .* or pass --dataset"):
        onnx_file(loaded, "int8", tmp_path)


def test_int8_is_a_latency_target_with_its_precision_in_the_table_key():
    model = load_model("vit_tiny_patch16_224", model_args={"img_size": 16, "patch_size": 4, "depth": 1}).model
    assert parse_target("ort-cpu:int8") == "ort-cpu:int8" and target_precision("ort-cpu:int8") == "int8"
    assert table_key(model, "ort-cpu:int8", 1, 1).precision == "int8"
    assert table_key(model, "ort-cpu", 1, 1).precision == "fp32"


def test_profiled_parts_are_quantized_like_an_export(tmp_path):
    model = load_model("vit_tiny_patch16_224", model_args={"img_size": 16, "patch_size": 4, "depth": 1}).model.eval()
    example = torch.randn(2, 17, model.embed_dim)
    path = tmp_path / "part.onnx"
    torch.onnx.export(AttentionPart(model.blocks[0]), (example,), str(path), input_names=["input"],
                      output_names=["logits"], opset_version=17, dynamo=False)

    quantized = latency_profile._int8(path, example, whole_model=False)

    import onnx

    graph = onnx.load(str(quantized)).graph
    dq = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    linear = op_groups(path)["linear"] + op_groups(path)["head"]
    assert len(linear) == 2  # qkv and proj
    assert all(all(i in dq for i in n.input[:2]) for n in graph.node if n.name in linear)
    assert not any(n.input[0] in dq for n in graph.node if n.name in op_groups(path)["attention"])


@pytest.mark.parametrize("args, message", [
    (["--target", "torch-cpu", "--precision", "int8"], "INT8 tables are measured on ort-cpu"),
    (["--target", "tensorrt:fp16", "--precision", "int8"], "INT8 tables are measured on ort-cpu"),
])
def test_profile_precision_int8_is_for_ort_cpu_only(tmp_path, args, message):
    result = CliRunner().invoke(main, ["profile", "--model", "vit_tiny_patch16_224", *args, "--out",
                                       str(tmp_path / "t.json")])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "t.json").exists()
