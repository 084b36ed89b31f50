"""One training loop for both jobs: distilling a pruned student from its teacher, and training a teacher.

AdamW, linear warm-up then cosine decay (per step), gradient clipping, optional bf16 autocast, an
evaluation each epoch, a JSON-lines log, a checkpoint each epoch and on Ctrl-C, exact resume.
Under torchrun every process takes the same number of steps (`sampling.epoch_shard` pads the epoch's
order by repeating its first indices), augments each sample from (seed, epoch, index) alone, and
resumes its own RNG stream, so a resumed run, mid-epoch, with any worker count, is bit-identical.
Kept student (`keep`): "best" (default) keeps, among the starting weights (the cut) and every epoch's,
the one with the best top-1 on the evaluation loader given to `train`, which in `compress` is the
validation split held out of the training data, never the test split (`vitshrink.compressor.training.selection`); "last"
keeps the last epoch's. Without an evaluation loader the last epoch's is kept.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.hooks import RemovableHandle

from vitshrink.compressor.core import distributed as ddp
from vitshrink.compressor.core.errors import VitShrinkError
from vitshrink.compressor.core.progress import progress_bar
from vitshrink.compressor.core.spec import ArchSpec
from vitshrink.compressor.data.sampling import SeededSamples, epoch_shard, samples_per_rank
from vitshrink.compressor.training.checkpoint import (
    has_checkpoint,
    load_checkpoint,
    read_state,
    rng_state,
    save_checkpoint,
)
from vitshrink.compressor.training.evaluate import evaluate
from vitshrink.compressor.training.kd_loss import KDWeights, distillation_loss
from vitshrink.compressor.training.optimizer import build_optimizer
from vitshrink.compressor.training.precision import resolve_amp
from vitshrink.compressor.training.resume import check_same
from vitshrink.compressor.training.selection import KEEP_CHOICES, BestOnValidation
from vitshrink.compressor.training.stopping import StopRequest


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
    amp: bool | None = None  # bf16 autocast; None = auto: on where bf16 is native (vitshrink.compressor.training.precision)
    seed: int = 0
    num_workers: int = 0  # DataLoader workers (results do not depend on it: see vitshrink.compressor.data.sampling)
    max_steps_per_epoch: int | None = None  # cap each epoch (quick runs); None = full pass
    keep: str = "best"  # "best": the best of start + every epoch on the evaluation loader; "last"
    kd: KDWeights = field(default_factory=KDWeights)

    def __post_init__(self):
        if self.keep not in KEEP_CHOICES:
            raise VitShrinkError(f"keep={self.keep!r}: use one of {', '.join(KEEP_CHOICES)}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise VitShrinkError(f"learning rate (--lr) {self.lr!r}: give a positive number such as 1e-4")
        if not (math.isfinite(self.min_lr) and self.min_lr >= 0):
            raise VitShrinkError(f"min_lr {self.min_lr!r}: give a number >= 0")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise VitShrinkError(f"weight decay (--weight-decay) {self.weight_decay!r}: give a number >= 0")
        if not (math.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0):
            raise VitShrinkError(f"warm-up (--warmup-epochs) {self.warmup_epochs!r}: give a number of epochs >= 0")

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


class _HiddenStates:
    """The block outputs of student and teacher in the current step, caught by forward hooks (hidden-state KD)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, sources: list[int]):
        self.sources = sources  # sources[i]: the teacher block whose output student block i learns
        self.student: list[torch.Tensor] = []  # one (B, N, D) tensor per student block, in order
        self.teacher: list[torch.Tensor] = []
        self._hooks = [*_append_outputs(student, self.student), *_append_outputs(teacher, self.teacher)]

    def clear(self) -> None:
        self.student.clear()
        self.teacher.clear()

    def pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(student block outputs, the teacher block outputs they learn), position by position."""
        return self.student, [self.teacher[j] for j in self.sources]

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


def _append_outputs(model: nn.Module, store: list[torch.Tensor]) -> list[RemovableHandle]:
    """Hooks that append each block's output to `store` as the model runs."""
    return [blk.register_forward_hook(lambda m, a, out: store.append(out)) for blk in model.blocks]


