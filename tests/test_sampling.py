"""Which samples each process takes per epoch, and per-sample augmentation seeds."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from vitshrink.compressor.core.errors import DataError
from vitshrink.compressor.data.sampling import SeededSamples, epoch_shard, samples_per_rank


@pytest.mark.parametrize("n, world", [(2561, 2), (17, 2), (10, 3), (2, 4), (128, 1)])
def test_every_rank_gets_the_same_count_and_together_they_cover_the_epoch(n, world):
    shards = [epoch_shard(n, seed=0, epoch=1, rank=r, world=world) for r in range(world)]
    assert {len(s) for s in shards} == {samples_per_rank(n, world)}
    dealt = [i for s in shards for i in s]
    assert set(dealt) == set(range(n))
    padding = samples_per_rank(n, world) * world - n
    assert len(dealt) == n + padding and padding < world  # fewer than `world` samples repeat


def test_one_process_takes_a_plain_permutation_that_changes_with_the_epoch():
    first, second = epoch_shard(100, 3, 0, 0, 1), epoch_shard(100, 3, 1, 0, 1)
    assert sorted(first) == list(range(100)) and first != second
    assert first == epoch_shard(100, 3, 0, 0, 1)


def test_an_empty_training_set_is_refused():
    with pytest.raises(DataError, match="empty"):
        samples_per_rank(0, 2)


class _Noisy(Dataset):
    """Draws from all three global generators, a data-dependent number of times (like timm's crop retries)."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        torch.rand(i % 3)
        return torch.rand(4), random.random(), np.random.rand()


def test_a_sample_is_the_same_whatever_was_drawn_before_and_torchs_stream_is_untouched():
    samples = SeededSamples(_Noisy(), seed=5)
    torch.manual_seed(0)
    a = samples[(2, 3)]
    state = torch.get_rng_state()
    for key in [(0, 1), (2, 7)]:
        samples[key]
    assert torch.equal(torch.get_rng_state(), state)  # dropout's stream does not depend on data loading
    torch.manual_seed(123)
    random.seed(9)
    np.random.seed(9)
    b = samples[(2, 3)]
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    c = samples[(3, 3)]  # another epoch: another augmentation
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], SeededSamples(_Noisy(), seed=6)[(2, 3)][0])
