"""TensorRT target: trtexec command, build_engine.sh, and the Python builder's orchestration.

TensorRT cannot be installed on the machines these tests run on (its PyPI wheels are stubs that
download from NVIDIA's index), so no test here builds or runs a real engine except
`test_real_engine_matches_pytorch`, which is skipped without tensorrt and a GPU.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_export_helpers import tiny_artifact

from tests.fake_tensorrt import fake_tensorrt
from vitshrink.exporters import tensorrt_build
from vitshrink.exporters.errors import TensorRTUnavailableError
from vitshrink.exporters.export_job import ExportConfig, export
from vitshrink.exporters.io_spec import IOSpec
from vitshrink.exporters.layout import (
    BUILD_SCRIPT,
    ENGINE_JSON,
    EXPORT_JSON,
    FP16_ONNX_FILE,
    ONNX_FILE,
    TIMING_CACHE,
)
from vitshrink.exporters.runtime.tensorrt import import_tensorrt
from vitshrink.exporters.trtexec import EngineProfile, build_script, trtexec_args
from vitshrink.exporters.validate import onnx_runner

IO = IOSpec((3, 32, 32), 10)
PROFILE = EngineProfile(1, 4, 16)


@pytest.fixture
def no_tensorrt(monkeypatch):
    """Make `import tensorrt` fail even where it is installed."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


def test_trtexec_args_for_tensorrt_10_fp16():
    assert trtexec_args(IO, PROFILE, "fp16", 10, workspace_mb=512) == [
        "--onnx=model.onnx",
        "--saveEngine=model.fp16.engine",
        "--minShapes=input:1x3x32x32",
        "--optShapes=input:4x3x32x32",
        "--maxShapes=input:16x3x32x32",
        "--fp16",
        "--memPoolSize=workspace:512M",
        "--timingCacheFile=timing.cache",
    ]


def test_trtexec_args_for_tensorrt_11_use_the_fp16_graph_strongly_typed():
    args = trtexec_args(IO, PROFILE, "fp16", 11, workspace_mb=512)
    assert args[:2] == ["--onnx=model.fp16.onnx", "--saveEngine=model.fp16.engine"]
    assert "--stronglyTyped" in args and "--fp16" not in args


def test_trtexec_args_for_fp32_and_static_batch():
    static = IOSpec((3, 32, 32), 10, static_batch=8)
    args = trtexec_args(static, EngineProfile.for_io(static, 1, 1, 16), "fp32", 10, workspace_mb=256)
    assert args == [
        "--onnx=model.onnx",
        "--saveEngine=model.fp32.engine",
        "--memPoolSize=workspace:256M",
        "--timingCacheFile=timing.cache",
    ]


FAKE_TRTEXEC = """#!/usr/bin/env bash
# stands in for trtexec: prints the version banner, records the build arguments
if [ "$1" = "--version" ]; then
  echo "&&&& RUNNING TensorRT.trtexec [TensorRT v$FAKE_TRT_CODE] [b17] # trtexec --version"
  exit 1  # real trtexec may exit non-zero here; the banner is what counts
fi
echo "$@" > "$FAKE_TRT_CALLS"
"""


@pytest.mark.parametrize(
    "banner_code, argument, expected",
    [
        ("100300", None, "--onnx=model.onnx --saveEngine=model.fp16.engine"),  # JetPack 6: TensorRT 10.3.0
        ("110400", None, "--onnx=model.fp16.onnx --saveEngine=model.fp16.engine"),  # TensorRT 11.4.0
        ("8602", None, "--onnx=model.onnx --saveEngine=model.fp16.engine"),  # TensorRT 8.6.2
        ("100300", "11", "--onnx=model.fp16.onnx --saveEngine=model.fp16.engine"),  # the argument wins
    ],
)
def test_build_script_is_valid_bash_and_picks_the_tensorrt_generation(
    tmp_path, banner_code, argument, expected
):
    """Runs the real script with a fake `trtexec` (a shell script) to test its version detection."""
    script = tmp_path / BUILD_SCRIPT
    script.write_text(build_script(IO, PROFILE, "fp16", 1024, BUILD_SCRIPT))
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    fake = tmp_path / "bin" / "trtexec"
    fake.parent.mkdir()
    fake.write_text(FAKE_TRTEXEC)
    fake.chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = {
        "PATH": "/usr/bin:/bin",
        "TRTEXEC": str(fake),
        "FAKE_TRT_CODE": banner_code,
        "FAKE_TRT_CALLS": str(calls),
    }

    done = subprocess.run(
        ["bash", str(script), *([argument] if argument else [])], env=env, capture_output=True
    )

    assert done.returncode == 0, done.stderr.decode()
    assert calls.read_text().startswith(expected)
    assert ("--stronglyTyped" in calls.read_text()) == ("fp16.onnx" in expected)


def test_build_script_stops_when_trtexec_is_missing(tmp_path):
    script = tmp_path / BUILD_SCRIPT
    script.write_text(build_script(IO, PROFILE, "fp16", 1024, BUILD_SCRIPT))
    env = {"PATH": "/usr/bin:/bin", "TRTEXEC": str(tmp_path / "nowhere" / "trtexec")}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True)
    assert done.returncode == 1 and b"trtexec not found" in done.stderr


