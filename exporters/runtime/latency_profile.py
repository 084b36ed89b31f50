"""Build a latency table (compressor/latency_table.py) by timing sub-blocks of a ViT on the target runtime.

One attention sub-block (norm, attention with h heads, residual) for h = 1..H, one MLP sub-block for
every kept width on the `round_to` grid, and the fixed part (the model without blocks), each timed
alone on the target: ONNX Runtime through the session `bench` uses (exporters/sessions.py), or eager
PyTorch. Then whole models of reduced width (two at the corners where plans fall, the rest random; two of
them also with fewer blocks) are timed, and the fit
`measured = fixed + a * kept sub-blocks + b_attention * attention sum + b_mlp * MLP sum` absorbs what
sub-blocks alone miss; its error is recorded in the table. Every time is a median over repeats after a warm-up, in milliseconds per
batch, taken alternately with a reference of its kind (the full sub-block, the teacher) and stored as
its ratio to the reference times the reference's median over the whole profile, so that a machine
whose speed drifts during profiling (load, DVFS, a VM neighbour) does not bend the table. Only timm
`VisionTransformer`s of plain `Block`s are profiled, pruned ones included (their widths differ per block: the
table covers the most heads and every MLP width any block can keep); a latency budget on other families (BEiT,
EVA, relative-position ViTs) is refused, naming the block class.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from timm.layers import Attention, SwiGLU
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from vitshrink.compressor.core.atomic import write_json_atomic
from vitshrink.compressor.core.families import MLPS, head_dim, mlp_hidden
from vitshrink.compressor.core.flops import num_tokens
from vitshrink.compressor.core.latency_table import (
    RENAMED_TARGETS,
    Fit,
    LatencyTable,
    TableKey,
    current_target_name,
    mlp_grid,
    mlp_widths_of,
)
from vitshrink.compressor.core.progress import progress_bar
from vitshrink.compressor.core.spec import ArchSpec
from vitshrink.compressor.core.surgery import PrunePlan, apply_plan, prune_attention, prune_mlp
from vitshrink.exporters.layout import INPUT_NAME, OUTPUT_NAME
from vitshrink.exporters.runtime.backends import BackendSpec, RuntimeEntry, get_runtime
from vitshrink.exporters.runtime.environment import cpu_model
from vitshrink.exporters.runtime.errors import MeasureError, RuntimeUnavailableError
from vitshrink.exporters.runtime.timing import Timer, TimingPolicy, measure

# what a table can be measured on, named as `bench --backends` names the backend (BackendSpec.parse reads both): the
# precision is written where bench's default is not fp32 (TensorRT's is the engine that exists)
TARGETS = ("ort-cpu", "ort-cpu:int8", "torch-cpu", "ort-cuda", "torch-cuda", "tensorrt:fp32", "tensorrt:fp16")
INT8_CALIBRATION_BATCHES = 2  # random batches an INT8 part is calibrated on: the ranges change its numbers, not its speed
FIT_MODELS = 8  # whole models of reduced width timed for the fit (plus the full model): two corners, the rest random ...
DEPTH_FIT_MODELS = 2  # ... and the first ones again with a quarter and a half of their blocks removed
CHECK_SECONDS = 2.0  # a plan's check: student and teacher called alternately for at least 4 s ...
CHECK_PAIRS = 20  # ... and at least this many rounds: repeated timings of one ViT-S pair at batch 8 on a shared
# 2-core VM spread 0.9 and 2.2 points (standard deviation, two studies) with 10 rounds, 0.4 and 0.5 with 20
# (docs/benchmarks.md, "Why the median of per-round ratios"; research/timing_noise.py)
MODEL_REPEATS = 10  # paired calls (at least) of each whole model with the teacher: the fit needs them all
MODEL_SECONDS = 1.5  # ... and for at least twice this: on this VM the ratio of one small model (6 ms a call) to its
# teacher came out 0.60-0.74 in six pairings of 10 pairs each, and 0.734, 0.732 in two of 200 pairs; ViT-S fit models
# at batch 1 timed twice more (4 s each) moved 1-8% from their 1 s in the profile, and 1-5% from each other
PART_REPEATS = 4  # ... of each sub-block with its reference: at ViT-S batch 8 the ratio's spread over 20 tries
# was 1.0% with 4 pairs, 1.1% with 6 and 3.1% with 10 (one slow outlier): more pairs buy nothing here
PART_FLOOR = 0.01  # a sub-block is recorded at no less than this share of the full one: a tiny one can time as less than
# the call overhead taken off it, and a part of no time would let the fit price it at nothing
NARROWEST_SHARE = 0.1  # the fit leaves the narrowest attention and MLP sub-blocks at least this share of their time alone
OUTLIER_ERROR = 0.08  # a whole model that a fit on the others misses by more is left out of the fit (one at most)
ENGINE_WORKSPACE_MB = 1024  # TensorRT builder workspace for each profiled sub-block and model


def architecture_of(model: nn.Module) -> dict:
    """What a table's times depend on in the model: its classes and every shape of the graph (the widest
    block's where a pruned model's differ, and each block's kept heads and neurons); raises for a model whose
    blocks the profiler cannot cut."""
    check_blocks(model)
    blocks = list(model.blocks)
    blk = blocks[0]
    attn = max((b.attn for b in blocks), key=lambda a: a.num_heads)
    mlp = max((b.mlp for b in blocks), key=mlp_hidden)
    fc1 = mlp.fc1_g if isinstance(mlp, SwiGLU) else mlp.fc1  # timm's mlp_ratio: these rows over embed_dim
    return {
        "model": type(model).__name__,
        "block": type(blk).__name__,
        "img_size": list(model.patch_embed.img_size),
        "patch_size": list(model.patch_embed.patch_size),
        "embed_dim": int(model.embed_dim),
        "num_heads": int(attn.num_heads),
        "head_dim": int(head_dim(attn)),
        "mlp_hidden": int(mlp_hidden(mlp)),
        "tokens": int(num_tokens(model)),
        "prefix_tokens": int(getattr(model, "num_prefix_tokens", 1)),
        "global_pool": str(getattr(model, "global_pool", "")),
        "num_classes": int(model.num_classes),
        "depth": len(blocks),
        "widths": [[int(b.attn.num_heads), int(mlp_hidden(b.mlp))] for b in blocks],  # (heads, neurons) per block
        "norm": _kind(blk.norm1),
        "attention": type(attn).__name__,
        "qkv_bias": attn.qkv.bias is not None,
        "qk_norm": _kind(attn.q_norm),
        "attn_norm": _kind(getattr(attn, "norm", None)),
        "proj_bias": attn.proj.bias is not None,
        "layer_scale": _kind(blk.ls1) is not None,
        "mlp": type(mlp).__name__,
        "mlp_ratio": round(fc1.out_features / model.embed_dim, 6),
        "mlp_act": _kind(mlp.act),
        "mlp_norm": _kind(mlp.norm),
        "mlp_bias": fc1.bias is not None,
        "pos_embed": getattr(model, "pos_embed", None) is not None,
        "norm_pre": _kind(model.norm_pre),
        "final_norm": _kind(model.norm),
        "fc_norm": _kind(model.fc_norm),
    }


def _kind(module: nn.Module | None) -> str | None:
    """The class name of an optional layer; None where there is none (absent or nn.Identity)."""
    return None if module is None or isinstance(module, nn.Identity) else type(module).__name__


def _block_shapes(model: nn.Module) -> list[tuple[int, int]]:
    """(heads, MLP neurons) of every block."""
    return [(int(b.attn.num_heads), int(mlp_hidden(b.mlp))) for b in model.blocks]


def parse_target(text: str) -> str:
    """`text` as it is written in TARGETS, read by bench's parser (`ort-cpu:fp32` is `ort-cpu`); raises naming the
    targets for any other name, and today's spelling for a name an older vitshrink used."""
    name = text.strip()
    if name in RENAMED_TARGETS:
        raise MeasureError(f"latency target {name!r} is now written {current_target_name(name)!r}, as "
                           "`bench --backends` names it")
    try:
        asked = _resolved(BackendSpec.parse(name))
    except MeasureError:
        raise MeasureError(f"unknown latency target {name!r}; choose from {', '.join(TARGETS)}") from None
    for target in TARGETS:
        if _resolved(BackendSpec.parse(target)) == asked:
            return target
    raise MeasureError(f"latency tables are not measured on {name}; choose from {', '.join(TARGETS)}")