@dataclass
class _Run:
    """What the step, epoch and checkpoint functions of one `train` call share."""

    config: TrainConfig
    student: nn.Module
    teacher: nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    steps_per_epoch: int  # the same on every process
    fingerprint: dict  # what a resumed run must match: settings, training set size, process count
    work_dir: Path
    device: str
    amp: bool  # bf16 autocast, "auto" resolved
    desc: str  # progress bar and message prefix
    progress: bool
    rank: int
    world: int
    model: nn.Module | None = None  # the student, wrapped for DDP under torchrun (after any resume)
    hidden: _HiddenStates | None = None  # set when distilling hidden states
    history: list[dict] = field(default_factory=list)  # one row per finished epoch, resumed ones included
    seconds_before: float = 0.0  # training time of the runs this one resumes
    started: float = 0.0  # perf_counter() when this run's epochs began

    @property
    def ckpt_dir(self) -> Path:
        return self.work_dir / "checkpoint"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "log.jsonl"


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
    if use_feats:
        _check_feature_sources(student, teacher, feature_sources)
    run = _setup(student, teacher, len(train_set), config, Path(work_dir), device, desc, progress)
    best = BestOnValidation(run.work_dir / "best") if config.keep == "best" and eval_loader is not None else None
    start_epoch, start_step = _resume_or_start(run, best, resume, eval_loader, start_metrics)
    run.model = ddp.wrap(student)
    run.hidden = _HiddenStates(student, teacher, feature_sources) if use_feats else None
    run.started = time.perf_counter()
    samples = SeededSamples(train_set, config.seed)
    try:
        with StopRequest(should_stop) as stop:
            for epoch in range(start_epoch, config.epochs):
                first = start_step if epoch == start_epoch else 0
                row, metrics = _train_epoch(run, samples, epoch, first, stop, eval_loader)
                run.history.append(row)
                if best is not None and metrics is not None:
                    best.offer(student, epoch + 1, metrics["top1"], metrics["loss"])
                _append_log(run, row)
                _checkpoint(run, epoch + 1, 0)
                if stop.asked(epoch + 1, 0):
                    raise TrainingInterrupted(
                        f"{desc}: stopped after epoch {epoch + 1}; checkpoint saved in {run.ckpt_dir}; "
                        "rerun the same command with --resume to continue"
                    )
    finally:
        if run.hidden is not None:
            run.hidden.remove()
    kept = _keep_best(run, best)
    student.eval()
    return TrainResult(history=run.history, seconds=_elapsed(run), kept_epoch=kept)


def _check_feature_sources(student: nn.Module, teacher: nn.Module, feature_sources: list[int]) -> None:
    if len(feature_sources) != len(student.blocks) or not all(0 <= j < len(teacher.blocks) for j in feature_sources):
        raise VitShrinkError(
            f"feature_sources {list(feature_sources)} must give, for each of the student's {len(student.blocks)} "
            f"blocks, a position among the teacher's {len(teacher.blocks)}; build it with feature_sources_for()"
        )


def _setup(student: nn.Module, teacher: nn.Module | None, train_size: int, config: TrainConfig, work_dir: Path,
           device: str, desc: str, progress: bool) -> _Run:
    """Seed, move the models, build the optimizer and schedule: a run at epoch 0, step 0."""
    rank, world = ddp.rank(), ddp.world_size()
    torch.manual_seed(config.seed + rank)  # model randomness (dropout) differs across processes; data's is per sample
    student.to(device).train()
    for p in student.parameters():
        p.requires_grad_(True)
    if teacher is not None:
        teacher.to(device).eval()  # frozen: only ever run under inference_mode
    steps_per_epoch = math.ceil(samples_per_rank(train_size, world) / config.batch_size)  # same on every rank
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    optimizer, scheduler = build_optimizer(
        student, lr=config.lr, weight_decay=config.weight_decay, min_lr=config.min_lr,
        warmup_steps=int(config.warmup_epochs * steps_per_epoch), total_steps=steps_per_epoch * config.epochs,
    )
    settings = {k: v for k, v in config.to_dict().items() if k != "num_workers"}  # any worker count resumes
    return _Run(
        config=config, student=student, teacher=teacher, optimizer=optimizer, scheduler=scheduler,
        steps_per_epoch=steps_per_epoch,
        fingerprint={"config": settings, "train_size": train_size, "world_size": world},
        work_dir=work_dir, device=device, amp=resolve_amp(config.amp, device), desc=desc, progress=progress,
        rank=rank, world=world,
    )


def _resume_or_start(run: _Run, best: BestOnValidation | None, resume: bool, eval_loader: DataLoader | None,
                     start_metrics: dict | None) -> tuple[int, int]:
    """The (epoch, step) to start from: the checkpoint's when resuming, else (0, 0) on a clean slate.

    A fresh start deletes the earlier run's log and offers the starting weights (the cut) as the first
    candidate for the kept student.
    """
    if resume and has_checkpoint(run.ckpt_dir):
        check_same(f"the checkpoint in {run.ckpt_dir}", read_state(run.ckpt_dir)["fingerprint"], run.fingerprint)
        if best is not None and run.rank == 0 and best.meta() is None:
            raise VitShrinkError(f"the checkpoint in {run.ckpt_dir} has no kept best weights beside it "
                                 f"({best.folder}); rerun without --resume to start over")
        state = load_checkpoint(run.ckpt_dir, run.student, run.optimizer, run.scheduler, rank=run.rank)
        run.history, run.seconds_before = state["history"], state["seconds"]
        return state["epoch"], state["step"]
    if run.rank == 0 and run.log_path.exists():
        run.log_path.unlink()
    if best is not None and run.rank == 0:
        best.clear()
        m = start_metrics or evaluate(run.student, eval_loader, device=run.device, amp=run.amp)
        best.offer(run.student, 0, m["top1"], m["loss"])
    return 0, 0


