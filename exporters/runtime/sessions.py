"""The one place where an exported file becomes something that runs: ONNX Runtime sessions and TensorRT engines.

Export validation (`exporters/validate.py`, `exporters/tensorrt_build.py`), `bench` (`benchmarks/runtimes.py`)
and latency profiling all load files here, so a file is validated with the session options it is
timed with, and read through the same input and output names.

TensorRT needs the `tensorrt` package and a CUDA GPU, neither of which exists on the machines
vitshrink is developed on: `TensorRTEngine` is exercised with a fake `tensorrt` module in the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitshrink.exporters.errors import SessionError
from vitshrink.exporters.layout import INPUT_NAME, OUTPUT_NAME

CPU_PROVIDERS = ("CPUExecutionProvider",)


def ort_session(path: Path, *, threads: int | None = None, providers: Sequence = CPU_PROVIDERS):
    """An ONNX Runtime session as it would be deployed: every graph optimization, sequential execution,
    `threads` intra-op threads (None: ONNX Runtime's default, one per core), and no spin-waiting.

    ONNX Runtime's pool threads spin after each parallel section by default. Measured on the 2-core
    development machine (ViT-S/16, batch 1, 2 threads): 98.7 ms a call with spinning and 74.1 ms
    without, and 132.6 ms against 71.6 ms when two sessions alternate as `bench` alternates teacher and
    student (an idle session's spinning threads take the cores from the running one). Spinning only pays
    on cores the model has to itself, so it is off.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: fp16/int8 graphs log harmless fallback warnings
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as e:  # ORT raises its own Fail/InvalidGraph/NoSuchFile types
        raise SessionError(f"ONNX Runtime cannot load {path}: {type(e).__name__}: {e}") from e


def io_names(session, path: Path) -> tuple[str, str]:
    """The graph's input and output names: one input (the image batch), the logits first among outputs."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise SessionError(f"{path} has {len(inputs)} inputs ({[i.name for i in inputs]}); expected one image batch")
    return inputs[0].name, outputs[0].name


def ort_predict(session, path: Path):
    """(B, C, H, W) float32 -> (B, classes) float32 logits through `session`."""
    in_name, out_name = io_names(session, path)

    def run(x: np.ndarray) -> np.ndarray:
        return session.run([out_name], {in_name: np.ascontiguousarray(x, dtype=np.float32)})[0].astype(np.float32)

    return run


@dataclass
class TensorRTEngine:
    """A deserialized engine with one execution context on one GPU (TensorRT 10 name-based tensor API)."""

    path: Path
    trt: Any  # the tensorrt module
    engine: Any
    context: Any
    device: Any  # torch.device
    out_dtype: Any  # torch dtype of the logits

    @classmethod
    def load(cls, path: Path, device_id: int = 0) -> TensorRTEngine:
        import torch

        from vitshrink.exporters.runtime.tensorrt import import_tensorrt

        trt = import_tensorrt()
        device = torch.device("cuda", device_id)
        torch.cuda.set_device(device)
        engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(Path(path).read_bytes())
        if engine is None:
            raise SessionError(f"TensorRT cannot load {path} (built for another GPU or TensorRT version?)")
        out_dtype = torch.float16 if engine.get_tensor_dtype(OUTPUT_NAME) == trt.float16 else torch.float32
        return cls(Path(path), trt, engine, engine.create_execution_context(), device, out_dtype)

    @property
    def batch_range(self) -> tuple[int, int]:
        """(min, max) batch of the engine's first optimization profile."""
        lo, _, hi = self.engine.get_tensor_profile_shape(INPUT_NAME, 0)
        return int(lo[0]), int(hi[0])

    def output_for(self, x):
        """An empty logits tensor on the GPU for the input batch `x` (sets the context's input shape)."""
        import torch

        self.context.set_input_shape(INPUT_NAME, tuple(x.shape))
        return torch.empty(tuple(self.context.get_tensor_shape(OUTPUT_NAME)), device=self.device, dtype=self.out_dtype)

    def execute(self, x, y) -> None:
        """Enqueue one inference of GPU tensor `x` into GPU tensor `y` on the current stream (no wait)."""
        import torch

        self.context.set_input_shape(INPUT_NAME, tuple(x.shape))
        self.context.set_tensor_address(INPUT_NAME, x.data_ptr())
        self.context.set_tensor_address(OUTPUT_NAME, y.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise SessionError(f"TensorRT failed to run {self.path.name} on a batch of {x.shape[0]}")

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Host (B, C, H, W) float32 -> host (B, classes) float32 logits; waits for the GPU."""
        import torch

        inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        out = self.output_for(inputs)
        self.execute(inputs, out)
        torch.cuda.current_stream(self.device).synchronize()
        return out.float().cpu().numpy()
