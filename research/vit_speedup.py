"""`python -m research.vit_speedup`: does a ViT pruned by 30% of its FLOPs get 1/0.7 = 1.43x faster?

On this CPU with ONNX Runtime, a `vit_small_patch16_224` (random weights: speed does not depend on
them) is cut to about 30% fewer MACs in several ways, each exported with the exporter's settings
and timed against the unpruned model, alternately (A B A B), at each batch size:

    mlp-exact / mlp-r8 / mlp-r64   only MLP neurons, same width in every block, kept width exact /
                                   a multiple of 8 / of 64
    heads4-mlp-r64                 4 of 6 heads in every block, MLP (multiple of 64) for the rest
    uneven-heads-mlp-r64           as many heads removed, but unevenly (6 and 2 heads, alternating)
    planned-r8 / planned-r64       the core planner on Taylor scores of random images (what
                                   `vitshrink compress` would cut on this untrained model), round_to 8 / 64
    depth                          whole blocks removed (the block count closest to the target)

Each row reports the MACs actually removed, the FLOPs ratio, and the measured speedup with its
95% interval; realised = speedup / FLOPs ratio (1.0: every MAC saved became speed).
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from pathlib import Path

import click
import torch

from research.ort_pair import ort_cpu_runtime, time_pair
from vitshrink.cli_errors import VitShrinkCommand
from vitshrink.compressor.core.atomic import write_json_atomic
from vitshrink.compressor.core.flops import count_macs
from vitshrink.compressor.core.loaded_model import LoadedModel
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.core.surgery import PrunePlan, apply_plan
from vitshrink.compressor.jobs.compress_report import format_table
from vitshrink.compressor.planning.planner import model_costs, plan_width, unit_costs
from vitshrink.exporters.io_spec import IOSpec
from vitshrink.exporters.runtime.backends import RuntimeOptions
from vitshrink.exporters.runtime.timing import TimingPolicy

PlanMaker = Callable[[torch.nn.Module, float, int], PrunePlan]  # (model, reduction, seed) -> plan


def uniform_plan(model: torch.nn.Module, reduction: float, heads_kept: list[int], round_to: int) -> PrunePlan:
    """Keep `heads_kept[i]` heads in block i, and one MLP width (a multiple of `round_to`) in every
    block, chosen so that the total MAC reduction is as close to `reduction` as that rounding allows."""
    costs = unit_costs(model, "flops")
    target = reduction * count_macs(model)
    head_cut = sum((blk.attn.num_heads - k) * costs.head[i]
                   for i, (blk, k) in enumerate(zip(model.blocks, heads_kept, strict=True)))
    hidden = model.blocks[0].mlp.fc1.out_features
    per_block = (target - head_cut) / len(model.blocks) / costs.neuron[0]  # neurons to remove per block
    keep = min(hidden, max(round_to, round((hidden - per_block) / round_to) * round_to))
    return PrunePlan(
        keep_heads={i: tuple(range(k)) for i, k in enumerate(heads_kept)},
        keep_neurons={i: tuple(range(keep)) for i in range(len(model.blocks))},
    )


def _heads(model: torch.nn.Module) -> list[int]:
    return [blk.attn.num_heads for blk in model.blocks]


def uniform_mlp(round_to: int) -> PlanMaker:
    """Only MLP neurons, the same kept width (a multiple of `round_to`) in every block."""
    return lambda model, reduction, seed: uniform_plan(model, reduction, _heads(model), round_to)


def uniform_heads(model: torch.nn.Module, reduction: float, seed: int) -> PrunePlan:
    """2/3 of the heads in every block, MLP widths (multiple of 64) for the rest."""
    return uniform_plan(model, reduction, [round(h * 2 / 3) for h in _heads(model)], 64)


def uneven_heads(model: torch.nn.Module, reduction: float, seed: int) -> PrunePlan:
    """As many heads removed as `uniform_heads`, but all from every other block."""
    heads = [h if i % 2 == 0 else max(1, h - 2 * (h - round(h * 2 / 3))) for i, h in enumerate(_heads(model))]
    return uniform_plan(model, reduction, heads, 64)


def planned(round_to: int) -> PlanMaker:
    """The core planner on Taylor scores of random images (untrained model: the layout is printed)."""

    def make(model: torch.nn.Module, reduction: float, seed: int) -> PrunePlan:
        from vitshrink.compressor.scoring.importance import score

        g = torch.Generator().manual_seed(seed)
        size = model.patch_embed.img_size
        batches = [(torch.randn(8, 3, *size, generator=g), torch.randint(0, model.num_classes, (8,), generator=g))
                   for _ in range(2)]
        scores = score(model, batches, "taylor", seed=seed)
        total = count_macs(model)
        return plan_width(model_costs(model, "flops"), scores, target_removed=reduction * total, reference_total=total,
                          round_to=round_to).plan

    return make


def depth_plan(model: torch.nn.Module, reduction: float, seed: int) -> PrunePlan:
    """Whole blocks (the last ones; which ones does not change the speed): the count closest to the target."""
    depth = len(model.blocks)
    empty = copy.deepcopy(model)
    empty.blocks = torch.nn.Sequential()
    per_block = (count_macs(model) - count_macs(empty)) / depth
    n = min(range(1, depth), key=lambda k: abs(k * per_block - reduction * count_macs(model)))
    return PrunePlan(drop_blocks=tuple(range(depth - n, depth)))


VARIANTS: dict[str, PlanMaker] = {
    "mlp-exact": uniform_mlp(1),
    "mlp-r8": uniform_mlp(8),
    "mlp-r64": uniform_mlp(64),
    "heads4-mlp-r64": uniform_heads,
    "uneven-heads-mlp-r64": uneven_heads,
    "planned-r8": planned(8),
    "planned-r64": planned(64),
    "depth": depth_plan,
}


def _layout(model: torch.nn.Module) -> tuple[str, str]:
    """Heads and MLP widths per block, compressed: '6' when uniform, else 'min-max (sum)'."""
    def short(values: list[int]) -> str:
        return str(values[0]) if len(set(values)) == 1 else f"{min(values)}-{max(values)} (sum {sum(values)})"

    return short(_heads(model)), short([blk.mlp.fc1.out_features for blk in model.blocks])


def run(model_name: str, variants: list[str], reduction: float, batch_sizes: tuple[int, ...], threads: int,
        policy: TimingPolicy, seed: int, log: Callable[[str], None]) -> list[dict]:
    """Time every variant against the unpruned model on ONNX Runtime (CPU); one dict per (variant, batch)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # the surgery and exports; ORT gets `threads` through its session options
    try:
        return _run(model_name, variants, reduction, batch_sizes, threads, policy, seed, log)
    finally:
        torch.set_num_threads(previous)


