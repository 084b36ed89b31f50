"""`run_compare(config)`: every method on one teacher, one budget, one data split, one distillation budget.

For each seed and method (see `research.methods`): cut and recover, count params and MACs, time
the student against the teacher on ONNX Runtime (CPU, fixed threads, alternating, median ratio),
and save the row at once (`rows/<method>-seed<k>.json`, atomic), so `resume` skips finished rows and
hands `resume` to the pipeline so interrupted distillation continues. compare.json, compare.md and
compare.png are rewritten after every row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from research.methods import METHODS, MethodContext, get_method, metrics
from research.paired import (
    compare_correct,
    pack_correct,
    paired_bootstrap_ci,
    unpack_correct,
)
from vitshrink.benchmarks.errors import CompareError
from vitshrink.compressor.core.artifact import is_artifact, load_artifact, save_artifact
from vitshrink.compressor.core.atomic import write_json_atomic
from vitshrink.compressor.core.flops import count_macs, count_params
from vitshrink.compressor.core.loaded_model import LoadedModel
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.core.reading import read_json
from vitshrink.compressor.jobs.compress_job import DataOptions, build_compress_data
from vitshrink.compressor.jobs.pipeline import CompressConfig, CompressData
from vitshrink.compressor.training.evaluate import predict_logits
from vitshrink.exporters.runtime.timing import TimingPolicy

SCHEMA = 1
ROWS_DIR = "rows"
RUN_JSON = "run.json"  # the settings of the latest run in this folder (checked by resume)
TEACHER_DIR = "teacher"  # a copy of the teacher with its ONNX graph, exported once for every latency run
LATENCY_BACKEND = "ort-cpu"
IGNORED_BENCH_NOTES = ("no dataset", "memory not measured", "the machine was busy")


@dataclass(frozen=True)
class LatencyOptions:
    threads: int = 1  # ONNX Runtime intra-op threads (and torch's, while timing)
    batch_sizes: tuple[int, ...] = (1, 8)
    timing: TimingPolicy = field(default_factory=TimingPolicy)

    def to_dict(self) -> dict:
        return {"backend": LATENCY_BACKEND, "threads": self.threads, "batch_sizes": list(self.batch_sizes),
                "timing": self.timing.to_dict()}


@dataclass(frozen=True)
class CompareConfig:
    teacher: str  # folder or timm name, as `vitshrink.compressor.core.model_loading.load_model` takes it
    paper: CompressConfig  # the paper's method: budget, calibration, distillation per stage (seed set per run)
    data: DataOptions = field(default_factory=DataOptions)  # its seed fixes the subsets: the same for every run
    methods: tuple[str, ...] = tuple(METHODS)
    seeds: tuple[int, ...] = (0,)
    latency: LatencyOptions = field(default_factory=LatencyOptions)
    eval_batch: int = 256
    out_dir: Path = Path("runs/compare")  # work: artifacts, checkpoints, the teacher's ONNX graph
    results_dir: Path | None = None  # rows/*.json and compare.json/.md/.png (small, to commit); default out_dir
    resume: bool = False
    progress: bool = False  # pipeline log lines and progress bars
    command: str | None = None  # the command line that asked for this run, recorded in the outputs

    def __post_init__(self) -> None:
        for name in self.methods:
            get_method(name)  # raises, listing the valid names
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise CompareError(f"methods must be a non-empty list without repeats, got {list(self.methods)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise CompareError(f"seeds must be a non-empty list without repeats, got {list(self.seeds)}")
        if self.paper.stage_sequence != ("width", "depth"):
            raise CompareError("the reference method runs width then depth, one step each, got stages "
                               f"{self.paper.stage_sequence}")

    @property
    def results(self) -> Path:
        return Path(self.results_dir) if self.results_dir is not None else Path(self.out_dir)

    def ordered_methods(self) -> list[str]:
        """The chosen methods in registry order, so a method runs after those it reads (scratch after vitshrink)."""
        return [name for name in METHODS if name in self.methods]

    def seeded(self, seed: int) -> CompressConfig:
        return dataclasses.replace(self.paper, seed=seed, train=dataclasses.replace(self.paper.train, seed=seed))

    def to_dict(self) -> dict:
        return {
            "teacher": self.teacher, "paper": self.paper.to_dict(), "data": dataclasses.asdict(self.data),
            "methods": list(self.methods), "seeds": list(self.seeds), "latency": self.latency.to_dict(),
            "eval_batch": self.eval_batch, "out_dir": str(self.out_dir), "results_dir": str(self.results),
            "resume": self.resume,
            "total_distill_epochs": self.paper.train.epochs * len(self.paper.stage_sequence),
        }

    def fingerprint(self) -> str:
        """Hash of what changes a row's numbers (not which methods or seeds are run, nor where)."""
        d = self.to_dict()
        key = {k: d[k] for k in ("teacher", "paper", "data", "latency", "eval_batch")}
        key["paper"] = {k: v for k, v in key["paper"].items() if k != "seed"}
        key["paper"]["train"] = {k: v for k, v in key["paper"]["train"].items() if k != "seed"}
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_data(teacher: LoadedModel, opts: DataOptions, paper: CompressConfig, eval_batch: int) -> CompressData:
    """The training set (augmented), calibration loader and evaluation loader every method shares."""
    return build_compress_data(teacher, opts, paper, eval_batch)


