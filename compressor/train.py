"""One training loop for both jobs: distilling a pruned student from its teacher, and training a teacher.

AdamW, linear warm-up then cosine decay (per step), gradient clipping, optional bf16 autocast, an
evaluation each epoch, a JSON-lines log, a checkpoint each epoch and on Ctrl-C, exact resume.
Under torchrun every process takes the same number of steps (`sampling.epoch_shard` pads the epoch's
order by repeating its first indices), augments each sample from (seed, epoch, index) alone, and
resumes its own RNG stream, so a resumed run, mid-epoch, with any worker count, is bit-identical.
Kept student (`keep`): "best" (default) keeps, among the starting weights (the cut) and every epoch's,
the one with the best top-1 on the evaluation loader given to `train`, which in `compress` is the
validation split held out of the training data, never the test split (`vitshrink.compressor.selection`); "last"
keeps the last epoch's. Without an evaluation loader the last epoch's is kept.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vitshrink.compressor import distributed as ddp
from vitshrink.compressor.checkpoint import (
    has_checkpoint,
    load_checkpoint,
    read_state,
    rng_state,
    save_checkpoint,
)
from vitshrink.compressor.errors import VitShrinkError
from vitshrink.compressor.evaluate import evaluate
from vitshrink.compressor.kd_loss import KDWeights, distillation_loss
from vitshrink.compressor.precision import resolve_amp
from vitshrink.compressor.progress import progress_bar
from vitshrink.compressor.resume import check_same
from vitshrink.compressor.sampling import SeededSamples, epoch_shard, samples_per_rank
from vitshrink.compressor.selection import KEEP_CHOICES, BestOnValidation
from vitshrink.compressor.spec import ArchSpec


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3  # passes over the (possibly capped) training set
    batch_size: int = 128  # per process
    lr: float = 5e-4  # peak AdamW learning rate
    min_lr: float = 1e-6  # floor of the cosine decay
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5  # linear warm-up length (fractions allowed)
    grad_clip: float = 1.0  # max gradient norm (0 disables)
    label_smoothing: float = 0.0  # cross-entropy smoothing on labels
    amp: bool | None = None  # bf16 autocast; None = auto: on where bf16 is native (vitshrink.compressor.precision)
    seed: int = 0
    num_workers: int = 0  # DataLoader workers (results do not depend on it: see vitshrink.compressor.sampling)
    max_steps_per_epoch: int | None = None  # cap each epoch (quick runs); None = full pass
    keep: str = "best"  # "best": the best of start + every epoch on the evaluation loader; "last"
    kd: KDWeights = field(default_factory=KDWeights)

    def __post_init__(self):
        if self.keep not in KEEP_CHOICES:
            raise VitShrinkError(f"keep={self.keep!r}: use one of {', '.join(KEEP_CHOICES)}")

    def to_dict(self) -> dict:
        return asdict(self)


class TrainingInterrupted(VitShrinkError):
    """Raised after a clean checkpoint when the run was asked to stop (Ctrl-C)."""


@dataclass(frozen=True)
class TrainResult:
    history: list[dict]  # one row per epoch (what log.jsonl holds)
    seconds: float  # wall time across all runs of this stage (resumes included)
    kept_epoch: int | None = None  # the epoch whose weights the student holds (0 = the starting weights)

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}

    @property
    def images_per_s(self) -> float | None:
        """Training throughput, mean over the epochs (evaluation excluded); None before any epoch."""
        rates = [r["images_per_s"] for r in self.history if "images_per_s" in r]
        return round(sum(rates) / len(rates), 1) if rates else None

    @property
    def best_epoch(self) -> int | None:
        rows = [r for r in self.history if "eval_top1" in r]
        return max(rows, key=lambda r: r["eval_top1"])["epoch"] if rows else None


def _lr_lambda(total_steps: int, warmup_steps: int, floor: float) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


class _StopFlag:
    """First Ctrl-C asks the loop to checkpoint and stop after the current step; a second one kills."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
            self._previous = None
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def feature_sources_for(teacher_spec: ArchSpec, student_spec: ArchSpec) -> list[int]:
    """For each student block, the position in the teacher of the block it was cut from.

    Both specs name blocks by their index in the original unpruned model (`source_index`); a teacher
    that is itself a pruned artifact holds only some of them, at other positions.
    """
    position = {b.source_index: i for i, b in enumerate(teacher_spec.blocks)}
    missing = [b.source_index for b in student_spec.blocks if b.source_index not in position]
    if missing:
        raise VitShrinkError(
            f"hidden-state distillation: student blocks come from original blocks {missing}, which the teacher "
            f"(original blocks {sorted(position)}) does not have; distill from the model the student was cut "
            "from, or use --feature-weight 0"
        )
    return [position[b.source_index] for b in student_spec.blocks]


