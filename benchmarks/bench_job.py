"""`run_bench(config)`: is the student actually faster, smaller and as accurate as its teacher here?

For every backend: build teacher and student, time them alternately at each batch size, then
measure accuracy on the eval split (when a dataset is given), then free them. Peak memory is
measured last, one process per (model, backend), so it neither disturbs the timings nor mixes
backends. Outputs: bench.json, bench.md and bench.png in `config.out_dir`.
"""

from __future__ import annotations

import dataclasses
import gc
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from vitshrink.benchmarks.errors import BenchError, RuntimeUnavailableError
from vitshrink.benchmarks.latency_plan_check import latency_plan_check
from vitshrink.benchmarks.memory import MemoryResult, measure_memory
from vitshrink.benchmarks.metrics import REFERENCE_BACKEND
from vitshrink.benchmarks.model_files import engine_files, file_sizes, onnx_file
from vitshrink.benchmarks.results import (
    AccuracyRow,
    BenchReport,
    LatencyRow,
    ModelInfo,
    PrecisionSpeedupRow,
    SpeedupRow,
)
from vitshrink.benchmarks.stats import latency_stats, speedup
from vitshrink.benchmarks.teacher import check_teacher, find_recorded_teacher
from vitshrink.compressor.core.loaded_model import LoadedModel
from vitshrink.compressor.core.progress import progress_bar
from vitshrink.exporters.runtime.backends import (
    RUNTIMES,
    BackendSpec,
    Runtime,
    RuntimeOptions,
    Subject,
    build_runtime,
    default_precision,
    get_runtime,
)
from vitshrink.exporters.runtime.environment import collect_environment
from vitshrink.exporters.runtime.timing import TimingPolicy, measure

AUTO_BACKENDS = ("torch-cpu", "ort-cpu", "torch-cuda", "ort-cuda", "tensorrt")  # what "auto" tries, in order
ROLES = ("teacher", "student")


@dataclass(frozen=True)
class BenchConfig:
    student: str  # vitshrink artifact folder, timm model folder or timm name
    teacher: str | None = None  # same kinds; None: the teacher recorded in the student's compression.json
    auto_teacher: bool = True  # look up the recorded teacher when `teacher` is None (False: student alone)
    other_teacher: bool = False  # compare with a teacher whose weights differ from the recorded ones (else refused)
    backends: tuple[str, ...] = ("auto",)  # runtime[:precision] names, or "auto" (what this machine runs)
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    threads: int | None = None  # CPU threads for torch and ONNX Runtime; None: torch.get_num_threads()
    timing: TimingPolicy = field(default_factory=TimingPolicy)
    memory: bool = True  # peak memory per (model, backend), each in its own process
    memory_batch: int | None = None  # batch size of the memory probes; None: the largest batch size
    fvcore: bool = True  # cross-check the analytic MACs with fvcore (SDPA counted)
    dataset: str | None = None  # vitshrink.compressor.data.datasets name for accuracy; None: no accuracy
    data_dir: str | None = None
    limit: int | None = 1000  # eval images (a fixed random subset); None: the whole split
    eval_batch: int = 64  # batch size of the accuracy passes
    out_dir: Path | None = None  # bench.json, bench.md, bench.png go here; None: nothing is written
    plot: bool = True
    progress: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise BenchError(f"batch sizes must be >= 1, got {self.batch_sizes}")
        if not self.backends:
            raise BenchError("no backends given; use auto or e.g. torch-cpu,ort-cpu")
        for name in self.backends:
            if name != "auto":
                BackendSpec.parse(name)  # raises, listing the valid names
        if self.threads is not None and self.threads < 1:
            raise BenchError(f"threads must be >= 1, got {self.threads}")
        if self.limit is not None and self.limit < 1:
            raise BenchError(f"limit must be >= 1 (or None for the whole split), got {self.limit}")
        if self.eval_batch < 1 or (self.memory_batch is not None and self.memory_batch < 1):
            raise BenchError("eval and memory batch sizes must be >= 1")
        if self.data_dir is not None and self.dataset is None:
            raise BenchError("--data-dir needs --dataset")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["out_dir"] = str(self.out_dir) if self.out_dir is not None else None
        return d


