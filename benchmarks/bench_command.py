"""`vitshrink bench` and `vitshrink gate`: parse, build one config, call the library, print.

Registered in cli.py with `main.add_command(bench_command)` and `main.add_command(gate_command)`.
"""

from __future__ import annotations

from pathlib import Path

import click

from vitshrink.benchmarks.gate import DEFAULT_GATES
from vitshrink.cli_errors import VitShrinkCommand, parsed_by
from vitshrink.compressor.core.errors import VitShrinkError
from vitshrink.compressor.data.datasets import DATASETS
from vitshrink.exporters.runtime.errors import MeasureError
from vitshrink.exporters.runtime.latency_profile import TARGETS as PROFILE_TARGETS
from vitshrink.exporters.runtime.latency_profile import parse_target
from vitshrink.exporters.runtime.timing import TimingPolicy


def _backends(ctx, param, value: str) -> tuple[str, ...]:
    from vitshrink.exporters.runtime.backends import BackendSpec

    names = tuple(v.strip() for v in value.split(",") if v.strip())
    try:
        for name in names:
            if name != "auto":
                BackendSpec.parse(name)
    except MeasureError as e:
        raise click.BadParameter(str(e)) from e
    if not names:
        raise click.BadParameter("give at least one backend, e.g. auto or torch-cpu,ort-cpu")
    return names


def _batch_sizes(ctx, param, value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: write batch sizes as integers separated by commas, e.g. 1,8,32") from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"{value!r}: batch sizes must be >= 1")
    return tuple(dict.fromkeys(sizes))


NEEDS_BASELINE_FILE = (
    "--update-baseline writes the file --baseline FILE names (nothing is written beside the gate file); "
    "e.g. --baseline benchmarks/gates/default-baseline.json in a checkout"
)


def default_out(artifact: str) -> Path:
    """`<folder>.bench` beside a model folder; `runs/<name>.bench` for a timm name."""
    path = Path(artifact)
    return path.with_name(path.name + ".bench") if path.is_dir() else Path("runs") / f"{artifact}.bench"


def _print_gates(outcome, gate_file: Path) -> None:
    from vitshrink.benchmarks.bench_report import gate_table

    click.echo(f"\ngates: {gate_file}")
    click.echo(gate_table(list(outcome.results)))
    if outcome.baseline_written:
        click.echo(f"baseline recorded: {outcome.baseline_written}")


@click.command("bench", cls=VitShrinkCommand)
@click.argument("artifact")
@click.option("--teacher", help="Teacher to compare with: artifact, timm folder or timm name "
                                "[default: the teacher recorded in ARTIFACT's compression.json].")
@click.option("--no-teacher", is_flag=True, help="Benchmark the student alone (no speedup, no accuracy drop).")
@click.option("--other-teacher", is_flag=True,
              help="Compare with a teacher whose weights differ from those ARTIFACT was compressed from (the "
                   "sha256 its compression.json records); without it such a teacher is refused.")
@click.option("--backends", default="auto", show_default=True, callback=_backends,
              help="Comma-separated runtime[:precision]: torch-cpu, torch-cuda, ort-cpu, ort-cuda, tensorrt; "
                   "precisions fp32, fp16, int8 (e.g. ort-cpu:int8). auto = every one this machine runs.")
@click.option("--batch-sizes", default="1,8,32", show_default=True, callback=_batch_sizes)
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for PyTorch and ONNX Runtime "
                                                            "(intra-op) [default: torch.get_num_threads()].")
@click.option("--warmup", type=click.IntRange(min=0), default=TimingPolicy.warmup_iters, show_default=True,
              help="Untimed calls per model before timing (at least).")
@click.option("--warmup-time", type=click.FloatRange(min=0), default=TimingPolicy.warmup_s, show_default=True,
              help="Seconds of warm-up per model (at least).")
@click.option("--min-iters", type=click.IntRange(min=1), default=TimingPolicy.min_iters, show_default=True,
              help="Timed calls per model and batch size (at least).")
@click.option("--min-time", type=click.FloatRange(min=0), default=TimingPolicy.min_time_s, show_default=True,
              help="Timed seconds per model and batch size (at least).")
