"""The plan as a document: plan.json round-trips, is written before the cut, and `compress --plan` applies it."""

from __future__ import annotations

import json
import re

import pytest
import torch
from click.testing import CliRunner

from tests.conftest import tiny_vit
from vitshrink.cli import main
from vitshrink.compressor.core.artifact import load_artifact, save_artifact
from vitshrink.compressor.core.errors import BudgetError
from vitshrink.compressor.core.surgery import PrunePlan
from vitshrink.compressor.planning.plan_file import check_plan, read_plan, write_plan


@pytest.fixture
def teacher_dir(trained_digits, tmp_path):
    return save_artifact(tmp_path / "teacher", trained_digits, {"method": "test teacher"})


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_a_plan_round_trips_through_its_file(tmp_path):
    plan = PrunePlan(keep_heads={0: (0, 2), 2: (1,)}, keep_neurons={1: (3, 5, 7, 60)}, drop_blocks=(1,))
    write_plan(tmp_path / "plan.json", plan, tiny_vit(), note="test")
    assert read_plan(tmp_path / "plan.json") == plan
    record = json.loads((tmp_path / "plan.json").read_text())
    assert record["model"]["heads"] == [4, 4, 4] and record["plan"]["keep_neurons"] == {"1": [3, 5, 7, 60]}


@pytest.mark.parametrize("plan, message", [
    (PrunePlan(keep_heads={5: (0,)}), "block 5 does not exist"),
    (PrunePlan(keep_heads={0: ()}), "block 0 keeps no heads"),
    (PrunePlan(keep_heads={0: (0, 4)}), r"keeps heads \[0, 4\], which must be distinct indices in 0..3"),
    (PrunePlan(keep_neurons={1: (4, 4)}), "keeps MLP neurons"),
    (PrunePlan(drop_blocks=(0, 1, 2)), "removes all 3 blocks"),
])
def test_a_plan_that_does_not_fit_is_refused_naming_what(plan, message):
    with pytest.raises(BudgetError, match=message):
        check_plan(plan, tiny_vit())


def test_compress_writes_its_plan_and_plan_reproduces_the_cut(teacher_dir, tmp_path):
    first = tmp_path / "first"
    result = _run("compress", "--model", teacher_dir, "--reduce", "flops=0.3", "--stages", "width", "--epochs", "0",
                  "--calib-batches", "2", "--out", first, "--no-progress")
    assert result.exit_code == 0, result.output
    plan_path = tmp_path / "first.work" / "stage1-width" / "plan.json"
    assert read_plan(plan_path).keep_neurons  # the planner's choice, by index

    again = tmp_path / "again"
    result = _run("compress", "--model", teacher_dir, "--plan", plan_path, "--epochs", "0", "--out", again,
                  "--no-progress")
    assert result.exit_code == 0, result.output
    assert "a given plan (--plan)" in result.output
    a, b = load_artifact(first), load_artifact(again)
    assert a.spec.to_dict() == b.spec.to_dict()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(a.model(x), b.model(x), rtol=0, atol=0)


