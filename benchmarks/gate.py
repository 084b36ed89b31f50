"""Gates: per-metric limits on a bench.json, as a pure function (bench dict + gate config -> results).

A gate file is TOML (see benchmarks/gates/default.toml):

    schema = 1
    baseline = "baseline.json"        # optional, relative to this file (read only; --baseline FILE overrides)

    [[gate]]
    metric = "speedup/ort-cpu:fp32/b*"  # a metric name, or a glob matching several
    min = 1.05                          # and/or max
    baseline_rel = 0.10                 # optional: at most 10% worse than the baseline (or baseline_abs)
    required = true                     # default; false marks the gate optional (see below)
    note = "why this limit"

Limits are finite numbers, `required` is true or false (unquoted) and `note` a string; anything else is
refused with the gate's index, the field and its value.

A gate that cannot be evaluated (its metric is not in the run, there is no baseline file, the baseline
holds no value for the metric, or a machine-dependent baseline was recorded on another machine) is
reported as "not evaluated" with the reason, and fails like a missed limit, unless the gate says
`required = false`: then it is shown as not evaluated and does not fail. The same holds for a metric the run
measured too little to give (`metrics.unmeasured_metrics`: a speedup interval from too few timing rounds).
Whatever part of a gate can be checked always is: the limits in the file itself apply on every machine.
A metric whose value is not a finite number (NaN, null, a string) fails its gate, optional or not: the
measurement behind it broke.

Metric names and units are in `vitshrink.benchmarks.metrics.KINDS`. Comparisons with a baseline of a
machine-dependent metric (speedup, memory) are made only when the machine fingerprint matches.
A baseline is written only to a file the user names (`--baseline FILE --update-baseline`).
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from vitshrink.benchmarks.errors import BenchError, GateConfigError
from vitshrink.benchmarks.metrics import kind_of, unmeasured_metrics
from vitshrink.compressor.core.reading import read_json

GATE_SCHEMA = 1
BASELINE_SCHEMA = 1
GATE_KEYS = {"metric", "min", "max", "baseline_rel", "baseline_abs", "required", "note"}
DEFAULT_GATES = Path(__file__).parent / "gates" / "default.toml"


@dataclass(frozen=True)
class Gate:
    metric: str  # a metric name or an fnmatch glob
    min: float | None = None
    max: float | None = None
    baseline_rel: float | None = None  # allowed worsening vs the baseline, as a fraction of it
    baseline_abs: float | None = None  # allowed worsening vs the baseline, in the metric's unit
    required: bool = True
    note: str = ""

    @property
    def uses_baseline(self) -> bool:
        return self.baseline_rel is not None or self.baseline_abs is not None

    def higher_is_better(self, metric: str) -> bool:
        kind = kind_of(metric)
        if kind is not None:
            return kind.higher_is_better
        return self.max is None  # unknown metric: a lone `min` means higher is better


@dataclass(frozen=True)
class GateConfig:
    gates: tuple[Gate, ...]
    baseline: Path | None = None  # resolved against the gate file's folder
    source: Path | None = None


@dataclass(frozen=True)
class GateResult:
    metric: str
    value: float | None
    limit: str  # what was required, e.g. ">= 1.05" or ">= 1.12 (baseline 1.24 - 10%)"
    status: str  # "pass" | "fail" | "missing" | "not evaluated" (both: required, could not be checked) | "skipped"
    shortfall: float | None = None  # by how much the worst failed check was missed, in the metric's unit
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status in ("fail", "missing", "not evaluated")


def _toml_module():
    """tomllib (Python >= 3.11), or tomli on Python 3.10 (JetPack 6)."""
    try:
        import tomllib
    except ImportError:
        try:
            import tomli as tomllib
        except ImportError:
            raise GateConfigError("reading gate files on Python 3.10 needs tomli: pip install tomli") from None
    return tomllib


def is_finite_number(value) -> bool:
    """An int or float that is not NaN or infinite (a bool is not a number here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value) -> str:
    """`value` as bench.json and baselines write it: NaN, null, "text"."""
    return json.dumps(value)


def _type_problems(entry: dict) -> list[str]:
    """Each field of a [[gate]] table whose value has the wrong type, with the value."""
    problems = [f"{k} = {v!r} must be a finite number" for k in ("min", "max", "baseline_rel", "baseline_abs")
                if (v := entry.get(k)) is not None and not is_finite_number(v)]
    if "required" in entry and not isinstance(entry["required"], bool):
        problems.append(f"required = {entry['required']!r} must be true or false (unquoted)")
    if "note" in entry and not isinstance(entry["note"], str):
        problems.append(f"note = {entry['note']!r} must be a string")
    return problems


