"""The latency check: a plan timed on the target and re-aimed by its miss; what compress records and resumes."""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

from tests.conftest import TINY_ARGS, TINY_CFG, tiny_vit
from tests.test_latency import _staircase_table
from vitshrink.cli import main
from vitshrink.compressor.core.artifact import load_artifact, save_artifact
from vitshrink.compressor.core.errors import BudgetError
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.core.surgery import PrunePlan
from vitshrink.compressor.planning.landing import land_on_target
from vitshrink.compressor.planning.plan_file import read_plan, write_plan
from vitshrink.exporters.runtime.latency_profile import table_key


def _quiet(*args, **kwargs) -> None:
    pass


def test_a_plan_that_measures_short_is_re_aimed_by_its_miss():
    measured_minus = 0.04  # the target measures 4 points less than each plan was made for
    plan, checks = land_on_target(lambda aim: (aim, aim), lambda plan: plan - measured_minus, 0.30, log=_quiet)
    assert [c.aim for c in checks] == pytest.approx([0.30, 0.34])
    assert plan == pytest.approx(0.34) and checks[-1].measured == pytest.approx(0.30)


def test_a_plan_within_the_tolerance_is_kept_without_re_planning():
    plan, checks = land_on_target(lambda aim: (aim, aim), lambda plan: plan + 0.009, 0.30, log=_quiet)
    assert plan == 0.30 and len(checks) == 1


def test_the_closest_measured_plan_is_kept_after_the_last_round():
    measurements = iter([0.25, 0.37, 0.285])  # noisy: never within 1 point; the third is closest
    plan, checks = land_on_target(lambda aim: (aim, aim), lambda plan: next(measurements), 0.30, rounds=2, timings=1,
                                  log=_quiet)
    assert len(checks) == 3 and plan == pytest.approx(checks[2].aim)
    assert [c.kept for c in checks] == [False, False, True]
    assert [c.aim for c in checks] == pytest.approx([0.30, 0.35, 0.28])


def test_rounds_zero_times_the_plan_once_and_keeps_it():
    plan, checks = land_on_target(lambda aim: (aim, aim), lambda plan: 0.2, 0.30, rounds=0, log=_quiet)
    assert plan == 0.30 and len(checks) == 1 and checks[0].measured == 0.2


def test_a_plan_is_re_aimed_by_the_mean_of_its_timings_not_by_one():
    # one timing reads 2 points short, the next 0.2 short: the mean misses by 1.1 points, and the re-aim moves by
    # that, not by the 2 points one timing alone would have moved it
    timings = iter([0.28, 0.298, 0.301, 0.303])
    plan, checks = land_on_target(lambda aim: (aim, aim), lambda plan: next(timings), 0.30, timings=2,
                                  log=_quiet)
    assert checks[0].timings == pytest.approx((0.28, 0.298)) and checks[0].measured == pytest.approx(0.289)
    assert checks[1].aim == pytest.approx(0.311) and plan == pytest.approx(0.311)
    assert checks[1].to_dict()["timings"] == [0.301, 0.303] and checks[1].to_dict()["kept"] is True


def test_one_timing_per_plan_by_default_and_zero_is_refused():
    calls = []
    plan, checks = land_on_target(lambda aim: (aim, aim), lambda plan: calls.append(plan) or 0.30, 0.30, log=_quiet)
    assert len(calls) == 1 and checks[0].timings == (0.30,)
    with pytest.raises(ValueError, match="timings must be at least 1, got 0"):
        land_on_target(lambda aim: (aim, aim), lambda plan: 0.30, 0.30, timings=0, log=_quiet)


def test_a_re_aim_past_the_budget_keeps_the_plans_measured_so_far():
    def plan_for(aim):
        if aim > 0.32:
            raise BudgetError("latency can remove at most 32%")
        return aim, aim

    lines: list[str] = []
    plan, checks = land_on_target(plan_for, lambda plan: plan - 0.05, 0.30, log=lines.append)
    assert plan == 0.30 and len(checks) == 1 and any("no plan for -35.0%" in line for line in lines)
    with pytest.raises(BudgetError):  # the first plan is the user's target: its error is theirs to see
        land_on_target(plan_for, lambda plan: plan, 0.40, log=_quiet)


