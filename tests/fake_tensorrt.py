"""A stand-in for the `tensorrt` module that records what vitshrink asks its builder for.

TensorRT cannot be installed where these tests run; tests that use this fake test orchestration only
(the flags, files and shapes handed to the builder), never that a real TensorRT builds or runs anything.
"""

from __future__ import annotations

import importlib.machinery
import types
from pathlib import Path

import onnx


def fake_tensorrt(version: str, calls: dict) -> types.ModuleType:
    """A stand-in for the tensorrt module that records what the builder is asked to do."""
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # importlib.util.find_spec reads it
    trt.__version__ = version
    has_fp16_flag = int(version.split(".")[0]) < 11  # TensorRT 11 removed BuilderFlag.FP16

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            pass

    class Cache:
        def __init__(self, data: bytes):
            calls["cache_in"] = data

        def serialize(self) -> bytes:
            return b"fake-timing-cache"

    class Profile:
        def set_shape(self, name, low, opt, high):
            calls["profile"] = (name, tuple(low), tuple(opt), tuple(high))
            calls["profile_count"] = calls.get("profile_count", 0) + 1

    class Config:  # records the last build's settings
        def __init__(self):
            calls["flags"], calls["profiles"] = [], 0

        def set_memory_pool_limit(self, pool, size):
            calls["pool"] = (pool, size)

        def set_flag(self, flag):
            calls["flags"].append(flag)

        def add_optimization_profile(self, profile):
            calls["profiles"] += 1

        def create_timing_cache(self, data: bytes):
            return Cache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            return calls["cache_in"] == b"fake-timing-cache"  # only our own cache "matches this GPU"

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            calls["parsed"] = Path(path).name
            calls.setdefault("parsed_files", []).append(Path(path).name)
            onnx.checker.check_model(path)  # the file handed over is a valid ONNX graph
            return True

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls["network_flags"] = flags
            return object()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"fake-engine-plan"

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, Parser
    trt.BuilderFlag = types.SimpleNamespace(**({"FP16": "FP16", "INT8": "INT8"} if has_fp16_flag else {}))
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=5)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    return trt
