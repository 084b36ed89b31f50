"""How well does the Taylor estimate rank heads and blocks like the exact loss change does?

    python -m research.taylor_vs_ablation --model ../shared/models/cifar10-vit \
        --dataset imagefolder --data-dir ../shared/datasets/cifar10 --calib-batches 8

Prints Spearman's rho between Taylor and exact-ablation scores over all heads, and over blocks.
"""

from __future__ import annotations

import json
import time

import click
import numpy as np
from scipy.stats import spearmanr

from vitshrink.cli_errors import VitShrinkCommand
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.data.datasets import build_dataset, build_loader
from vitshrink.compressor.scoring.importance import calibration_batches, score


@click.command(cls=VitShrinkCommand)
@click.option("--model", required=True)
@click.option("--dataset", default="imagefolder", show_default=True)
@click.option("--data-dir", default=None)
@click.option("--calib-batches", type=int, default=8, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
def main(model: str, dataset: str, data_dir: str | None, calib_batches: int, batch_size: int, seed: int) -> None:
    loaded = load_model(model)
    calib_set = build_dataset(dataset, data_dir, "train", loaded.data_config, limit=calib_batches * batch_size, seed=seed)
    batches = calibration_batches(build_loader(calib_set, batch_size), calib_batches)
    started = time.perf_counter()
    taylor = score(loaded.model, batches, "taylor")
    taylor_s = time.perf_counter() - started
    exact = score(loaded.model, batches, "ablation")
    heads = spearmanr(np.concatenate(taylor.heads), np.concatenate(exact.heads)).statistic
    blocks = spearmanr(taylor.blocks, exact.blocks).statistic
    click.echo(json.dumps({
        "model": model, "calibration_images": calib_batches * batch_size,
        "spearman_heads": round(float(heads), 4), "spearman_blocks": round(float(blocks), 4),
        "num_heads": int(sum(len(h) for h in taylor.heads)), "taylor_seconds": round(taylor_s, 1),
        "ablation_seconds": round(time.perf_counter() - started - taylor_s, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