# --------------------------------------------------------------------------------------- compress


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def teacher_and_table(tmp_path):
    """A tiny teacher, and a table with this machine's key (ort-cpu, batch 1, 1 thread): its plans can be timed."""
    loaded = load_model("vit_tiny_patch16_224", model_args={**TINY_ARGS, "pretrained_cfg_overlay": TINY_CFG})
    teacher = save_artifact(tmp_path / "teacher", loaded, {"method": "test teacher"})
    table = dataclasses.replace(_staircase_table(), key=table_key(tiny_vit(), "ort-cpu", 1, 1))
    table.save(tmp_path / "lut.json")
    return teacher, tmp_path / "lut.json"


def _compress(teacher, table, out, *extra):
    return _run("compress", "--model", teacher, "--reduce", "latency=0.3", "--latency-table", table,
                "--round-to", "32", "--epochs", "0", "--calib-batches", "2", "--out", out, "--no-progress", *extra)


def test_compress_times_its_plan_and_records_every_check(teacher_and_table, tmp_path):
    teacher, table = teacher_and_table
    out = tmp_path / "student"
    result = _compress(teacher, table, out)
    assert result.exit_code == 0, result.output
    checks = load_artifact(out).compression["stages"][0]["latency_checks"]
    assert 1 <= len(checks) <= 3 and result.output.count("latency check: plan for") == len(checks)
    assert checks[0]["aim"] == pytest.approx(0.3)
    for earlier, later in zip(checks, checks[1:], strict=False):  # each re-aim moves by the miss before it
        assert later["aim"] == pytest.approx(min(max(earlier["aim"] + 0.3 - earlier["measured"], 0), 0.99), abs=1e-4)
    # the student is the plan that measured closest to the target, and its check says so
    closest = min(checks, key=lambda c: abs(c["measured"] - 0.3))
    assert [c["kept"] for c in checks] == [c is closest for c in checks]
    latency = load_artifact(out).compression["latency"]
    assert latency["checked_reduction"] == closest["measured"]  # for bench's predicted-vs-realised line
    predicted = latency["predicted_ms"]
    assert 1 - predicted["student"] / predicted["teacher"] == pytest.approx(closest["predicted"], abs=1e-4)


def test_no_latency_check_plans_on_the_table_alone(teacher_and_table, tmp_path):
    teacher, table = teacher_and_table
    result = _compress(teacher, table, tmp_path / "student", "--no-latency-check")
    assert result.exit_code == 0, result.output
    assert "latency check" not in result.output
    record = load_artifact(tmp_path / "student").compression
    assert record["stages"][0]["latency_checks"] is None and record["config"]["latency_check"] is False
    assert "checked_reduction" not in record["latency"]


def test_no_latency_check_with_a_flops_budget_is_refused(teacher_and_table, tmp_path):
    teacher, _ = teacher_and_table
    result = _run("compress", "--model", teacher, "--reduce", "flops=0.3", "--no-latency-check", "--out", tmp_path / "s")
    assert result.exit_code == 2 and "--no-latency-check applies to a latency budget" in result.output


