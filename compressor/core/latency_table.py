"""A latency table: what one attention or MLP sub-block of a ViT costs on one runtime, per kept width.

Every block of a plain ViT sees the same tokens and width, so one table serves all blocks (those of a
pruned ViT too, whose widths differ per block): `attention[h]` is one attention sub-block (norm, attention
with h heads, residual) and `mlp_ms[k]` one MLP sub-block with `mlp_widths[k]` hidden neurons, in milliseconds for one batch, measured on
the target (`vitshrink profile`, exporters/runtime/latency_profile.py). `fixed` is the rest (patch
embedding, final norm, head). The prediction for a model is `fixed` plus, for every sub-block it keeps,
`a + b_attention * its attention time` or `a + b_mlp * its MLP time`, with a and the two scales fitted
on whole models of random widths and depths, which absorbs what sub-blocks timed alone miss (and how
differently they miss it). The table is a small JSON file: profile on the device, compress anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vitshrink.compressor.core.atomic import write_json_atomic
from vitshrink.compressor.core.errors import BudgetError, UnreadableFileError

FORMAT = "vitshrink-latency-table/2"  # 2: the fit's `a` is paid by every kept sub-block (1: once per model)

# A target is named as `bench --backends` names the backend (exporters/runtime/latency_profile.TARGETS). Tables
# written before that named the TensorRT targets differently, with the same format; a table is read with its
# target in today's spelling, here and nowhere else (the commands refuse the old names, naming the new one).
RENAMED_TARGETS = {"trt-fp32": "tensorrt:fp32", "trt-fp16": "tensorrt:fp16"}  # old name -> today's


def current_target_name(name: str) -> str:
    """A target as named today: an older table's trt-fp16 is tensorrt:fp16; any other name is returned as it is."""
    return RENAMED_TARGETS.get(name, name)


@dataclass(frozen=True)
class TableKey:
    """What a table was measured for; a table is only used for the same key."""

    architecture: dict  # every class and shape of the timed graph (exporters/runtime/latency_profile.architecture_of)
    target: str  # as `bench --backends` names it: ort-cpu, torch-cpu, ort-cuda, torch-cuda, tensorrt:fp32, tensorrt:fp16
    precision: str  # fp32 | fp16 | int8
    runtime_version: str  # e.g. "onnxruntime 1.20.1"
    threads: int | None  # CPU threads (None on GPU targets)
    batch: int
    device: str  # CPU or GPU model

    def mismatches(self, other: TableKey) -> list[str]:
        """'field: table X, wanted Y' for every field that differs."""
        return self.differences(asdict(other))

    def differences(self, wanted: dict) -> list[str]:
        """'field: table X, wanted Y' for every field of `wanted` (field -> value) that differs; the architecture
        field by field ('architecture.mlp: ...')."""
        out = []
        for name, value in wanted.items():
            ours = getattr(self, name)
            if name == "architecture" and isinstance(ours, dict) and isinstance(value, dict):
                out.extend(_architecture_differences(ours, value))
            elif ours != value:
                out.append(f"{name}: table {ours!r}, wanted {value!r}")
        return out


def _architecture_differences(table: dict, wanted: dict) -> list[str]:
    out, unrecorded = [], [name for name in wanted if name not in table]
    if unrecorded:
        out.append(f"architecture: made by an older vitshrink, which did not record {', '.join(unrecorded)}")
    for name in [*wanted, *(k for k in table if k not in wanted)]:
        if name in unrecorded:
            continue
        if name not in wanted:
            out.append(f"architecture.{name}: table {table[name]!r}, unknown to this vitshrink")
        elif table[name] != wanted[name]:
            out.append(f"architecture.{name}: table {table[name]!r}, wanted {wanted[name]!r}")
    return out


@dataclass(frozen=True)
class Fit:
    """measured = fixed + a * kept sub-blocks + b_attention * sum of attention times + b_mlp * sum of MLP times
    (whole models)."""

    a: float = 0.0  # ms per kept sub-block: < 0 when a sub-block timed alone pays something it does not inside a model
    b_attention: float = 1.0
    b_mlp: float = 1.0
    models: int = 0  # whole models the fit was made on
    mean_abs_error: float | None = None  # of the fitted prediction on those models, as a fraction
    max_abs_error: float | None = None
    left_out_error: float | None = None  # a model left out of the fit as an outlier: a fit on the rest misses it by this
    points: tuple[tuple[float, ...], ...] = ()  # per whole model timed: kept sub-blocks, attention sum, MLP sum (ms
    # alone), measured ms; the teacher first, the one left out (if any) included