def row_path(out_dir: Path, method: str, seed: int) -> Path:
    return Path(out_dir) / ROWS_DIR / f"{method}-seed{seed}.json"


def run_compare(config: CompareConfig, log: Callable[[str], None] | None = None) -> dict:
    """Run every (seed, method) row not finished yet; return the compare.json content (also written)."""
    from research.compare_report import write_outputs
    from vitshrink.exporters.runtime.environment import collect_environment

    log = log or (lambda message: None)
    started = time.perf_counter()
    out = Path(config.out_dir)
    fingerprint = config.fingerprint()
    _check_needs(config)
    _claim_folder(config, out, fingerprint)
    teacher = load_model(config.teacher)
    data = build_data(teacher, config.data, config.paper, config.eval_batch)
    teacher_row = {"params": count_params(teacher.model), "macs": count_macs(teacher.model),
                   **metrics(teacher.model, data.eval_loader),
                   "val": metrics(teacher.model, data.val_loader) if data.val_loader is not None else None}
    log(f"teacher {config.teacher}: {teacher_row['params'] / 1e6:.3f} M params, {teacher_row['macs'] / 1e6:.1f} M MACs, "
        f"top-1 {teacher_row['top1']:.2%} on {len(data.eval_loader.dataset)} eval images")
    teacher_dir = _teacher_folder(teacher, config, out / TEACHER_DIR)
    environment = collect_environment(config.latency.threads)
    rows: dict[tuple[str, int], dict] = {}
    plan = [(seed, name) for seed in config.seeds for name in config.ordered_methods()]

    def document() -> dict:
        return _document(config, fingerprint, teacher_row, environment, rows, time.perf_counter() - started)

    for index, (seed, name) in enumerate(plan, start=1):
        path = row_path(config.results, name, seed)
        if config.resume and path.is_file():
            rows[(name, seed)] = read_row(path, fingerprint)
            log(f"[{index}/{len(plan)}] {name} seed {seed}: finished earlier ({path})")
            continue
        log(f"[{index}/{len(plan)}] {name} seed {seed}: start")
        earlier = _earlier(config, rows, name, seed)
        row = run_row(config, name, seed, teacher, data, teacher_row, teacher_dir, earlier, fingerprint, log)
        write_json_atomic(path, row)
        rows[(name, seed)] = row
        log(f"[{index}/{len(plan)}] {name} seed {seed}: done in {row['wall_seconds']:.0f} s: top-1 "
            f"{row['final']['top1']:.2%} (after cut {row['after_cut']['top1']:.2%}), MACs "
            f"-{row['reduction_flops']:.1%}, ORT latency x{_ratio_text(row)} of the teacher")
        write_outputs(document(), config.results)
    result = document()
    paths = write_outputs(result, config.results)
    log("wrote " + ", ".join(str(p) for p in paths.values()))
    return result


