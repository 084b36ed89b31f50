"""How long does the joint knapsack take to plan, by model size?

    python -m research.joint_planning_time

`plan_joint` on a FLOPs budget of -30% and -50% for ViT-S, ViT-B and ViT-L (timm, random weights), with random
unit scores and random block estimates; prints the seconds each plan took. Only planning is timed: no scoring,
no cut.
"""

from __future__ import annotations

import time

import numpy as np
import timm

from vitshrink.compressor.planning.joint import block_losses, plan_joint
from vitshrink.compressor.planning.planner import model_costs
from vitshrink.compressor.scoring.importance import Scores

MODELS = ("vit_small_patch16_224", "vit_base_patch16_224", "vit_large_patch16_224")


def main() -> None:
    for name in MODELS:
        model = timm.create_model(name, pretrained=False).eval()
        rng = np.random.default_rng(0)
        scores = Scores("taylor", tuple(rng.random(b.attn.num_heads) for b in model.blocks),
                        tuple(rng.random(b.mlp.fc1.out_features) for b in model.blocks), np.zeros(len(model.blocks)))
        costs = model_costs(model, "flops")
        removal = block_losses("unit-sum", scores, None) * rng.uniform(0.0, 0.5, len(model.blocks))
        for reduction in (0.3, 0.5):
            started = time.perf_counter()
            plan = plan_joint(costs, scores, removal, target_removed=reduction * costs.total,
                              reference_total=costs.total)
            print(f"{name} -{reduction:.0%}: {time.perf_counter() - started:.2f} s, "
                  f"blocks removed {list(plan.plan.drop_blocks)}")


if __name__ == "__main__":
    main()
