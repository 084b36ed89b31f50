"""Tiny pruned ViTs shared by the export tests (no tests in this file).

The models are cut with the real surgery (`vitshrink.compressor.core.surgery.apply_plan`): uneven heads and MLP
widths per block and a removed block, so an exporter that pads or drops widths shows up in the
weight counts and the parity numbers. They are then trained for a few steps on a synthetic
10-class task: a randomly initialised ViT gives nearly the same logits for every input (median
top-2 margin ~0.004), which would make top-1 agreement of FP16/INT8 files a coin toss.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import torch

from tests.conftest import TINY_ARGS, tiny_cfg
from vitshrink.compressor.core.artifact import save_artifact
from vitshrink.compressor.core.loaded_model import LoadedModel
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.core.surgery import PrunePlan, apply_plan

# the shared tiny ViT at 32x32 (4x4 patches: 65 tokens); embed 64 = 4 heads x 16; depth 3; MLP 256 wide
MODEL_ARGS = {**TINY_ARGS, "img_size": 32}
PLAN = PrunePlan(
    keep_heads={0: (0, 2, 3), 2: (1,)},  # 3 heads, (block 1 removed), 1 head
    keep_neurons={0: tuple(range(0, 256, 2)), 2: tuple(range(40))},  # MLP 128, (removed), 40
    drop_blocks=(1,),
)
PRUNED_WIDTHS = [(3, 128), (1, 40)]  # (heads, MLP hidden) per remaining block
TRAIN_STEPS = 60  # ~2 s on 2 cores; top-1 margins ~0.2 afterwards


def synthetic_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, 32, 32) images of 10 classes: a fixed random pattern per class plus unit noise."""
    patterns = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    return patterns[labels] + torch.randn(n, 3, 32, 32, generator=g), labels


@lru_cache(maxsize=1)
def _trained_pruned_vit() -> LoadedModel:
    torch.manual_seed(0)
    # the overlay gives the 32x32 model a 32x32 data config (timm keeps the architecture's 224 otherwise)
    loaded = load_model("vit_tiny_patch16_224", model_args={**MODEL_ARGS, "pretrained_cfg_overlay": tiny_cfg(32)})
    spec = apply_plan(loaded.model, loaded.spec, PLAN)
    model = loaded.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: on 2 shared cores, 2 threads were 10x slower than 1
    try:
        for step in range(TRAIN_STEPS):
            images, labels = synthetic_images(32, seed=step)
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return replace(loaded, spec=spec)


def tiny_pruned_vit() -> LoadedModel:
    """A fresh copy of the trained tiny pruned ViT (tests may change it)."""
    return copy.deepcopy(_trained_pruned_vit())


def tiny_artifact(folder: Path) -> tuple[Path, LoadedModel]:
    """Save `tiny_pruned_vit` as a vitshrink artifact folder."""
    loaded = tiny_pruned_vit()
    save_artifact(folder, loaded, {"method": "test", "plan": PLAN.to_dict()})
    return folder, loaded