def test_bench_shows_what_the_check_measured_beside_the_table_and_the_realised_line():
    from vitshrink.benchmarks.latency_plan_check import latency_plan_check, latency_plan_lines
    from vitshrink.benchmarks.results import SpeedupRow
    from vitshrink.benchmarks.stats import Speedup

    plan = {"target": "ort-cpu", "precision": "fp32", "batch": 1, "threads": 2,
            "predicted_ms": {"teacher": 100.0, "student": 76.0}, "checked_reduction": 0.305}
    row = SpeedupRow("ort-cpu:fp32", 1, Speedup(1 / 0.703, 1.40, 1.44, 1.41, 1.43, 30), 1.43)
    check = latency_plan_check({"latency": plan}, 2, [], [row])
    assert check["checked_reduction"] == 0.305 and check["realised_reduction"] == pytest.approx(0.297)
    assert latency_plan_lines(check)[0] == ("latency plan (ort-cpu:fp32, batch 1): predicted -24.0% by the table, "
                                            "measured -30.5% by compress's latency check, realised -29.7% "
                                            "(interleaved with the teacher)")
    unchecked = latency_plan_check({"latency": {**plan, "checked_reduction": None}}, 2, [], [row])
    assert "checked_reduction" not in unchecked and "by the table" not in latency_plan_lines(unchecked)[0]


def test_bench_finds_the_tensorrt_row_of_a_student_whose_compression_json_names_trt_fp16():
    from vitshrink.benchmarks.latency_plan_check import latency_plan_check

    plan = {"target": "trt-fp16", "precision": "fp16", "batch": 8, "threads": None,  # an older vitshrink's record
            "predicted_ms": {"teacher": 10.0, "student": 7.0}}
    check = latency_plan_check({"latency": plan}, 2, [], [])
    assert check["backend"] == "tensorrt:fp16" and "--backends tensorrt:fp16 --batch-sizes 8" in check["note"]


def test_a_table_from_another_device_is_not_checked_and_says_why(teacher_and_table, tmp_path):
    teacher, table = teacher_and_table
    other = dataclasses.replace(_staircase_table(), key=dataclasses.replace(
        table_key(tiny_vit(), "ort-cpu", 1, 1), device="NVIDIA Jetson AGX Orin"))
    other.save(table)
    result = _compress(teacher, table, tmp_path / "student")
    assert result.exit_code == 0, result.output
    assert "latency check: off: the table was measured elsewhere (device: table 'NVIDIA Jetson AGX Orin'" in result.output


def test_a_resumed_stage_cuts_the_plan_it_wrote_not_a_new_one(teacher_and_table, tmp_path):
    """A checked plan was timed: on --resume the interrupted stage must keep the plan its checkpoint was made for."""
    teacher, table = teacher_and_table
    out = tmp_path / "student"
    assert _compress(teacher, table, out, "--no-latency-check").exit_code == 0
    stage = tmp_path / "student.work" / "stage1-joint"
    import shutil

    shutil.rmtree(stage / "artifact")  # the stage did not finish
    written = PrunePlan(keep_heads={0: (0, 1), 1: (0, 1, 2), 2: (0,)}, keep_neurons={})
    write_plan(stage / "plan.json", written, tiny_vit())
    result = _compress(teacher, table, out, "--no-latency-check", "--resume")
    assert result.exit_code == 0, result.output
    assert f"resuming with the plan in {stage / 'plan.json'}" in result.output
    assert [b.num_heads for b in load_artifact(out).spec.blocks] == [2, 3, 1]
    assert read_plan(stage / "plan.json") == written
    assert json.loads((stage / "plan.json").read_text())["plan"]["keep_heads"]["1"] == [0, 1, 2]


def test_a_resume_with_other_settings_does_not_reuse_the_written_plan(teacher_and_table, tmp_path):
    teacher, table = teacher_and_table
    out = tmp_path / "student"
    assert _compress(teacher, table, out, "--no-latency-check").exit_code == 0
    stage = tmp_path / "student.work" / "stage1-joint"
    import shutil

    shutil.rmtree(stage / "artifact")
    result = _run("compress", "--model", teacher, "--reduce", "latency=0.4", "--latency-table", table,
                  "--round-to", "32", "--epochs", "0", "--calib-batches", "2", "--out", out, "--no-progress",
                  "--no-latency-check", "--resume")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"--resume: the plan {stage / 'plan.json'} was made with --reduce latency=0.3, this run has --reduce " \
           "latency=0.4" in result.output