def parse_gate_config(text: str, source: Path | None = None) -> GateConfig:
    """Read a gate file's TOML text; every bad entry is reported with its index and the fix."""
    where = str(source) if source else "gate file"
    toml = _toml_module()
    try:
        data = toml.loads(text)
    except toml.TOMLDecodeError as e:
        raise GateConfigError(f"{where} is not valid TOML: {e}") from e
    if data.get("schema", GATE_SCHEMA) != GATE_SCHEMA:
        raise GateConfigError(f"{where}: schema {data['schema']!r}; this vitshrink reads schema {GATE_SCHEMA}")
    unknown = set(data) - {"schema", "baseline", "gate"}
    if unknown:
        raise GateConfigError(f"{where}: unknown top-level keys {sorted(unknown)}; use schema, baseline and [[gate]]")
    entries = data.get("gate", [])
    if not isinstance(entries, list) or not entries:
        raise GateConfigError(f"{where} defines no gates; add [[gate]] tables with metric = ... and min/max")
    problems, gates = [], []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problems.append(f"gate #{i + 1}: {entry!r} is not a table; write [[gate]] with metric = ... below it")
            continue
        label = f"gate #{i + 1} ({entry.get('metric', '?')})"
        extra = set(entry) - GATE_KEYS
        if extra:
            problems.append(f"{label}: unknown keys {sorted(extra)}; allowed: {', '.join(sorted(GATE_KEYS))}")
            continue
        if not isinstance(entry.get("metric"), str) or not entry["metric"]:
            problems.append(f"{label}: needs metric = \"name\" (see vitshrink.benchmarks.metrics.KINDS)")
            continue
        bad = _type_problems(entry)
        if bad:
            problems.append(f"{label}: {'; '.join(bad)}")
            continue
        numbers = {k: entry.get(k) for k in ("min", "max", "baseline_rel", "baseline_abs")}
        if all(v is None for v in numbers.values()):
            problems.append(f"{label}: give min, max, baseline_rel or baseline_abs")
            continue
        if numbers["baseline_rel"] is not None and numbers["baseline_abs"] is not None:
            problems.append(f"{label}: give baseline_rel or baseline_abs, not both")
            continue
        if min((v for k, v in numbers.items() if k.startswith("baseline") and v is not None), default=0) < 0:
            problems.append(f"{label}: baseline tolerances must be >= 0")
            continue
        if numbers["min"] is not None and numbers["max"] is not None and numbers["min"] > numbers["max"]:
            problems.append(f"{label}: min {numbers['min']} > max {numbers['max']}")
            continue
        gates.append(
            Gate(entry["metric"], *(float(v) if v is not None else None for v in numbers.values()),
                 required=entry.get("required", True), note=entry.get("note", ""))
        )
    if problems:
        raise GateConfigError(f"{where} has {len(problems)} bad gates:\n" + "\n".join(f"  - {p}" for p in problems))
    baseline = data.get("baseline")
    if baseline is not None and not isinstance(baseline, str):
        raise GateConfigError(f"{where}: baseline must be a file name (string), got {baseline!r}")
    base_dir = source.parent if source else Path.cwd()
    return GateConfig(tuple(gates), (base_dir / baseline) if baseline else None, source)


def load_gate_config(path: str | Path) -> GateConfig:
    path = Path(path)
    if not path.is_file():
        raise GateConfigError(f"gate file {path} does not exist (an example: {DEFAULT_GATES})")
    return parse_gate_config(path.read_text(), path)


def _limit_checks(gate: Gate, metric: str, value: float, baseline: dict | None, fingerprint: str | None,
                  baseline_file: Path | None):
    """(limit text, shortfall) of each check made on `value`, and why any check could not be made."""
    checks, unevaluated = [], []
    if gate.min is not None:
        checks.append((f">= {gate.min:g}", gate.min - value))
    if gate.max is not None:
        checks.append((f"<= {gate.max:g}", value - gate.max))
    if gate.uses_baseline:
        kind = kind_of(metric)
        base = (baseline or {}).get("metrics", {}).get(metric)
        if baseline is None:
            unevaluated.append(f"no baseline file {baseline_file}" if baseline_file is not None else
                               "no baseline file (the gate file names none; pass --baseline FILE)")
        elif base is None:
            unevaluated.append(f"the baseline{' ' + str(baseline_file) if baseline_file else ''} has no value for it")
        elif not is_finite_number(base):
            unevaluated.append(f"the baseline{' ' + str(baseline_file) if baseline_file else ''} holds {_shown(base)} "
                               "for it, not a finite number (record a new one with --baseline FILE --update-baseline)")
        elif kind is not None and kind.machine_dependent and baseline.get("fingerprint") != fingerprint:
            unevaluated.append(f"baseline recorded on another machine (fingerprint {baseline.get('fingerprint')}, "
                               f"this run {fingerprint})")
        else:
            slack = gate.baseline_abs if gate.baseline_abs is not None else gate.baseline_rel * abs(base)
            tolerance = f"{gate.baseline_abs:g}" if gate.baseline_abs is not None else f"{gate.baseline_rel:.0%}"
            if gate.higher_is_better(metric):
                checks.append((f">= {base - slack:.4g} (baseline {base:.4g} - {tolerance})", base - slack - value))
            else:
                checks.append((f"<= {base + slack:.4g} (baseline {base:.4g} + {tolerance})", value - base - slack))
    return checks, unevaluated