def _ratio_text(row: dict) -> str:
    return "/".join(f"{b['latency_ratio']:.2f} (b{k})" for k, b in row["latency"]["batches"].items())


def _check_needs(config: CompareConfig) -> None:
    """Check, then act: every optional package is there, and a method that reads another's result
    finds it in this run or on disk."""
    for name in config.methods:
        reason = get_method(name).missing()
        if reason:
            raise CompareError(f"{reason}; or leave {name} out of the methods")
        for need in get_method(name).needs:
            missing = [s for s in config.seeds if not row_path(config.results, need, s).is_file()]
            if need not in config.methods and missing:
                raise CompareError(f"{name} reads the {need} result of the same seed, and {config.out_dir} has none "
                                   f"for seeds {missing}: add {need} to the methods")


def _claim_folder(config: CompareConfig, out: Path, fingerprint: str) -> None:
    """Record the settings in `out/run.json`; with resume, refuse a folder made with other settings.

    The pipeline reuses finished stage artifacts on resume without comparing settings, so a half-finished
    method of another configuration must not be continued.
    """
    path = out / RUN_JSON
    if config.resume and path.is_file():
        recorded = read_json(path, fix="delete it, or rerun without --resume").get("fingerprint")
        if recorded != fingerprint:
            raise CompareError(f"{out} holds a comparison made with other settings (fingerprint {recorded!r}, now "
                               f"{fingerprint!r}); rerun with the same options, or without --resume, or another --out")
    write_json_atomic(path, {"schema": SCHEMA, "fingerprint": fingerprint, "config": config.to_dict()})


def _earlier(config: CompareConfig, rows: dict, name: str, seed: int) -> dict[str, dict]:
    """Rows of the same seed that `name` reads: from this run, or (with resume) from disk."""
    found = {}
    for need in get_method(name).needs:
        if (need, seed) in rows:
            found[need] = rows[(need, seed)]
        elif row_path(config.results, need, seed).is_file() and (config.resume or need not in config.methods):
            found[need] = read_row(row_path(config.results, need, seed), config.fingerprint())
    return found


def read_row(path: Path, fingerprint: str) -> dict:
    row = read_json(path, fix="delete it to rerun that method")
    if row.get("schema") != SCHEMA or row.get("fingerprint") != fingerprint:
        raise CompareError(f"{path} was made with other settings (fingerprint {row.get('fingerprint')!r}, now "
                           f"{fingerprint!r}); rerun with the same options, or without --resume, or another --out")
    return row


def _teacher_folder(teacher: LoadedModel, config: CompareConfig, folder: Path) -> Path:
    """The teacher as an artifact with its FP32 ONNX graph beside it, so each latency run exports the student only."""
    from vitshrink.benchmarks.model_files import onnx_file
    from vitshrink.exporters.layout import ONNX_FILE

    if not (config.resume and is_artifact(folder) and (folder / ONNX_FILE).is_file()):
        save_artifact(folder, teacher, {"method": "teacher (copied by the comparison for its latency runs)",
                                        "source": config.teacher})
        onnx_file(load_model(str(folder)), "fp32", folder)
    return folder


