"""The teacher a student is benched against: the one compress used (absolute folder + weights hash), found from
any folder, and a teacher with other weights refused unless --other-teacher says so."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tests.conftest import TINY_ARGS, TINY_CFG
from vitshrink.benchmarks.bench_job import BenchConfig, run_bench
from vitshrink.benchmarks.errors import BenchError
from vitshrink.cli import main
from vitshrink.compressor.core.artifact import save_artifact
from vitshrink.compressor.core.loaded_model import LoadedModel
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.core.surgery import PrunePlan, apply_plan
from vitshrink.compressor.training.resume import weights_sha256
from vitshrink.exporters.runtime.timing import TimingPolicy

QUICK = TimingPolicy(warmup_iters=0, warmup_s=0.0, min_iters=2, min_time_s=0.0, max_time_s=5.0)
PLAN = PrunePlan(keep_heads={0: (0, 2), 1: (1, 3), 2: (0, 1)}, keep_neurons={})


def _tiny(seed: int) -> LoadedModel:
    torch.manual_seed(seed)
    return load_model("vit_tiny_patch16_224", model_args={**TINY_ARGS, "pretrained_cfg_overlay": TINY_CFG})


def _student(folder: Path, teacher: LoadedModel, record: dict) -> Path:
    """A student cut from `teacher` whose compression.json records `record` as its teacher."""
    cut = replace(teacher, spec=apply_plan(teacher.model, teacher.spec, PLAN))
    return save_artifact(folder, cut, {"method": "test", "teacher": record})


def _config(student: Path, **kw) -> BenchConfig:
    return BenchConfig(student=str(student), backends=("torch-cpu",), batch_sizes=(1,), threads=1, timing=QUICK,
                       memory=False, fvcore=False, plot=False, progress=False, **kw)


def _cli(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


BENCH_ARGS = ("--backends", "torch-cpu", "--batch-sizes", "1", "--threads", "1", "--min-iters", "2", "--min-time",
              "0", "--warmup", "0", "--warmup-time", "0", "--no-memory", "--no-fvcore", "--no-plot", "--no-progress")


def test_bench_from_another_folder_uses_the_teacher_compress_used(tmp_path, monkeypatch):
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    save_artifact(here / "runs" / "teacher", _tiny(0), {"method": "test teacher"})
    save_artifact(elsewhere / "runs" / "teacher", _tiny(1), {"method": "another model, same relative path"})
    monkeypatch.chdir(here)
    code, output = _cli("compress", "--model", "runs/teacher", "--reduce", "flops=0.3", "--epochs", "0",
                        "--calib-batches", "2", "--train-limit", "128", "--out", "runs/student", "--no-progress")
    assert code == 0, output
    teacher_dir = (here / "runs" / "teacher").resolve()
    record = json.loads((here / "runs" / "student" / "compression.json").read_text())["teacher"]
    assert record["path"] == str(teacher_dir)
    assert record["weights_sha256"] == weights_sha256(load_model(str(teacher_dir)).model)

    monkeypatch.chdir(elsewhere)  # it holds its own runs/teacher
    report = run_bench(_config(here / "runs" / "student")).to_dict()
    assert report["models"]["teacher"]["source"] == str(teacher_dir)


def test_a_recorded_teacher_whose_weights_changed_is_refused(tmp_path):
    teacher = _tiny(0)
    teacher_dir = save_artifact(tmp_path / "teacher", teacher, {"method": "test teacher"})
    student = _student(tmp_path / "student", _tiny(0), {"name": teacher.name, "path": str(teacher_dir),
                                                       "weights_sha256": weights_sha256(teacher.model)})
    assert run_bench(_config(student)).models["teacher"].source == str(teacher_dir)  # the same weights: accepted

    save_artifact(teacher_dir, _tiny(1), {"method": "retrained in place"})
    with pytest.raises(BenchError, match=r"sha256 .*--other-teacher"):
        run_bench(_config(student))
    report = run_bench(_config(student, other_teacher=True))
    assert any("compared with it anyway (--other-teacher)" in n for n in report.notes)


def test_a_given_teacher_with_other_weights_is_refused_unless_other_teacher(tmp_path):
    teacher = _tiny(0)
    student = _student(tmp_path / "student", _tiny(0), {"name": teacher.name, "path": None,
                                                       "weights_sha256": weights_sha256(teacher.model)})
    other = save_artifact(tmp_path / "other", _tiny(1), {"method": "another teacher"})
    code, output = _cli("bench", student, "--teacher", other, *BENCH_ARGS, "--out", tmp_path / "bench")
    assert code == 1, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and str(other) in errors[0] and "--other-teacher" in errors[0], output
    assert "Traceback" not in output and not (tmp_path / "bench").exists()

    code, output = _cli("bench", student, "--teacher", other, "--other-teacher", *BENCH_ARGS, "--out",
                        tmp_path / "bench")
    assert code == 0, output
    assert "compared with it anyway" in output


def test_a_relative_teacher_without_hash_is_looked_for_beside_the_artifact_first(tmp_path, monkeypatch):
    """compression.json files that record a relative teacher path and no hash (nothing to check it by)."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    save_artifact(here / "runs" / "teacher", _tiny(0), {"method": "test teacher"})
    save_artifact(elsewhere / "runs" / "teacher", _tiny(1), {"method": "another model, same relative path"})
    student = _student(here / "runs" / "student", _tiny(0), {"name": "vit_tiny_patch16_224", "path": "runs/teacher"})
    monkeypatch.chdir(elsewhere)
    report = run_bench(_config(student))
    assert report.models["teacher"].source == str(here.resolve() / "runs" / "teacher")
    [note] = [n for n in report.notes if n.startswith("teacher ")]
    assert f"taken relative to {here.resolve()}" in note and "records no weights hash" in note
