"""Build and run a TensorRT engine with TensorRT's Python API (10.x on JetPack 6, and >= 11).

Needs the `tensorrt` package and a CUDA GPU; neither is importable on the machines vitshrink is
developed on, so this path has only been exercised with a fake `tensorrt` module (see
tests/test_export_trt.py and docs/exporters.md). Everywhere else the export writes
build_engine.sh instead.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from vitshrink.compressor.core.atomic import atomic_file
from vitshrink.exporters.errors import EngineBuildError, TensorRTUnavailableError
from vitshrink.exporters.io_spec import INPUT_NAME, IOSpec
from vitshrink.exporters.layout import engine_file, engine_onnx_file
from vitshrink.exporters.runtime.tensorrt import import_tensorrt
from vitshrink.exporters.trtexec import EngineProfile
from vitshrink.exporters.validate import Runner


@dataclass(frozen=True)
class EngineBuild:
    engine_file: str
    onnx_file: str  # the ONNX file the engine was built from
    precision: str
    tensorrt_version: str
    gpu: str
    compute_capability: str
    strongly_typed: bool  # TensorRT >= 11, or a network built from a typed (FP16) graph
    workspace_mb: int
    timing_cache: str
    timing_cache_reused: bool  # False when the cache was new or came from another GPU/TensorRT
    build_seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def cuda_device() -> tuple[str, str]:
    """Name and compute capability of GPU 0."""
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailableError(
            "TensorRT is installed but no CUDA GPU is visible (torch.cuda.is_available() is False); "
            "build the engine on the device with build_engine.sh"
        )
    major, minor = torch.cuda.get_device_capability(0)
    return torch.cuda.get_device_name(0), f"{major}.{minor}"


def build_engine(
    folder: Path,
    io: IOSpec,
    profile: EngineProfile,
    precision: str,
    *,
    workspace_mb: int,
    timing_cache: Path,
) -> EngineBuild:
    """Parse the ONNX file in `folder`, build `model.<precision>.engine` beside it, update the timing cache."""
    trt = import_tensorrt()
    gpu, capability = cuda_device()
    typed = strongly_typed(trt)
    onnx_path = folder / engine_onnx_file(precision, typed)
    start = time.perf_counter()
    plan, reused = serialize_engine(trt, onnx_path, precision, workspace_mb=workspace_mb, timing_cache=timing_cache,
                                    shapes=profile.shapes(io) if io.dynamic else None)
    seconds = time.perf_counter() - start
    name = engine_file(precision)
    (folder / name).write_bytes(plan)
    return EngineBuild(
        engine_file=name,
        onnx_file=onnx_path.name,
        precision=precision,
        tensorrt_version=trt.__version__,
        gpu=gpu,
        compute_capability=capability,
        strongly_typed=typed,
        workspace_mb=workspace_mb,
        timing_cache=str(timing_cache),
        timing_cache_reused=reused,
        build_seconds=round(seconds, 3),
    )


def strongly_typed(trt) -> bool:
    """TensorRT 11 removed BuilderFlag.FP16 with weak typing: precision then comes from the graph (an FP16
    engine needs the FP16 ONNX file, exporters/fp16.py)."""
    return not hasattr(trt.BuilderFlag, "FP16")


def serialize_engine(trt, onnx_path: Path, precision: str, *, workspace_mb: int, timing_cache: Path,
                     shapes: dict | None = None) -> tuple[bytes, bool]:
    """Build `onnx_path` into a serialized engine (the plan's bytes) and update the timing cache at `timing_cache`.

    `shapes`: {"min", "opt", "max"} input shapes of the one optimization profile a dynamic graph needs.
    Returns the plan and whether the timing cache was reused (made on this GPU and TensorRT)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    typed = strongly_typed(trt)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file, so external weights are found
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT {trt.__version__} cannot parse {onnx_path.name}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision == "fp16" and not typed:
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8" and not typed:  # the Q/DQ nodes say what runs in INT8; the rest may run FP16
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)
    if shapes is not None:
        trt_profile = builder.create_optimization_profile()
        trt_profile.set_shape(INPUT_NAME, shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(trt_profile)
    cache, reused = _attach_timing_cache(config, timing_cache)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"TensorRT could not build an engine from {onnx_path.name}; see its log above")
    with atomic_file(timing_cache) as tmp:
        tmp.write_bytes(bytes(cache.serialize()))
    return bytes(plan), reused


def _attach_timing_cache(config, path: Path):
    """Reuse the cache at `path` when it was made on this GPU and TensorRT; otherwise start a new one."""
    if path.is_file():
        cache = config.create_timing_cache(path.read_bytes())
        if config.set_timing_cache(cache, ignore_mismatch=False):
            return cache, True
    cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache, False


def engine_runner(engine_path: Path) -> Runner:
    """Run a serialized engine on GPU 0 through the loader `bench` uses (`exporters.sessions.TensorRTEngine`)."""
    from vitshrink.exporters.runtime.sessions import TensorRTEngine

    return TensorRTEngine.load(engine_path).predict
