"""The method comparison end to end on a tiny digits teacher, and Torch-Pruning's cut against a reference."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch
from click.testing import CliRunner

from research.compare import SCHEMA, row_path, summarize
from research.compare_methods import main
from research.compare_report import (
    COMPARE_JSON,
    COMPARE_MD,
    COMPARE_PNG,
    summary_rows,
)
from research.methods import METHODS as METHODS_REGISTRY
from tests.conftest import TINY_ARGS, TINY_CFG
from vitshrink.compressor.core.artifact import load_artifact, save_artifact
from vitshrink.compressor.core.flops import count_macs
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.core.spec import ArchSpec
from vitshrink.compressor.data.datasets import build_dataset, build_loader
from vitshrink.compressor.planning.planner import unit_costs
from vitshrink.compressor.scoring.importance import calibration_batches
from vitshrink.compressor.training.train import TrainConfig, train

METHODS = ("vitshrink", "l1", "random", "width-only", "scratch")
TARGET = 0.3
# --quick, made smaller still: 2 steps per epoch, 1 calibration batch, 120 eval images
TINY = ("--dataset", "digits", "--quick", "--reduce", f"flops={TARGET}", "--train-limit", "256", "--eval-limit", "120",
        "--batch-size", "64", "--max-steps-per-epoch", "2", "--calib-batches", "1", "--latency-batches", "1,4")
# 4 blocks (each under 30% of the MACs, so depth pruning fits the budget) of 8 heads of 8: one head is
# about 1% of the MACs, so the planners' last unit cannot overshoot the target by much more than 1 point
TEACHER_ARGS = {**TINY_ARGS, "depth": 4, "num_heads": 8}


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A small ViT trained on digits from a fixed initialisation (the same teacher every run)."""
    torch.manual_seed(0)
    loaded = load_model("vit_tiny_patch16_224", model_args={**TEACHER_ARGS, "pretrained_cfg_overlay": TINY_CFG})
    train_set = build_dataset("digits", None, "train", loaded.data_config)
    config = TrainConfig(epochs=4, batch_size=64, lr=3e-3, warmup_epochs=1, seed=0)
    train(loaded.model, train_set, None, config, tmp_path_factory.mktemp("teacher-train"), progress=False)
    loaded.model.eval()
    return loaded


@pytest.fixture(scope="module")
def teacher_dir(teacher, tmp_path_factory):
    return save_artifact(tmp_path_factory.mktemp("teacher") / "teacher", teacher, {"method": "test teacher"})


