"""Gate logic (pass, fail, missing, globs, baselines), the gate file format, and the gate command's exit code."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from vitshrink.benchmarks.bench_command import gate_command
from vitshrink.benchmarks.bench_job import gate_bench
from vitshrink.benchmarks.errors import GateConfigError
from vitshrink.benchmarks.gate import (
    DEFAULT_GATES,
    evaluate_gates,
    gates_passed,
    load_gate_config,
    parse_gate_config,
)
from vitshrink.benchmarks.results import SCHEMA


def bench(metrics: dict, fingerprint: str = "machine-a") -> dict:
    return {"schema": SCHEMA, "environment": {"fingerprint": fingerprint}, "metrics": metrics}


METRICS = {
    "flops_reduction": 0.30,
    "top1_drop": 0.8,
    "speedup/ort-cpu:fp32/b1": 1.05,
    "speedup/ort-cpu:fp32/b32": 1.32,
    "speedup/torch-cpu:fp32/b32": 1.20,
}

GATES = """
schema = 1
[[gate]]
metric = "flops_reduction"
min = 0.25
[[gate]]
metric = "top1_drop"
max = 1.0
[[gate]]
metric = "speedup/*/b32"
min = 1.25
"""


def by_metric(results):
    return {r.metric: r for r in results}


def test_pass_fail_and_by_how_much():
    results = by_metric(evaluate_gates(bench(METRICS), parse_gate_config(GATES)))
    assert results["flops_reduction"].status == "pass"
    assert results["top1_drop"].status == "pass"
    assert results["speedup/ort-cpu:fp32/b32"].status == "pass"  # the glob matched two metrics
    failed = results["speedup/torch-cpu:fp32/b32"]
    assert failed.status == "fail" and failed.failed
    assert failed.shortfall == pytest.approx(0.05)  # 1.20 against >= 1.25
    assert "speedup/ort-cpu:fp32/b1" not in results  # b1 was not gated
    assert not gates_passed(list(results.values()))


def test_max_limit_fails_above():
    results = evaluate_gates(bench({**METRICS, "top1_drop": 2.5}), parse_gate_config(GATES))
    drop = by_metric(results)["top1_drop"]
    assert drop.status == "fail" and drop.shortfall == pytest.approx(1.5)


def test_missing_metric_fails_unless_optional():
    config = parse_gate_config(GATES + '[[gate]]\nmetric = "agreement/tensorrt:*"\nmin = 0.99\n'
                                       '[[gate]]\nmetric = "top1_drop/ort-cpu:int8"\nmax = 2\nrequired = false\n')
    results = by_metric(evaluate_gates(bench(METRICS), config))
    assert results["agreement/tensorrt:*"].status == "missing" and results["agreement/tensorrt:*"].failed
    assert results["top1_drop/ort-cpu:int8"].status == "skipped"
    assert not results["top1_drop/ort-cpu:int8"].failed


def test_all_pass():
    results = evaluate_gates(bench({**METRICS, "speedup/torch-cpu:fp32/b32": 1.3}), parse_gate_config(GATES))
    assert gates_passed(results) and {r.status for r in results} == {"pass"}


BASELINE_GATES = """
[[gate]]
metric = "speedup/ort-cpu:fp32/b32"
baseline_rel = 0.10
[[gate]]
metric = "top1_drop"
baseline_abs = 0.5
"""


def test_baseline_tolerances():
    config = parse_gate_config(BASELINE_GATES)
    baseline = {"fingerprint": "machine-a", "metrics": {"speedup/ort-cpu:fp32/b32": 1.5, "top1_drop": 0.2}}
    results = by_metric(evaluate_gates(bench(METRICS), config, baseline))
    speed = results["speedup/ort-cpu:fp32/b32"]  # 1.32 < 1.5 - 10% = 1.35
    assert speed.status == "fail" and speed.shortfall == pytest.approx(0.03)
    assert "baseline 1.5" in speed.limit
    assert results["top1_drop"].status == "fail"  # lower is better: 0.8 > 0.2 + 0.5
    assert results["top1_drop"].shortfall == pytest.approx(0.1)


def test_timing_baseline_from_another_machine_is_not_compared_and_says_so():
    baseline = {"fingerprint": "machine-b", "metrics": {"speedup/ort-cpu:fp32/b32": 1.5, "top1_drop": 0.2}}
    results = by_metric(evaluate_gates(bench(METRICS), parse_gate_config(BASELINE_GATES), baseline))
    speed = results["speedup/ort-cpu:fp32/b32"]
    assert speed.status == "not evaluated" and speed.failed  # required (the default): cannot check = fail
    assert "not evaluated: baseline recorded on another machine" in speed.detail
    assert results["top1_drop"].status == "fail"  # accuracy does not depend on the machine
    optional = BASELINE_GATES.replace("baseline_rel = 0.10", "baseline_rel = 0.10\nrequired = false")
    speed = by_metric(evaluate_gates(bench(METRICS), parse_gate_config(optional), baseline))["speedup/ort-cpu:fp32/b32"]
    assert speed.status == "skipped" and not speed.failed
    assert "not evaluated (optional): baseline recorded on another machine" in speed.detail


def test_bad_gate_file_reports_every_problem():
    text = """