def test_a_hand_edited_plan_drops_what_it_says(teacher_dir, tmp_path):
    edited = tmp_path / "edited.json"
    write_plan(edited, PrunePlan(keep_heads={0: (1,)}, drop_blocks=(2,)), load_artifact(teacher_dir).model)
    out = tmp_path / "s"
    result = _run("compress", "--model", teacher_dir, "--plan", edited, "--epochs", "0", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    spec = load_artifact(out).spec
    assert [b.num_heads for b in spec.blocks] == [1, 4] and [b.source_index for b in spec.blocks] == [0, 1]


def test_plan_refusals_are_one_line_and_write_nothing(teacher_dir, tmp_path):
    bad = tmp_path / "bad.json"
    write_plan(bad, PrunePlan(keep_heads={7: (0,)}), load_artifact(teacher_dir).model)
    out = tmp_path / "s"
    result = _run("compress", "--model", teacher_dir, "--plan", bad, "--epochs", "0", "--out", out, "--no-progress")
    assert result.exit_code != 0 and "--plan does not fit this model: block 7 does not exist" in result.output
    assert not out.exists() and not out.with_name(out.name + ".work").exists()

    result = _run("compress", "--model", teacher_dir, "--plan", bad, "--reduce", "flops=0.2", "--out", out)
    assert result.exit_code == 2 and "--reduce would be ignored" in result.output

    (tmp_path / "other.json").write_text(json.dumps({"keep_heads": {}}))
    result = _run("compress", "--model", teacher_dir, "--plan", tmp_path / "other.json", "--out", out)
    assert result.exit_code == 2 and "is not a vitshrink plan" in result.output


def _plan_file(path, plan, model: dict | None = None) -> None:
    record = {"format": "vitshrink-plan", "version": 1, "model": model or {"heads": [4] * 3, "mlp_hidden": [256] * 3},
              "plan": plan}
    path.write_text(json.dumps(record))


@pytest.mark.parametrize("plan, message", [
    (None, "plan is None, not an object"),
    ({"keep_heads": {"0": [0.7, 1.2]}}, "keep_heads of block 0 holds 0.7, not a whole-number index"),
    ({"keep_neurons": {"1": [0, "1"]}}, "keep_neurons of block 1 holds '1', not a whole-number index"),
    ({"keep_heads": {"0": "012"}}, "keep_heads of block 0 is '012', not a list"),
    ({"keep_heads": {"0.5": [0]}}, "keep_heads has block '0.5', not a whole-number index"),
    ({"keep_heads": None}, "keep_heads is None, not an object"),
    ({"drop_blocks": [1.0]}, "drop_blocks holds 1.0, not a whole-number index"),
    ({"drop_blocks": [True]}, "drop_blocks holds True, not a whole-number index"),
])
def test_a_malformed_plan_file_is_refused_naming_the_value_not_truncated(tmp_path, plan, message):
    _plan_file(tmp_path / "plan.json", plan)
    with pytest.raises(BudgetError, match=re.escape(message)):
        read_plan(tmp_path / "plan.json")


@pytest.mark.parametrize("model", [{"heads": [4, 4]}, {"heads": [4, 4, 4], "mlp_hidden": [256, 256]},
                                   {"heads": [4.5, 4, 4], "mlp_hidden": [256] * 3}, "vit_tiny"])
def test_a_plan_file_without_the_shape_of_its_model_is_refused(tmp_path, model):
    _plan_file(tmp_path / "plan.json", {"keep_heads": {"0": [0]}}, model)
    with pytest.raises(BudgetError, match='"model" must give the heads and MLP width of every block'):
        read_plan(tmp_path / "plan.json")


def test_a_plan_made_for_another_model_shape_is_refused(tmp_path):
    plan = PrunePlan(keep_heads={0: (0, 1, 2)})  # indices that exist in both models
    six_heads = {"heads": [6, 6, 6], "mlp_hidden": [768, 768, 768]}
    check_plan(plan, tiny_vit(), made_for={"heads": [4, 4, 4], "mlp_hidden": [256, 256, 256]})
    with pytest.raises(BudgetError, match=re.escape("was made for a model of 3 blocks with heads [6, 6, 6] and MLP "
                                                    "widths [768, 768, 768], but this model has 3 blocks with heads "
                                                    "[4, 4, 4] and MLP widths [256, 256, 256]")):
        check_plan(plan, tiny_vit(), made_for=six_heads)


def test_compress_refuses_a_plan_made_for_another_model_and_writes_nothing(teacher_dir, tmp_path):
    other = tmp_path / "six-heads.json"
    write_plan(other, PrunePlan(keep_heads={0: (0, 1, 2)}, keep_neurons={1: tuple(range(128))}),
               tiny_vit(embed_dim=96, num_heads=6, mlp_ratio=8.0))
    out = tmp_path / "s"
    result = _run("compress", "--model", teacher_dir, "--plan", other, "--epochs", "0", "--out", out, "--no-progress")
    assert result.exit_code == 1, result.output
    assert ("--plan was made for a model of 3 blocks with heads [6, 6, 6] and MLP widths [768, 768, 768], but this "
            "model has 3 blocks with heads [4, 4, 4]") in result.output
    assert not out.exists() and not out.with_name(out.name + ".work").exists()

    record = json.loads(other.read_text())
    record["plan"]["keep_heads"]["0"] = [0.7, 1.2]
    (tmp_path / "float.json").write_text(json.dumps(record))
    result = _run("compress", "--model", teacher_dir, "--plan", tmp_path / "float.json", "--out", out)
    assert result.exit_code == 2 and "keep_heads of block 0 holds 0.7, not a whole-number index" in result.output
    assert not out.exists() and not out.with_name(out.name + ".work").exists()
