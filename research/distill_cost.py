"""What distillation costs over plain training: one training step of a student alone against one
distillation step (the same student step plus the frozen teacher's forward pass), for the unpruned model
and for a student cut by the project's own score -> plan -> apply_plan (30% of FLOPs by default).

    python -m research.distill_cost --model /work/shared/models/cifar10-vit --batch-size 128 --steps 20

All four steps (plain and distill, for both students) are timed in turn, A B C D A B C D ..., in one
process, on one fixed random batch (data loading is not part of the cost measured), after warm-up;
each step is the real one of `vitshrink.compressor.training.train`: autocast, forward, loss, backward, gradient clipping,
AdamW. The ratio is the median over rounds of the distillation step over the plain step of the same student, with a
95% bootstrap interval over the paired rounds (`vitshrink.benchmarks.stats.speedup`). Goal: <= 1.3x.

torch.compile (CPU inductor) was tried on the students: logits matched eager to 2e-6, but the compiled
steps were slower (0.5-0.8x of eager on the reference teacher, 2 cores), so it is not an option here
(docs/distillation.md).
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import torch
import torch.nn.functional as F
from torch import nn

from vitshrink.benchmarks.stats import speedup
from vitshrink.cli_errors import VitShrinkCommand
from vitshrink.compressor.core.atomic import write_json_atomic
from vitshrink.compressor.core.errors import VitShrinkError
from vitshrink.compressor.core.flops import count_macs
from vitshrink.compressor.core.loaded_model import LoadedModel
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.core.surgery import apply_plan
from vitshrink.compressor.planning.planner import model_cost, model_costs, plan_width
from vitshrink.compressor.scoring.importance import score
from vitshrink.compressor.training.kd_loss import KDWeights, distillation_loss
from vitshrink.compressor.training.precision import AMP_CHOICES, amp_option, resolve_amp
from vitshrink.exporters.runtime.timing import Timer, TimingPolicy, measure

GOAL = 1.3  # a distillation step should cost at most this many plain steps


@dataclass(frozen=True)
class CostConfig:
    model: str  # teacher: timm name, timm folder or artifact
    batch_size: int = 128
    steps: int = 20  # timed steps of each kind (after `warmup` untimed ones)
    warmup: int = 2
    reduce: float = 0.3  # FLOPs fraction the cut student loses
    amp: bool | None = None  # bf16 autocast; None = auto (vitshrink.compressor.training.precision)
    device: str = "cpu"
    seed: int = 0


@dataclass(frozen=True)
class StudentCost:
    name: str
    macs: int  # per image
    plain_ms: float  # median step time, student alone
    distill_ms: float  # median step time, student + teacher forward
    ratio: float  # distill / plain: the median of the per-round ratios
    ratio_ci: tuple[float, float]  # 95% bootstrap interval of the ratio
    plain_images_per_s: float
    distill_images_per_s: float


def cut_student(teacher: LoadedModel, reduce: float, batch: tuple[torch.Tensor, torch.Tensor]) -> nn.Module:
    """A copy of the teacher with `reduce` of its MACs removed by Taylor scores on `batch` (random data)."""
    student = copy.deepcopy(teacher.model).eval()
    scores = score(student, [batch], "taylor")
    total = model_cost(student, "flops")
    plan = plan_width(model_costs(student, "flops"), scores, target_removed=reduce * total, reference_total=total)
    apply_plan(student, teacher.spec, plan.plan)
    return student


def training_step(student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
                  amp: bool, kd: KDWeights | None = None) -> Callable[[], None]:
    """One step of `vitshrink.compressor.training.train`'s loop on a fixed batch: with a teacher, the distillation step."""
    kd = kd or KDWeights()  # the CLI's defaults
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    device_type = x.device.type

    def step() -> None:
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=amp):
            logits = student(x)
            if teacher is None:
                loss = F.cross_entropy(logits.float(), y)
            else:
                with torch.inference_mode():
                    t_logits = teacher(x)
                loss = distillation_loss(logits, t_logits, y, kd)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()

    return step