[[gate]]
metric = "top1_drop"
mx = 1.0
[[gate]]
min = 1.0
[[gate]]
metric = "speedup/*"
[[gate]]
metric = "flops_reduction"
min = "0.3"
"""
    with pytest.raises(GateConfigError) as e:
        parse_gate_config(text)
    message = str(e.value)
    assert "4 bad gates" in message
    assert "unknown keys ['mx']" in message and "needs metric" in message and "give min, max" in message
    assert "min = '0.3' must be a finite number" in message
    with pytest.raises(GateConfigError, match="not valid TOML"):
        parse_gate_config("[[gate]\n")
    with pytest.raises(GateConfigError, match="no gates"):
        parse_gate_config("schema = 1\n")


def test_default_gate_file_parses():
    config = load_gate_config(DEFAULT_GATES)
    names = {g.metric for g in config.gates}
    assert {"top1_drop", "flops_reduction", "speedup/ort-cpu:fp32/b32"} <= names
    assert config.baseline == DEFAULT_GATES.parent / "default-baseline.json"


def test_update_baseline_records_only_a_passing_run(tmp_path):
    gates = tmp_path / "gates.toml"
    gates.write_text('baseline = "base.json"\n' + GATES + BASELINE_GATES)
    failing = bench(METRICS)  # speedup/torch-cpu b32 fails its min
    outcome = gate_bench(failing, gates, baseline=tmp_path / "base.json", update_baseline=True)
    assert not outcome.passed and not (tmp_path / "base.json").exists()

    passing = bench({**METRICS, "speedup/torch-cpu:fp32/b32": 1.3})
    outcome = gate_bench(passing, gates, baseline=tmp_path / "base.json", update_baseline=True)
    assert outcome.passed and outcome.baseline_written == tmp_path / "base.json"
    recorded = json.loads((tmp_path / "base.json").read_text())
    assert recorded["fingerprint"] == "machine-a"
    assert recorded["metrics"]["speedup/ort-cpu:fp32/b32"] == 1.32
    assert "speedup/ort-cpu:fp32/b1" not in recorded["metrics"]  # only gated metrics

    slower = bench({**METRICS, "speedup/torch-cpu:fp32/b32": 1.3, "speedup/ort-cpu:fp32/b32": 1.26})
    assert gate_bench(slower, gates).passed  # within 10% of the recorded 1.32
    regressed = bench({**METRICS, "speedup/torch-cpu:fp32/b32": 1.3, "speedup/ort-cpu:fp32/b32": 1.0})
    assert not gate_bench(regressed, gates).passed


def _write(tmp_path, metrics: dict) -> tuple:
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(bench(metrics)))
    gates = tmp_path / "gates.toml"
    gates.write_text(GATES)
    return path, gates


def test_gate_command_exits_1_and_prints_what_failed(tmp_path):
    path, gates = _write(tmp_path, METRICS)
    result = CliRunner().invoke(gate_command, [str(path), "--gates", str(gates)])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "speedup/torch-cpu:fp32/b32" in result.output
    assert "1 of 4 gates failed" in result.output


def test_gate_command_exits_0_when_all_pass(tmp_path):
    path, gates = _write(tmp_path, {**METRICS, "speedup/torch-cpu:fp32/b32": 1.3})
    result = CliRunner().invoke(gate_command, [str(tmp_path), "--gates", str(gates)])  # the folder works too
    assert result.exit_code == 0, result.output
    assert "all 4 gates passed" in result.output


def test_gate_command_reports_a_bad_bench_file_in_one_line(tmp_path):
    path, gates = _write(tmp_path, METRICS)
    path.write_text(json.dumps({"schema": 99}))
    result = CliRunner().invoke(gate_command, [str(path), "--gates", str(gates)])
    assert result.exit_code == 1
    assert "Error:" in result.output and "schema 99" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("bad", [float("nan"), None, float("inf"), "0.3"])
def test_a_value_that_is_not_a_finite_number_fails_its_gate_by_name(tmp_path, bad):
    path, gates = _write(tmp_path, {**METRICS, "speedup/torch-cpu:fp32/b32": 1.3, "top1_drop": bad,
                                    "flops_reduction": bad})
    gates.write_text(GATES + '[[gate]]\nmetric = "flops_reduction"\nmin = 0.25\nrequired = false\n')
    result = CliRunner().invoke(gate_command, [str(path), "--gates", str(gates)], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    shown = json.dumps(bad)  # NaN, null, Infinity, "0.3": as bench.json holds it
    failed = [line for line in result.output.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 3, result.output  # optional or not: the measurement is broken
    assert all(f"the value {shown} is not a finite number" in line for line in failed)
    assert {line.split()[1] for line in failed} == {"top1_drop", "flops_reduction"}
    assert "3 of 5 gates failed" in result.output


def test_a_baseline_value_that_is_not_a_finite_number_is_not_evaluated():
    baseline = {"fingerprint": "machine-a", "metrics": {"speedup/ort-cpu:fp32/b32": float("nan"), "top1_drop": None}}
    results = by_metric(evaluate_gates(bench(METRICS), parse_gate_config(BASELINE_GATES), baseline))
    speed, drop = results["speedup/ort-cpu:fp32/b32"], results["top1_drop"]
    assert speed.status == "not evaluated" and speed.failed and "holds NaN for it" in speed.detail
    assert drop.status == "not evaluated" and drop.failed


@pytest.mark.parametrize("line, named", [
    ('required = "false"', "required = 'false' must be true or false"),
    ("required = 0", "required = 0 must be true or false"),
    ("min = nan", "min = nan must be a finite number"),
    ("max = inf", "max = inf must be a finite number"),
    ("min = true", "min = True must be a finite number"),
    ("baseline_rel = [0.1]", "baseline_rel = [0.1] must be a finite number"),
    ("note = 3", "note = 3 must be a string"),
])
def test_gate_file_fields_of_the_wrong_type_are_refused_by_name(line, named):
    with pytest.raises(GateConfigError) as e:
        parse_gate_config(f'[[gate]]\nmetric = "top1_drop"\n{line}\n')
    assert f"gate #1 (top1_drop): {named}" in str(e.value)


def test_a_gate_entry_that_is_not_a_table_is_refused():
    with pytest.raises(GateConfigError, match=r"gate #1: 'top1_drop' is not a table"):
        parse_gate_config('gate = ["top1_drop"]\n')


def _timed_bench(pairs: int) -> dict:
    """A bench dict with one speedup row from `pairs` timing rounds (the student twice as fast, +-10%)."""
    from vitshrink.benchmarks.metrics import derive_metrics
    from vitshrink.benchmarks.results import SpeedupRow
    from vitshrink.benchmarks.stats import speedup

    noise = 1 + 0.1 * np.sin(np.arange(pairs))
    row = SpeedupRow("ort-cpu:fp32", 1, speedup(0.010 * noise, 0.005 * noise[::-1]), flops_ratio=2.0).to_dict()
    data = {"schema": SCHEMA, "environment": {"fingerprint": "machine-a"}, "speedup": [row]}
    return {**data, "metrics": derive_metrics(data)}


CI_GATE = '[[gate]]\nmetric = "speedup_ci_low/ort-cpu:fp32/b1"\nmin = 1.0\n'


def test_a_speedup_interval_from_too_few_rounds_is_not_evaluated():
    from vitshrink.benchmarks.bench_report import speedup_rows
    from vitshrink.benchmarks.plot import error_bars
    from vitshrink.benchmarks.stats import MIN_CI_ROUNDS

    one = _timed_bench(1)
    assert one["speedup"][0]["ci_low"] == one["speedup"][0]["ci_high"]  # a zero-width "interval"
    assert "speedup_ci_low/ort-cpu:fp32/b1" not in one["metrics"]
    [result] = evaluate_gates(one, parse_gate_config(CI_GATE))
    assert result.status == "not evaluated" and result.failed
    assert f"needs at least {MIN_CI_ROUNDS} timing rounds and this run has 1" in result.detail
    assert speedup_rows(one)[1][0][3] == f"- (< {MIN_CI_ROUNDS} rounds)"
    assert error_bars([2.0], [2.0], [2.0], [1]) is None  # the plot draws no interval either
    assert error_bars([2.0], [1.8], [2.3], [MIN_CI_ROUNDS]) == [[pytest.approx(0.2)], [pytest.approx(0.3)]]

    # a bench.json whose metrics hold the zero-width interval's low end is caught from its rows
    stale = {**one, "metrics": {**one["metrics"], "speedup_ci_low/ort-cpu:fp32/b1": one["speedup"][0]["ci_low"]}}
    [result] = evaluate_gates(stale, parse_gate_config(CI_GATE))
    assert result.status == "not evaluated" and result.failed
    [result] = evaluate_gates(stale, parse_gate_config(CI_GATE + "required = false\n"))
    assert result.status == "skipped" and not result.failed

    enough = _timed_bench(MIN_CI_ROUNDS)
    [result] = evaluate_gates(enough, parse_gate_config(CI_GATE))
    assert result.status == "pass" and result.value == enough["speedup"][0]["ci_low"] > 1.0