def run_bench(config: BenchConfig, log: Callable[[str], None] | None = None, *, teacher: LoadedModel | None = None,
              loader: DataLoader | None = None) -> BenchReport:
    """Measure teacher and student as `config` says; write the outputs when `config.out_dir` is set.

    `teacher`, a model already in memory, replaces `config.teacher`; `loader` (batches of (image, label),
    already in the models' input format) replaces `config.dataset` for the accuracy rows. A teacher whose
    weights differ from those the student's compression.json records is refused unless `config.other_teacher`.
    """
    log = log or (lambda message: None)
    threads = config.threads or torch.get_num_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="vitshrink-bench-") as work:
            report = _run(config, threads, Path(work), log, teacher, loader)
    finally:
        torch.set_num_threads(previous)
    if config.out_dir is not None:
        from vitshrink.benchmarks.bench_report import write_outputs

        for path in write_outputs(report.to_dict(), config.out_dir, plot=config.plot).values():
            log(f"wrote {path}")
    return report


@dataclass
class _Model:
    role: str
    source: str
    loaded: LoadedModel
    subject: Subject
    exported: dict[str, Path] = field(default_factory=dict)  # ONNX files made by the bench


def _run(config: BenchConfig, threads: int, work: Path, log: Callable[[str], None], teacher: LoadedModel | None,
         loader: DataLoader | None) -> BenchReport:
    notes: list[str] = []
    environment = collect_environment(threads)
    load = environment["load_average"]
    if load and load[0] > 0.5 * environment["usable_cpus"]:
        notes.append(f"the machine was busy (load {load[0]} on {environment['usable_cpus']} CPUs): absolute "
                     "times are noisy; the interleaved teacher/student ratios are less affected")
    if teacher is not None and teacher.path is None:  # memory probes load each model in a fresh process
        from vitshrink.compressor.core.artifact import save_artifact

        path = save_artifact(work / "teacher-artifact", teacher, {"method": "teacher given in memory"})
        teacher = dataclasses.replace(teacher, path=path)
    models = _load_models(config, notes, log, teacher)
    backends, skipped = resolve_backends(config.backends, models["student"].subject)
    for b in backends:
        if get_runtime(b.runtime).needs == "onnx":
            for precision in (b.precision, "fp32") if b.precision == "int8" else (b.precision,):
                for m in models.values():
                    _attach_onnx(m, precision, work / m.role, config)
    infos = {role: _model_info(m, config.fvcore, notes) for role, m in models.items()}
    if len(models) == 2 and infos["teacher"].input_size != infos["student"].input_size:
        raise BenchError(f"teacher input {infos['teacher'].input_size} differs from the student's "
                         f"{infos['student'].input_size}; they must take the same images to be compared")
    flops_ratio = infos["teacher"].macs / infos["student"].macs if "teacher" in infos else None

    loaders = {role: loader for role in models} if loader is not None else _eval_loaders(config, models, notes)
    dataset = config.dataset or "loader"  # what the accuracy rows name as their images
    reference = {role: _reference_logits(m.loaded, loaders[role]) for role, m in models.items()} if loaders else {}
    accuracy = [_accuracy_row(role, REFERENCE_BACKEND, dataset, *reference[role], None) for role in reference]

    options = RuntimeOptions(threads=threads, seed=config.seed)
    latency, speedups, ranges, backend_info, crossed = [], [], {}, {}, []
    steps = len(backends) * len(config.batch_sizes) + (len(backends) if loaders else 0)
    with progress_bar(total=steps, desc="bench", enabled=config.progress, leave=False) as bar:
        for backend in backends:
            runtimes = _build(backend, models, options, skipped)
            partners = _fp32_partners(backend, runtimes, models, options, skipped)
            if runtimes:
                ranges[backend.key] = next(iter(runtimes.values())).batch_range
                backend_info[backend.key] = {role: {"device": rt.device, "timer": rt.timer.name, **rt.info}
                                             for role, rt in runtimes.items()}
            for batch in config.batch_sizes:
                bar.set_postfix_str(f"{backend.key} batch {batch}")
                lat, spd, cross = _time_batch(backend, runtimes, batch, config.timing, flops_ratio, skipped, partners)
                latency += lat
                speedups += spd
                crossed += cross
                bar.update()
            if loaders:
                bar.set_postfix_str(f"{backend.key} accuracy")
                if backend.key != REFERENCE_BACKEND:
                    for role, runtime in runtimes.items():
                        logits = _predict(runtime, loaders[role])
                        accuracy.append(_accuracy_row(role, backend.key, dataset, logits,
                                                      reference[role][1], reference[role][0]))
                bar.update()
            del runtimes, partners
            gc.collect()
        memory = _memory(config, backends, models, threads, ranges, bar, log) if config.memory else []
    if not config.memory:
        notes.append("memory not measured (--no-memory)")
    return BenchReport(
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        config=config.to_dict(),
        environment=environment,
        models=infos,
        backends=backend_info,
        latency=tuple(latency),
        speedups=tuple(speedups),
        accuracy=tuple(accuracy),
        memory=tuple(memory),
        skipped=tuple(skipped),
        notes=tuple(notes),
        latency_plan=latency_plan_check(models["student"].loaded.compression, threads, latency, speedups),
        precision_speedups=tuple(crossed),
    )


