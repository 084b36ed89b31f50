"""The backends a model is timed on: a registry of builders (a dict and a decorator).

Each builder turns a PyTorch model, an ONNX file or a TensorRT engine into a `Runtime`: a
`run(batch)` call on inputs prepared once per batch size (on the device, for GPU backends) and a
`predict(x)` that returns logits for accuracy. torch, onnxruntime and tensorrt are imported inside
the builders, so the memory probe of an ONNX Runtime backend does not pay for torch.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitshrink.exporters.runtime.errors import MeasureError, RuntimeUnavailableError
from vitshrink.exporters.runtime.sessions import TensorRTEngine, io_names, ort_predict, ort_session
from vitshrink.exporters.runtime.timing import Timer

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class BackendSpec:
    """A runtime and a precision, written `ort-cpu:int8`; precision None = the runtime's default."""

    runtime: str
    precision: str | None = None

    @property
    def key(self) -> str:
        return f"{self.runtime}:{self.precision}" if self.precision else self.runtime

    @classmethod
    def parse(cls, text: str) -> BackendSpec:
        name, _, precision = text.strip().partition(":")
        entry = get_runtime(name)
        if precision and precision not in entry.precisions:
            raise MeasureError(
                f"backend {text!r}: {name} runs {', '.join(entry.precisions)}, not {precision!r}"
            )
        return cls(name, precision or None)


@dataclass(frozen=True)
class Subject:
    """One model (teacher or student) in every form a runtime may need."""

    role: str  # "teacher" | "student"
    input_size: tuple[int, int, int]  # (C, H, W)
    model: Any = None  # torch nn.Module in eval mode on the CPU (torch backends)
    onnx: Mapping[str, Path] = field(default_factory=dict)  # precision -> ONNX file (ONNX Runtime)
    engines: Mapping[str, Path] = field(default_factory=dict)  # precision -> TensorRT engine


@dataclass(frozen=True)
class RuntimeOptions:
    threads: int  # CPU threads: torch.set_num_threads / ORT intra_op_num_threads
    device_id: int = 0  # CUDA device
    seed: int = 0  # of the random timing inputs


@dataclass
class Runtime:
    """A model loaded on a backend, ready to be timed."""

    backend: BackendSpec  # with the precision resolved
    device: str  # "cpu" | "cuda"
    run: Callable[[int], None]  # one inference on a prepared (batch, C, H, W) input; returns when done
    predict: Callable[[np.ndarray], np.ndarray]  # host (B, C, H, W) float32 -> (B, classes) logits
    timer: Timer
    info: dict  # what was run and how: file, threads, providers, ...
    batch_range: tuple[int, int] | None = None  # (min, max) batch an engine profile accepts

    def unsupported(self, batch: int) -> str | None:
        """Why this runtime cannot run `batch`, or None."""
        if self.batch_range and not self.batch_range[0] <= batch <= self.batch_range[1]:
            lo, hi = self.batch_range
            return f"the engine's profile accepts batch {lo}..{hi}; rebuild it with --max-batch {batch}"
        return None


Builder = Callable[[Subject, str, RuntimeOptions], Runtime]


@dataclass(frozen=True)
class RuntimeEntry:
    name: str
    device: str  # "cpu" | "cuda"
    needs: str  # "model" | "onnx" | "engine"
    precisions: tuple[str, ...]
    build: Builder  # (subject, precision, options) -> Runtime
    check: Callable[[], str | None]  # why it cannot run on this machine, or None


RUNTIMES: dict[str, RuntimeEntry] = {}


def register(name: str, *, device: str, needs: str, precisions: tuple[str, ...], check: Callable[[], str | None]):
    def wrap(build: Builder) -> Builder:
        RUNTIMES[name] = RuntimeEntry(name, device, needs, precisions, build, check)
        return build

    return wrap


def get_runtime(name: str) -> RuntimeEntry:
    if name not in RUNTIMES:
        raise MeasureError(f"unknown backend {name!r}; choose from {', '.join(RUNTIMES)} (add :fp16/:int8 for a precision)")
    return RUNTIMES[name]


