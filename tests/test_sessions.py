"""One runtime layer: export validation and bench load ONNX files through the same session code and options."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from test_bench_helpers import tiny_teacher

from vitshrink.benchmarks.model_files import onnx_file
from vitshrink.exporters.errors import SessionError
from vitshrink.exporters.runtime import sessions
from vitshrink.exporters.runtime.backends import BackendSpec, RuntimeOptions, Subject, build_runtime
from vitshrink.exporters.validate import onnx_runner


@pytest.fixture
def recorded_sessions(monkeypatch):
    """Every ONNX Runtime session built, with the options it was built with and who built it."""
    made = []
    real = ort.InferenceSession

    def recording(path, options=None, providers=None, **kw):
        import inspect

        callers = [f.filename for f in inspect.stack()[1:4]]
        made.append({"path": str(path), "options": options, "providers": providers, "callers": callers})
        return real(path, options, providers=providers, **kw)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    return made


def _settings(options: ort.SessionOptions) -> tuple:
    return (options.graph_optimization_level, options.execution_mode, options.inter_op_num_threads,
            options.get_session_config_entry("session.intra_op.allow_spinning"))


def test_validation_and_bench_build_sessions_the_same_way(tmp_path, recorded_sessions):
    loaded = tiny_teacher()
    path, origin = onnx_file(loaded, "fp32", tmp_path)  # made by the exporter, validated against PyTorch
    assert origin == "exported" and (tmp_path / "export.json").is_file()
    validated = list(recorded_sessions)
    runtime = build_runtime(BackendSpec("ort-cpu", "fp32"), Subject("student", loaded.input_size, onnx={"fp32": path}),
                            RuntimeOptions(threads=1))
    timed = recorded_sessions[len(validated):]
    assert len(timed) == 1 and timed[0]["options"].intra_op_num_threads == 1
    ours = [r for r in recorded_sessions if "site-packages" not in r["callers"][0]]  # not onnxslim's own
    assert len(ours) >= 2
    for record in ours:
        assert record["callers"][0] == sessions.__file__, f"a session built outside exporters/sessions.py: {record}"
        assert _settings(record["options"]) == _settings(timed[0]["options"])
        assert _settings(record["options"])[-1] == "0"  # no spin-waiting (see exporters/sessions.py)
        assert record["providers"] == ["CPUExecutionProvider"]
    x = np.random.default_rng(0).standard_normal((2, *loaded.input_size)).astype(np.float32)
    np.testing.assert_array_equal(runtime.predict(x), onnx_runner(path, threads=1)(x))  # same session, same logits


def test_a_file_that_is_not_onnx_is_one_clear_error(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(SessionError, match="ONNX Runtime cannot load .*model.onnx"):
        onnx_runner(bad)
