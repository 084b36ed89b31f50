"""`compress --max-drop`: the search end to end on a tiny teacher, its record and pictures, resume, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from vitshrink.cli import main
from vitshrink.compressor.core.artifact import load_artifact, save_artifact
from vitshrink.compressor.training.resume import weights_sha256

QUICK = ["--epochs", "2", "--max-steps-per-epoch", "2", "--calib-batches", "1", "--eval-limit", "64",
         "--no-progress"]


@pytest.fixture
def teacher_dir(trained_digits, tmp_path):
    return save_artifact(tmp_path / "teacher", trained_digits, {"method": "test teacher"})


def _run(*args):
    return CliRunner().invoke(main, ["compress", *[str(a) for a in args]], catch_exceptions=False)


def test_the_search_delivers_a_level_within_the_bound_and_records_every_level(teacher_dir, tmp_path):
    out = tmp_path / "s"
    result = _run("--model", teacher_dir, "--max-drop", "0.5", "--reduce", "flops=0.3", *QUICK, "--out", out)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "compression.json").read_text())["max_drop"]
    assert [round(r["level"], 2) for r in record["levels"]] == [0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
    delivered = next(r for r in record["levels"] if r["level"] == record["delivered"])
    assert record["teacher_top1"] - delivered["full"]["top1"] <= 0.005 + 1e-9
    assert all(r["cut"] is not None for r in record["levels"])  # every level priced on its cut
    assert record["samples"] >= record["samples_one_run"] > 0
    student = load_artifact(out)
    assert abs(student.compression["result"]["reduction_flops"] - record["delivered"]) <= 0.011
    assert (out / "pareto.png").stat().st_size > 1000
    table = (out / "pareto.md").read_text()
    assert f"Delivered: **{record['delivered']:.0%}**" in table and "samples" in table
    assert "Delivered:" in result.output


def test_a_resumed_search_reruns_only_what_did_not_finish_and_delivers_the_same_student(teacher_dir, tmp_path):
    args = ["--model", teacher_dir, "--max-drop", "0.5", "--reduce", "flops=0.15", *QUICK]
    assert _run(*args, "--out", tmp_path / "a").exit_code == 0
    first = load_artifact(tmp_path / "a")
    delivered = first.compression["max_drop"]["delivered"]
    full = tmp_path / "a.work" / "levels" / f"{delivered:.2f}" / "full"
    shutil.rmtree(full / "artifact")  # stopped before the delivered level's full run finished
    shutil.rmtree(full / "work" / "stage1-width" / "artifact")
    shutil.rmtree(tmp_path / "a")
    result = _run(*args, "--out", tmp_path / "a", "--resume")
    assert result.exit_code == 0, result.output
    assert result.output.count("finished earlier, loaded") >= 3  # the cut runs are read back, not rerun
    again = load_artifact(tmp_path / "a")
    assert weights_sha256(again.model) == weights_sha256(first.model)
    assert again.compression["max_drop"]["levels"] == first.compression["max_drop"]["levels"]


@pytest.mark.parametrize("args, message", [
    (["--max-drop", "-0.5"], "-0.5"),
    (["--max-drop", "0.5", "--val-split", "0"], "needs a validation split"),
    (["--reduce", "flops"], "names only the metric"),
])
def test_bad_search_input_is_one_line_and_writes_nothing(args, message, teacher_dir, tmp_path):
    result = CliRunner().invoke(main, ["compress", "--model", str(teacher_dir), *args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.work").exists()


def test_max_drop_with_a_plan_is_refused(teacher_dir, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text("{}")
    result = CliRunner().invoke(main, ["compress", "--model", str(teacher_dir), "--max-drop", "0.5", "--plan",
                                       str(plan), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "use one or the other" in result.output
    assert not (tmp_path / "o").exists()


def test_the_python_api_searches_too(tmp_path):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import vitshrink
    from tests.conftest import tiny_vit

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(160, 3, 16, 16, generator=g), torch.randint(0, 10, (160,), generator=g))
    loader = DataLoader(data, batch_size=32)
    student = vitshrink.compress(tiny_vit(), loader, loader, reduce="flops", max_drop=100.0, epochs=1,
                                 out=tmp_path / "s", progress=False, log=lambda *a: None)
    record = load_artifact(tmp_path / "s").compression["max_drop"]
    assert record["delivered"] == pytest.approx(0.7) or record["delivered"] == max(r["level"] for r in record["levels"]
                                                                                    if r["cut"]["top1"] > -1)
    assert isinstance(student, torch.nn.Module)