def test_a_resume_that_turns_the_check_on_names_the_flag(teacher_and_table, tmp_path):
    teacher, table = teacher_and_table
    out = tmp_path / "student"
    assert _compress(teacher, table, out, "--no-latency-check").exit_code == 0
    import shutil

    shutil.rmtree(tmp_path / "student.work" / "stage1-joint" / "artifact")
    result = _compress(teacher, table, out, "--resume")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "made with --no-latency-check, this run has the latency check" in result.output


def test_the_experiment_plans_as_compress_does_with_the_check(tmp_path):
    """research/latency_plan.py times its plans through the check `compress` runs: its results are the shipped code's."""
    from research.latency_plan import latency_cut, random_scores

    model = tiny_vit()
    table = dataclasses.replace(_staircase_table(), key=table_key(model, "ort-cpu", 1, 1))
    scores = random_scores(model, seed=0)
    plan, predicted, checks, choices = latency_cut(model, scores, table, 0.3, 32, check=True, log=_quiet)
    kept = [c for c in checks if c.kept]
    assert len(kept) == 1 and predicted == kept[0].predicted and 1 <= len(checks) <= 3
    assert choices == []  # no validation metrics: the knapsack's plan, as the speed runs cut it
    unchecked, predicted_alone, none, _ = latency_cut(model, scores, table, 0.3, 32, check=False)
    assert none == [] and 0.3 <= predicted_alone <= 0.31 + 1e-9
    assert (plan == unchecked) == (kept[0].aim == pytest.approx(0.3))


def test_a_resumed_stage_keeps_how_its_plan_was_timed_and_chosen(teacher_and_table, tmp_path):
    """An interrupted stage resumed with its written plan still records the checks, the choice and the measured
    reduction the plan was made with (bench reports them)."""
    teacher, table = teacher_and_table
    out = tmp_path / "student"
    assert _compress(teacher, table, out).exit_code == 0
    first = load_artifact(out).compression
    assert first["stages"][0]["latency_checks"] and first["stages"][0]["plan_choices"]
    import shutil

    shutil.rmtree(tmp_path / "student.work" / "stage1-joint" / "artifact")  # interrupted before the stage finished
    result = _compress(teacher, table, out, "--resume")
    assert result.exit_code == 0, result.output
    assert "resuming with the plan in" in result.output and "latency check: plan for" not in result.output
    again = load_artifact(out).compression
    for field in ("latency_checks", "plan_choices", "plan"):
        assert again["stages"][0][field] == first["stages"][0][field], field
    assert again["latency"]["checked_reduction"] == first["latency"]["checked_reduction"]


def test_a_run_without_the_check_repeats_exactly_and_a_checked_run_says_it_may_not(teacher_and_table, tmp_path):
    """--no-latency-check on a given table: two runs write the same student. A checked plan is recorded as not
    repeatable, and its plan.json given back with --plan repeats it."""
    from vitshrink.compressor.training.resume import weights_sha256

    teacher, table = teacher_and_table
    students = []
    for name in ("a", "b"):
        assert _compress(teacher, table, tmp_path / name, "--no-latency-check").exit_code == 0
        students.append(load_artifact(tmp_path / name))
    assert weights_sha256(students[0].model) == weights_sha256(students[1].model)
    assert students[0].compression["repeatable"] is True

    assert _compress(teacher, table, tmp_path / "checked").exit_code == 0
    checked = load_artifact(tmp_path / "checked")
    assert checked.compression["repeatable"] is False and "--plan" in checked.compression["repeatable_note"]
    plan = tmp_path / "checked.work" / "stage1-joint" / "plan.json"
    again = _run("compress", "--model", teacher, "--plan", plan, "--epochs", "0", "--calib-batches", "2",
                 "--out", tmp_path / "replayed", "--no-progress")
    assert again.exit_code == 0, again.output
    assert weights_sha256(load_artifact(tmp_path / "replayed").model) == weights_sha256(checked.model)
