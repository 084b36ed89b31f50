"""Which teacher a student is compared with, and the check that it is the model the student came from.

`vitshrink compress` records its teacher in the student's compression.json as an absolute folder and the
sha256 of its weights (`compressor.resume.weights_sha256`, over the loaded state dict). The bench looks the
teacher up there when none is given, and refuses a teacher, recorded or given, whose weights hash to
something else: its speedup and accuracy drop would describe another model. `other_teacher` (the bench's
`--other-teacher`) compares with such a teacher anyway and notes it.
A compression.json that records no hash is not checked; a relative folder in it (relative to wherever
compress ran) is looked for beside the artifact's folder and each folder above it, nearest first, then
in the current folder, and the note says which was used.
"""

from __future__ import annotations

from pathlib import Path

from vitshrink.benchmarks.errors import BenchError
from vitshrink.compressor.core.loaded_model import LoadedModel
from vitshrink.compressor.training.resume import weights_sha256

OVERRIDE = "--other-teacher (other_teacher=True in BenchConfig)"


def recorded_teacher(student: LoadedModel) -> dict:
    """The teacher entry of the student's compression.json ({} when it records none)."""
    record = (student.compression or {}).get("teacher")
    return record if isinstance(record, dict) else {}


def find_recorded_teacher(student: LoadedModel, notes: list[str]) -> str | None:
    """The folder of the teacher the student records, or None (with a note saying why) when there is none here."""
    recorded = recorded_teacher(student).get("path")
    if not recorded:
        notes.append("no teacher: the student records no teacher; pass --teacher FOLDER|NAME for speedup and "
                     "accuracy drop")
        return None
    path = Path(recorded)
    if path.is_absolute():
        if path.is_dir():
            return str(path)
        notes.append(f"no teacher: the recorded teacher {recorded!r} is not a folder here; pass --teacher "
                     "FOLDER|NAME for speedup and accuracy drop")
        return None
    bases = [*_above(student.path), Path.cwd()]
    base = next((b for b in bases if (b / path).is_dir()), None)
    if base is None:
        notes.append(f"no teacher: the recorded teacher {recorded!r} (a relative path) is neither beside the "
                     f"student's folder or a folder above it nor in the current folder {Path.cwd()}; pass "
                     "--teacher FOLDER|NAME for speedup and accuracy drop")
        return None
    where = f"the current folder {base}" if base == Path.cwd() else f"{base}, which holds the student's folder"
    unchecked = "" if recorded_teacher(student).get("weights_sha256") else "; it records no weights hash to check"
    notes.append(f"teacher {base / path}: the student records the relative path {recorded!r}, taken relative "
                 f"to {where}{unchecked}")
    return str(base / path)


def _above(folder: Path | None) -> list[Path]:
    """The parent of `folder` and every folder above it, nearest first."""
    if folder is None:
        return []
    return list(Path(folder).resolve().parents)


def check_teacher(teacher: LoadedModel, source: str, student: LoadedModel, *, other_teacher: bool,
                  notes: list[str]) -> None:
    """Raise unless `teacher` has the weights the student records (nothing recorded: nothing to check).

    With `other_teacher`, a differing teacher is noted instead of refused.
    """
    record = recorded_teacher(student)
    expected = record.get("weights_sha256")
    if not expected:
        return
    found = weights_sha256(teacher.model)
    if found == expected:
        return
    where = f"{student.path}/compression.json" if student.path is not None else "the student's compression.json"
    recorded = record.get("path") or record.get("name") or "a model in memory"
    differs = (f"the teacher {source} has weights with sha256 {found[:12]}, but {where} records that the student "
               f"was compressed from {recorded} with weights sha256 {expected[:12]}")
    if other_teacher:
        notes.append(f"{differs}; compared with it anyway (--other-teacher)")
        return
    raise BenchError(f"{differs}: speedup and accuracy drop would describe another model. Pass --teacher with "
                     f"the teacher it was compressed from, or add {OVERRIDE} to compare with {source} anyway")