@pytest.fixture(scope="module")
def quick(teacher_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    result = _run("--teacher", teacher_dir, *TINY, "--methods", ",".join(METHODS), "--out", out)
    assert result.exit_code == 0, result.output
    return out, json.loads((out / COMPARE_JSON).read_text()), result.output


def _rows(data: dict) -> dict[str, dict]:
    return {r["method"]: r for r in data["rows"]}


def test_quick_run_writes_json_markdown_and_plot(quick):
    out, data, output = quick
    assert data["schema"] == SCHEMA and data["complete"] and [r["method"] for r in data["rows"]] == list(METHODS)
    assert (out / COMPARE_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / COMPARE_MD).read_text()
    assert data["command"].startswith("python -m research.compare_methods ") and "--quick" in data["command"]
    assert data["command"] in md and all(f"| {m} | 0 |" in md for m in METHODS)
    assert data["environment"]["cpu"] and torch.__version__.startswith(data["environment"]["versions"]["torch"])
    for m in METHODS:  # one line when a method starts and one when it ends
        assert output.count(f"{m} seed 0: start") == 1 and output.count(f"{m} seed 0: done") == 1
        assert row_path(out, m, 0).is_file()


def test_rows_are_finite_and_measure_the_saved_students(quick):
    _, data, _ = quick
    teacher = data["teacher"]
    for r in data["rows"]:
        for key in ("top1", "top5"):
            for value in (r["after_cut"][key], r["final"][key]):
                assert math.isfinite(value) and 0.0 <= value <= 1.0
        assert 0 < r["macs"] < teacher["macs"] and 0 < r["params"] < teacher["params"]
        assert r["macs"] == count_macs(load_artifact(r["artifact"]).model)
        assert set(r["latency"]["batches"]) == {"1", "4"} and r["latency"]["threads"] == 1
        for b in r["latency"]["batches"].values():
            assert math.isfinite(b["latency_ratio"]) and b["latency_ratio"] > 0
            # bench's speedup (the median of per-round ratios), inside its own interval; the ratio is its inverse
            assert b["latency_ratio"] == pytest.approx(1 / b["speedup"], rel=1e-3)
            assert b["speedup_ci95"][0] <= b["speedup"] <= b["speedup_ci95"][1]
        assert r["wall_seconds"] > 0 and r["fingerprint"] == data["fingerprint"]


def test_every_method_gets_the_same_training_budget(quick):
    rows = _rows(quick[1])
    epochs = {m: [s["epochs"] for s in rows[m]["stages"]] for m in METHODS}
    assert epochs == {"vitshrink": [1, 1], "l1": [1, 1], "random": [1, 1], "width-only": [2], "scratch": [2]}
    assert [s["name"] for s in rows["scratch"]["stages"]] == ["init"]
    assert rows["l1"]["config"]["criterion"] == rows["l1"]["config"]["block_criterion"] == "l1"
    assert rows["vitshrink"]["config"]["block_criterion"] == "ablation"


def test_scratch_trains_vitshrinks_architecture(quick):
    rows = _rows(quick[1])
    assert rows["scratch"]["spec"] == rows["vitshrink"]["spec"] and rows["scratch"]["macs"] == rows["vitshrink"]["macs"]
    scratch = load_artifact(rows["scratch"]["artifact"]).model
    vitshrink = load_artifact(rows["vitshrink"]["artifact"]).model
    assert not torch.equal(scratch.blocks[0].attn.qkv.weight, vitshrink.blocks[0].attn.qkv.weight)


def test_width_methods_land_on_the_budget(quick, teacher):
    rows = _rows(quick[1])
    # the planners stop at the first unit that reaches the target: never short, and over it by less than
    # the largest unit (a head: 1.1% of this teacher's MACs, 1.0% of the CIFAR teacher's)
    head = unit_costs(teacher.model, "flops").head[0] / count_macs(teacher.model)
    assert 0.01 < head < 0.012
    for m in ("vitshrink", "l1", "random", "width-only"):
        assert TARGET - 0.001 <= rows[m]["reduction_flops"] <= TARGET + head, (m, rows[m]["reduction_flops"])


def test_resume_skips_finished_rows_and_refuses_other_settings(quick, teacher_dir):
    out, _, _ = quick
    before = {m: row_path(out, m, 0).read_bytes() for m in METHODS}
    result = _run("--teacher", teacher_dir, *TINY, "--methods", ",".join(METHODS), "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    assert result.output.count("finished earlier") == len(METHODS) and "start" not in result.output
    assert {m: row_path(out, m, 0).read_bytes() for m in METHODS} == before
    changed = _run("--teacher", teacher_dir, *TINY, "--lr", "0.001", "--methods", "l1", "--out", out, "--resume")
    assert changed.exit_code == 1 and "other settings" in changed.output


def test_scratch_without_vitshrink_is_refused_before_any_work(teacher_dir, tmp_path):
    result = _run("--teacher", teacher_dir, *TINY, "--methods", "scratch", "--out", tmp_path)
    assert result.exit_code == 1 and "add vitshrink to the methods" in result.output
    assert not any(tmp_path.iterdir())


def test_a_missing_optional_package_is_reported_before_any_work(teacher_dir, tmp_path, monkeypatch):
    method = dataclasses.replace(METHODS_REGISTRY["torch-pruning"], requires=(("no_such_module_xyz", "pip install xyz"),))
    monkeypatch.setitem(METHODS_REGISTRY, "torch-pruning", method)
    result = _run("--teacher", teacher_dir, *TINY, "--methods", "vitshrink,torch-pruning", "--out", tmp_path)
    assert result.exit_code == 1 and "no_such_module_xyz" in result.output and "pip install xyz" in result.output
    assert not any(tmp_path.iterdir())


def test_unknown_method_lists_the_valid_ones(teacher_dir, tmp_path):
    result = _run("--teacher", teacher_dir, "--methods", "vitshrink,magic", "--out", tmp_path)
    assert result.exit_code == 2 and "magic" in result.output and "torch-pruning" in result.output


def _row(method: str, seed: int, top1: float, ratio: float) -> dict:
    metrics = {"top1": top1, "top5": 1.0, "loss": 0.1}
    return {"method": method, "seed": seed, "final": metrics, "after_cut": metrics, "params": 10, "macs": 70,
            "reduction_params": 0.3, "reduction_flops": 0.3, "wall_seconds": 5.0,
            "latency": {"batches": {"1": {"latency_ratio": ratio}}}}


def test_summary_gives_mean_and_spread_over_seeds():
    summary = summarize([_row("a", 0, 0.80, 0.7), _row("a", 1, 0.90, 0.9), _row("b", 0, 0.5, 1.0)])
    a = summary["a"]["final_top1"]
    assert a["n"] == 2 and a["mean"] == pytest.approx(0.85) and (a["min"], a["max"]) == (0.80, 0.90)
    assert a["std"] == pytest.approx(0.0707107, rel=1e-5) and summary["b"]["final_top1"]["std"] == 0.0
    assert summary["a"]["latency_ratio_b1"]["mean"] == pytest.approx(0.8) and summary["a"]["seeds"] == [0, 1]
    data = {"config": {"latency": {"batch_sizes": [1]}}, "summary": summary,
            "teacher": {"top1": 0.9, "top5": 1.0, "params": 20, "macs": 100}}
    _, rows = summary_rows(data)
    assert rows[1][:5] == ("a", "0,1", "85.00 (80.00–90.00)", "-", "85.00 (80.00–90.00)")  # no val in these rows
    assert rows[1][6] == "-5.00 (-10.00–+0.00)" and rows[2][4] == "50.00"


# ---------------------------------------------------------------- Torch-Pruning


def _kept(pruned_rows: torch.Tensor, original_rows: torch.Tensor, size: int) -> list[int]:
    """Indices of the `size`-row slices of `original_rows` that survive (in order) in `pruned_rows`."""
    kept = []
    for k in range(pruned_rows.shape[0] // size):
        piece = pruned_rows[k * size : (k + 1) * size]
        kept += [h for h in range(original_rows.shape[0] // size) if torch.equal(original_rows[h * size : (h + 1) * size], piece)]
    return kept


def test_torch_pruning_cut_equals_the_teacher_with_removed_parts_zeroed(teacher, tmp_path):
    pytest.importorskip("torch_pruning", reason="Torch-Pruning is optional: pip install -e '.[experiments]'")
    from research.tp_baseline import tp_prune

    calib_set = build_dataset("digits", None, "train", teacher.data_config, limit=128, seed=1)
    calib = calibration_batches(build_loader(calib_set, 64), 2)
    loaded, teacher = teacher, teacher.model
    cut = tp_prune(copy.deepcopy(teacher), calib, metric="flops", target=TARGET)
    assert abs(cut.reduction - TARGET) <= 0.01
    assert cut.reduction == pytest.approx(1 - count_macs(cut.model) / count_macs(teacher))
    assert cut.model.embed_dim == teacher.embed_dim and cut.model.patch_embed.proj.out_channels == teacher.embed_dim
    reference = copy.deepcopy(teacher)
    removed_any = False
    with torch.no_grad():
        for old, new, ref in zip(teacher.blocks, cut.model.blocks, reference.blocks, strict=True):
            assert new.attn.head_dim == old.attn.head_dim and new.attn.num_heads >= 1
            assert new.attn.attn_dim == new.attn.num_heads * new.attn.head_dim == new.attn.proj.in_features
            hd = old.attn.head_dim
            q_old, q_new = old.attn.qkv.weight[: old.attn.attn_dim], new.attn.qkv.weight[: new.attn.attn_dim]
            heads = _kept(q_new, q_old, hd)
            neurons = _kept(new.mlp.fc1.weight, old.mlp.fc1.weight, 1)
            assert len(heads) == new.attn.num_heads and len(neurons) == new.mlp.fc1.out_features
            for h in set(range(old.attn.num_heads)) - set(heads):
                ref.attn.proj.weight[:, h * hd : (h + 1) * hd] = 0
            ref.mlp.fc2.weight[:, sorted(set(range(old.mlp.fc1.out_features)) - set(neurons))] = 0
            removed_any |= len(heads) < old.attn.num_heads or len(neurons) < old.mlp.fc1.out_features
    assert removed_any
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(cut.model(x), reference(x), rtol=1e-4, atol=1e-5)
    # the cut is a plain vitshrink architecture: it saves and loads back strictly, with the same outputs
    pruned = dataclasses.replace(loaded, model=cut.model, spec=ArchSpec.from_model(cut.model), path=None)
    again = load_artifact(save_artifact(tmp_path / "tp", pruned, {"method": "tp test"})).model
    torch.testing.assert_close(again(x), cut.model(x), rtol=0, atol=0)


def test_torch_pruning_method_end_to_end(teacher_dir, tmp_path):
    pytest.importorskip("torch_pruning", reason="Torch-Pruning is optional: pip install -e '.[experiments]'")
    result = _run("--teacher", teacher_dir, *TINY, "--methods", "torch-pruning", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    [row] = json.loads((tmp_path / COMPARE_JSON).read_text())["rows"]
    assert abs(row["reduction_flops"] - TARGET) <= 0.01
    assert 0 < row["details"]["cut"]["pruning_ratio"] < 1 and row["config"]["importance"] == "GroupTaylorImportance"
    [stage] = row["stages"]
    assert stage["epochs"] == 2 and math.isfinite(stage["after_cut"]["top1"]) and stage["after_train"] == row["final"]
    assert math.isfinite(row["latency"]["batches"]["1"]["latency_ratio"])
