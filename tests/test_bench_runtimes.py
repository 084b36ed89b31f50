"""The runtime registry and the CPU backends on a tiny ViT; GPU backends are checked where a GPU exists."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from test_bench_helpers import tiny_teacher

from vitshrink.benchmarks.model_files import onnx_file
from vitshrink.exporters.runtime.backends import (
    RUNTIMES,
    BackendSpec,
    RuntimeOptions,
    Subject,
    build_runtime,
    host_input,
)
from vitshrink.exporters.runtime.errors import MeasureError, RuntimeUnavailableError


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(MeasureError) as e:
        BackendSpec.parse("onnxruntime")
    for name in ("torch-cpu", "torch-cuda", "ort-cpu", "ort-cuda", "tensorrt"):
        assert name in str(e.value)


def test_backend_precision_is_checked():
    assert BackendSpec.parse("ort-cpu:int8") == BackendSpec("ort-cpu", "int8")
    assert BackendSpec.parse("tensorrt").precision is None  # the engine's own precision, resolved later
    with pytest.raises(MeasureError, match="fp32"):
        BackendSpec.parse("torch-cpu:int8")


@pytest.fixture(scope="module")
def tiny_subject(tmp_path_factory) -> Subject:
    loaded = tiny_teacher()
    work = tmp_path_factory.mktemp("onnx")
    onnx = {p: onnx_file(loaded, p, work, "digits")[0] for p in ("fp32", "int8")}
    return Subject("student", loaded.input_size, loaded.model, onnx=onnx)


def test_torch_and_ort_cpu_compute_the_same_logits(tiny_subject):
    options = RuntimeOptions(threads=1)
    torch_rt = build_runtime(BackendSpec("torch-cpu", "fp32"), tiny_subject, options)
    ort_rt = build_runtime(BackendSpec("ort-cpu", "fp32"), tiny_subject, options)
    x = host_input(3, tiny_subject.input_size, seed=7)
    with torch.no_grad():
        expected = tiny_subject.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(torch_rt.predict(x), expected, atol=1e-6)
    np.testing.assert_allclose(ort_rt.predict(x), expected, atol=1e-4)
    assert ort_rt.info["intra_op_threads"] == 1  # stated, not ORT's default
    for rt in (torch_rt, ort_rt):
        rt.run(1)
        rt.run(4)  # inputs are prepared per batch size
        assert rt.unsupported(64) is None


def test_ort_int8_runs_the_quantized_graph(tiny_subject):
    rt = build_runtime(BackendSpec("ort-cpu", "int8"), tiny_subject, RuntimeOptions(threads=1))
    out = rt.predict(host_input(2, tiny_subject.input_size))
    assert out.shape == (2, 10) and np.isfinite(out).all()
    assert rt.info["file"].endswith("model.int8.onnx")


def test_ort_without_its_onnx_file_says_which_is_missing(tiny_subject):
    subject = Subject("teacher", tiny_subject.input_size, tiny_subject.model, onnx={})
    with pytest.raises(MeasureError, match="fp16 ONNX file of the teacher"):
        build_runtime(BackendSpec("ort-cpu", "fp16"), subject, RuntimeOptions(threads=1))


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_tensorrt_unavailable_says_how_to_get_it(tiny_subject):
    with pytest.raises(RuntimeUnavailableError, match="tensorrt"):
        build_runtime(BackendSpec("tensorrt", "fp16"), tiny_subject, RuntimeOptions(threads=1))
    assert "JetPack" in RUNTIMES["tensorrt"].check()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_cuda_backends_unavailable_without_a_gpu(tiny_subject):
    with pytest.raises(RuntimeUnavailableError, match="CUDA"):
        build_runtime(BackendSpec("torch-cuda", "fp32"), tiny_subject, RuntimeOptions(threads=1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_cuda_times_with_cuda_events(tiny_subject):
    rt = build_runtime(BackendSpec("torch-cuda", "fp32"), tiny_subject, RuntimeOptions(threads=1))
    assert rt.timer.name == "cuda_events"
    assert rt.timer(lambda: rt.run(8)) > 0
    x = host_input(2, tiny_subject.input_size)
    with torch.no_grad():
        expected = tiny_subject.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(rt.predict(x), expected, atol=1e-4)
