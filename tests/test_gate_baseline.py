"""Baseline gates: a gate that cannot be evaluated says so and fails unless optional; baselines are written
only where the user says; the committed default gates, baseline and .ci/run agree with each other."""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner

from vitshrink.benchmarks.bench_command import bench_command, gate_command
from vitshrink.benchmarks.gate import (
    DEFAULT_GATES,
    evaluate_gates,
    load_gate_config,
    parse_gate_config,
    read_baseline,
)
from vitshrink.benchmarks.results import SCHEMA

ROOT = Path(__file__).resolve().parents[1]
METRICS = {"flops_reduction": 0.30, "top1_drop": 0.8, "speedup/ort-cpu:fp32/b32": 1.32}
GATES = """
schema = 1
baseline = "base.json"
[[gate]]
metric = "flops_reduction"
min = 0.25
[[gate]]
metric = "speedup/ort-cpu:fp32/b32"
min = 1.1
baseline_rel = 0.1
[[gate]]
metric = "top1_drop"
baseline_abs = 0.5
"""


def _files(tmp_path, gates: str = GATES, metrics: dict = METRICS) -> tuple[Path, Path]:
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"schema": SCHEMA, "environment": {"fingerprint": "m"}, "metrics": metrics}))
    gate_file = tmp_path / "gates.toml"
    gate_file.write_text(gates)
    return bench, gate_file


def test_missing_baseline_file_is_not_evaluated_and_fails(tmp_path):
    bench, gate_file = _files(tmp_path)
    result = CliRunner().invoke(gate_command, [str(bench), "--gates", str(gate_file)])
    assert result.exit_code == 1, result.output
    assert f"not evaluated: no baseline file {tmp_path / 'base.json'}" in result.output
    assert result.output.count("NOT EVALUATED") == 2  # speedup (its min passed) and top1_drop
    assert "2 of 3 gates failed" in result.output


def test_optional_gate_that_cannot_be_evaluated_is_shown_but_passes(tmp_path):
    optional = GATES.replace("baseline_rel = 0.1", "baseline_rel = 0.1\nrequired = false")
    optional = optional.replace("baseline_abs = 0.5", "baseline_abs = 0.5\nrequired = false")
    bench, gate_file = _files(tmp_path, optional)
    result = CliRunner().invoke(gate_command, [str(bench), "--gates", str(gate_file)])
    assert result.exit_code == 0, result.output
    assert result.output.count("not evaluated (optional): no baseline file") == 2
    assert "all 3 gates passed" in result.output


def test_limits_still_apply_when_the_baseline_part_cannot_be_checked(tmp_path):
    bench, gate_file = _files(tmp_path, metrics={**METRICS, "speedup/ort-cpu:fp32/b32": 1.05})
    results = {r.metric: r for r in evaluate_gates(json.loads(bench.read_text()), load_gate_config(gate_file))}
    assert results["speedup/ort-cpu:fp32/b32"].status == "fail"  # below min 1.1 whatever the baseline
    assert results["speedup/ort-cpu:fp32/b32"].shortfall == 1.1 - 1.05


def test_baseline_without_the_metric_is_not_evaluated(tmp_path):
    (tmp_path / "base.json").write_text(json.dumps({"schema": 1, "fingerprint": "m", "metrics": {"top1_drop": 0.5}}))
    bench, gate_file = _files(tmp_path)
    config = load_gate_config(gate_file)
    results = {r.metric: r for r in evaluate_gates(json.loads(bench.read_text()), config,
                                                   read_baseline(config.baseline), config.baseline)}
    assert results["speedup/ort-cpu:fp32/b32"].status == "not evaluated"
    assert "has no value for it" in results["speedup/ort-cpu:fp32/b32"].detail
    assert results["top1_drop"].status == "pass"  # 0.8 <= 0.5 + 0.5


