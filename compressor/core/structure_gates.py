"""Structure gates: a multiplier of 1 on every head, MLP neuron and block, installed with hooks.

Setting a gate to 0 removes that structure's contribution exactly as the surgery would (for the
pre-norm timm Block without scale norms): a head gate scales the head's slice of the `proj` input,
a neuron gate the neuron's column of the `fc2` input, a block gate the block's residual update.
The gradient of the loss with respect to a gate is the first-order loss change of removing it.
Hooks are removed on exit; the model's modules and forward are never patched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from vitshrink.compressor.core.families import head_dim, mlp_hidden


@dataclass
class Gates:
    heads: list[torch.Tensor]  # per block: (num_heads,)
    neurons: list[torch.Tensor]  # per block: (mlp_hidden,)
    blocks: torch.Tensor  # (depth,)

    def parameters(self) -> list[torch.Tensor]:
        return [*self.heads, *self.neurons, self.blocks]

    def zero_grad(self) -> None:
        for g in self.parameters():
            g.grad = None


def _head_gate_hook(gate: torch.Tensor, width: int):
    def hook(module, args):
        (x,) = args  # (B, N, heads * head_dim)
        b, n, _ = x.shape
        x = (x.view(b, n, -1, width) * gate.to(x.dtype)[:, None]).view(b, n, -1)
        return (x,)

    return hook


def _neuron_gate_hook(gate: torch.Tensor):
    def hook(module, args):
        (x,) = args  # (B, N, hidden)
        return (x * gate.to(x.dtype),)

    return hook


def _block_gate_hook(blocks_gate: torch.Tensor, index: int):
    def hook(module, args, output):
        x = args[0]  # block input, (B, N, D)
        return x + blocks_gate[index].to(output.dtype) * (output - x)

    return hook


@contextmanager
def gated(model: nn.Module, requires_grad: bool = True) -> Iterator[Gates]:
    """Install gates (all ones) on `model`'s blocks for the duration of the block."""
    device = next(model.parameters()).device
    gates = Gates(
        heads=[torch.ones(b.attn.num_heads, device=device, requires_grad=requires_grad) for b in model.blocks],
        neurons=[torch.ones(mlp_hidden(b.mlp), device=device, requires_grad=requires_grad) for b in model.blocks],
        blocks=torch.ones(len(model.blocks), device=device, requires_grad=requires_grad),
    )
    handles = []
    for i, blk in enumerate(model.blocks):
        handles.append(blk.attn.proj.register_forward_pre_hook(_head_gate_hook(gates.heads[i], head_dim(blk.attn))))
        handles.append(blk.mlp.fc2.register_forward_pre_hook(_neuron_gate_hook(gates.neurons[i])))
        handles.append(blk.register_forward_hook(_block_gate_hook(gates.blocks, i)))
    try:
        yield gates
    finally:
        for h in handles:
            h.remove()
