"""The largest reduction level whose distilled student stays within a validation-accuracy bound (`--max-drop`).

Three prices of knowing a level's accuracy, cheapest first:
1. the cut alone (`cut`): one plan and one evaluation of the validation split per level;
2. a short probe distillation (`probe`): an estimate of what distillation recovers at a level;
3. the full distillation (`full`): what would be delivered.

The search reads the cut-only curve of every level first. Keep-best distillation never returns a student
worse on validation than its cut, so the highest level whose cut alone is within the bound is already safe:
no probe is spent on it or below it. Above it, probes bisect for the highest level that is within the bound
after the probe (assuming accuracy falls as more is removed; where it does not, the bisection still ends on a
level whose probe met the bound). That level gets the full distillation. A level that misses the bound after
its full distillation is not delivered: the search steps back to the next lower level that met the bound on
its probe (or to the safe level, which always meets it), and keeps the first that meets it after its full
distillation; a level measured once is never measured again.

Drops are in accuracy points against the teacher on the same validation images (top-1 fractions here:
`max_drop=0.005` is half a point). The search plans nothing and trains nothing: what each level costs is
handed in as the three functions, each returning {"top1", "loss", ...} on the validation split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from vitshrink.compressor.core.errors import BudgetError

Measure = Callable[[float], dict]  # level -> {"top1", "loss", ...} on the validation split


@dataclass
class LevelRecord:
    """What the search learned about one level (None where that price was not paid)."""

    level: float
    cut: dict | None = None
    probe: dict | None = None
    full: dict | None = None

    def drop(self, teacher_top1: float, stage: str) -> float | None:
        metrics = getattr(self, stage)
        return None if metrics is None else teacher_top1 - metrics["top1"]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchResult:
    teacher_top1: float
    max_drop: float
    levels: list[LevelRecord]
    delivered: float | None  # the level delivered (its full distillation met the bound)
    why: list[str] = field(default_factory=list)  # why each level above the delivered one was not delivered

    def record(self, level: float) -> LevelRecord:
        return next(r for r in self.levels if r.level == level)

    def to_dict(self) -> dict:
        return {"teacher_top1": self.teacher_top1, "max_drop": self.max_drop, "delivered": self.delivered,
                "why": self.why, "levels": [r.to_dict() for r in self.levels]}


def search_level(levels: Sequence[float], teacher_top1: float, max_drop: float, *, cut: Measure, probe: Measure,
                 full: Measure, log=print) -> SearchResult:
    """The highest of `levels` whose full distillation stays within `max_drop` of `teacher_top1` (see above).

    Raises BudgetError when no level meets the bound, naming the smallest level and its drop.
    """
    if max_drop < 0:
        raise BudgetError(f"--max-drop {max_drop * 100:g}: the bound is a loss of accuracy points, >= 0")
    levels = sorted(set(levels))
    if not levels:
        raise BudgetError("no reduction level to search")
    records = [LevelRecord(level) for level in levels]
    result = SearchResult(teacher_top1, max_drop, records, None)

    def within(record: LevelRecord, stage: str) -> bool:
        return record.drop(teacher_top1, stage) <= max_drop + 1e-12

    for record in records:
        record.cut = cut(record.level)
    safe = max((i for i, r in enumerate(records) if within(r, "cut")), default=-1)
    log(f"max-drop search: {len(records)} levels cut; the cut alone stays within the bound up to "
        + (f"{records[safe].level:.0%}" if safe >= 0 else "none of them"))
    met_probe = [safe] if safe >= 0 else []
    low, high = safe, len(records)
    while high - low > 1:
        middle = (low + high) // 2
        records[middle].probe = probe(records[middle].level)
        if within(records[middle], "probe"):
            low = middle
            met_probe.append(middle)
        else:
            high = middle
            result.why.append(f"{records[middle].level:.0%}: drop {_points(records[middle], teacher_top1, 'probe')} "
                              "after the probe distillation")
    # nothing met the bound on the cut or a probe: the smallest level still gets its full distillation
    for index in sorted(met_probe or [0], reverse=True):
        record = records[index]
        record.full = full(record.level)
        if within(record, "full"):
            result.delivered = record.level
            return result
        result.why.append(f"{record.level:.0%}: drop {_points(record, teacher_top1, 'full')} after the full "
                          "distillation")
    smallest = records[0]
    raise BudgetError(
        f"--max-drop {max_drop * 100:g}: no level stays within the bound; the smallest level tried, "
        f"{smallest.level:.0%}, loses {_points(smallest, teacher_top1, 'full' if smallest.full else 'probe' if smallest.probe else 'cut')} "
        "points of validation top-1. Allow a larger --max-drop, or search smaller levels "
        "(--reduce METRIC=X sets the largest; the smallest is the search's first step)"
    )


def _points(record: LevelRecord, teacher_top1: float, stage: str) -> str:
    return f"{record.drop(teacher_top1, stage) * 100:.2f}"


def level_grid(upper: float, step: float = 0.05) -> list[float]:
    """The levels searched: `step`, 2 x `step`, ... up to `upper` (included)."""
    if not 0 < upper < 1:
        raise BudgetError(f"the search's upper level must be in (0, 1), got {upper}")
    count = max(1, int(round(upper / step)))
    return sorted({round(min(upper, step * (i + 1)), 6) for i in range(count)} | {round(upper, 6)})
