"""run_bench end to end on a tiny teacher/student pair: files, rows, metrics, memory probes, and the bench command."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from test_bench_helpers import tiny_pair

from vitshrink.benchmarks.bench_command import bench_command
from vitshrink.benchmarks.bench_job import BenchConfig, run_bench
from vitshrink.benchmarks.errors import BenchError, MeasureError, RuntimeUnavailableError
from vitshrink.benchmarks.memory import measure_memory
from vitshrink.benchmarks.model_files import onnx_file
from vitshrink.benchmarks.results import BENCH_JSON, BENCH_MD, BENCH_PNG, SCHEMA, read_bench_json
from vitshrink.compressor.core.flops import count_macs, count_params
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.exporters.runtime.timing import TimingPolicy

QUICK = TimingPolicy(warmup_iters=1, warmup_s=0.0, min_iters=3, min_time_s=0.0, max_time_s=5.0)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return tiny_pair(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def bench(pair, tmp_path_factory) -> tuple[dict, object]:
    out = tmp_path_factory.mktemp("bench")
    config = BenchConfig(student=str(pair[1]), backends=("torch-cpu", "ort-cpu"), batch_sizes=(1, 4), threads=1,
                         timing=QUICK, memory=False, dataset="digits", limit=40, eval_batch=16, out_dir=out,
                         progress=False)
    report = run_bench(config)
    return report.to_dict(), out


def test_writes_versioned_json_markdown_and_plot(bench):
    data, out = bench
    assert read_bench_json(out) == json.loads((out / BENCH_JSON).read_text())
    assert data["schema"] == SCHEMA
    assert (out / BENCH_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / BENCH_MD).read_text()
    assert "Speedup vs teacher" in md and "ort-cpu:fp32" in md and data["environment"]["fingerprint"] in md


def test_models_are_counted_and_the_recorded_teacher_is_used(bench, pair):
    data, _ = bench
    teacher, student = load_model(str(pair[0])).model, load_model(str(pair[1])).model
    models = data["models"]
    assert models["teacher"]["source"] == str(pair[0])  # found through the student's compression.json
    assert models["student"]["params"] == count_params(student)
    assert models["teacher"]["macs"] == count_macs(teacher)
    assert models["student"]["macs_fvcore"] == pytest.approx(models["student"]["macs"], rel=0.01)
    assert models["student"]["blocks"] == [{"heads": 2, "mlp": 128}] * 2
    assert models["student"]["files"]["model.onnx"]["origin"] == "exported"
    assert "model.safetensors" in models["student"]["files"]
    assert data["metrics"]["flops_ratio"] == pytest.approx(count_macs(teacher) / count_macs(student), rel=1e-5)


def test_latency_and_speedup_rows_cover_every_backend_and_batch(bench):
    data, _ = bench
    keys = {(r["backend"], r["batch"], r["model"]) for r in data["latency"]}
    assert keys == {(b, n, m) for b in ("torch-cpu:fp32", "ort-cpu:fp32") for n in (1, 4) for m in ("teacher", "student")}
    for row in data["latency"]:
        assert row["n"] >= 3 and 0 < row["p50_ms"] <= row["p99_ms"]
    for row in data["speedup"]:
        assert row["pairs"] >= 3 and row["ci_low"] <= row["ratio"] <= row["ci_high"]
        assert row["realised"] == pytest.approx(row["ratio"] / row["flops_ratio"], rel=1e-4)
        assert data["metrics"][f"speedup/{row['backend']}/b{row['batch']}"] == pytest.approx(row["ratio"], rel=1e-5)
    assert len(data["speedup"]) == 4


def test_accuracy_per_backend_agrees_with_pytorch(bench):
    data, _ = bench
    rows = {(r["model"], r["backend"]): r for r in data["accuracy"]}
    assert set(rows) == {(m, b) for m in ("teacher", "student") for b in ("torch-cpu:fp32", "ort-cpu:fp32")}
    ort = rows[("student", "ort-cpu:fp32")]
    assert ort["n"] == 40 and ort["agreement"] == 1.0 and ort["max_abs_diff"] < 1e-4
    assert ort["top1"] == rows[("student", "torch-cpu:fp32")]["top1"]
    metrics = data["metrics"]
    expected_drop = (rows[("teacher", "torch-cpu:fp32")]["top1"] - rows[("student", "torch-cpu:fp32")]["top1"]) * 100
    assert metrics["top1_drop"] == pytest.approx(expected_drop, abs=1e-4)
    assert metrics["agreement/ort-cpu:fp32"] == 1.0


def test_environment_and_skipped_backends_are_recorded(bench):
    data, _ = bench
    env = data["environment"]
    assert env["threads"] == 1 and env["versions"]["torch"] and env["cpu"]
    assert data["config"]["backends"] == ["torch-cpu", "ort-cpu"]
    ort = data["backends"]["ort-cpu:fp32"]["student"]
    assert ort["intra_op_threads"] == 1 and ort["providers"] == ["CPUExecutionProvider"] and ort["timer"] == "perf_counter"
    assert data["backends"]["torch-cpu:fp32"]["teacher"]["threads"] == 1
    assert any("memory not measured" in n for n in data["notes"])


def test_without_teacher_there_is_no_speedup(pair):
    report = run_bench(BenchConfig(student=str(pair[1]), auto_teacher=False, backends=("ort-cpu",),
                                   batch_sizes=(2,), threads=1, timing=QUICK, fvcore=False,
                                   progress=False)).to_dict()
    assert set(report["models"]) == {"student"}
    [memory] = report["memory"]  # one probe process: the student on ort-cpu, at the largest batch
    assert (memory["model"], memory["backend"], memory["batch"]) == ("student", "ort-cpu:fp32", 2)
    assert memory["error"] is None and memory["rss_peak_mb"] >= memory["rss_baseline_mb"] > 0
    assert report["speedup"] == [] and [r["model"] for r in report["latency"]] == ["student"]
    assert any("no teacher" in n for n in report["notes"]) and any("no dataset" in n for n in report["notes"])


def test_teacher_with_another_input_size_is_refused(pair, tmp_path):
    with pytest.raises(BenchError, match="same images"):
        run_bench(BenchConfig(student=str(pair[1]), teacher="vit_tiny_patch16_224", other_teacher=True,
                              backends=("torch-cpu",), timing=QUICK, memory=False, fvcore=False, progress=False))


def test_unavailable_backend_is_refused_before_any_work(pair):
    with pytest.raises(RuntimeUnavailableError, match="cannot run here"):
        run_bench(BenchConfig(student=str(pair[1]), backends=("torch-cuda",) if not _cuda() else ("ort-cuda",),
                              timing=QUICK, memory=False, progress=False))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_config_validation():
    with pytest.raises(MeasureError, match="choose from"):  # the runtime layer names the backends
        BenchConfig(student="x", backends=("ort",))
    with pytest.raises(BenchError, match="batch sizes"):
        BenchConfig(student="x", batch_sizes=(0,))


def test_memory_probe_runs_in_its_own_process(pair, tmp_path):
    path, _ = onnx_file(load_model(str(pair[1])), "fp32", tmp_path)
    request = {"runtime": "ort-cpu", "precision": "fp32", "role": "student", "input_size": [3, 32, 32],
               "batch": 4, "iters": 2, "threads": 1, "onnx": str(path)}
    result = measure_memory(request)
    assert result.error is None
    # a fresh process: far below this test process (which holds torch), and the model adds something
    assert 0 < result.rss_baseline_mb <= result.rss_peak_mb < 400
    broken = measure_memory({**request, "onnx": str(pair[1] / "missing.onnx")})
    assert broken.rss_peak_mb is None and "fp32 ONNX file" in broken.error


def test_torch_memory_probe_loads_the_model(pair):
    result = measure_memory({"runtime": "torch-cpu", "precision": "fp32", "role": "teacher", "input_size": [3, 32, 32],
                             "batch": 4, "iters": 2, "threads": 1, "source": str(pair[0])})
    assert result.error is None and result.rss_added_mb >= 0 and result.rss_peak_mb > 50


def test_bench_command_with_a_failing_gate_exits_1(pair, tmp_path):
    gates = tmp_path / "gates.toml"
    gates.write_text('[[gate]]\nmetric = "speedup/ort-cpu:fp32/b1"\nmin = 100.0\n'
                     '[[gate]]\nmetric = "flops_reduction"\nmin = 0.1\n')
    args = [str(pair[1]), "--backends", "ort-cpu", "--batch-sizes", "1", "--threads", "1", "--warmup", "1",
            "--warmup-time", "0", "--min-iters", "3", "--min-time", "0", "--no-memory", "--no-fvcore", "--no-plot",
            "--no-progress", "--out", str(tmp_path / "out"), "--gate", str(gates)]
    result = CliRunner().invoke(bench_command, args)
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "speedup/ort-cpu:fp32/b1" in result.output and "1 of 2 gates failed" in result.output
    assert (tmp_path / "out" / BENCH_JSON).is_file()  # results are written before the gates are checked


def test_bench_command_turns_errors_into_one_line(tmp_path):
    result = CliRunner().invoke(bench_command, [str(tmp_path / "nothing-here"), "--no-progress", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.startswith("Error:") and "Traceback" not in result.output
    result = CliRunner().invoke(bench_command, ["x", "--backends", "ort-cpu:int4"])
    assert result.exit_code == 2 and "int4" in result.output