def _resolved(spec: BackendSpec) -> BackendSpec:
    """`spec` with bench's default precision written out: fp32 for a model or an ONNX file; none for TensorRT,
    whose default is the engine there is (backends.default_precision)."""
    if spec.precision or get_runtime(spec.runtime).needs == "engine":
        return spec
    return BackendSpec(spec.runtime, "fp32")


def target_backend(target: str) -> BackendSpec:
    """The bench backend a latency target is timed on, precision included (ort-cpu -> ort-cpu:fp32): its `key` is
    how bench names its rows."""
    return _resolved(BackendSpec.parse(parse_target(target)))


def target_precision(target: str) -> str:
    return target_backend(target).precision


def _runtime(target: str) -> RuntimeEntry:
    return get_runtime(target_backend(target).runtime)


def _on_gpu(target: str) -> bool:
    return _runtime(target).device == "cuda"


def _device(target: str) -> torch.device:
    return torch.device("cuda" if _on_gpu(target) else "cpu")


def _device_name(target: str) -> str:
    return torch.cuda.get_device_name(0) if _on_gpu(target) else cpu_model() or platform.processor()


def _runtime_version(target: str) -> str:
    needs = _runtime(target).needs
    if needs == "onnx":
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"
    if needs == "engine":
        from vitshrink.exporters.runtime.tensorrt import import_tensorrt

        return f"tensorrt {import_tensorrt().__version__}"
    return f"torch {torch.__version__}"


def _unavailable(target: str) -> str | None:
    """Why `target` cannot run here (its runtime's check, then a GPU for GPU targets), or None."""
    reason = _runtime(target).check()
    if reason is None and _on_gpu(target) and not torch.cuda.is_available():
        reason = "this PyTorch build sees no CUDA GPU (torch.cuda.is_available() is False)"
    if reason and _runtime(target).needs == "engine":
        reason = (f"{reason.split(';')[0]}; profile on the device that has TensorRT (vitshrink profile --target {target} "
                  "--out lut.json) and plan anywhere with --latency-table lut.json")
    return reason


