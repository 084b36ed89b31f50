"""The removed-score sum takes the lowest-scored units of each block, as both planners remove them."""

from __future__ import annotations

import numpy as np
import pytest

from research.same_macs_taylor import removed_score
from vitshrink.compressor.scoring.importance import Scores


def test_removed_score_sums_the_lowest_units_each_block_gives_up():
    scores = Scores("taylor", heads=(np.array([3.0, 1.0, 2.0]), np.array([0.5, 0.1, 0.2])),
                    neurons=(np.array([0.4, 0.1, 0.3, 0.2]), np.array([1.0, 2.0, 3.0, 4.0])), blocks=np.zeros(2))
    # block 0 keeps 2 heads (removes 1.0) and 2 neurons (removes 0.1 + 0.2); block 1 keeps all heads, 3 neurons (removes 1.0)
    assert removed_score(scores, heads=[2, 3], mlp=[2, 3]) == pytest.approx(1.0 + 0.3 + 1.0)
    assert removed_score(scores, heads=[3, 3], mlp=[4, 4]) == 0.0
