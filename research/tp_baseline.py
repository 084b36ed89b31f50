"""The Torch-Pruning baseline: group-Taylor global pruning of heads and MLP channels, tuned to a budget.

Follows Torch-Pruning's timm ViT example (examples/transformers/prune_timm_vit.py), on the API of
torch-pruning 1.6.1:
`GroupTaylorImportance`, `BasePruner` with `global_pruning=True`, `num_heads={qkv: heads}`,
`prune_num_heads=True`, `prune_head_dims=False`, `round_to=1`, gradients of the cross-entropy
accumulated over the calibration batches before `step()`. Two choices differ from the example, so
that it prunes what vitshrink prunes and nothing else:

- the example's "bottleneck" mode: every `Mlp.fc2` is ignored with `model.head`, which keeps the
  embedding (residual) width; only heads and MLP hidden channels are removed;
- `head_pruning_ratio` follows `pruning_ratio` (the example hard-codes 0.5), and that one ratio is
  bisected until the budget metric lands within `tolerance` of the target.

timm 1.0.31's `Attention` reshapes its output with `self.attn_dim` (not the input width), so the
example's forward patch is not needed; only the attributes Torch-Pruning cannot see are set after
the cut (`num_heads`, `head_dim`, `attn_dim`), on the pruned copy alone, never on the class.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vitshrink.benchmarks.errors import CompareError
from vitshrink.compressor.planning.planner import model_cost

INSTALL_HINT = "pip install 'torch-pruning>=1.5' (or pip install -e '.[experiments]')"
MAX_RATIO = 0.95  # never ask Torch-Pruning for more than this channel ratio


@dataclass(frozen=True)
class TPCut:
    model: nn.Module  # the pruned copy (dense timm modules)
    pruning_ratio: float  # channel and head ratio handed to Torch-Pruning
    reduction: float  # achieved reduction of the budget metric vs the unpruned model
    tries: tuple[tuple[float, float], ...]  # (ratio, reduction) of every bisection step

    def to_dict(self) -> dict:
        return {"pruning_ratio": round(self.pruning_ratio, 6), "reduction": round(self.reduction, 6),
                "tries": [[round(r, 6), round(a, 6)] for r, a in self.tries]}


def import_torch_pruning():
    try:
        import torch_pruning
    except ImportError as e:
        raise CompareError(f"the torch-pruning method needs Torch-Pruning: {INSTALL_HINT}") from e
    return torch_pruning


def taylor_gradients(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> nn.Module:
    """A copy of `model` whose parameters hold the cross-entropy gradients summed over `batches`."""
    scored = copy.deepcopy(model).eval()
    device = next(scored.parameters()).device
    for p in scored.parameters():
        p.requires_grad_(True)
    scored.zero_grad(set_to_none=True)
    for x, y in batches:
        F.cross_entropy(scored(x.to(device)), y.to(device)).backward()
    return scored


def prune_once(scored: nn.Module, ratio: float, example: torch.Tensor) -> nn.Module:
    """Prune a copy of `scored` (which holds Taylor gradients) at one channel/head ratio."""
    tp = import_torch_pruning()
    from timm.layers import Attention

    model = copy.deepcopy(scored)
    for new, old in zip(model.parameters(), scored.parameters(), strict=True):
        new.grad = None if old.grad is None else old.grad.clone()  # deepcopy does not carry .grad
    attentions = [m for m in model.modules() if isinstance(m, Attention)]
    ignored = [model.head, *(blk.mlp.fc2 for blk in model.blocks)]  # keep the embedding width
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unwrapped cls_token / pos_embed notices
        pruner = tp.pruner.BasePruner(
            model, example, importance=tp.importance.GroupTaylorImportance(), global_pruning=True,
            pruning_ratio=ratio, ignored_layers=ignored, num_heads={a.qkv: a.num_heads for a in attentions},
            prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio, round_to=1,
        )
        pruner.step()
    for i, attn in enumerate(attentions):
        heads = pruner.num_heads[attn.qkv]
        if heads < 1:
            raise CompareError(f"Torch-Pruning removed every head of block {i} at ratio {ratio:.3f} "
                               "(it has no minimum-heads guard); lower the target")
        attn.num_heads = heads
        attn.head_dim = attn.qkv.out_features // (3 * heads)
        attn.attn_dim = heads * attn.head_dim
    model.zero_grad(set_to_none=True)
    return model.eval()


def tp_prune(
    model: nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    metric: str,
    target: float,
    tolerance: float = 0.01,
    max_tries: int = 20,
) -> TPCut:
    """Bisect Torch-Pruning's ratio until the `metric` reduction is within `tolerance` of `target`."""
    if not batches:
        raise CompareError("Torch-Pruning's Taylor importance needs at least one calibration batch")
    reference = model_cost(model, metric)
    scored = taylor_gradients(model, batches)
    example = batches[0][0][:1].to(next(model.parameters()).device)
    lo, hi = 0.0, MAX_RATIO
    tries: list[tuple[float, float]] = []
    best: tuple[float, float, nn.Module] | None = None
    for _ in range(max_tries):
        ratio = (lo + hi) / 2
        pruned = prune_once(scored, ratio, example)
        reduction = 1 - model_cost(pruned, metric) / reference
        tries.append((ratio, reduction))
        if best is None or abs(reduction - target) < abs(best[1] - target):
            best = (ratio, reduction, pruned)
        if abs(reduction - target) <= tolerance:
            break
        lo, hi = (ratio, hi) if reduction < target else (lo, ratio)
    ratio, reduction, pruned = best
    if abs(reduction - target) > tolerance:
        raise CompareError(f"Torch-Pruning reached {metric} -{reduction:.1%} at best (ratio {ratio:.3f}), "
                           f"not within {tolerance:.0%} of -{target:.0%}; tries: {tries}")
    return TPCut(pruned, ratio, reduction, tuple(tries))