def table_key(model: nn.Module, target: str, batch: int, threads: int | None) -> TableKey:
    """What a table for `model` measured here on `target` would be made for (architecture, runtime, batch,
    threads, device); raises when the target cannot run here or the model's blocks cannot be profiled."""
    target = parse_target(target)
    check_profilable(model, target)
    return TableKey(architecture=architecture_of(model), target=target, precision=target_precision(target),
                    runtime_version=_runtime_version(target), threads=None if _on_gpu(target) else threads,
                    batch=batch, device=_device_name(target))


def check_profilable(model: nn.Module, target: str) -> None:
    """One clear error for an unknown or absent target, or a model whose blocks the profiler cannot cut."""
    target = parse_target(target)
    reason = _unavailable(target)
    if reason:
        raise RuntimeUnavailableError(f"latency target {target} cannot run here: {reason}")
    check_blocks(model)


def check_blocks(model: nn.Module) -> None:
    """Refuse a model that is not a timm VisionTransformer of plain `Block`s (BEiT's block is also named
    `Block`: classes are compared, not names)."""
    blocks = list(getattr(model, "blocks", []))
    if not isinstance(model, VisionTransformer) or not blocks or any(type(b) is not Block for b in blocks):
        kinds = sorted({f"{type(b).__module__}.{type(b).__name__}" for b in blocks}) or "no blocks"
        raise MeasureError(f"latency tables are made for timm VisionTransformers of plain `Block`s; this model is "
                         f"{type(model).__name__} with {kinds}: use --reduce flops=... or params=... for it")
    for i, b in enumerate(blocks):
        if type(b.attn) is not Attention or type(b.mlp) not in MLPS:
            raise MeasureError(f"block {i} has {type(b.attn).__name__} and {type(b.mlp).__name__}; latency tables are "
                             "made for timm's `Attention` with `Mlp`, `GluMlp` or `SwiGLU`: use --reduce flops=... for it")


class AttentionPart(nn.Module):
    """x + attention(norm1(x)): the attention half of a timm Block (layer scale included, drop path off)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.norm, self.attn, self.scale = block.norm1, block.attn, block.ls1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale(self.attn(self.norm(x)))


class MlpPart(nn.Module):
    """x + mlp(norm2(x)): the MLP half of a timm Block."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.norm, self.mlp, self.scale = block.norm2, block.mlp, block.ls2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale(self.mlp(self.norm(x)))