def run_cost(config: CostConfig, log: Callable[[str], None] = print) -> dict:
    """Time plain and distillation steps of the unpruned and the cut student, interleaved."""
    if config.steps < 2:
        raise VitShrinkError(f"--steps {config.steps}: need at least 2 timed steps for a median and its interval")
    torch.manual_seed(config.seed)
    teacher = load_model(config.model)
    c, h, w = teacher.data_config["input_size"]
    num_classes = teacher.model.num_classes
    device = torch.device(config.device)
    amp = resolve_amp(config.amp, device)
    x = torch.randn(config.batch_size, c, h, w, device=device)
    y = torch.randint(0, num_classes, (config.batch_size,), device=device)
    students = {"unpruned": copy.deepcopy(teacher.model),
                f"cut flops={config.reduce:g}": cut_student(teacher, config.reduce, (x[:32].cpu(), y[:32].cpu()))}
    t_model = teacher.model.to(device).eval()
    for p in t_model.parameters():
        p.requires_grad_(False)
    calls, macs = {}, {}
    for name, student in students.items():
        student.to(device).train()
        macs[name] = count_macs(copy.deepcopy(student).cpu().eval())
        calls[f"{name}/plain"] = training_step(student, None, x, y, amp)
        calls[f"{name}/distill"] = training_step(student, t_model, x, y, amp)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    policy = TimingPolicy(warmup_iters=config.warmup, warmup_s=0.0, min_iters=config.steps, min_time_s=0.0,
                          max_time_s=1e9, max_iters=config.steps)
    log(f"timing {len(calls)} steps x {config.steps} (+{config.warmup} warm-up), batch {config.batch_size}, "
        f"{device.type}, bf16 autocast {'on' if amp else 'off'}, {torch.get_num_threads()} threads")
    samples = measure(calls, policy, Timer(sync=sync))
    rows = []
    for name in students:
        plain, distill = samples[f"{name}/plain"], samples[f"{name}/distill"]
        ratio = speedup(distill, plain, seed=config.seed)  # median of distill_i / plain_i over the rounds
        p_ms, d_ms = statistics.median(plain) * 1e3, statistics.median(distill) * 1e3
        rows.append(StudentCost(
            name=name, macs=macs[name], plain_ms=round(p_ms, 1), distill_ms=round(d_ms, 1),
            ratio=round(ratio.ratio, 3), ratio_ci=(round(ratio.ci_low, 3), round(ratio.ci_high, 3)),
            plain_images_per_s=round(config.batch_size / (p_ms / 1e3), 1),
            distill_images_per_s=round(config.batch_size / (d_ms / 1e3), 1),
        ))
    return {"config": asdict(config), "amp": amp, "threads": torch.get_num_threads(), "goal": GOAL,
            "teacher_macs": count_macs(copy.deepcopy(teacher.model).cpu().eval()),
            "students": [asdict(r) for r in rows]}


def format_rows(result: dict) -> str:
    header = ("student", "MACs (M)", "plain ms", "distill ms", "ratio", "95% CI", "plain img/s", "distill img/s")
    rows = [(r["name"], f"{r['macs'] / 1e6:.1f}", f"{r['plain_ms']:.1f}", f"{r['distill_ms']:.1f}",
             f"{r['ratio']:.2f}x", f"{r['ratio_ci'][0]:.2f}-{r['ratio_ci'][1]:.2f}", f"{r['plain_images_per_s']:.0f}",
             f"{r['distill_images_per_s']:.0f}") for r in result["students"]]
    widths = [max(len(x[i]) for x in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in (header, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    verdict = ", ".join(f"{r['name']}: {'within' if r['ratio'] <= GOAL else 'over'} the {GOAL}x goal"
                        for r in result["students"])
    return "\n".join([*lines, verdict])


@click.command(cls=VitShrinkCommand)
@click.option("--model", required=True, help="Teacher: timm name, timm folder or vitshrink artifact.")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--steps", type=click.IntRange(min=2), default=20, show_default=True, help="Timed steps of each kind.")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True, help="Untimed steps of each kind.")
@click.option("--reduce", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.3, show_default=True,
              help="FLOPs fraction the cut student loses.")
@click.option("--amp", type=click.Choice(AMP_CHOICES), default="auto", show_default=True,
              help="bf16 autocast (auto: on where bf16 is native).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the result here.")
def main(model: str, batch_size: int, steps: int, warmup: int, reduce: float, amp: str, device: str,
         json_out: Path | None) -> None:
    """Time plain training steps against distillation steps (student + teacher forward)."""
    config = CostConfig(model=model, batch_size=batch_size, steps=steps, warmup=warmup, reduce=reduce,
                        amp=amp_option(amp), device=device)
    result = run_cost(config, log=click.echo)
    click.echo(format_rows(result))
    if json_out:
        write_json_atomic(json_out, result)


if __name__ == "__main__":
    main()