def _block_outputs(model: nn.Module) -> tuple[list[torch.Tensor], list]:
    store: list[torch.Tensor] = []
    hooks = [blk.register_forward_hook(lambda m, a, out: store.append(out)) for blk in model.blocks]
    return store, hooks


def train(
    student: nn.Module,
    train_set: Dataset,
    eval_loader: DataLoader | None,
    config: TrainConfig,
    work_dir: Path,
    *,
    teacher: nn.Module | None = None,
    feature_sources: list[int] | None = None,
    resume: bool = False,
    device: str = "cpu",
    should_stop: Callable[[int, int], bool] | None = None,
    progress: bool = True,
    desc: str = "train",
    start_metrics: dict | None = None,
) -> TrainResult:
    """Train `student` in place; with a `teacher`, by distillation (see `kd_loss`), else cross-entropy.

    `feature_sources[i]` is the position in `teacher.blocks` of the block whose output student block i
    learns (hidden-state KD; `feature_sources_for(teacher_spec, student_spec)` gives it).
    `should_stop(epoch, step)` is polled after every step, like Ctrl-C (tests use it to interrupt).
    `start_metrics` (top1, loss of the starting weights on `eval_loader`, same precision) saves one
    evaluation when `keep="best"`.
    """
    use_feats = teacher is not None and config.kd.feature_weight > 0 and feature_sources is not None
    if use_feats and (len(feature_sources) != len(student.blocks)
                      or not all(0 <= j < len(teacher.blocks) for j in feature_sources)):
        raise VitShrinkError(
            f"feature_sources {list(feature_sources)} must give, for each of the student's {len(student.blocks)} "
            f"blocks, a position among the teacher's {len(teacher.blocks)}; build it with feature_sources_for()"
        )
    work_dir = Path(work_dir)
    ckpt_dir, log_path = work_dir / "checkpoint", work_dir / "log.jsonl"
    rank, world = ddp.rank(), ddp.world_size()
    torch.manual_seed(config.seed + rank)  # model randomness (dropout) differs across processes; data's is per sample
    student.to(device).train()
    for p in student.parameters():
        p.requires_grad_(True)
    if teacher is not None:
        teacher.to(device).eval()  # frozen: only ever run under inference_mode below
    decay, no_decay = [], []
    for name, param in student.named_parameters():  # no decay on biases, norms, position embedding, tokens
        decays = param.ndim > 1 and "pos_embed" not in name and "token" not in name
        (decay if decays else no_decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    steps_per_epoch = math.ceil(samples_per_rank(len(train_set), world) / config.batch_size)  # same on every rank
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total, int(config.warmup_epochs * steps_per_epoch), config.min_lr / config.lr)
    )
    settings = {k: v for k, v in config.to_dict().items() if k != "num_workers"}  # any worker count resumes
    fingerprint = {"config": settings, "train_size": len(train_set), "world_size": world}
    start_epoch, start_step, history, seconds_before = 0, 0, [], 0.0
    amp_device, amp = torch.device(device).type, resolve_amp(config.amp, device)
    best = BestOnValidation(work_dir / "best") if config.keep == "best" and eval_loader is not None else None
    if resume and has_checkpoint(ckpt_dir):
        check_same(f"the checkpoint in {ckpt_dir}", read_state(ckpt_dir)["fingerprint"], fingerprint)
        if best is not None and rank == 0 and best.meta() is None:
            raise VitShrinkError(f"the checkpoint in {ckpt_dir} has no kept best weights beside it "
                                 f"({best.folder}); rerun without --resume to start over")
        state = load_checkpoint(ckpt_dir, student, optimizer, scheduler, rank=rank)
        start_epoch, start_step = state["epoch"], state["step"]
        history, seconds_before = state["history"], state["seconds"]
    else:
        if rank == 0 and log_path.exists():
            log_path.unlink()
        if best is not None and rank == 0:  # the starting weights (the cut) are the first candidate
            best.clear()
            m = start_metrics or evaluate(student, eval_loader, device=device, amp=amp)
            best.offer(student, 0, m["top1"], m["loss"])
    model = ddp.wrap(student)
    s_feats, s_hooks = _block_outputs(student) if use_feats else ([], [])
    t_feats, t_hooks = _block_outputs(teacher) if use_feats else ([], [])
    started = time.perf_counter()

    def checkpoint(epoch: int, step: int) -> None:
        rng_states = ddp.gather(rng_state())  # every rank's: each resumes its own stream
        if rank == 0:
            elapsed = seconds_before + time.perf_counter() - started
            save_checkpoint(
                ckpt_dir, student, optimizer, scheduler,
                {"epoch": epoch, "step": step, "history": history, "seconds": elapsed, "fingerprint": fingerprint},
                rng_states,
            )
        ddp.barrier()

    samples = SeededSamples(train_set, config.seed)

    try:
        with _StopFlag() as stop:
            for epoch in range(start_epoch, config.epochs):
                order = epoch_shard(len(train_set), config.seed, epoch, rank, world)
                order = order[: steps_per_epoch * config.batch_size]
                first = start_step if epoch == start_epoch else 0
                # its own generator: creating the iterator must not draw from the global RNG, or a
                # loader re-created mid-epoch on resume would shift the model's RNG stream (dropout)
                loader = DataLoader(
                    samples, batch_size=config.batch_size, sampler=[(epoch, i) for i in order[first * config.batch_size :]],
                    num_workers=config.num_workers, generator=torch.Generator().manual_seed(config.seed + epoch),
                )
                bar = progress_bar(loader, total=steps_per_epoch - first, desc=f"{desc} {epoch + 1}/{config.epochs}",
                                   enabled=progress and rank == 0, dynamic_ncols=True)
                loss_sum, seen, t0 = 0.0, 0, time.perf_counter()
                model.train()
                for step, (x, y) in enumerate(bar, start=first):
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    with torch.autocast(device_type=amp_device, dtype=torch.bfloat16, enabled=amp):
                        s_feats.clear()
                        t_feats.clear()
                        logits = model(x)
                        if teacher is None:
                            loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
                        else:
                            with torch.inference_mode():  # same autocast precision as the student
                                t_logits = teacher(x)
                            t_sel = [t_feats[j] for j in feature_sources] if use_feats else None
                            loss = distillation_loss(logits, t_logits, y, config.kd, s_feats or None, t_sel)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if config.grad_clip > 0:
                        nn.utils.clip_grad_norm_(student.parameters(), config.grad_clip)
                    optimizer.step()
                    scheduler.step()
                    loss_sum += loss.item() * len(y)
                    seen += len(y)
                    rate = seen / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(loss=f"{loss_sum / seen:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                                    img_s=f"{rate * world:.0f}")
                    last_step = step + 1 == steps_per_epoch
                    # any_rank: a stop seen by one process (Ctrl-C, should_stop) stops all at the same step
                    if not last_step and ddp.any_rank(
                        stop.requested or (should_stop is not None and should_stop(epoch, step + 1))
                    ):
                        checkpoint(epoch, step + 1)
                        raise TrainingInterrupted(
                            f"{desc}: stopped at epoch {epoch + 1}, step {step + 1}; checkpoint saved in "
                            f"{ckpt_dir}; rerun the same command with --resume to continue"
                        )
                bar.close()
                train_seconds = time.perf_counter() - t0  # images/s of training alone, not the evaluation
                metrics = evaluate(student, eval_loader, device=device, amp=amp) if eval_loader and rank == 0 else None
                history.append(_epoch_row(epoch, loss_sum, seen, t0, scheduler, metrics, train_seconds, world, amp))
                if best is not None and metrics is not None:
                    best.offer(student, epoch + 1, metrics["top1"], metrics["loss"])
                if rank == 0:
                    log_path.parent.mkdir(parents=True, exist_ok=True)
                    with open(log_path, "a") as f:
                        f.write(json.dumps(history[-1]) + "\n")
                checkpoint(epoch + 1, 0)
                if ddp.any_rank(stop.requested or (should_stop is not None and should_stop(epoch + 1, 0))):
                    raise TrainingInterrupted(
                        f"{desc}: stopped after epoch {epoch + 1}; checkpoint saved in {ckpt_dir}; "
                        "rerun the same command with --resume to continue"
                    )
    finally:
        for h in (*s_hooks, *t_hooks):
            h.remove()
    ddp.barrier()  # process 0 wrote the kept weights; every process loads the same
    kept = config.epochs
    if best is not None:
        kept = best.meta()["epoch"]
        if kept != config.epochs:
            best.restore(student)
    student.eval()
    return TrainResult(history=history, seconds=seconds_before + time.perf_counter() - started, kept_epoch=kept)


def _epoch_row(epoch: int, loss_sum: float, seen: int, t0: float, scheduler, metrics: dict | None,
               train_seconds: float, world: int = 1, amp: bool = False) -> dict:
    seconds = time.perf_counter() - t0
    row = {
        "epoch": epoch + 1,
        "train_loss": round(loss_sum / max(seen, 1), 6),
        "lr": scheduler.get_last_lr()[0],
        "seconds": round(seconds, 2),  # training and the evaluation
        "images_per_s": round(seen * world / max(train_seconds, 1e-9), 1),  # training steps only, all processes
        "amp": amp,  # whether the steps ran under bf16 autocast ("auto" resolved)
    }
    if metrics:
        row.update(eval_top1=metrics["top1"], eval_top5=metrics["top5"], eval_loss=round(metrics["loss"], 6))
    return row