@dataclass(frozen=True)
class LatencyTable:
    key: TableKey
    attention: tuple[float, ...]  # ms of an attention sub-block with h = 0..H heads (0 heads: 0 ms)
    mlp_widths: tuple[int, ...]  # kept MLP widths measured, ascending, starting at 0
    mlp_ms: tuple[float, ...]  # ms of an MLP sub-block of each width (width 0: 0 ms)
    fixed: float  # ms of everything outside the blocks
    fit: Fit = field(default_factory=Fit)
    seconds: float | None = None  # how long profiling took
    round_to: int = 1  # the MLP grid measured: every width a plan with this --round-to (or a multiple) keeps

    def __post_init__(self):
        problems = []
        values = (*self.attention, *self.mlp_ms, self.fixed, self.fit.b_attention, self.fit.b_mlp)
        if not all(np.isfinite(v) for v in (*values, self.fit.a)) or min(values) < 0:
            problems.append("times and fit must be finite and >= 0")
        if not self.attention or self.attention[0] != 0 or not self.mlp_ms or self.mlp_ms[0] != 0:
            problems.append("0 heads and 0 neurons must cost 0")
        if (len(self.mlp_widths) != len(self.mlp_ms) or not self.mlp_widths or self.mlp_widths[0] != 0
                or any(b <= a for a, b in zip(self.mlp_widths, self.mlp_widths[1:], strict=False))):
            problems.append("mlp_widths must rise from 0, one time each")
        if min(self.fit.b_attention, self.fit.b_mlp) <= 0 or self.round_to < 1:
            problems.append("the fit's scales and round_to must be positive")
        if not problems and len(self.attention) > 1 and len(self.mlp_ms) > 1 and \
                min(self.attention_cost(1), self.mlp_cost(self.mlp_widths[1])) <= 0:
            problems.append("the fit must give the narrowest sub-blocks a time > 0")
        if problems:
            raise UnreadableFileError(f"latency table is invalid ({'; '.join(problems)}); make it again with "
                                      "`vitshrink profile`")

    def attention_ms(self, heads: int) -> float:
        if not 0 <= heads < len(self.attention):
            raise BudgetError(f"the latency table has attention times for 0..{len(self.attention) - 1} heads, not {heads}")
        return self.attention[heads]

    def mlp_time(self, width: int) -> float:
        """ms of an MLP sub-block of `width` neurons (linear between measured widths)."""
        if not 0 <= width <= self.mlp_widths[-1]:
            raise BudgetError(f"the latency table has MLP times for widths 0..{self.mlp_widths[-1]}, not {width}")
        return float(np.interp(width, self.mlp_widths, self.mlp_ms))

    def attention_cost(self, heads: int) -> float:
        """Predicted ms of one attention sub-block with `heads` heads inside a model (the fit applied; 0 heads:
        no sub-block, 0 ms)."""
        time = self.attention_ms(heads)
        return self.fit.a + self.fit.b_attention * time if heads else 0.0

    def mlp_cost(self, width: int) -> float:
        """Predicted ms of one MLP sub-block of `width` neurons inside a model (the fit applied; 0: none)."""
        time = self.mlp_time(width)
        return self.fit.a + self.fit.b_mlp * time if width else 0.0

    def predict(self, blocks: list[tuple[int, int]]) -> float:
        """Predicted ms of a model whose blocks keep (heads, hidden) each."""
        return self.fixed + sum(self.attention_cost(h) + self.mlp_cost(m) for h, m in blocks)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "unit": "ms per batch", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict, source: str = "latency table") -> LatencyTable:
        if not isinstance(d, dict):
            raise UnreadableFileError(f"{source} is not a vitshrink latency table (a JSON {type(d).__name__}, "
                                      "expected an object); make one with `vitshrink profile`")
        if str(d.get("format", "")).startswith(FORMAT.split("/")[0] + "/") and d["format"] != FORMAT:
            raise UnreadableFileError(f"{source} was made by another version of vitshrink (format {d['format']!r}, "
                                      f"this one reads {FORMAT!r}); make it again with `vitshrink profile`")
        if d.get("format") != FORMAT:
            raise UnreadableFileError(f"{source} is not a vitshrink latency table (format {d.get('format')!r}, "
                                      f"expected {FORMAT!r}); make one with `vitshrink profile`")
        try:
            key = {**d["key"], "target": current_target_name(d["key"]["target"])}  # an older table's trt-fp16 too
            return cls(key=TableKey(**key), attention=tuple(d["attention"]), mlp_widths=tuple(d["mlp_widths"]),
                       mlp_ms=tuple(d["mlp_ms"]), fixed=float(d["fixed"]), fit=_fit_from_dict(d.get("fit", {})),
                       seconds=d.get("seconds"), round_to=int(d.get("round_to", 1)))
        except (KeyError, TypeError, ValueError) as e:
            raise UnreadableFileError(f"{source} is damaged ({type(e).__name__}: {e}); make it again with "
                                      "`vitshrink profile`") from None

    def save(self, path: Path) -> None:
        write_json_atomic(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: Path) -> LatencyTable:
        path = Path(path)
        if not path.is_file():
            raise UnreadableFileError(f"latency table {path} does not exist; make one with `vitshrink profile`")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UnreadableFileError(f"latency table {path} is not JSON ({e}); make it again with "
                                      "`vitshrink profile`") from None
        return cls.from_dict(data, str(path))

    def check_key(self, wanted: TableKey, source: str = "the latency table") -> None:
        """Refuse a table made for another architecture, runtime, precision, batch, thread count or device."""
        self._refuse(self.key.mismatches(wanted), source)

    def check_for(self, architecture: dict, source: str = "the latency table", **asked) -> None:
        """Refuse a table for another architecture, or for a target, batch or thread count the user asked
        for (`asked`: TableKey fields; None = not asked). Device and runtime version are the table's own:
        a table travels from the device it was measured on."""
        wanted = {"architecture": architecture, **{k: v for k, v in asked.items() if v is not None}}
        self._refuse(self.key.differences(wanted), source)

    def check_grid(self, hidden: int | Iterable[int], round_to: int, source: str = "the latency table") -> None:
        """Refuse a table whose MLP grid does not hold every width a plan with `round_to` keeps in MLPs of
        `hidden` neurons (one width, or each block's)."""
        kept = set(mlp_widths_of([hidden] if isinstance(hidden, int) else hidden, round_to)[1:])
        missing = sorted(kept - set(self.mlp_widths))
        if missing:
            raise BudgetError(f"{source} was measured on a --round-to {self.round_to} grid, which lacks the MLP "
                              f"widths {missing[:4]}{'...' if len(missing) > 4 else ''} that --round-to {round_to} "
                              f"keeps; use --round-to {self.round_to} (or a multiple) or profile again")

    @staticmethod
    def _refuse(problems: list[str], source: str) -> None:
        if problems:
            raise BudgetError(f"{source} was made for something else ({'; '.join(problems)}); profile this "
                              "target with `vitshrink profile` or drop --latency-table to profile now")


def _fit_from_dict(d: dict) -> Fit:
    return Fit(**{**d, "points": tuple(tuple(float(v) for v in p) for p in d.get("points", ()))})


def mlp_widths_of(hidden: Iterable[int], round_to: int) -> list[int]:
    """Every width a plan with `round_to` can keep in MLPs of these `hidden` widths (one per block; a pruned
    model's differ), and 0, ascending."""
    return sorted(set().union(*(mlp_grid(h, round_to) for h in hidden)) | {0})


def mlp_grid(hidden: int, round_to: int) -> list[int]:
    """The MLP widths a width plan can keep (whole `round_to` groups removed; a remainder group goes first,
    as `planner._neuron_groups` orders them), and 0: the widths a table measures."""
    first = hidden % round_to
    return [0, *sorted({hidden - first - k * round_to for k in range((hidden - first) // round_to)} | {hidden})]
