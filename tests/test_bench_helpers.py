"""Tiny teacher and student artifacts shared by the bench tests (no tests in this file).

Teacher: timm ViT at 32x32 in 8x8 patches (17 tokens), embed 64, 4 heads, depth 2, MLP 256.
Student: the same model cut by the real surgery (2 heads and MLP 128 per block), saved as an
artifact whose compression.json records the teacher's folder and weights hash, as `vitshrink compress` does.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tests.conftest import TINY_ARGS, tiny_cfg
from vitshrink.compressor.core.artifact import save_artifact
from vitshrink.compressor.core.loaded_model import LoadedModel
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.core.surgery import PrunePlan, apply_plan
from vitshrink.compressor.training.resume import weights_sha256

MODEL_ARGS = {**TINY_ARGS, "img_size": 32, "patch_size": 8, "depth": 2, "pretrained_cfg_overlay": tiny_cfg(32)}
PLAN = PrunePlan(
    keep_heads={0: (0, 2), 1: (1, 3)},
    keep_neurons={0: tuple(range(0, 256, 2)), 1: tuple(range(128))},
)


def tiny_teacher() -> LoadedModel:
    return load_model("vit_tiny_patch16_224", model_args=dict(MODEL_ARGS))


def tiny_pair(folder: Path) -> tuple[Path, Path]:
    """Write teacher and student artifacts under `folder`; returns (teacher_dir, student_dir)."""
    teacher = tiny_teacher()
    teacher_dir = save_artifact(folder / "teacher", teacher, {"method": "test teacher"})
    student = tiny_teacher()
    spec = apply_plan(student.model, student.spec, PLAN)
    student = replace(student, spec=spec)
    record = {"name": teacher.name, "path": str(teacher_dir.resolve()), "weights_sha256": weights_sha256(teacher.model)}
    student_dir = save_artifact(folder / "student", student, {"method": "test", "teacher": record})
    return teacher_dir, student_dir