def _run(model_name: str, variants: list[str], reduction: float, batch_sizes: tuple[int, ...], threads: int,
         policy: TimingPolicy, seed: int, log: Callable[[str], None]) -> list[dict]:
    teacher: LoadedModel = load_model(model_name)
    io = IOSpec.from_model(teacher.model, teacher.data_config)
    options = RuntimeOptions(threads=threads, seed=seed)
    teacher_macs = count_macs(teacher.model)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vit-speedup-") as tmp:
        def runtime_of(model: torch.nn.Module, name: str):
            return ort_cpu_runtime(model, io, Path(tmp) / f"{name}.onnx", options)

        log(f"exporting {model_name} ({teacher_macs / 1e9:.3f} GMACs)")
        teacher_rt = runtime_of(teacher.model, "teacher")
        for name in variants:
            model = copy.deepcopy(teacher.model)
            apply_plan(model, teacher.spec, VARIANTS[name](model, reduction, seed))
            macs = count_macs(model)
            heads, mlp = _layout(model)
            log(f"{name}: heads {heads}, MLP {mlp}, depth {len(model.blocks)}, MACs -{1 - macs / teacher_macs:.1%}")
            student_rt = runtime_of(model, name)
            for batch in batch_sizes:
                teacher_ms, student_ms, s = time_pair(teacher_rt, student_rt, batch, policy, seed)
                ratio = teacher_macs / macs
                rows.append({
                    "variant": name, "batch": batch, "heads": heads, "mlp": mlp, "depth": len(model.blocks),
                    "macs": macs, "flops_reduction": 1 - macs / teacher_macs, "flops_ratio": ratio,
                    "teacher_p50_ms": teacher_ms, "student_p50_ms": student_ms,
                    **s.to_dict(), "realised": s.ratio / ratio,
                })
                log(f"  batch {batch}: {s.ratio:.2f}x ({s.ci_low:.2f}-{s.ci_high:.2f}) for a {ratio:.2f}x FLOPs "
                    f"ratio: {s.ratio / ratio:.0%} realised")
    return rows


def table(rows: list[dict]) -> str:
    header = ("variant", "batch", "heads", "MLP", "depth", "MACs -%", "FLOPs ratio", "teacher ms", "student ms",
              "speedup", "95% CI", "realised")
    body = [(r["variant"], str(r["batch"]), r["heads"], r["mlp"], str(r["depth"]), f"{r['flops_reduction']:.1%}",
             f"{r['flops_ratio']:.2f}x", f"{r['teacher_p50_ms']:.2f}", f"{r['student_p50_ms']:.2f}",
             f"{r['ratio']:.2f}x", f"{r['ci_low']:.2f}-{r['ci_high']:.2f}", f"{r['realised']:.0%}") for r in rows]
    return format_table(body, header)


@click.command(cls=VitShrinkCommand)
@click.option("--model", "model_name", default="vit_small_patch16_224", show_default=True,
              help="timm name (random weights) or model folder.")
@click.option("--variants", default=",".join(VARIANTS), show_default=True,
              help=f"Comma-separated, from: {', '.join(VARIANTS)}.")
@click.option("--reduction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.3, show_default=True,
              help="Fraction of MACs to remove.")
@click.option("--batch-sizes", default="1,8", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=torch.get_num_threads(), show_default=True,
              help="ONNX Runtime intra-op threads.")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True)
@click.option("--min-iters", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--min-time", type=click.FloatRange(min=0), default=2.0, show_default=True)
@click.option("--max-time", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write the rows as JSON.")
def main(model_name: str, variants: str, reduction: float, batch_sizes: str, threads: int, warmup: int,
         min_iters: int, min_time: float, max_time: float, seed: int, json_path: Path | None) -> None:
    """Realised speedup against the FLOPs ratio for ways of pruning the same share of MACs (ONNX Runtime, CPU)."""
    names = [v.strip() for v in variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise click.BadParameter(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}", param_hint="--variants")
    batches = tuple(int(b) for b in batch_sizes.split(","))
    policy = TimingPolicy(warmup_iters=warmup, warmup_s=0.0, min_iters=min_iters, min_time_s=min_time, max_time_s=max_time)
    rows = run(model_name, names, reduction, batches, threads, policy, seed, log=click.echo)
    click.echo("\n" + table(rows))
    if json_path is not None:
        write_json_atomic(json_path, rows)


if __name__ == "__main__":
    main()