# ---------------------------------------------------------------- models and files


def _load_models(config: BenchConfig, notes: list[str], log: Callable[[str], None],
                 teacher: LoadedModel | None = None) -> dict[str, _Model]:
    from vitshrink.compressor.core.model_loading import load_model

    student = load_model(config.student)
    sources = {"student": config.student}
    teacher_source = "model in memory" if teacher is not None else resolve_teacher(config, student, notes)
    if teacher_source is not None:
        sources = {"teacher": teacher_source, **sources}
    given = {"student": student, "teacher": teacher}
    out = {}
    for role, source in sources.items():
        loaded = given[role] or load_model(source)
        if role == "teacher":
            check_teacher(loaded, source, student, other_teacher=config.other_teacher, notes=notes)
        if loaded.path is None and loaded is not teacher:
            notes.append(f"{role} {source!r} is a timm name: random weights (pretrained=False); "
                         "its accuracy means nothing, its speed does")
        log(f"{role}: {source} ({loaded.name}, {sum(p.numel() for p in loaded.model.parameters()) / 1e6:.2f} M params)")
        subject = Subject(role=role, input_size=loaded.input_size, model=loaded.model, engines=engine_files(loaded.path))
        out[role] = _Model(role, source, loaded, subject)
    return out


def resolve_teacher(config: BenchConfig, student: LoadedModel, notes: list[str]) -> str | None:
    """The teacher to compare with: given, recorded in the student's compression.json, or none."""
    if config.teacher is not None:
        return config.teacher
    if not config.auto_teacher:
        notes.append("no teacher (--no-teacher): no speedup and no accuracy drop")
        return None
    return find_recorded_teacher(student, notes)


def _attach_onnx(model: _Model, precision: str, work: Path, config: BenchConfig) -> None:
    if precision in model.subject.onnx:
        return
    path, origin = onnx_file(model.loaded, precision, work, config.dataset, config.data_dir)
    model.subject = dataclasses.replace(model.subject, onnx={**model.subject.onnx, precision: path})
    if origin == "exported":
        model.exported[path.name] = path


def _model_info(model: _Model, fvcore: bool, notes: list[str]) -> ModelInfo:
    from vitshrink.compressor.core.flops import count_macs, count_macs_fvcore, count_params

    net, loaded = model.loaded.model, model.loaded
    macs = count_macs(net)
    macs_fvcore = count_macs_fvcore(net, loaded.input_size) if fvcore else None
    if macs_fvcore is not None and abs(macs_fvcore - macs) > 0.01 * macs:
        notes.append(f"{model.role}: analytic MACs {macs:,} and fvcore's {macs_fvcore:,} differ by more than 1%")
    files = {name: {"bytes": size, "origin": "exported" if name in model.exported else "folder"}
             for name, size in file_sizes(loaded.path, model.exported).items()}
    return ModelInfo(
        role=model.role,
        source=model.source,
        architecture=loaded.name,
        params=count_params(net),
        macs=macs,
        macs_fvcore=macs_fvcore,
        input_size=tuple(loaded.input_size),
        blocks=tuple((b.num_heads, b.mlp_hidden) for b in loaded.spec.blocks),
        files=files,
    )


# ---------------------------------------------------------------- backends and timing


