"""Importance of every head, MLP neuron and block: the change of the loss when it is removed.

Criteria (a registry; an unknown name lists the valid ones):
- `taylor` (the paper's): first-order Taylor estimate of the loss change on structure gates,
  |dL/dg| at g = 1, averaged over calibration batches (Michel et al. 2019; Molchanov et al. 2019).
- `ablation`: the exact loss change, one evaluation per head and per block with its gate at 0.
  MLP neurons are too many to ablate one by one; they get Taylor scores.
- `l1`: weight magnitude of each structure's parameters (a baseline; not in loss units).
- `random`: uniform random scores (a baseline).
Scores are in units of loss (for taylor/ablation), so heads and neurons rank against each other.

Calibration batches are summed, then (under torch.distributed) all-reduced, so N processes that
each score a share of the batches give the same scores as one process scoring them all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from compressor.errors import VitShrinkError
from compressor.gates import Gates, gated

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Scores:
    """Estimated loss increase when each structure is removed (higher = more important)."""

    criterion: str
    heads: tuple[np.ndarray, ...]  # per block: (num_heads,)
    neurons: tuple[np.ndarray, ...]  # per block: (mlp_hidden,)
    blocks: np.ndarray  # (depth,)

    def to_dict(self) -> dict:
        return {
            "criterion": self.criterion,
            "heads": [h.round(6).tolist() for h in self.heads],
            "blocks": self.blocks.round(6).tolist(),
            "neurons_mean": [float(n.mean()) for n in self.neurons],
        }


@dataclass(frozen=True)
class ScoringLoss:
    """The loss whose change is measured: cross-entropy on labels, or KL to a teacher's logits."""

    kind: str = "ce"  # "ce" | "kl"
    teacher: nn.Module | None = None  # for "kl"; None means "the scored model before any cut"

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, target_logits: torch.Tensor | None) -> torch.Tensor:
        if self.kind == "ce":
            return F.cross_entropy(logits.float(), labels)
        # KL to the model's own unpruned logits has zero gradient at g = 1, so when no separate
        # teacher is given the teacher's hard predictions stand in as labels (no ground truth used).
        if self.teacher is None:
            return F.cross_entropy(logits.float(), target_logits.argmax(dim=1))
        return F.kl_div(
            F.log_softmax(logits.float(), dim=1), F.log_softmax(target_logits.float(), dim=1),
            reduction="batchmean", log_target=True,
        )


CRITERIA: dict[str, Callable[..., Scores]] = {}


def register(name: str):
    def wrap(fn):
        CRITERIA[name] = fn
        return fn

    return wrap


