"""The ViT speedup study on a tiny model: every variant cuts close to the target and yields a timed row."""

from __future__ import annotations

import copy

import pytest

from research.vit_speedup import VARIANTS, run
from tests.test_bench_helpers import tiny_teacher
from vitshrink.compressor.core.artifact import save_artifact
from vitshrink.compressor.core.flops import count_macs
from vitshrink.compressor.core.surgery import apply_plan
from vitshrink.exporters.runtime.timing import TimingPolicy


@pytest.mark.parametrize("name", ["mlp-exact", "mlp-r8", "mlp-r64", "heads4-mlp-r64", "uneven-heads-mlp-r64"])
def test_uniform_variants_remove_the_target_share(name):
    loaded = tiny_teacher()  # depth 2, 4 heads, MLP 256, 17 tokens
    model = copy.deepcopy(loaded.model)
    apply_plan(model, loaded.spec, VARIANTS[name](model, 0.3, 0))
    removed = 1 - count_macs(model) / count_macs(loaded.model)
    assert removed == pytest.approx(0.3, abs=0.08)  # rounding to 64 of a 256-wide MLP is coarse
    widths = {blk.mlp.fc1.out_features for blk in model.blocks}
    assert len(widths) == 1  # uniform MLP
    if name.endswith("r64"):
        assert widths.pop() % 64 == 0
    heads = [blk.attn.num_heads for blk in model.blocks]
    assert sum(heads) == {"heads4-mlp-r64": 6, "uneven-heads-mlp-r64": 6}.get(name, 8)
    assert (len(set(heads)) > 1) == (name == "uneven-heads-mlp-r64")


def test_run_times_each_variant_against_the_unpruned_model(tmp_path):
    folder = save_artifact(tmp_path / "teacher", tiny_teacher(), {"method": "test"})
    policy = TimingPolicy(warmup_iters=1, warmup_s=0.0, min_iters=3, min_time_s=0.0)
    rows = run(str(folder), ["mlp-r8", "depth"], 0.3, (1, 2), 1, policy, 0, log=lambda m: None)
    assert [(r["variant"], r["batch"]) for r in rows] == [("mlp-r8", 1), ("mlp-r8", 2), ("depth", 1), ("depth", 2)]
    for r in rows:
        assert r["pairs"] >= 3 and r["ratio"] > 0
        assert r["realised"] == pytest.approx(r["ratio"] / r["flops_ratio"])
    assert rows[2]["depth"] == 1  # one of two blocks removed