def _train_epoch(run: _Run, samples: SeededSamples, epoch: int, first: int, stop: StopRequest,
                 eval_loader: DataLoader | None) -> tuple[dict, dict | None]:
    """Steps `first`.. of `epoch`, then the evaluation (process 0); returns the log row and the metrics.

    A stop asked before the epoch's last step saves a checkpoint at that step and raises TrainingInterrupted.
    """
    config = run.config
    order = epoch_shard(len(samples), config.seed, epoch, run.rank, run.world)
    order = order[: run.steps_per_epoch * config.batch_size]
    # its own generator: creating the iterator must not draw from the global RNG, or a
    # loader re-created mid-epoch on resume would shift the model's RNG stream (dropout)
    loader = DataLoader(
        samples, batch_size=config.batch_size, sampler=[(epoch, i) for i in order[first * config.batch_size :]],
        num_workers=config.num_workers, generator=torch.Generator().manual_seed(config.seed + epoch),
    )
    bar = progress_bar(loader, total=run.steps_per_epoch - first, desc=f"{run.desc} {epoch + 1}/{config.epochs}",
                       enabled=run.progress and run.rank == 0, dynamic_ncols=True)
    loss_sum, seen, t0 = 0.0, 0, time.perf_counter()
    run.model.train()
    for step, (x, y) in enumerate(bar, start=first):
        loss = _train_step(run, x, y)
        loss_sum += loss.item() * len(y)
        seen += len(y)
        rate = seen / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", lr=f"{run.scheduler.get_last_lr()[0]:.2e}",
                        img_s=f"{rate * run.world:.0f}")
        if step + 1 != run.steps_per_epoch and stop.asked(epoch, step + 1):
            _checkpoint(run, epoch, step + 1)
            raise TrainingInterrupted(
                f"{run.desc}: stopped at epoch {epoch + 1}, step {step + 1}; checkpoint saved in "
                f"{run.ckpt_dir}; rerun the same command with --resume to continue"
            )
    bar.close()
    train_seconds = time.perf_counter() - t0  # images/s of training alone, not the evaluation
    metrics = None
    if eval_loader and run.rank == 0:
        metrics = evaluate(run.student, eval_loader, device=run.device, amp=run.amp)
    row = _epoch_row(epoch, loss_sum, seen, t0, run.scheduler, metrics, train_seconds, run.world, run.amp)
    return row, metrics


def _train_step(run: _Run, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One optimizer step on the batch (x, y): forward, loss, backward, clip, step; returns the loss."""
    config, teacher = run.config, run.teacher
    x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
    with torch.autocast(device_type=torch.device(run.device).type, dtype=torch.bfloat16, enabled=run.amp):
        if run.hidden is not None:
            run.hidden.clear()
        logits = run.model(x)
        if teacher is None:
            loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
        else:
            with torch.inference_mode():  # same autocast precision as the student
                t_logits = teacher(x)
            s_feats, t_feats = run.hidden.pairs() if run.hidden is not None else (None, None)
            loss = distillation_loss(logits, t_logits, y, config.kd, s_feats, t_feats)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip > 0:
        nn.utils.clip_grad_norm_(run.student.parameters(), config.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    return loss


def _checkpoint(run: _Run, epoch: int, step: int) -> None:
    """Save the run to resume at (epoch, step): process 0 writes, every process's RNG state included."""
    rng_states = ddp.gather(rng_state())  # every rank's: each resumes its own stream
    if run.rank == 0:
        state = {"epoch": epoch, "step": step, "history": run.history, "seconds": _elapsed(run),
                 "fingerprint": run.fingerprint}
        save_checkpoint(run.ckpt_dir, run.student, run.optimizer, run.scheduler, state, rng_states)
    ddp.barrier()


def _append_log(run: _Run, row: dict) -> None:
    if run.rank == 0:
        run.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(run.log_path, "a") as f:
            f.write(json.dumps(row) + "\n")


def _keep_best(run: _Run, best: BestOnValidation | None) -> int:
    """Load the kept weights into the student (keep="best"); return their epoch (0 = the starting weights)."""
    ddp.barrier()  # process 0 wrote the kept weights; every process loads the same
    if best is None:
        return run.config.epochs
    kept = best.meta()["epoch"]
    if kept != run.config.epochs:
        best.restore(run.student)
    return kept


def _elapsed(run: _Run) -> float:
    """Training seconds so far, resumed runs included."""
    return run.seconds_before + time.perf_counter() - run.started


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
