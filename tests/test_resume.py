"""`--resume` refuses a work folder or checkpoint that another run made, and names what differs.

(vitshrink.compressor.training.resume is imported inside the tests that use it, so the first test also runs, and fails,
on code without it.)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re

import pytest
import torch

from vitshrink.compressor.core.artifact import save_artifact
from vitshrink.compressor.core.errors import VitShrinkError
from vitshrink.compressor.jobs.compress_job import CompressJob, DataOptions, compress
from vitshrink.compressor.jobs.pipeline import CompressConfig
from vitshrink.compressor.planning.planner import Budget
from vitshrink.compressor.training.train import TrainConfig


def _quiet(*args, **kwargs) -> None:
    pass


def _job(teacher, tmp_path, *, resume: bool = False, train_limit: int = 96, epochs: int = 1) -> CompressJob:
    config = CompressConfig(
        budget=Budget.parse("flops=0.1"), stages=("width",), calib_batches=1, calib_batch_size=32,
        train=TrainConfig(epochs=epochs, batch_size=32, max_steps_per_epoch=1),
    )
    return CompressJob(model=str(teacher), out=tmp_path / "student", config=config, resume=resume, progress=False,
                       data=DataOptions(dataset="digits", train_limit=train_limit, eval_limit=64))


@pytest.fixture
def teachers(trained_digits, tmp_path):
    """Two teacher artifacts of the same architecture: the trained digits ViT and a copy one weight apart."""
    other = copy.deepcopy(trained_digits.model)
    with torch.no_grad():
        other.head.bias[0] += 1e-3
    a = save_artifact(tmp_path / "teacher-a", trained_digits, {"method": "test teacher"})
    b = save_artifact(tmp_path / "teacher-b", dataclasses.replace(trained_digits, model=other), {"method": "test"})
    return a, b


def test_resume_refuses_another_teachers_or_other_datas_stages(teachers, tmp_path):
    a, b = teachers
    compress(_job(a, tmp_path), log=_quiet)
    work = tmp_path / "student.work"
    with pytest.raises(VitShrinkError, match=(
        rf"^--resume: the work folder {work} was made with --train-limit 96, this run has --train-limit 48; "
        "rerun with the same options, or without --resume$"
    )):
        compress(_job(a, tmp_path, resume=True, train_limit=48), log=_quiet)
    with pytest.raises(VitShrinkError, match=(
        r"made with a teacher whose weights have sha256 [0-9a-f]{12}, "
        r"this run has a teacher whose weights have sha256 [0-9a-f]{12};"
    )):
        compress(_job(b, tmp_path, resume=True), log=_quiet)
    with pytest.raises(VitShrinkError, match=r"stage artifact .* made with --epochs 1, this run has --epochs 2;"):
        compress(_job(a, tmp_path, resume=True, epochs=2), log=_quiet)
    lines: list[str] = []
    compress(_job(a, tmp_path, resume=True), log=lines.append)  # the same run continues
    assert any("finished earlier" in line for line in lines)


def test_starting_over_clears_the_earlier_run_so_a_later_resume_cannot_mix(teachers, tmp_path):
    from vitshrink.compressor.training.resume import start_work_dir

    a, b = teachers
    compress(_job(a, tmp_path), log=_quiet)
    work = tmp_path / "student.work"
    (work / "notes.txt").write_text("mine")  # not vitshrink's: left alone
    assert (work / "stage1-width" / "checkpoint").is_dir()
    record = {**json.loads((work / "run.json").read_text()), "teacher_sha256": "0" * 64}
    start_work_dir(work, record, resume=False, log=_quiet)  # a run with another teacher starts here, then crashes
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt", "run.json"]
    assert json.loads((work / "run.json").read_text()) == record
    with pytest.raises(VitShrinkError, match="sha256 000000000000, this run has"):
        compress(_job(a, tmp_path, resume=True), log=_quiet)


def test_a_work_folder_without_a_run_record_is_not_resumed(tmp_path):
    from vitshrink.compressor.training.resume import start_work_dir

    (tmp_path / "stage1-width").mkdir()
    with pytest.raises(VitShrinkError, match="has no run.json .*rerun without --resume"):
        start_work_dir(tmp_path, {"data": {}}, resume=True, log=_quiet)
    start_work_dir(tmp_path / "fresh", {"data": {}}, resume=True, log=_quiet)  # nothing to resume: a new run
    assert (tmp_path / "fresh" / "run.json").is_file()


def test_the_message_names_each_difference_as_its_option():
    from vitshrink.compressor.training.resume import check_same

    recorded = {"budget": "flops=0.3", "stages": ["width", "depth"], "train": {"amp": False, "lr": 1e-4},
                "calib_batch_size": 64, "data": {"train_limit": None}}
    current = {"budget": "flops=0.3", "stages": ["width"], "train": {"amp": True, "lr": 1e-4},
               "calib_batch_size": 32, "data": {"train_limit": 500}}
    with pytest.raises(VitShrinkError) as info:
        check_same("X", recorded, current)
    assert str(info.value) == (
        "--resume: X was made with --stages width,depth and no --amp and calib_batch_size 64 and no --train-limit, "
        "this run has --stages width and --amp and calib_batch_size 32 and --train-limit 500; "
        "rerun with the same options, or without --resume"
    )
    check_same("X", current, json.loads(json.dumps(current)))  # tuples vs lists, as stored: no difference


def test_another_latency_table_is_named_by_its_fingerprint_not_its_timings():
    """A table re-profiled on --resume (the cache was cleared) differs in hundreds of timings: one short line."""
    from vitshrink.compressor.training.resume import check_same

    table = {"attention": [0.0, 0.1, 0.2], "mlp_ms": [0.0, *[0.01 * i for i in range(1, 200)]], "fit": {"a": 0.1}}
    remeasured = {**table, "mlp_ms": [t * 1.01 for t in table["mlp_ms"]], "fit": {"a": 0.12}}
    with pytest.raises(VitShrinkError) as info:
        check_same("X", {"budget": "latency=0.3", "latency_table": table},
                   {"budget": "latency=0.3", "latency_table": remeasured})
    message = str(info.value)
    assert re.fullmatch(r"--resume: X was made with a latency table with sha256 [0-9a-f]{12}, this run has a "
                        r"latency table with sha256 [0-9a-f]{12}; rerun with the same options, or without --resume",
                        message), message
    with pytest.raises(VitShrinkError, match="made with --reduce flops=0.3 and no latency table, this run has "
                                             "--reduce latency=0.3 and a latency table with sha256"):
        check_same("X", {"budget": "flops=0.3", "latency_table": None},
                   {"budget": "latency=0.3", "latency_table": table})
    check_same("X", {"latency_table": table}, {"latency_table": json.loads(json.dumps(table))})


def test_the_weights_fingerprint_sees_one_changed_value(trained_digits):
    from vitshrink.compressor.training.resume import weights_sha256

    model = copy.deepcopy(trained_digits.model)
    before = weights_sha256(model)
    assert before == weights_sha256(trained_digits.model) and len(before) == 64
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight[3, 5] += 1e-6
    assert weights_sha256(model) != before


def test_a_timm_name_without_pretrained_weights_resumes(tmp_path):
    """`--model vit_tiny_patch16_224` without --pretrained is random weights (timing runs use it): drawn from
    --seed, so the resumed run has the same teacher and is not refused as another one."""
    job = dataclasses.replace(_job("vit_tiny_patch16_224", tmp_path, train_limit=32),
                              data=DataOptions(dataset="digits", train_limit=32, eval_limit=16))
    torch.manual_seed(1)
    compress(job, log=_quiet)
    torch.manual_seed(2)  # whatever the process's generator holds
    lines: list[str] = []
    compress(dataclasses.replace(job, resume=True), log=lines.append)
    assert any("finished earlier" in line for line in lines)