def resolve_backends(names: tuple[str, ...], student: Subject) -> tuple[list[BackendSpec], list[dict]]:
    """Backends with their precision resolved; "auto" keeps those this machine runs and records the others."""
    chosen: list[BackendSpec] = []
    skipped: list[dict] = []
    for name in names:
        if name == "auto":
            for runtime in AUTO_BACKENDS:
                reason = RUNTIMES[runtime].check()
                if reason is None and RUNTIMES[runtime].needs == "engine" and not student.engines:
                    reason = "the student folder has no TensorRT engine (vitshrink export FOLDER --target trt)"
                if reason:
                    skipped.append({"backend": runtime, "model": None, "batch": None, "reason": reason})
                else:
                    chosen.append(BackendSpec(runtime))
            continue
        spec = BackendSpec.parse(name)
        reason = get_runtime(spec.runtime).check()
        if reason:
            raise RuntimeUnavailableError(f"backend {name} cannot run here: {reason} (leave it out, or use auto)")
        chosen.append(spec)
    resolved = [BackendSpec(b.runtime, b.precision or default_precision(get_runtime(b.runtime), student)) for b in chosen]
    return list(dict.fromkeys(resolved)), skipped


def _build(backend: BackendSpec, models: dict[str, _Model], options: RuntimeOptions, skipped: list[dict]):
    runtimes: dict[str, Runtime] = {}
    for role, model in models.items():
        try:
            runtimes[role] = build_runtime(backend, model.subject, options)
        except RuntimeUnavailableError as e:
            skipped.append({"backend": backend.key, "model": role, "batch": None, "reason": str(e)})
    return runtimes


def _fp32_partners(backend: BackendSpec, runtimes: dict[str, Runtime], models: dict[str, _Model],
                   options: RuntimeOptions, skipped: list[dict]) -> dict[str, Runtime]:
    """For an INT8 student: the FP32 teacher and student on the same runtime, timed in the same rounds."""
    if backend.precision != "int8" or "student" not in runtimes or get_runtime(backend.runtime).needs != "onnx":
        return {}
    fp32 = _build(BackendSpec(backend.runtime, "fp32"), models, options, skipped)
    return {f"{role} fp32": runtime for role, runtime in fp32.items()}


def _time_batch(backend: BackendSpec, runtimes: dict[str, Runtime], batch: int, policy: TimingPolicy,
                flops_ratio: float | None, skipped: list[dict], partners: dict[str, Runtime] | None = None):
    ready = {}
    for role, runtime in runtimes.items():
        reason = runtime.unsupported(batch)
        if reason:
            skipped.append({"backend": backend.key, "model": role, "batch": batch, "reason": reason})
        else:
            ready[role] = runtime
    if not ready:
        return [], [], []
    extra = {name: rt for name, rt in (partners or {}).items() if "student" in ready and not rt.unsupported(batch)}
    calls = {role: (lambda rt=rt: rt.run(batch)) for role, rt in {**ready, **extra}.items()}  # A B A B: teacher first
    samples = measure(calls, policy, next(iter(ready.values())).timer)
    rows = [LatencyRow(role, backend.key, rt.device, rt.timer.name, latency_stats(samples[role], batch))
            for role, rt in ready.items()]
    cross = [PrecisionSpeedupRow(backend.key, batch, name, speedup(samples[name], samples["student"]))
             for name in extra]
    if len(ready) < 2 or flops_ratio is None:
        return rows, [], cross
    return rows, [SpeedupRow(backend.key, batch, speedup(samples["teacher"], samples["student"]), flops_ratio)], cross


# ---------------------------------------------------------------- accuracy


def _eval_loaders(config: BenchConfig, models: dict[str, _Model], notes: list[str]) -> dict:
    if config.dataset is None:
        notes.append("no dataset: accuracy not measured (pass --dataset, e.g. --dataset digits)")
        return {}
    from vitshrink.compressor.data.datasets import build_dataset, build_loader

    loaders = {}
    for role, model in models.items():
        dataset = build_dataset(config.dataset, config.data_dir, "eval", model.loaded.data_config,
                                limit=config.limit, seed=config.seed)
        if len(dataset) == 0:
            raise BenchError(f"dataset {config.dataset!r} has no eval images")
        loaders[role] = build_loader(dataset, config.eval_batch)
    return loaders


