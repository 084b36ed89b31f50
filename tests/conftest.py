"""Shared fixtures: tiny real timm ViTs (no downloads), one of them trained on digits."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import timm
import torch

from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.data.datasets import build_dataset, build_loader
from vitshrink.compressor.training.train import TrainConfig, train

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
# The tiny ViT the tests build on (helpers and tests override single fields: `{**TINY_ARGS, "depth": 2}`):
# 16x16 images in 4x4 patches (17 tokens), embed 64 = 4 heads x 16, MLP 256, 3 blocks, 10 classes
TINY_ARGS = {"img_size": 16, "patch_size": 4, "embed_dim": 64, "depth": 3, "num_heads": 4, "num_classes": 10}


def tiny_cfg(img_size: int) -> dict:
    """`pretrained_cfg_overlay` for a tiny ViT: its own input size (timm keeps the architecture's 224 otherwise)."""
    return {"input_size": (3, img_size, img_size), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


TINY_CFG = tiny_cfg(TINY_ARGS["img_size"])


def tiny_vit(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    args = {**TINY_ARGS, **overrides}
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **args).eval()


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory):
    """A tiny ViT trained on digits for a few epochs (a model whose importance scores mean something)."""
    torch.manual_seed(0)
    loaded = load_model("vit_tiny_patch16_224", model_args={**TINY_ARGS, "pretrained_cfg_overlay": TINY_CFG})
    train_set = build_dataset("digits", None, "train", loaded.data_config, augment=False)
    config = TrainConfig(epochs=6, batch_size=64, lr=3e-3, warmup_epochs=1, seed=0)
    train(loaded.model, train_set, None, config, tmp_path_factory.mktemp("teacher"), progress=False)
    loaded.model.eval()
    return loaded


@pytest.fixture
def digits_teacher(trained_digits):
    """A fresh copy of the trained digits teacher (tests may cut it)."""
    import copy

    return dataclasses.replace(trained_digits, model=copy.deepcopy(trained_digits.model))


@pytest.fixture(scope="session")
def digits_eval_loader(trained_digits):
    ds = build_dataset("digits", None, "eval", trained_digits.data_config)
    return build_loader(ds, 128)


@pytest.fixture(scope="session")
def digits_calib(trained_digits):
    from vitshrink.compressor.scoring.importance import calibration_batches

    ds = build_dataset("digits", None, "train", trained_digits.data_config, limit=256, seed=1)
    return calibration_batches(build_loader(ds, 64), 4)
