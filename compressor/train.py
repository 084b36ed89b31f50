"""One training loop for both jobs: distilling a pruned student from its teacher, and training a teacher.

AdamW, linear warm-up then cosine decay (per step), gradient clipping, optional bf16 autocast, an
evaluation each epoch, a JSON-lines log, a checkpoint each epoch and on Ctrl-C, exact resume.
Kept student: the last epoch's (choosing the best epoch by the evaluation split would select on the
data we report on); the best epoch is still recorded in the history.
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
from tqdm import tqdm

from compressor import distributed as ddp
from compressor.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from compressor.errors import VitShrinkError
from compressor.evaluate import evaluate
from compressor.kd_loss import KDWeights, distillation_loss


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
    amp: bool = False  # bf16 autocast (fast on CUDA and on CPUs with AVX512-BF16/AMX; slow elsewhere)
    seed: int = 0
    num_workers: int = 0  # DataLoader workers
    max_steps_per_epoch: int | None = None  # cap each epoch (quick runs); None = full pass
    kd: KDWeights = field(default_factory=KDWeights)

    def to_dict(self) -> dict:
        return asdict(self)


class TrainingInterrupted(VitShrinkError):
    """Raised after a clean checkpoint when the run was asked to stop (Ctrl-C)."""


@dataclass(frozen=True)
class TrainResult:
    history: list[dict]  # one row per epoch (what log.jsonl holds)
    seconds: float  # wall time across all runs of this stage (resumes included)

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}

    @property
    def best_epoch(self) -> int | None:
        rows = [r for r in self.history if "eval_top1" in r]
        return max(rows, key=lambda r: r["eval_top1"])["epoch"] if rows else None


def _epoch_indices(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of epoch `epoch`: a pure function of seed and epoch, so resume can replay it."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


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
) -> TrainResult:
    """Train `student` in place; with a `teacher`, by distillation (see `kd_loss`), else cross-entropy.

    `feature_sources[i]` is the teacher block whose output student block i learns (hidden-state KD).
    `should_stop(epoch, step)` is polled after every step, like Ctrl-C (tests use it to interrupt).
    """
    work_dir = Path(work_dir)
    ckpt_dir, log_path = work_dir / "checkpoint", work_dir / "log.jsonl"
    rank, world = ddp.rank(), ddp.world_size()
    torch.manual_seed(config.seed)
    student.to(device).train()
    for p in student.parameters():
        p.requires_grad_(True)
    if teacher is not None:
        teacher.to(device).eval()  # frozen: only ever run under no_grad below
    decay, no_decay = [], []
    for name, param in student.named_parameters():  # no decay on biases, norms, position embedding, tokens
        decays = param.ndim > 1 and "pos_embed" not in name and "token" not in name
        (decay if decays else no_decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    n_local = len(range(rank, len(train_set), world))
    steps_per_epoch = math.ceil(n_local / config.batch_size)
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total, int(config.warmup_epochs * steps_per_epoch), config.min_lr / config.lr)
    )
    fingerprint = {"config": config.to_dict(), "train_size": len(train_set), "world_size": world}
    start_epoch, start_step, history, seconds_before = 0, 0, [], 0.0
    if resume and has_checkpoint(ckpt_dir):
        state = load_checkpoint(ckpt_dir, student, optimizer, scheduler)
        if state["fingerprint"] != json.loads(json.dumps(fingerprint)):
            raise VitShrinkError(
                f"checkpoint in {ckpt_dir} was made with other settings; rerun with the same options or without --resume"
            )
        start_epoch, start_step = state["epoch"], state["step"]
        history, seconds_before = state["history"], state["seconds"]
    elif not resume and rank == 0 and log_path.exists():
        log_path.unlink()
    model = ddp.wrap(student)
    use_feats = teacher is not None and config.kd.feature_weight > 0 and feature_sources is not None
    s_feats, s_hooks = _block_outputs(student) if use_feats else ([], [])
    t_feats, t_hooks = _block_outputs(teacher) if use_feats else ([], [])
    amp_device = torch.device(device).type
    started = time.perf_counter()

    def checkpoint(epoch: int, step: int) -> None:
        if rank == 0:
            elapsed = seconds_before + time.perf_counter() - started
            save_checkpoint(
                ckpt_dir, student, optimizer, scheduler,
                {"epoch": epoch, "step": step, "history": history, "seconds": elapsed, "fingerprint": fingerprint},
            )
        ddp.barrier()

    try:
        with _StopFlag() as stop:
            for epoch in range(start_epoch, config.epochs):
                order = _epoch_indices(len(train_set), config.seed, epoch)[rank::world]
                order = order[: steps_per_epoch * config.batch_size]
                first = start_step if epoch == start_epoch else 0
                # its own generator: creating the iterator must not draw from the global RNG, or a
                # loader re-created mid-epoch on resume would shift every later augmentation
                loader = DataLoader(
                    train_set, batch_size=config.batch_size, sampler=order[first * config.batch_size :],
                    num_workers=config.num_workers, generator=torch.Generator().manual_seed(config.seed + epoch),
                )
                bar = tqdm(loader, total=steps_per_epoch - first, desc=f"{desc} {epoch + 1}/{config.epochs}",
                           disable=not progress or rank != 0, dynamic_ncols=True)
                loss_sum, seen, t0 = 0.0, 0, time.perf_counter()
                model.train()
                for step, (x, y) in enumerate(bar, start=first):
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    with torch.autocast(device_type=amp_device, dtype=torch.bfloat16, enabled=config.amp):
                        s_feats.clear()
                        t_feats.clear()
                        logits = model(x)
                        if teacher is None:
                            loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
                        else:
                            with torch.no_grad():
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
                    if not last_step and (stop.requested or (should_stop is not None and should_stop(epoch, step + 1))):
                        checkpoint(epoch, step + 1)
                        raise TrainingInterrupted(
                            f"{desc}: stopped at epoch {epoch + 1}, step {step + 1}; checkpoint saved in "
                            f"{ckpt_dir}; rerun the same command with --resume to continue"
                        )
                bar.close()
                metrics = evaluate(student, eval_loader, device=device, amp=config.amp) if eval_loader and rank == 0 else None
                history.append(_epoch_row(epoch, loss_sum, seen, t0, scheduler, metrics))
                if rank == 0:
                    log_path.parent.mkdir(parents=True, exist_ok=True)
                    with open(log_path, "a") as f:
                        f.write(json.dumps(history[-1]) + "\n")
                checkpoint(epoch + 1, 0)
                if stop.requested or (should_stop is not None and should_stop(epoch + 1, 0)):
                    raise TrainingInterrupted(
                        f"{desc}: stopped after epoch {epoch + 1}; checkpoint saved in {ckpt_dir}; "
                        "rerun the same command with --resume to continue"
                    )
    finally:
        for h in (*s_hooks, *t_hooks):
            h.remove()
    student.eval()
    return TrainResult(history=history, seconds=seconds_before + time.perf_counter() - started)


def _epoch_row(epoch: int, loss_sum: float, seen: int, t0: float, scheduler, metrics: dict | None) -> dict:
    seconds = time.perf_counter() - t0
    row = {
        "epoch": epoch + 1,
        "train_loss": round(loss_sum / max(seen, 1), 6),
        "lr": scheduler.get_last_lr()[0],
        "seconds": round(seconds, 2),
        "images_per_s": round(seen / max(seconds, 1e-9), 1),
    }
    if metrics:
        row.update(eval_top1=metrics["top1"], eval_top5=metrics["top5"], eval_loss=round(metrics["loss"], 6))
    return row
