"""Which training samples each process sees in an epoch, and the randomness each sample is augmented with.

Both are pure functions of (seed, epoch, sample index), never of the process's RNG, the number of
DataLoader workers or how far an interrupted run got; so a resumed run, mid-epoch, with any worker
count, replays exactly the data the uninterrupted run saw, and every process takes the same number
of steps (a DDP all-reduce needs every rank in every step).
"""

from __future__ import annotations

import hashlib
import math
import random

import numpy as np
import torch
from torch.utils.data import Dataset

from vitshrink.compressor.core.errors import DataError


def samples_per_rank(n: int, world: int) -> int:
    """Each of `world` processes takes ceil(n / world) samples per epoch (the order is padded, see below)."""
    if n <= 0:
        raise DataError("the training set is empty; check --dataset, --data-dir and --train-limit")
    return math.ceil(n / world)


def epoch_shard(n: int, seed: int, epoch: int, rank: int, world: int) -> list[int]:
    """Indices (into a dataset of `n`) that process `rank` of `world` takes in `epoch`, in order.

    The shuffled order of all `n` samples is padded by repeating its first indices up to a multiple
    of `world` (as `torch.utils.data.DistributedSampler` does), then dealt round-robin: every rank
    gets `samples_per_rank(n, world)` indices, so every rank takes the same number of steps; when `n`
    is not a multiple of `world`, fewer than `world` samples are seen twice in that epoch.
    """
    per_rank = samples_per_rank(n, world)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    total = per_rank * world
    padded = (order * math.ceil(total / n))[:total]
    return padded[rank::world]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit seed for one sample in one epoch (a hash: neighbouring samples get unrelated streams)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class SeededSamples(Dataset):
    """Indexed by `(epoch, index)`; returns `dataset[index]` drawn with RNGs seeded by `sample_seed`.

    torch's, Python's and NumPy's global generators are seeded before each `__getitem__`, so the
    augmentation of a sample does not depend on which process or worker loads it or on what was drawn
    before. torch's generator is restored afterwards: in the training process it also drives dropout,
    whose stream must not depend on data loading. Python's and NumPy's are left as the last sample
    seeded them (training never draws from them; restoring NumPy's would cost ~0.4 ms per sample).
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        seed = sample_seed(self.seed, epoch, index)
        generator = torch.default_generator
        torch_state = generator.get_state()
        try:
            generator.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            return self.dataset[index]
        finally:
            generator.set_state(torch_state)