@click.option("--max-time", type=click.FloatRange(min=0, min_open=True), default=TimingPolicy.max_time_s,
              show_default=True, help="Stop timing a model after this many seconds even below --min-iters.")
@click.option("--memory/--no-memory", default=True, show_default=True,
              help="Peak memory per backend, each measured in its own process.")
@click.option("--memory-batch", type=click.IntRange(min=1), help="Batch of the memory probes [default: largest].")
@click.option("--fvcore/--no-fvcore", default=True, show_default=True,
              help="Cross-check the analytic MACs with fvcore (attention counted).")
@click.option("--dataset", type=click.Choice(sorted(DATASETS)), help="Eval split for top-1/top-5 [default: none].")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False), help="Folder of that dataset.")
@click.option("--limit", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Eval images (a fixed random subset); 0 = the whole split.")
@click.option("--eval-batch", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for bench.json, bench.md, bench.png [default: ARTIFACT.bench].")
@click.option("--no-plot", is_flag=True, help="Do not draw bench.png.")
@click.option("--gate", "gate_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help=f"Check the results against a gate file (TOML; example: {DEFAULT_GATES.name} in benchmarks/gates).")
@click.option("--baseline", type=click.Path(dir_okay=False, path_type=Path),
              help="Baseline JSON for the gates [default: the one the gate file names, read only].")
@click.option("--update-baseline", is_flag=True,
              help="Record this run as the new baseline in the --baseline FILE (if the gates' own limits pass).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.pass_context
def bench_command(ctx: click.Context, artifact: str, **kw) -> None:
    """Is ARTIFACT faster, smaller and as accurate as its teacher on this machine's runtimes?

    Times teacher and student alternately on every backend and batch size, measures peak memory,
    FLOPs, file sizes and (with --dataset) accuracy, and writes bench.json, bench.md and bench.png.
    The teacher must have the weights ARTIFACT was compressed from (see --other-teacher).
    """
    from vitshrink.benchmarks.bench_job import BenchConfig, gate_bench, run_bench
    from vitshrink.benchmarks.bench_report import terminal_report

    if kw["update_baseline"] and kw["gate_file"] is None:
        raise click.BadParameter("--update-baseline needs --gate FILE", param_hint="--update-baseline")
    if kw["update_baseline"] and kw["baseline"] is None:
        raise click.BadParameter(NEEDS_BASELINE_FILE, param_hint="--update-baseline")
    if kw["no_teacher"] and kw["teacher"]:
        raise click.BadParameter("--teacher and --no-teacher exclude each other", param_hint="--no-teacher")
    if kw["no_teacher"] and kw["other_teacher"]:
        raise click.BadParameter("--other-teacher and --no-teacher exclude each other", param_hint="--no-teacher")
    try:
        config = BenchConfig(
            student=artifact, teacher=kw["teacher"], auto_teacher=not kw["no_teacher"],
            other_teacher=kw["other_teacher"], backends=kw["backends"],
            batch_sizes=kw["batch_sizes"], threads=kw["threads"],
            timing=TimingPolicy(warmup_iters=kw["warmup"], warmup_s=kw["warmup_time"], min_iters=kw["min_iters"],
                                min_time_s=kw["min_time"], max_time_s=kw["max_time"]),
            memory=kw["memory"], memory_batch=kw["memory_batch"], fvcore=kw["fvcore"], dataset=kw["dataset"],
            data_dir=kw["data_dir"], limit=kw["limit"] or None, eval_batch=kw["eval_batch"],
            out_dir=kw["out"] or default_out(artifact), plot=not kw["no_plot"], progress=not kw["no_progress"],
        )
    except VitShrinkError as e:
        raise click.BadParameter(str(e)) from e
    bench = run_bench(config, log=click.echo).to_dict()
    click.echo("\n" + terminal_report(bench))
    if kw["gate_file"] is not None:
        outcome = gate_bench(bench, kw["gate_file"], baseline=kw["baseline"], update_baseline=kw["update_baseline"])
        _print_gates(outcome, kw["gate_file"])
        if not outcome.passed:
            ctx.exit(1)


@click.command("gate", cls=VitShrinkCommand)
@click.argument("bench_json", type=click.Path(exists=True, path_type=Path))
@click.option("--gates", "gate_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=DEFAULT_GATES, show_default=True, help="Gate file (TOML).")
@click.option("--baseline", type=click.Path(dir_okay=False, path_type=Path),
              help="Baseline JSON [default: the one the gate file names, read only].")
@click.option("--update-baseline", is_flag=True,
              help="Record BENCH_JSON as the new baseline in the --baseline FILE (if the limits pass).")
@click.pass_context
def gate_command(ctx: click.Context, bench_json: Path, gate_file: Path, baseline: Path | None,
                 update_baseline: bool) -> None:
    """Check BENCH_JSON (a bench.json or its folder) against per-metric limits; exit 1 if any fails."""
    from vitshrink.benchmarks.bench_job import gate_bench
    from vitshrink.benchmarks.results import read_bench_json

    if update_baseline and baseline is None:
        raise click.BadParameter(NEEDS_BASELINE_FILE, param_hint="--update-baseline")
    outcome = gate_bench(read_bench_json(bench_json), gate_file, baseline=baseline, update_baseline=update_baseline)
    _print_gates(outcome, gate_file)
    if not outcome.passed:
        ctx.exit(1)


@click.command("profile", cls=VitShrinkCommand)
@click.option("--model", required=True, help="timm name (e.g. vit_small_patch16_224), timm folder or artifact; "
                                             "weights do not matter for timing (random ones are used for a name).")
@click.option("--model-arg", "model_args", multiple=True,
              help="Extra timm.create_model argument for a name, e.g. --model-arg img_size=32.")
@click.option("--target", metavar=f"[{'|'.join(PROFILE_TARGETS)}]", default="ort-cpu", show_default=True,
              callback=parsed_by(parse_target),
              help="Runtime to measure on, named as in bench --backends (tensorrt:fp16/tensorrt:fp32: TensorRT on this "
                   "machine's GPU, one engine build per sub-block and model, so a coarser --round-to builds fewer).")
@click.option("--precision", type=click.Choice(("fp32", "int8")), default=None,
              help="int8: time the static Q/DQ graphs `export --target onnx-int8` writes (ort-cpu only); the same as "
                   "--target ort-cpu:int8 [default: the target's].")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads [default: torch's thread count].")
@click.option("--round-to", type=click.IntRange(min=1), default=8, show_default=True,
              help="MLP widths are measured on this grid (compress --round-to).")
@click.option("--fit-models", type=click.IntRange(min=0), default=8, show_default=True,
              help="Whole models of reduced width timed to fit the table: one head with the whole MLP in every block, "
                   "every head with a quarter of the MLP, then random widths; the first two again with fewer "
                   "blocks (fewer than 2: one common scale).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Table file (JSON).")
@click.option("--no-progress", is_flag=True)
def profile_command(model: str, model_args: tuple[str, ...], target: str, precision: str | None, batch_size: int,
                    threads: int | None, round_to: int, fit_models: int, out: Path, no_progress: bool) -> None:
    """Measure a latency table of MODEL on TARGET: the input of `compress --reduce latency=... --latency-table`.

    Profile on the device the model will run on and compress anywhere: the table is a small JSON file.
    """
    import torch

    from vitshrink.compressor.core.model_loading import load_model, parse_model_args
    from vitshrink.exporters.runtime.latency_profile import profile

    target = _with_precision(target, precision)
    loaded = load_model(model, model_args=parse_model_args(model_args) or None)
    table = profile(loaded.model, target, batch=batch_size, threads=threads or torch.get_num_threads(),
                    round_to=round_to, fit_models=fit_models, progress=not no_progress, log=click.echo)
    table.save(out)
    click.echo(f"latency table: {out}")


def _with_precision(target: str, precision: str | None) -> str:
    """`--target` with `--precision` applied: ort-cpu + int8 -> ort-cpu:int8; a conflict is refused."""
    from vitshrink.exporters.runtime.latency_profile import target_precision

    if precision is None or precision == target_precision(target):
        return target
    if precision == "int8" and target == "ort-cpu":
        return "ort-cpu:int8"
    raise click.BadParameter(f"--precision {precision} with --target {target}: INT8 tables are measured on ort-cpu "
                             "(--target ort-cpu --precision int8)", param_hint="--precision")