def evaluate_gates(bench: dict, config: GateConfig, baseline: dict | None = None,
                   baseline_file: Path | None = None) -> list[GateResult]:
    """One result per (gate, matching metric); a gate that matches nothing gives one result too.

    `baseline` is the content of `baseline_file` (None: no such file); the file is only named in messages.
    A metric the run measured too little to give is not evaluated; a value that is not a finite number fails.
    """
    metrics: dict[str, float] = bench.get("metrics", {})
    if not isinstance(metrics, dict):
        raise BenchError(f"the bench's metrics are {_shown(metrics)}, not a name -> number table; "
                         "run `vitshrink bench` again to rewrite bench.json")
    unmeasured = unmeasured_metrics(bench)
    fingerprint = bench.get("environment", {}).get("fingerprint")
    results = []
    for gate in config.gates:
        names = sorted(m for m in {*metrics, *unmeasured} if fnmatch.fnmatchcase(m, gate.metric))
        note = [gate.note] if gate.note else []
        if not names:
            status = "missing" if gate.required else "skipped"
            results.append(GateResult(gate.metric, None, _limits_text(gate), status,
                                      detail="; ".join([f"not evaluated{'' if gate.required else ' (optional)'}: "
                                                        "no such metric in this run", *note])))
            continue
        for name in names:
            value = metrics.get(name)
            if name in unmeasured:
                status = "not evaluated" if gate.required else "skipped"
                why = f"not evaluated{'' if gate.required else ' (optional)'}: {unmeasured[name]}"
                results.append(GateResult(name, None, _limits_text(gate), status,
                                          detail="; ".join([why, *(note if gate.required else [])])))
                continue
            if not is_finite_number(value):
                results.append(GateResult(name, None, _limits_text(gate), "fail", detail="; ".join(
                    [f"the value {_shown(value)} is not a finite number: the measurement behind it failed", *note])))
                continue
            checks, unevaluated = _limit_checks(gate, name, value, baseline, fingerprint, baseline_file)
            worst = max(checks, key=lambda c: c[1], default=None)
            failed = worst is not None and worst[1] > 0
            if failed:
                status = "fail"
            elif unevaluated and gate.required:
                status = "not evaluated"
            else:
                status = "pass" if checks else "skipped"
            why = [f"not evaluated{'' if gate.required else ' (optional)'}: {r}" for r in unevaluated]
            limit = " and ".join(text for text, _ in checks) or _limits_text(gate)
            results.append(GateResult(
                name, value, limit, status, shortfall=worst[1] if failed else None,
                detail="; ".join([*why, *(note if failed or status == "not evaluated" else [])]),
            ))
    return results


def _limits_text(gate: Gate) -> str:
    parts = [f">= {gate.min:g}" if gate.min is not None else "", f"<= {gate.max:g}" if gate.max is not None else ""]
    if gate.uses_baseline:
        parts.append("vs baseline")
    return " and ".join(p for p in parts if p)


def gates_passed(results: list[GateResult]) -> bool:
    return not any(r.failed for r in results)


def without_baseline(config: GateConfig) -> GateConfig:
    """The same gates with only their own limits (baseline tolerances dropped)."""
    gates = tuple(
        Gate(g.metric, g.min, g.max, required=g.required, note=g.note)
        for g in config.gates
        if g.min is not None or g.max is not None
    )
    return GateConfig(gates, config.baseline, config.source)


def new_baseline(bench: dict, config: GateConfig) -> dict:
    """A baseline holding the current value of every metric a gate matches."""
    metrics = bench.get("metrics", {})
    chosen = {m: v for m, v in metrics.items()
              if is_finite_number(v) and any(fnmatch.fnmatchcase(m, g.metric) for g in config.gates)}
    return {
        "schema": BASELINE_SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": bench.get("environment", {}).get("fingerprint"),
        "machine": {k: bench.get("environment", {}).get(k) for k in ("cpu", "gpu", "power_mode", "threads")},
        "bench_created": bench.get("created"),
        "metrics": chosen,
    }


def read_baseline(path: Path) -> dict | None:
    """The baseline at `path`, or None when none was recorded yet."""
    if not path.is_file():
        return None
    data = read_json(path, fix="delete it or record a new one with --baseline FILE --update-baseline")
    if data.get("schema") != BASELINE_SCHEMA or not isinstance(data.get("metrics"), dict):
        raise GateConfigError(f"baseline {path} has schema {data.get('schema')!r}; expected {BASELINE_SCHEMA} with metrics")
    return data