def ort_latency(teacher_dir: Path, student_dir: Path, options: LatencyOptions) -> dict:
    """Student vs teacher on ONNX Runtime CPU (FP32), timed alternately; per batch size the median of the per-round ratios (bench's speedup)."""
    from vitshrink.benchmarks.bench_job import BenchConfig, run_bench

    report = run_bench(BenchConfig(
        student=str(student_dir), teacher=str(teacher_dir), backends=(LATENCY_BACKEND,),
        batch_sizes=options.batch_sizes, threads=options.threads, timing=options.timing, memory=False,
        fvcore=False, plot=False, progress=False,
    ))
    p50 = {(r.model, r.stats.batch): r.stats.p50_ms for r in report.latency}
    batches = {}
    for s in report.speedups:
        batches[str(s.batch)] = {
            "teacher_p50_ms": round(p50[("teacher", s.batch)], 4),
            "student_p50_ms": round(p50[("student", s.batch)], 4),
            "latency_ratio": round(1 / s.speedup.ratio, 4),  # student / teacher: < 1 is faster
            "speedup": round(s.speedup.ratio, 4),
            "speedup_ci95": [round(s.speedup.ci_low, 4), round(s.speedup.ci_high, 4)],
            "pairs": s.speedup.pairs,
        }
    missing = [b for b in options.batch_sizes if str(b) not in batches]
    if missing:
        reasons = "; ".join(s["reason"] for s in report.skipped) or "no reason recorded"
        raise CompareError(f"no {LATENCY_BACKEND} latency for batch sizes {missing}: {reasons}")
    env = report.environment
    load = env["load_average"][0] if env.get("load_average") else None
    # the bench's notes about what it was not asked for (accuracy, memory) and its busy-machine note are
    # replaced by the load itself, which the report summarises over all rows
    notes = [n for n in report.notes if not n.startswith(IGNORED_BENCH_NOTES)]
    return {"backend": f"{LATENCY_BACKEND}:fp32", "threads": options.threads, "batches": batches,
            "load_average_1min": load, "usable_cpus": env.get("usable_cpus"), "notes": notes}


def run_row(config: CompareConfig, name: str, seed: int, teacher: LoadedModel, data: CompressData,
            teacher_row: dict, teacher_dir: Path, earlier: dict, fingerprint: str,
            log: Callable[[str], None]) -> dict:
    """One method at one seed: run it, measure the student, return the row."""
    started = time.perf_counter()
    method = get_method(name)
    inner = (lambda message: log(f"    {message}")) if config.progress else (lambda message: None)
    ctx = MethodContext(teacher=teacher, data=data, paper=config.seeded(seed),
                        folder=Path(config.out_dir) / "work" / f"{name}-seed{seed}", resume=config.resume,
                        progress=config.progress, log=inner, earlier=earlier)
    outcome = method.run(ctx)
    run_seconds = time.perf_counter() - started
    student = load_artifact(outcome.artifact)  # what is measured is what was saved
    params, macs = count_params(student.model), count_macs(student.model)
    logits, labels = predict_logits(student.model, data.eval_loader)  # per image: for paired comparisons
    latency = ort_latency(teacher_dir, outcome.artifact, config.latency)
    return {
        "schema": SCHEMA,
        "method": name,
        "description": method.description,
        "seed": seed,
        "fingerprint": fingerprint,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": outcome.config,
        "stages": list(outcome.stages),
        "after_cut": outcome.stages[0]["after_cut"],  # the first cut (or init), before any training
        "final": outcome.final,
        "final_val": outcome.final_val,  # validation split (held out of training): what choices may read
        "test_correct": pack_correct((logits.argmax(1) == labels).numpy()),  # test images, in loader order
        "params": params,
        "macs": macs,
        "reduction_params": round(1 - params / teacher_row["params"], 5),
        "reduction_flops": round(1 - macs / teacher_row["macs"], 5),
        "spec": student.spec.to_dict(),
        "latency": latency,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "run_seconds": round(run_seconds, 1),
        "train_seconds": round(sum(s.get("train_seconds") or 0.0 for s in outcome.stages), 1),
        "details": outcome.details,
        "artifact": str(outcome.artifact),
    }