def _reference_logits(loaded: LoadedModel, loader) -> tuple[np.ndarray, np.ndarray]:
    from vitshrink.compressor.training.evaluate import predict_logits

    logits, labels = predict_logits(loaded.model, loader)
    return logits.numpy(), labels.numpy()


def _predict(runtime: Runtime, loader) -> np.ndarray:
    from vitshrink.exporters.validate import run_batched

    lo, hi = runtime.batch_range or (1, loader.batch_size)
    return np.concatenate([run_batched(runtime.predict, x.numpy(), min_batch=lo, max_batch=hi) for x, _ in loader])


def _accuracy_row(role: str, backend: str, dataset: str, logits: np.ndarray, labels: np.ndarray,
                  reference: np.ndarray | None) -> AccuracyRow:
    from vitshrink.compressor.training.evaluate import accuracy_from_logits

    acc = accuracy_from_logits(torch.from_numpy(logits).float(), torch.from_numpy(labels))
    agreement = diff = None
    if reference is not None:
        agreement = float(np.mean(logits.argmax(1) == reference.argmax(1)))
        diff = float(np.abs(logits.astype(np.float64) - reference).max())
    return AccuracyRow(role, backend, dataset, len(labels), acc["top1"], acc["top5"], agreement, diff)


# ---------------------------------------------------------------- memory


def _memory(config: BenchConfig, backends: list[BackendSpec], models: dict[str, _Model], threads: int,
            ranges: dict, bar, log: Callable[[str], None]) -> list[MemoryResult]:
    batch = config.memory_batch or max(config.batch_sizes)
    results = []
    bar.total += len(ranges) * len(models)
    for backend in backends:
        if backend.key not in ranges:
            continue
        lo, hi = ranges[backend.key] or (1, batch)
        entry = get_runtime(backend.runtime)
        for role, model in models.items():
            bar.set_postfix_str(f"{backend.key} memory ({role})")
            request = {
                "runtime": backend.runtime, "precision": backend.precision, "role": role,
                "input_size": list(model.subject.input_size), "batch": min(max(batch, lo), hi), "iters": 3,
                "threads": threads, "source": str(model.loaded.path or model.source),
                "onnx": str(model.subject.onnx[backend.precision]) if entry.needs == "onnx" else None,
                "engine": str(model.subject.engines.get(backend.precision, "")) or None,
            }
            if entry.needs == "engine" and request["engine"] is None:
                bar.update()
                continue
            result = measure_memory(request)
            if result.error:
                log(f"memory: {result.error}")
            results.append(result)
            bar.update()
    return results



@dataclass(frozen=True)
class GateOutcome:
    results: tuple  # GateResult per (gate, metric)
    passed: bool
    baseline_written: Path | None = None  # set when --update-baseline recorded a new baseline


def gate_bench(bench: dict, gate_file: Path, *, baseline: Path | None = None,
               update_baseline: bool = False) -> GateOutcome:
    """Check a bench dict against a gate file; with `update_baseline`, record a new baseline in the file
    `baseline` names if the gates' own limits pass (baseline tolerances are not applied to the run that
    sets the baseline). A baseline is only ever written where the caller says: never beside the gate file
    by default, which may sit inside the installed package."""
    from vitshrink.benchmarks.gate import (
        evaluate_gates,
        gates_passed,
        load_gate_config,
        new_baseline,
        read_baseline,
        without_baseline,
    )
    from vitshrink.compressor.core.atomic import write_json_atomic

    config = load_gate_config(gate_file)
    if update_baseline:
        if baseline is None:
            raise BenchError("--update-baseline writes the file --baseline FILE names; pass it explicitly "
                             f"(the baseline {gate_file} reads is {config.baseline})")
        results = evaluate_gates(bench, without_baseline(config))
        if not gates_passed(results):
            return GateOutcome(tuple(results), False)
        write_json_atomic(baseline, new_baseline(bench, config))
        return GateOutcome(tuple(results), True, baseline)
    baseline_path = baseline or config.baseline
    recorded = read_baseline(baseline_path) if baseline_path is not None else None
    results = evaluate_gates(bench, config, recorded, baseline_path)
    return GateOutcome(tuple(results), gates_passed(results))