def test_update_baseline_writes_only_the_file_the_user_names(tmp_path):
    bench, gate_file = _files(tmp_path)
    refused = CliRunner().invoke(gate_command, [str(bench), "--gates", str(gate_file), "--update-baseline"])
    assert refused.exit_code == 2 and "--baseline FILE" in refused.output
    assert not (tmp_path / "base.json").exists()  # nothing beside the gate file (it may be inside the package)

    target = tmp_path / "mine" / "baseline.json"
    result = CliRunner().invoke(gate_command, [str(bench), "--gates", str(gate_file), "--baseline", str(target),
                                               "--update-baseline"])
    assert result.exit_code == 0, result.output
    assert json.loads(target.read_text())["metrics"] == METRICS
    assert not (tmp_path / "base.json").exists()
    again = CliRunner().invoke(gate_command, [str(bench), "--gates", str(gate_file), "--baseline", str(target)])
    assert again.exit_code == 0 and "NOT EVALUATED" not in again.output


def test_bench_refuses_update_baseline_without_a_file_before_any_work(tmp_path):
    result = CliRunner().invoke(bench_command, [str(tmp_path / "nothing"), "--gate", str(DEFAULT_GATES),
                                                "--update-baseline"])
    assert result.exit_code == 2 and "--baseline FILE" in result.output


def test_committed_baseline_covers_every_baseline_gate_and_passes_them():
    config = load_gate_config(DEFAULT_GATES)
    baseline = read_baseline(config.baseline)
    assert baseline is not None, f"{config.baseline} is not committed"
    recorded = baseline["metrics"]
    for gate in config.gates:
        if gate.uses_baseline:
            assert any(re.fullmatch(gate.metric.replace("*", ".*"), m) for m in recorded), gate.metric
    # the run that recorded the baseline passes every gate against it (on the machine that recorded it)
    bench = {"schema": SCHEMA, "environment": {"fingerprint": baseline["fingerprint"]}, "metrics": recorded}
    results = evaluate_gates(bench, config, baseline, config.baseline)
    assert all(r.status == "pass" for r in results), [r for r in results if r.status != "pass"]


def _commands(text: str, comment: bool) -> list[str]:
    """The `vitshrink ...` commands in a shell script or in a TOML comment, continuation lines joined."""
    lines = [line.removeprefix("#").strip() if comment else line.strip() for line in text.splitlines()
             if not comment or line.startswith("#")]
    joined = re.sub(r"\\\s*\n\s*", " ", "\n".join(lines))
    return [re.sub(r"\s+", " ", line) for line in joined.splitlines() if line.startswith("vitshrink ")]


def test_default_gate_comment_describes_exactly_what_ci_runs():
    ci = _commands((ROOT / ".ci" / "run").read_text(), comment=False)
    documented = _commands(DEFAULT_GATES.read_text(), comment=True)
    record = " ${CI_RECORD_BASELINE:+--baseline benchmarks/gates/default-baseline.json --update-baseline}"
    assert ci[-1].endswith(record), ci
    ci[-1] = ci[-1].removesuffix(record)
    assert len(ci) == 2 and documented[:2] == ci, (documented, ci)
    # and how the committed baseline was recorded: the same job with CI_RECORD_BASELINE=1
    assert "CI_RECORD_BASELINE=1 .ci/run" in DEFAULT_GATES.read_text()


def test_default_gates_mark_only_the_machine_dependent_baseline_optional():
    config = load_gate_config(DEFAULT_GATES)
    optional = [g.metric for g in config.gates if not g.required]
    assert all(g.uses_baseline and g.min is None and g.max is None for g in config.gates if not g.required)
    assert optional == ["speedup/ort-cpu:fp32/b32"]
    assert next(g for g in config.gates if g.metric == "top1_drop" and g.uses_baseline).required


def test_parse_keeps_required_false(tmp_path):
    config = parse_gate_config('[[gate]]\nmetric = "x"\nbaseline_rel = 0.1\nrequired = false\n')
    assert config.gates[0].required is False