def score(
    model: nn.Module,
    batches: Sequence[Batch],
    criterion: str = "taylor",
    loss: ScoringLoss | None = None,
    *,
    seed: int = 0,
    progress: bool = False,
) -> Scores:
    """Score every head, neuron and block of `model` on `batches` with `criterion`."""
    if criterion not in CRITERIA:
        raise VitShrinkError(f"unknown importance criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    loss = loss or ScoringLoss()
    if loss.kind not in ("ce", "kl"):
        raise VitShrinkError(f"unknown scoring loss {loss.kind!r}; choose 'ce' or 'kl'")
    was_training = model.training
    model.eval()
    try:
        return CRITERIA[criterion](model, batches, loss, seed=seed, progress=progress)
    finally:
        model.train(was_training)


def _targets(model: nn.Module, loss: ScoringLoss, x: torch.Tensor) -> torch.Tensor | None:
    if loss.kind != "kl":
        return None
    with torch.no_grad():
        return (loss.teacher or model)(x).detach()


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _all_reduce(arrays: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sum flat tensors across processes (no-op in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return arrays
    flat = torch.cat([a.flatten() for a in arrays])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out, start = [], 0
    for a in arrays:
        out.append(flat[start : start + a.numel()].view_as(a))
        start += a.numel()
    return out


def _taylor_sums(model: nn.Module, batches: Sequence[Batch], loss: ScoringLoss, progress: bool) -> tuple[Gates, float]:
    """Sum over batches of |dL/dg| for every gate; returns gates holding the sums and the batch count."""
    device = _device(model)
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with gated(model) as gates:
            sums = [torch.zeros_like(g) for g in gates.parameters()]
            count = 0
            for x, y in tqdm(batches, desc="taylor scores", leave=False, disable=not progress):
                x, y = x.to(device), y.to(device)
                target = _targets(model, loss, x)
                gates.zero_grad()
                loss(model(x), y, target).backward()
                for s, g in zip(sums, gates.parameters(), strict=True):
                    s += g.grad.detach().abs()
                count += 1
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
    *sums, total = _all_reduce([*sums, torch.tensor([float(count)], device=device)])
    n_blocks = len(model.blocks)
    mean = [s / max(total.item(), 1.0) for s in sums]
    return Gates(heads=mean[:n_blocks], neurons=mean[n_blocks : 2 * n_blocks], blocks=mean[-1]), total.item()


def _to_scores(criterion: str, heads, neurons, blocks) -> Scores:
    as_np = lambda t: t.detach().double().cpu().numpy()  # noqa: E731
    return Scores(criterion, tuple(as_np(h) for h in heads), tuple(as_np(n) for n in neurons), as_np(blocks))


@register("taylor")
def _taylor(model, batches, loss, *, seed, progress) -> Scores:
    means, _ = _taylor_sums(model, batches, loss, progress)
    return _to_scores("taylor", means.heads, means.neurons, means.blocks)


@torch.no_grad()
def _mean_loss(model: nn.Module, batches: Sequence[Batch], loss: ScoringLoss, targets: list) -> torch.Tensor:
    device = _device(model)
    total = torch.zeros(2, device=device)
    for (x, y), t in zip(batches, targets, strict=True):
        total[0] += loss(model(x.to(device)), y.to(device), t)
        total[1] += 1
    (total,) = _all_reduce([total])
    return total[0] / total[1].clamp(min=1)


@register("ablation")
def _ablation(model, batches, loss, *, seed, progress) -> Scores:
    device = _device(model)
    targets = [_targets(model, loss, x.to(device)) for x, _ in batches]
    means, _ = _taylor_sums(model, batches, loss, progress=False)  # neurons: too many to ablate
    with gated(model, requires_grad=False) as gates:
        base = _mean_loss(model, batches, loss, targets)
        units = [(gates.heads[i], h) for i in range(len(gates.heads)) for h in range(len(gates.heads[i]))]
        units += [(gates.blocks, i) for i in range(len(gates.blocks))]
        deltas = []
        for gate, j in tqdm(units, desc="ablation", leave=False, disable=not progress):
            gate[j] = 0.0
            deltas.append((_mean_loss(model, batches, loss, targets) - base).item())
            gate[j] = 1.0
    it = iter(deltas)
    heads = [torch.tensor([next(it) for _ in range(len(h))]) for h in means.heads]
    blocks = torch.tensor([next(it) for _ in range(len(model.blocks))])
    return _to_scores("ablation", heads, means.neurons, blocks)


@register("l1")
def _l1(model, batches, loss, *, seed, progress) -> Scores:
    heads, neurons, blocks = [], [], []
    for blk in model.blocks:
        attn, mlp = blk.attn, blk.mlp
        qkv = attn.qkv.weight.detach().abs().view(3, attn.num_heads, attn.head_dim, -1).sum(dim=(0, 2, 3))
        proj = attn.proj.weight.detach().abs().view(-1, attn.num_heads, attn.head_dim).sum(dim=(0, 2))
        heads.append(qkv + proj)
        neurons.append(mlp.fc1.weight.detach().abs().sum(dim=1) + mlp.fc2.weight.detach().abs().sum(dim=0))
        blocks.append(sum(m.weight.detach().abs().sum() for m in (attn.qkv, attn.proj, mlp.fc1, mlp.fc2)))
    return _to_scores("l1", heads, neurons, torch.stack(blocks))


@register("random")
def _random(model, batches, loss, *, seed, progress) -> Scores:
    g = torch.Generator().manual_seed(seed)
    heads = [torch.rand(b.attn.num_heads, generator=g) for b in model.blocks]
    neurons = [torch.rand(b.mlp.fc1.out_features, generator=g) for b in model.blocks]
    return _to_scores("random", heads, neurons, torch.rand(len(model.blocks), generator=g))


def calibration_batches(loader, num_batches: int, rank: int = 0, world_size: int = 1) -> list[Batch]:
    """The first `num_batches` batches of `loader`, this process's share (batches rank, rank+W, ...)."""
    out = []
    for i, batch in enumerate(loader):
        if i >= num_batches:
            break
        if i % world_size == rank:
            out.append((batch[0], batch[1]))
    return out