def spread(values: list[float]) -> dict:
    """Mean, min, max and sample std (0 for one value) of finite numbers."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise CompareError(f"cannot summarise {values}: need finite numbers")
    return {"n": int(x.size), "mean": float(x.mean()), "min": float(x.min()), "max": float(x.max()),
            "std": float(x.std(ddof=1)) if x.size > 1 else 0.0}


SUMMARY_FIELDS: dict[str, Callable[[dict], float]] = {
    "final_top1": lambda r: r["final"]["top1"],
    "final_top5": lambda r: r["final"]["top5"],
    "after_cut_top1": lambda r: r["after_cut"]["top1"],
    "after_cut_top5": lambda r: r["after_cut"]["top5"],
    "params": lambda r: r["params"],
    "macs": lambda r: r["macs"],
    "reduction_params": lambda r: r["reduction_params"],
    "reduction_flops": lambda r: r["reduction_flops"],
    "wall_seconds": lambda r: r["wall_seconds"],
}


def summarize(rows: list[dict]) -> dict[str, dict]:
    """Per method: spread over seeds of every summary field and of each batch size's latency ratio."""
    out: dict[str, dict] = {}
    for name in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == name]
        summary = {key: spread([get(r) for r in mine]) for key, get in SUMMARY_FIELDS.items()}
        for batch in mine[0]["latency"]["batches"]:
            summary[f"latency_ratio_b{batch}"] = spread([r["latency"]["batches"][batch]["latency_ratio"] for r in mine])
        if all(r.get("final_val") for r in mine):
            summary["final_val_top1"] = spread([r["final_val"]["top1"] for r in mine])
        summary["seeds"] = [r["seed"] for r in mine]
        out[name] = summary
    return out


REFERENCE_METHOD = "vitshrink"


def paired(rows: list[dict], reference: str = REFERENCE_METHOD) -> dict[str, dict]:
    """Every other method against `reference` on the same test images: per seed, and over the shared seeds.

    Per seed: accuracy difference (reference − other), 95% paired bootstrap interval, discordant images,
    exact McNemar p, verdict (better / worse / tie: the interval contains 0). Over seeds: the mean
    difference, its interval from resampling the same images for every seed.
    """
    def correct(row: dict):
        return unpack_correct(row["test_correct"]) if row.get("test_correct") else None

    ref = {r["seed"]: correct(r) for r in rows if r["method"] == reference and r.get("test_correct")}
    out: dict[str, dict] = {}
    for name in dict.fromkeys(r["method"] for r in rows if r["method"] != reference):
        other = {r["seed"]: correct(r) for r in rows if r["method"] == name and r.get("test_correct")}
        seeds = sorted(set(ref) & set(other))
        if not seeds:
            continue
        per_seed = {str(s): compare_correct(ref[s], other[s], seed=s) for s in seeds}
        a, b = np.stack([ref[s] for s in seeds]), np.stack([other[s] for s in seeds])
        low, high = paired_bootstrap_ci(a, b)
        delta = float(a.mean() - b.mean())
        verdict = "tie" if low <= 0.0 <= high else ("better" if low > 0 else "worse")
        out[name] = {"reference": reference, "seeds": seeds, "per_seed": per_seed,
                     "pooled": {"delta": delta, "ci95": [low, high], "verdict": verdict}}
    return out


def _document(config: CompareConfig, fingerprint: str, teacher_row: dict, environment: dict,
              rows: dict[tuple[str, int], dict], seconds: float) -> dict:
    ordered = [rows[(n, s)] for s in config.seeds for n in config.ordered_methods() if (n, s) in rows]
    return {
        "schema": SCHEMA,
        "tool": "vitshrink compare",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": config.command,
        "config": config.to_dict(),
        "fingerprint": fingerprint,
        "environment": environment,
        "teacher": teacher_row,
        "methods": {n: get_method(n).description for n in config.ordered_methods()},
        "rows": ordered,
        "summary": summarize(ordered),
        "paired": paired(ordered),
        "complete": len(ordered) == len(config.seeds) * len(config.methods),
        "wall_seconds": round(seconds, 1),
    }