class CallOverhead(nn.Module):
    """x * 1: one runtime call on a sub-block's input that computes (almost) nothing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0


@dataclass
class _Reference:
    """A module timed alternately with every candidate of its kind: machine speed that drifts during profiling
    (other load, DVFS on a Jetson, a noisy VM neighbour) moves both, and cancels in their ratio."""

    run: Callable[[], object]
    samples: list = field(default_factory=list)  # its median ms of each pairing

    @property
    def ms(self) -> float:
        return statistics.median(self.samples)


class _Clock:
    """Times a module on the target: median ms over repeats after a warm-up, or its ratio to a reference."""

    def __init__(self, target: str, threads: int | None, work: Path, repeats: int, min_seconds: float):
        self.target, self.threads, self.work = target, threads, work
        self.repeats, self.min_seconds = repeats, min_seconds
        self.device = _device(target)
        self.count = 0

    def __call__(self, module: nn.Module, example: torch.Tensor) -> float:
        return _median_ms(self.prepare(module.eval(), example), self.repeats, self.min_seconds, self.sync)

    def reference(self, module: nn.Module, example: torch.Tensor, deployed: bool = False) -> _Reference:
        return _Reference(self.prepare(module.eval(), example, deployed))

    def ratio(self, module: nn.Module, example: torch.Tensor, reference: _Reference, deployed: bool = False,
              repeats: int | None = None, seconds: float | None = None) -> float:
        """Time of `module` over the reference's: the median over rounds of the two called back to back
        (`repeats` rounds and 2 x `seconds` at least; default the clock's), as `bench`'s speedup takes it."""
        run = self.prepare(module.eval(), example, deployed)
        ratio, theirs = _paired_ratio(run, reference.run, repeats or self.repeats,
                                      self.min_seconds if seconds is None else seconds, self.sync)
        reference.samples.append(theirs)
        return ratio

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def prepare(self, module: nn.Module, example: torch.Tensor, deployed: bool = False) -> Callable[[], object]:
        """A call of `module` on `example` on the target. `deployed`: a whole model, exported as `vitshrink
        export` writes it (dynamic batch, onnxslim), the graph `bench` times; sub-blocks are exported plainly."""
        needs = _runtime(self.target).needs
        if needs == "model":
            module = module.to(self.device)
            x = example.to(self.device)

            def run():
                with torch.inference_mode():
                    return module(x)

            return run
        from vitshrink.exporters.runtime.sessions import io_names, ort_session

        self.count += 1
        path = self.work / f"part{self.count}.onnx"
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings about shapes that are constant here
                if deployed:
                    from vitshrink.exporters.io_spec import IOSpec
                    from vitshrink.exporters.onnx_export import DEFAULT_OPSET, export_onnx

                    io = IOSpec(tuple(example.shape[1:]), int(module.num_classes or module.num_features))
                    export_onnx(module, io, path, dynamo=False, opset=DEFAULT_OPSET, simplify=True)
                else:
                    torch.onnx.export(module, (example,), str(path), input_names=[INPUT_NAME],
                                      output_names=[OUTPUT_NAME], opset_version=17, dynamo=False)
        except Exception as e:  # torch.onnx raises RuntimeError/OnnxExporterError/...
            raise MeasureError(f"profiling: cannot export a {type(module).__name__} to ONNX: {type(e).__name__}: {e}") from e
        if needs == "engine":
            return self._engine_run(path, example, deployed)
        if target_precision(self.target) == "int8":
            path = _int8(path, example, whole_model=deployed)
        providers = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"] \
            if self.device.type == "cuda" else ["CPUExecutionProvider"]
        session = ort_session(path, threads=self.threads, providers=providers)
        if self.device.type == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
            raise RuntimeUnavailableError("profiling ort-cuda: ONNX Runtime fell back to the CPU "
                                          f"(providers {session.get_providers()}); check the CUDA/cuDNN install")
        in_name, out_name = io_names(session, path)
        feed = {in_name: example.numpy()}
        return lambda: session.run([out_name], feed)


    def _engine_run(self, path: Path, example: torch.Tensor, deployed: bool) -> Callable[[], object]:
        """A TensorRT engine built from `path` (FP16 on tensorrt:fp16: TensorRT 10 lowers the FP32 graph itself,
        TensorRT >= 11 gets the FP16 graph), for exactly `example`'s shape, run on GPU tensors."""
        from vitshrink.exporters.runtime.sessions import TensorRTEngine
        from vitshrink.exporters.runtime.tensorrt import import_tensorrt
        from vitshrink.exporters.tensorrt_build import serialize_engine, strongly_typed

        trt = import_tensorrt()
        precision = target_precision(self.target)
        if precision == "fp16" and strongly_typed(trt):
            from vitshrink.exporters.fp16 import convert_fp16

            typed = path.with_suffix(".fp16.onnx")
            convert_fp16(path, typed)
            path = typed
        shape = tuple(example.shape)  # a whole model is exported with a dynamic batch: one profile at this batch
        shapes = {"min": shape, "opt": shape, "max": shape} if deployed else None
        plan, _ = serialize_engine(trt, path, precision, workspace_mb=ENGINE_WORKSPACE_MB, shapes=shapes,
                                   timing_cache=self.work / "timing.cache")
        engine_path = path.with_suffix(".engine")
        engine_path.write_bytes(plan)
        engine = TensorRTEngine.load(engine_path)
        x = example.to(self.device)
        y = engine.output_for(x)
        return lambda: engine.execute(x, y)


_NO_TIME_LIMIT = 1e9  # profiling stops on counts and minimum time, never on a time limit


def _int8(path: Path, example: torch.Tensor, whole_model: bool) -> Path:
    """`path` quantized as `vitshrink export --target onnx-int8` quantizes a model (the default recipe: the same
    Q/DQ nodes), calibrated on random inputs of the example's shape: only the graph matters for its time. A
    sub-block has no head: its last linear layer, which the graph walk may take for one, is quantized too."""
    from vitshrink.exporters.int8 import Int8Recipe, op_groups, quantize_int8

    batch = example.shape[0]  # sub-blocks are exported with the example's static batch
    recipe = Int8Recipe(calibration_images=INT8_CALIBRATION_BATCHES * batch)
    if not whole_model:
        recipe = dataclasses.replace(recipe, ops=(*recipe.ops, "head"))
    found = op_groups(path)
    if not any(found[g] for g in recipe.ops):  # the empty call, a block with no heads: nothing to quantize
        return path
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((recipe.calibration_images, *example.shape[1:])).astype(np.float32)
    out = path.with_suffix(".int8.onnx")
    quantize_int8(path, out, recipe, calibration, batch=batch)
    return out


def _paired_ratio(run: Callable[[], object], other: Callable[[], object], repeats: int, min_seconds: float,
                  sync: Callable[[], None]) -> tuple[float, float]:
    """The median over rounds of `run`'s time over `other`'s, the two called back to back (A B A B) after one
    warm-up call of both (ONNX Runtime plans its memory on a session's first call), and `other`'s median ms.
    Timed by `timing.measure`, as `bench` times a teacher and its student."""
    policy = TimingPolicy(warmup_iters=1, warmup_s=0.0, min_iters=repeats, min_time_s=min_seconds,
                          max_time_s=_NO_TIME_LIMIT, max_iters=50 * repeats)
    times = measure({"run": run, "other": other}, policy, Timer(sync=sync))
    ratio = statistics.median(a / b for a, b in zip(times["run"], times["other"], strict=True))
    return ratio, 1e3 * statistics.median(times["other"])


def _median_ms(run: Callable[[], object], repeats: int, min_seconds: float, sync: Callable[[], None]) -> float:
    """Median ms of `run` after three warm-up calls, over `repeats` calls and `min_seconds` at least."""
    policy = TimingPolicy(warmup_iters=3, warmup_s=0.0, min_iters=repeats, min_time_s=min_seconds,
                          max_time_s=_NO_TIME_LIMIT, max_iters=50 * repeats)
    return 1e3 * statistics.median(measure({"run": run}, policy, Timer(sync=sync))["run"])


def monotone(times: list[float]) -> list[float]:
    """The closest non-decreasing sequence in least squares (pool adjacent violators): a wider sub-block is
    never cheaper to run here. One MLP grid step adds less time than the noise of one entry (on the reference
    CIFAR-10 ViT, 28 of 95 steps came out lower than the one before), and a knapsack on raw entries picks
    widths whose times came out low by chance; pooled, a dip becomes the mean of its neighbours, and the
    plan keeps the widest width of a plateau (the same price, less loss)."""
    blocks: list[list[float]] = []  # [sum, count] of each pooled run
    for t in times:
        blocks.append([t, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    return [total / count for total, count in blocks for _ in range(int(count))]


def _nearest_width(hidden: int, round_to: int, share: float) -> int:
    """The width on `hidden`'s grid nearest to `share` of it."""
    widths = np.array(mlp_grid(hidden, round_to)[1:])
    return int(widths[np.abs(widths - share * hidden).argmin()])


def random_plans(spec_heads: int, hidden: int, depth: int, round_to: int, count: int, seed: int = 0) -> list[PrunePlan]:
    """`random_plans_for` a model of `depth` blocks of `spec_heads` heads and `hidden` neurons each."""
    return random_plans_for([(spec_heads, hidden)] * depth, round_to, count, seed)


def random_plans_for(blocks: Sequence[tuple[int, int]], round_to: int, count: int, seed: int = 0) -> list[PrunePlan]:
    """`count` plans spread from narrow to wide for a model whose blocks have (heads, neurons) `blocks`: plan k
    keeps a share of the heads and, independently, a share of the MLP in every block (each evenly spaced in
    0.15..1 and shuffled, jittered per block), so that the fit can tell attention from MLP time."""
    rng = np.random.default_rng(seed)
    depth = len(blocks)
    shares = np.linspace(0.15, 1.0, count, endpoint=False)
    plans = []
    for head_share, mlp_share in zip(rng.permutation(shares), rng.permutation(shares), strict=True):
        head_shares = np.clip(head_share + rng.uniform(-0.08, 0.08, depth), 0.0, 1.0)
        mlp_shares = np.clip(mlp_share + rng.uniform(-0.08, 0.08, depth), 0.0, 1.0)
        heads = {i: tuple(range(max(1, round(head_shares[i] * h)))) for i, (h, _) in enumerate(blocks)}
        neurons = {i: tuple(range(_nearest_width(m, round_to, mlp_shares[i]))) for i, (_, m) in enumerate(blocks)}
        plans.append(PrunePlan(keep_heads=heads, keep_neurons=neurons))
    return plans


def corner_plans(spec_heads: int, hidden: int, depth: int, round_to: int) -> list[PrunePlan]:
    """`corner_plans_for` a model of `depth` blocks of `spec_heads` heads and `hidden` neurons each."""
    return corner_plans_for([(spec_heads, hidden)] * depth, round_to)


def corner_plans_for(blocks: Sequence[tuple[int, int]], round_to: int) -> list[PrunePlan]:
    """Two models at the corners where latency plans fall: one head and the whole MLP in every block (ViT-S at
    batch 1 and 8 on ONNX Runtime CPU: heads cut to 1-3, MLPs kept whole), and every head with a quarter of the
    MLP (the 6-block CIFAR-10 ViT: MLPs cut to about 0.27 of their width, heads kept), so that the fit has seen
    where plans go instead of extrapolating there (a refit without them predicted held-out models as well on
    one profile per batch: docs/latency.md). `blocks`: (heads, neurons) of each block."""
    every = list(enumerate(blocks))
    return [PrunePlan(keep_heads={i: (0,) for i, _ in every}, keep_neurons={i: tuple(range(m)) for i, (_, m) in every}),
            PrunePlan(keep_heads={i: tuple(range(h)) for i, (h, _) in every},
                      keep_neurons={i: tuple(range(_nearest_width(m, round_to, 0.25))) for i, (_, m) in every})]


def fit_plans(spec_heads: int, hidden: int, depth: int, round_to: int, count: int, seed: int = 0) -> list[PrunePlan]:
    """`fit_plans_for` a model of `depth` blocks of `spec_heads` heads and `hidden` neurons each."""
    return fit_plans_for([(spec_heads, hidden)] * depth, round_to, count, seed)


def fit_plans_for(blocks: Sequence[tuple[int, int]], round_to: int, count: int, seed: int = 0) -> list[PrunePlan]:
    """The whole models the fit is made on, for a model whose blocks have (heads, neurons) `blocks`: `count` of
    reduced width (the two `corner_plans_for` first, then `random_plans_for`), and the first `DEPTH_FIT_MODELS`
    of them again with a quarter and a half of their blocks removed (chosen at random), so that the fit sees
    what a block costs inside models of fewer blocks, as the depth stage plans them (none for a model of one
    block: it cannot lose one)."""
    corners = corner_plans_for(blocks, round_to)[:count]
    plans = [*corners, *random_plans_for(blocks, round_to, count - len(corners), seed)]
    depth = len(blocks)
    rng = np.random.default_rng(seed + 1)
    shallow = []
    for plan, share in zip(plans[:depth_fit_models(count, depth)], (0.25, 0.5), strict=False):
        dropped = max(1, min(depth - 1, round(share * depth)))
        shallow.append(dataclasses.replace(plan, drop_blocks=tuple(sorted(int(i) for i in rng.choice(depth, dropped, replace=False)))))
    return [*plans, *shallow]


def depth_fit_models(count: int, depth: int) -> int:
    """How many of `count` fit models are timed again with fewer blocks in a model of `depth` blocks."""
    return min(DEPTH_FIT_MODELS, count) if depth > 1 else 0


def profile(model: nn.Module, target: str, *, batch: int = 1, threads: int | None = None, round_to: int = 8,
            repeats: int = MODEL_REPEATS, part_repeats: int = PART_REPEATS, min_seconds: float = 0.05,
            model_seconds: float = MODEL_SECONDS, fit_models: int = FIT_MODELS, progress: bool = True,
            log=print) -> LatencyTable:
    """Measure the latency table of `model` (a timm ViT, any weights) on `target` at `batch` and `threads`."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)  # torch targets; ONNX Runtime gets them through its session options
    try:
        return _profile(model, target, batch, threads, round_to, repeats, part_repeats, min_seconds, model_seconds,
                        fit_models, progress, log)
    finally:
        torch.set_num_threads(previous)


def _profile(model: nn.Module, target: str, batch: int, threads: int | None, round_to: int, repeats: int,
             part_repeats: int, min_seconds: float, model_seconds: float, fit_models: int, progress: bool,
             log) -> LatencyTable:
    key = table_key(model, target, batch, threads)
    target = key.target  # as TARGETS writes it
    started = time.perf_counter()
    model = copy.deepcopy(model).float().eval()
    arch = key.architecture
    shapes = _block_shapes(model)
    heads = arch["num_heads"]
    tokens = torch.randn(batch, arch["tokens"], arch["embed_dim"])
    images = torch.randn(batch, model.patch_embed.proj.in_channels, *model.patch_embed.img_size)
    widths = mlp_widths_of([m for _, m in shapes], round_to)
    plans = fit_plans_for(shapes, round_to, fit_models)
    with tempfile.TemporaryDirectory(prefix="vitshrink-profile-") as tmp:
        clock = _Clock(target, threads, Path(tmp), repeats, min_seconds)
        # sub-blocks are cut from the block of the most heads and the one of the widest MLP (a pruned model's differ)
        attention_block = max(model.blocks, key=lambda b: b.attn.num_heads)
        mlp_block = max(model.blocks, key=lambda b: mlp_hidden(b.mlp))
        bar = progress_bar(range(2 + heads + len(widths) - 1 + 1 + len(plans)), desc=f"profile {target} b{batch}",
                           enabled=progress)
        steps = iter(bar)
        # a sub-block timed alone also pays one call into the runtime (feeds, outputs, dispatch), which a block
        # inside the model does not: time a call that does nothing with the same input and take it off
        overhead = clock(CallOverhead(), tokens)
        next(steps, None)
        # every sub-block is timed against the full one of its kind, every model against the teacher (ratios)
        reference = clock.reference(AttentionPart(attention_block), tokens)
        ratios = []
        for h in range(1, heads + 1):
            part = copy.deepcopy(attention_block)
            part.attn = prune_attention(part.attn, tuple(range(h)))
            ratios.append(clock.ratio(AttentionPart(part), tokens, reference, repeats=part_repeats))
            next(steps, None)
        attention = [0.0, *monotone([max(r * reference.ms - overhead, PART_FLOOR * reference.ms) for r in ratios])]
        reference = clock.reference(MlpPart(mlp_block), tokens)
        ratios = []
        for m in widths[1:]:
            part = copy.deepcopy(mlp_block)
            part.mlp = prune_mlp(part.mlp, tuple(range(m)))
            ratios.append(clock.ratio(MlpPart(part), tokens, reference, repeats=part_repeats))
            next(steps, None)
        mlp = [0.0, *monotone([max(r * reference.ms - overhead, PART_FLOOR * reference.ms) for r in ratios])]
        stem = copy.deepcopy(model)
        stem.blocks = nn.Sequential()
        reference = clock.reference(model, images, deployed=True)
        fixed_ratio = clock.ratio(stem, images, reference, deployed=True, seconds=model_seconds)
        next(steps, None)
        table = LatencyTable(key, tuple(attention), tuple(widths), tuple(mlp), 0.0, round_to=round_to)
        # per model: its `block_sums` (kept sub-blocks, attention and MLP ms), and its time over the teacher's; the first is the
        # teacher itself, whose ratio to itself is 1 by definition (timing it against itself would only add noise)
        sums, ratios = [], []
        for plan in [PrunePlan(), *plans]:
            cut = copy.deepcopy(model)
            spec = apply_plan(cut, ArchSpec.from_model(cut), plan)
            sums.append(block_sums(table, [(b.num_heads, b.mlp_hidden) for b in spec.blocks]))
            ratios.append(1.0 if plan == PrunePlan() else
                          clock.ratio(cut, images, reference, deployed=True, seconds=model_seconds))
            next(steps, None)
        bar.close()
    fixed = fixed_ratio * reference.ms
    measured = [r * reference.ms for r in ratios]
    fit = robust_fit(sums, measured, fixed, (attention[1], mlp[1]), log)
    table = LatencyTable(key, tuple(attention), tuple(widths), tuple(mlp), fixed, fit,
                         seconds=round(time.perf_counter() - started, 1), round_to=round_to)
    log(f"latency table: {target} batch {batch}, {threads or 'default'} threads, {len(widths) - 1} MLP widths, "
        f"{heads} head counts; whole model {measured[0]:.2f} ms measured; fit a {fit.a:+.3f} ms per sub-block, attention x"
        f"{fit.b_attention:.2f}, MLP x{fit.b_mlp:.2f}, error mean "
        f"{fit.mean_abs_error:.1%} max {fit.max_abs_error:.1%} on {fit.models} of {len(measured)} models; "
        f"{table.seconds:.0f} s")
    return table


def block_sums(table: LatencyTable, blocks: list[tuple[int, int]]) -> tuple[int, float, float]:
    """What the fit weighs in a model whose blocks keep (heads, hidden) each: its kept sub-blocks, and the sums of
    their attention and of their MLP times in the table."""
    return (sum(int(h > 0) + int(m > 0) for h, m in blocks), sum(table.attention_ms(h) for h, _ in blocks),
            sum(table.mlp_time(m) for _, m in blocks))


def robust_fit(sums: list[tuple[int, float, float]], measured: list[float], fixed: float,
               cheapest: tuple[float, float], log=print) -> Fit:
    """`fit_table` on every whole model, or, when it misses one by more than `OUTLIER_ERROR` and a fit on all the
    others misses one by more too, on all but that one (`_outlier`); every model recorded in `points`."""
    fit = fit_table(sums, measured, fixed, cheapest)
    outlier = _outlier(sums, measured, fixed, cheapest) if fit.max_abs_error > OUTLIER_ERROR else None
    if outlier is not None:  # most likely timed while something else ran: one such model bends a fit on 11
        index, error = outlier
        rest = [i for i in range(len(measured)) if i != index]
        fit = dataclasses.replace(fit_table([sums[i] for i in rest], [measured[i] for i in rest], fixed, cheapest),
                                  left_out_error=error)
        log(f"latency table: a fit on the other models misses model {index} by {error:.1%}; it is left out")
    return dataclasses.replace(fit, points=tuple((*map(float, x), round(m, 4)) for x, m in zip(sums, measured, strict=True)))


def fit_table(sums: list[tuple[int, float, float]], measured: list[float], fixed: float,
              cheapest: tuple[float, float]) -> Fit:
    """Least squares of measured - fixed = a * kept sub-blocks + b_attention * attention sum + b_mlp * MLP sum over
    whole models (`sums`: `block_sums` of each).

    The intercept a is paid per kept sub-block: a sub-block timed alone pays something one inside a model does
    not (on ViT-S at batch 1 on ONNX Runtime CPU, about 0.17 ms each), so that a model of fewer blocks pays
    less of it. The fit is the least-squares one among those that leave the narrowest sub-blocks (`cheapest`:
    their attention and MLP times alone) at least `NARROWEST_SHARE` of their time alone, with both scales > 0
    (a part never gets faster as it grows). With fewer than 5 models: one scale for both, no intercept."""
    x = np.asarray(sums, dtype=float).reshape(-1, 3)
    y = np.asarray(measured, dtype=float) - fixed
    total = x[:, 1] + x[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = float(np.sum(total * y) / np.sum(total * total))
    if not scale > 0:  # the blocks measured no time at all in the whole models (a tiny model, a busy machine)
        scale = 1.0  # then trust the sub-blocks as timed
    a, b_att, b_mlp = 0.0, scale, scale
    if len(y) >= 5:
        feasible = [c for c in _fit_candidates(x, y, cheapest) if _keeps_time(c, cheapest)]
        if feasible:
            a, b_att, b_mlp = min(feasible, key=lambda c: float(np.sum((x @ np.asarray(c) - y) ** 2)))
    fit = Fit(a=a, b_attention=b_att, b_mlp=b_mlp, models=len(y))
    error = fit_errors(fit, sums, measured, fixed)
    return dataclasses.replace(fit, mean_abs_error=float(error.mean()), max_abs_error=float(error.max()))


def _fit_candidates(x: np.ndarray, y: np.ndarray, cheapest: tuple[float, float]) -> list[tuple[float, float, float]]:
    """(a, b_attention, b_mlp) of the least-squares fit, free and with each bound of `_keeps_time` held as an
    equality (attention's, MLP's, both), and of the fit without intercept: the constrained least-squares fit is
    the best of them that keeps both bounds (the loss is convex and the bounds are linear)."""
    def solve(columns: np.ndarray, target: np.ndarray) -> np.ndarray:
        return np.linalg.lstsq(columns, target, rcond=None)[0]

    n, floor = x[:, 0], NARROWEST_SHARE
    candidates = [tuple(solve(x, y)), (0.0, *solve(x[:, 1:], y))]
    for k, c in enumerate(cheapest):  # a = c * (floor - b_k): the narrowest sub-block of part k at its bound
        columns = x[:, 1:].copy()
        columns[:, k] -= c * n
        b = solve(columns, y - floor * c * n)
        candidates.append((c * (floor - b[k]), *b))
    if min(cheapest) > 0:  # both at their bound: b_k = floor - a / c_k, one number left
        (a,) = solve((n - x[:, 1] / cheapest[0] - x[:, 2] / cheapest[1])[:, None], y - floor * (x[:, 1] + x[:, 2]))
        candidates.append((a, floor - a / cheapest[0], floor - a / cheapest[1]))
    return [tuple(float(v) for v in c) for c in candidates]


def _keeps_time(fit: tuple[float, float, float], cheapest: tuple[float, float]) -> bool:
    a, *scales = fit
    return all(b > 0 and a + b * c >= NARROWEST_SHARE * c - 1e-9 for b, c in zip(scales, cheapest, strict=True))


def _outlier(sums: list[tuple[int, float, float]], measured: list[float], fixed: float,
             cheapest: tuple[float, float]) -> tuple[int, float] | None:
    """The whole model (never the teacher, model 0) that a fit on the others misses by more than OUTLIER_ERROR,
    the worst one, with that error; None when there is none or too few models to spare one."""
    if len(measured) < 6:
        return None
    errors = leave_one_out_errors(sums, measured, fixed, cheapest)
    worst = max(range(1, len(measured)), key=errors.__getitem__)
    return (worst, errors[worst]) if errors[worst] > OUTLIER_ERROR else None


def leave_one_out_errors(sums: list[tuple[int, float, float]], measured: list[float], fixed: float,
                         cheapest: tuple[float, float]) -> list[float]:
    """Per whole model, the relative error of a fit made on all the others: one model timed while the machine
    was busy pulls a fit on all of them towards itself, and may not have the largest residual there."""
    errors = []
    for i in range(len(measured)):
        rest = [j for j in range(len(measured)) if j != i]
        fit = fit_table([sums[j] for j in rest], [measured[j] for j in rest], fixed, cheapest)
        errors.append(float(fit_errors(fit, [sums[i]], [measured[i]], fixed)[0]))
    return errors


def fit_errors(fit: Fit, sums: list[tuple[int, float, float]], measured: list[float], fixed: float) -> np.ndarray:
    """|predicted - measured| / measured of each whole model."""
    x = np.asarray(sums, dtype=float).reshape(-1, 3)
    predicted = fixed + fit.a * x[:, 0] + fit.b_attention * x[:, 1] + fit.b_mlp * x[:, 2]
    return np.abs(predicted - np.asarray(measured)) / np.asarray(measured)


def cache_path(key: TableKey, round_to: int) -> Path:
    """Where `compress` caches a table it profiled: $XDG_CACHE_HOME/vitshrink/latency/<hash of the key>.json
    (delete the file to profile again)."""
    import hashlib
    import json

    from vitshrink.compressor.core.latency_table import FORMAT

    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vitshrink" / "latency"
    record = {**key.__dict__, "round_to": round_to, "format": FORMAT}
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return root / f"{key.target.replace(':', '-')}-b{key.batch}-{digest[:16]}.json"  # no ':' in a Windows file name


def table_for(model: nn.Module, target: str | None = None, *, batch: int | None = None, threads: int | None = None,
              round_to: int = 8, table_file: Path | None = None, progress: bool = True, log=print) -> LatencyTable:
    """The table a latency budget is planned on.

    With `table_file`: that table, for this model's architecture and the target, batch and threads when
    they are given (None: the table's own); its device and runtime version are where it was measured.
    Without: the table cached for this machine, or a new profile (then cached); defaults ort-cpu, batch 1,
    torch's thread count.
    """
    hidden = [int(mlp_hidden(b.mlp)) for b in model.blocks]
    target = None if target is None else parse_target(target)
    if table_file is not None:
        table = LatencyTable.load(table_file)
        table.check_for(architecture_of(model), str(table_file), target=target, batch=batch, threads=threads)
        table.check_grid(hidden, round_to, str(table_file))
        log(f"latency table: {table_file} ({table.key.target}, batch {table.key.batch}, {table.key.threads} threads, "
            f"measured on {table.key.device})")
        return table
    target, batch, threads = target or "ort-cpu", batch or 1, threads or torch.get_num_threads()
    key = table_key(model, target, batch, threads)
    cached = cache_path(key, round_to)
    if cached.is_file():
        table = LatencyTable.load(cached)
        log(f"latency table: cached {cached}")
        return table
    table = profile(model, target, batch=batch, threads=threads, round_to=round_to, progress=progress, log=log)
    write_json_atomic(cached, table.to_dict())
    log(f"latency table cached in {cached}")
    return table


def check_unavailable(model: nn.Module, table: LatencyTable) -> str | None:
    """Why a plan on `table` cannot be timed here (another device, runtime version or architecture, or the
    target's runtime missing); None when it can."""
    missing = _unavailable(table.key.target)
    if missing is not None:
        return missing
    differences = table.key.mismatches(table_key(model, table.key.target, table.key.batch, table.key.threads))
    return f"the table was measured elsewhere ({'; '.join(differences)})" if differences else None


def measure_reduction(teacher: nn.Module, student: nn.Module, table: LatencyTable,
                      seconds: float = CHECK_SECONDS) -> float:
    """1 - student / teacher time on the table's target, batch and threads: both exported as `bench` times
    them and called alternately for 2 x `seconds` and `CHECK_PAIRS` rounds at least."""
    key = table.key
    previous = torch.get_num_threads()
    if key.threads is not None:
        torch.set_num_threads(key.threads)
    try:
        teacher, student = copy.deepcopy(teacher).float().cpu().eval(), copy.deepcopy(student).float().cpu().eval()
        images = torch.randn(key.batch, teacher.patch_embed.proj.in_channels, *teacher.patch_embed.img_size)
        with tempfile.TemporaryDirectory(prefix="vitshrink-check-") as tmp:
            clock = _Clock(key.target, key.threads, Path(tmp), CHECK_PAIRS, seconds)
            reference = clock.reference(teacher, images, deployed=True)
            return 1.0 - clock.ratio(student, images, reference, deployed=True, seconds=seconds)
    finally:
        torch.set_num_threads(previous)
