"""Importance of every head, MLP neuron and block: the change of the loss when it is removed.

Two parts are scored, each only when asked for: "units" (heads and MLP neurons, for width pruning:
`score_units`) and "blocks" (for depth pruning: `score_blocks`); `score` does both.

Criteria (a registry; an unknown name lists the valid ones):
- `taylor` (the paper's): first-order Taylor estimate of the loss change on structure gates,
  |dL/dg| at g = 1, averaged over calibration batches (Michel et al. 2019; Molchanov et al. 2019).
  One backward pass per batch gives every part.
- `ablation`: the exact loss change, one evaluation per head (units) or per block (blocks) with its
  gate at 0, plus the baseline; blocks need no backward pass. MLP neurons are too many to ablate one
  by one; they get Taylor scores.
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

from vitshrink.compressor.core.errors import VitShrinkError
from vitshrink.compressor.core.families import head_slices, mlp_hidden, neuron_slices, unit_magnitude
from vitshrink.compressor.core.progress import progress_bar
from vitshrink.compressor.core.structure_gates import Gates, gated

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Scores:
    """Estimated loss increase when each structure is removed (higher = more important).

    A part that was not scored is empty: `heads == neurons == ()` or `blocks.size == 0`.
    """

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
PARTS = ("units", "blocks")  # units: heads and MLP neurons (width pruning); blocks: whole blocks (depth)


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
    parts: Sequence[str] = PARTS,
    seed: int = 0,
    progress: bool = False,
) -> Scores:
    """Score the `parts` of `model` ("units": heads and neurons; "blocks") on `batches` with `criterion`."""
    if criterion not in CRITERIA:
        raise VitShrinkError(f"unknown importance criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if not parts or any(p not in PARTS for p in parts):
        raise VitShrinkError(f"unknown parts {tuple(parts)}; score some of {', '.join(PARTS)}")
    loss = loss or ScoringLoss()
    if loss.kind not in ("ce", "kl"):
        raise VitShrinkError(f"unknown scoring loss {loss.kind!r}; choose 'ce' or 'kl'")
    was_training = model.training
    model.eval()
    try:
        return CRITERIA[criterion](model, batches, loss, parts=frozenset(parts), seed=seed, progress=progress)
    finally:
        model.train(was_training)


def score_units(model: nn.Module, batches: Sequence[Batch], criterion: str = "taylor",
                loss: ScoringLoss | None = None, *, seed: int = 0, progress: bool = False) -> Scores:
    """Score the heads and MLP neurons of `model` (what width pruning uses); blocks are left empty."""
    return score(model, batches, criterion, loss, parts=("units",), seed=seed, progress=progress)


def score_blocks(model: nn.Module, batches: Sequence[Batch], criterion: str = "ablation",
                 loss: ScoringLoss | None = None, *, seed: int = 0, progress: bool = False) -> Scores:
    """Score the blocks of `model` (what depth pruning uses); heads and neurons are left empty."""
    return score(model, batches, criterion, loss, parts=("blocks",), seed=seed, progress=progress)


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
            for x, y in progress_bar(batches, desc="taylor scores", enabled=progress, leave=False):
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


def _to_scores(criterion: str, parts: frozenset[str], heads, neurons, blocks) -> Scores:
    """Scores of the asked-for `parts` (the others left empty)."""
    as_np = lambda t: t.detach().double().cpu().numpy()  # noqa: E731
    units = "units" in parts
    return Scores(
        criterion,
        tuple(as_np(h) for h in heads) if units else (),
        tuple(as_np(n) for n in neurons) if units else (),
        as_np(blocks) if "blocks" in parts else np.zeros(0),
    )


@register("taylor")
def _taylor(model, batches, loss, *, parts, seed, progress) -> Scores:
    means, _ = _taylor_sums(model, batches, loss, progress)
    return _to_scores("taylor", parts, means.heads, means.neurons, means.blocks)


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
def _ablation(model, batches, loss, *, parts, seed, progress) -> Scores:
    device = _device(model)
    targets = [_targets(model, loss, x.to(device)) for x, _ in batches]
    # neurons: too many to ablate, they get Taylor scores (the only backward pass, and only for units)
    neurons = _taylor_sums(model, batches, loss, progress=False)[0].neurons if "units" in parts else []
    with gated(model, requires_grad=False) as gates:
        base = _mean_loss(model, batches, loss, targets)
        units = []
        if "units" in parts:
            units += [(gates.heads[i], h) for i in range(len(gates.heads)) for h in range(len(gates.heads[i]))]
        if "blocks" in parts:
            units += [(gates.blocks, i) for i in range(len(gates.blocks))]
        deltas = []
        for gate, j in progress_bar(units, desc="ablation", enabled=progress, leave=False):
            gate[j] = 0.0
            deltas.append((_mean_loss(model, batches, loss, targets) - base).item())
            gate[j] = 1.0
    it = iter(deltas)
    heads = [torch.tensor([next(it) for _ in range(b.attn.num_heads)]) for b in model.blocks] if "units" in parts else []
    blocks = torch.tensor([next(it) for _ in range(len(model.blocks))]) if "blocks" in parts else torch.zeros(0)
    return _to_scores("ablation", parts, heads, neurons, blocks)


@register("l1")
def _l1(model, batches, loss, *, parts, seed, progress) -> Scores:
    heads, neurons, blocks = [], [], []
    for blk in model.blocks:
        # weight matrices only (no biases), as the baseline has always been defined
        head_weights = [s for s in head_slices(blk.attn)[0] if s.name == "weight"]
        neuron_weights = [s for s in neuron_slices(blk.mlp)[0] if s.name == "weight"]
        heads.append(unit_magnitude(head_weights, blk.attn.num_heads))
        neurons.append(unit_magnitude(neuron_weights, mlp_hidden(blk.mlp)))
        blocks.append(heads[-1].sum() + neurons[-1].sum())
    return _to_scores("l1", parts, heads, neurons, torch.stack(blocks))


@register("random")
def _random(model, batches, loss, *, parts, seed, progress) -> Scores:
    g = torch.Generator().manual_seed(seed)
    heads = [torch.rand(b.attn.num_heads, generator=g) for b in model.blocks]
    neurons = [torch.rand(mlp_hidden(b.mlp), generator=g) for b in model.blocks]
    return _to_scores("random", parts, heads, neurons, torch.rand(len(model.blocks), generator=g))


def calibration_batches(loader, num_batches: int, rank: int = 0, world_size: int = 1) -> list[Batch]:
    """The first `num_batches` batches of `loader`, this process's share (batches rank, rank+W, ...)."""
    out = []
    for i, batch in enumerate(loader):
        if i >= num_batches:
            break
        if i % world_size == rank:
            out.append((batch[0], batch[1]))
    return out