def test_import_tensorrt_says_how_to_install(no_tensorrt):
    with pytest.raises(TensorRTUnavailableError, match="JetPack .* `pip install tensorrt`"):
        import_tensorrt()


def test_trt_target_without_tensorrt_writes_onnx_script_and_says_no_engine(tmp_path, no_tensorrt):
    folder, _ = tiny_artifact(tmp_path / "artifact")

    report = export(folder, ExportConfig(target="trt", precision="fp16", max_batch=8))

    engine = json.loads((folder / ENGINE_JSON).read_text())
    assert engine["built"] is False and "tensorrt Python package is not installed" in engine["reason"]
    assert engine["profile"] == {
        "input": "input",
        "min": [1, 3, 32, 32],
        "opt": [1, 3, 32, 32],
        "max": [8, 3, 32, 32],
    }
    assert engine["trtexec"]["tensorrt10"].startswith(
        "trtexec --onnx=model.onnx --saveEngine=model.fp16.engine"
    )
    assert json.loads((folder / EXPORT_JSON).read_text())["tensorrt"] == {
        k: v for k, v in engine.items() if k not in ("format_version", "versions")
    }
    assert (folder / ONNX_FILE).is_file() and (folder / FP16_ONNX_FILE).is_file()
    assert (folder / BUILD_SCRIPT).stat().st_mode & 0o111  # executable
    assert not list(folder.glob("*.engine")) and not report.engine_built
    assert (
        "NO engine was built here" in report.summary() and engine["trtexec"]["tensorrt11"] in report.summary()
    )


def test_require_engine_fails_but_keeps_the_validated_onnx(tmp_path, no_tensorrt):
    folder, _ = tiny_artifact(tmp_path / "artifact")
    with pytest.raises(
        TensorRTUnavailableError, match="no TensorRT engine was built.*build_engine.sh were written"
    ):
        export(folder, ExportConfig(target="trt", require_engine=True))
    assert (folder / ONNX_FILE).is_file() and (folder / BUILD_SCRIPT).is_file()


@pytest.mark.parametrize("version", ["10.3.0", "11.4.0"])
def test_python_builder_orchestration_with_a_fake_tensorrt(tmp_path, monkeypatch, version):
    """FAKE TensorRT: tests only what vitshrink asks the builder for and what it writes.

    The `tensorrt` module, the GPU query and the engine runner are replaced by stand-ins (the
    "engine" is run by ONNX Runtime on the ONNX file it was built from). Nothing here shows that
    a real TensorRT parses the graph or that a real engine matches PyTorch.
    """
    calls: dict = {}
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version, calls))
    monkeypatch.setattr(tensorrt_build, "cuda_device", lambda: ("Fake Orin", "8.7"))
    monkeypatch.setattr(
        tensorrt_build, "engine_runner", lambda path: onnx_runner(path.parent / calls["parsed"])
    )
    folder, _ = tiny_artifact(tmp_path / "artifact")
    config = ExportConfig(
        target="trt", precision="fp16", min_batch=1, opt_batch=2, max_batch=8, workspace_mb=64
    )

    first = export(folder, config)
    second = export(folder, config)

    tensorrt10 = version.startswith("10.")
    assert calls["parsed"] == (ONNX_FILE if tensorrt10 else FP16_ONNX_FILE)
    assert calls["flags"] == (["FP16"] if tensorrt10 else [])
    assert calls["network_flags"] == (0 if tensorrt10 else 1 << 5)
    assert (
        calls["profile"] == ("input", (1, 3, 32, 32), (2, 3, 32, 32), (8, 3, 32, 32))
        and calls["profiles"] == 1
    )
    assert calls["pool"] == ("WORKSPACE", 64 << 20)
    assert (folder / "model.fp16.engine").read_bytes() == b"fake-engine-plan"
    assert (folder / TIMING_CACHE).read_bytes() == b"fake-timing-cache"
    engine = json.loads((folder / ENGINE_JSON).read_text())
    assert engine["built"] and engine["tensorrt_version"] == version and engine["gpu"] == "Fake Orin"
    assert engine["compute_capability"] == "8.7" and engine["strongly_typed"] == (not tensorrt10)
    assert not first.tensorrt["timing_cache_reused"] and second.tensorrt["timing_cache_reused"]
    assert second.validations[-1].what == "model.fp16.engine (TensorRT)"
    assert [c.samples for c in second.validations[-1].cases] == [1, 8]


@pytest.mark.gpu
def test_real_engine_matches_pytorch(tmp_path):
    """Builds and runs a real engine; needs the tensorrt package and a CUDA GPU (skipped otherwise)."""
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    folder, _ = tiny_artifact(tmp_path / "artifact")

    report = export(folder, ExportConfig(target="trt", precision="fp16", require_engine=True))

    assert report.engine_built and report.validations[-1].top1_agreement >= 0.98