def build_runtime(backend: BackendSpec, subject: Subject, options: RuntimeOptions) -> Runtime:
    """Check, then build: raises RuntimeUnavailableError saying what is missing."""
    entry = get_runtime(backend.runtime)
    reason = entry.check()
    if reason:
        raise RuntimeUnavailableError(f"{backend.key} cannot run here: {reason}")
    precision = backend.precision or default_precision(entry, subject)
    return entry.build(subject, precision, options)


def default_precision(entry: RuntimeEntry, subject: Subject) -> str:
    """fp32, except for an engine: the precision of the engine that exists (fp16 first)."""
    if entry.needs == "engine":
        return next((p for p in ("fp16", "fp32", "int8") if p in subject.engines), "fp16")
    return "fp32"


def host_input(batch: int, input_size: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Standard-normal images (the scale of normalised inputs), (batch, C, H, W) float32."""
    return np.random.default_rng(seed).standard_normal((batch, *input_size), dtype=np.float32)


def _cached(make: Callable[[int], Any]) -> Callable[[int], Any]:
    cache: dict[int, Any] = {}
    return lambda batch: cache[batch] if batch in cache else cache.setdefault(batch, make(batch))


class CudaEventTimer(Timer):
    """Seconds between two CUDA events on the current stream around the call (the GPU's own clock)."""

    name = "cuda_events"

    def __init__(self) -> None:
        import torch

        self._torch = torch

    def __call__(self, fn: Callable[[], None]) -> float:
        start = self._torch.cuda.Event(enable_timing=True)
        end = self._torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3


# ---------------------------------------------------------------- availability checks


def _no_check() -> str | None:
    return None


def _check_cuda() -> str | None:
    import torch

    return None if torch.cuda.is_available() else "no CUDA GPU is visible to PyTorch (torch.cuda.is_available() is False)"


def _check_ort() -> str | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed (pip install onnxruntime)"
    return None


def _check_ort_cuda() -> str | None:
    reason = _check_ort()
    if reason:
        return reason
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (
            f"this onnxruntime has no CUDAExecutionProvider (it has {', '.join(ort.get_available_providers())}); "
            "install onnxruntime-gpu on a machine with a CUDA GPU"
        )
    return None


def _check_tensorrt() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        from vitshrink.exporters.runtime.tensorrt import INSTALL_HINT

        return f"the tensorrt package is not installed; {INSTALL_HINT}"
    return _check_cuda()


# ---------------------------------------------------------------- PyTorch


def _require_model(subject: Subject, name: str):
    if subject.model is None:
        raise MeasureError(f"{name} needs the PyTorch model of the {subject.role}")
    return subject.model


@register("torch-cpu", device="cpu", needs="model", precisions=("fp32",), check=_no_check)
def _torch_cpu(subject: Subject, precision: str, options: RuntimeOptions) -> Runtime:
    import torch

    model = _require_model(subject, "torch-cpu").eval()
    inputs = _cached(lambda b: torch.from_numpy(host_input(b, subject.input_size, options.seed)))

    def run(batch: int) -> None:
        with torch.inference_mode():
            model(inputs(batch))

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).float().numpy()

    info = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    return Runtime(BackendSpec("torch-cpu", precision), "cpu", run, predict, Timer(), info)


@register("torch-cuda", device="cuda", needs="model", precisions=("fp32",), check=_check_cuda)
def _torch_cuda(subject: Subject, precision: str, options: RuntimeOptions) -> Runtime:
    import copy

    import torch

    device = torch.device("cuda", options.device_id)
    model = copy.deepcopy(_require_model(subject, "torch-cuda")).to(device).eval()
    inputs = _cached(lambda b: torch.from_numpy(host_input(b, subject.input_size, options.seed)).to(device))

    def run(batch: int) -> None:
        with torch.inference_mode():
            model(inputs(batch))

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x).to(device)).float().cpu().numpy()

    info = {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "inputs": "on the GPU"}
    return Runtime(BackendSpec("torch-cuda", precision), "cuda", run, predict, CudaEventTimer(), info)


# ---------------------------------------------------------------- ONNX Runtime


def _onnx_file(subject: Subject, precision: str, backend: str) -> Path:
    path = subject.onnx.get(precision)
    if path is None or not Path(path).is_file():
        raise MeasureError(f"{backend}:{precision} needs the {precision} ONNX file of the {subject.role}; none was given")
    return Path(path)


@register("ort-cpu", device="cpu", needs="onnx", precisions=PRECISIONS, check=_check_ort)
def _ort_cpu(subject: Subject, precision: str, options: RuntimeOptions) -> Runtime:
    path = _onnx_file(subject, precision, "ort-cpu")
    session = ort_session(path, threads=options.threads)
    in_name, out_name = io_names(session, path)
    inputs = _cached(lambda b: host_input(b, subject.input_size, options.seed))

    def run(batch: int) -> None:
        session.run([out_name], {in_name: inputs(batch)})

    info = {"file": str(path), "intra_op_threads": options.threads, "providers": session.get_providers(),
            "intra_op_spinning": False}
    return Runtime(BackendSpec("ort-cpu", precision), "cpu", run, ort_predict(session, path), Timer(), info)


@register("ort-cuda", device="cuda", needs="onnx", precisions=("fp32", "fp16"), check=_check_ort_cuda)
def _ort_cuda(subject: Subject, precision: str, options: RuntimeOptions) -> Runtime:
    import onnxruntime as ort

    path = _onnx_file(subject, precision, "ort-cuda")
    provider = ("CUDAExecutionProvider", {"device_id": options.device_id})
    session = ort_session(path, threads=options.threads, providers=[provider, "CPUExecutionProvider"])
    in_name, out_name = io_names(session, path)

    def bind(batch: int):
        # input and output stay on the GPU, so the timing holds no host<->device copies
        binding = session.io_binding()
        x = ort.OrtValue.ortvalue_from_numpy(host_input(batch, subject.input_size, options.seed), "cuda", options.device_id)
        binding.bind_ortvalue_input(in_name, x)
        binding.bind_output(out_name, "cuda", options.device_id)
        return binding, x  # keep x alive with the binding

    bindings = _cached(bind)

    def run(batch: int) -> None:
        binding, _ = bindings(batch)
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    info = {"file": str(path), "intra_op_threads": options.threads, "providers": session.get_providers(),
            "inputs": "on the GPU (IOBinding)"}
    return Runtime(BackendSpec("ort-cuda", precision), "cuda", run, ort_predict(session, path), Timer(), info)


# ---------------------------------------------------------------- TensorRT


@register("tensorrt", device="cuda", needs="engine", precisions=("fp32", "fp16", "int8"), check=_check_tensorrt)
def _tensorrt(subject: Subject, precision: str, options: RuntimeOptions) -> Runtime:
    import torch

    path = subject.engines.get(precision)
    if path is None or not Path(path).is_file():
        raise RuntimeUnavailableError(
            f"tensorrt:{precision}: the {subject.role} has no {precision} engine; "
            f"build one with `vitshrink export FOLDER --target trt --precision {precision}` on this device"
        )
    engine = TensorRTEngine.load(Path(path), options.device_id)

    def buffers(batch: int):
        x = torch.from_numpy(host_input(batch, subject.input_size, options.seed)).to(engine.device)
        return x, engine.output_for(x)

    cached = _cached(buffers)

    def run(batch: int) -> None:
        engine.execute(*cached(batch))  # I/O already on the GPU; the CUDA-event timer waits for the stream

    info = {"file": str(path), "tensorrt": engine.trt.__version__, "gpu": torch.cuda.get_device_name(engine.device),
            "inputs": "on the GPU"}
    return Runtime(BackendSpec("tensorrt", precision), "cuda", run, engine.predict, CudaEventTimer(), info,
                   batch_range=engine.batch_range)
