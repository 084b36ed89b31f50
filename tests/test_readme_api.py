"""The public Python API: the README's example runs as written, and the score -> plan -> cut -> save steps."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import vitshrink
from tests.conftest import tiny_vit
from vitshrink.compressor.errors import ModelSourceError
from vitshrink.compressor.flops import count_macs

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    """The one python block of the README's "Python API" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Python API section should hold exactly one python example"
    return blocks[0]


@pytest.mark.slow
def test_readme_python_example_runs_as_written(tmp_path):
    # a fresh process in an empty folder, as a user would run it (the example writes runs/s there)
    check = ("\nimport pathlib\n"
             "assert pathlib.Path('runs/s/model.onnx').is_file() and pathlib.Path('runs/s/export.json').is_file()\n"
             "assert any(r.model == 'student' and r.dataset == 'loader' for r in report.accuracy) and report.speedups\n"
             "print('MACS', vitshrink.compressor.flops.count_macs(model), vitshrink.compressor.flops.count_macs(student))\n")
    script = tmp_path / "example.py"
    script.write_text("import vitshrink.compressor.flops\n" + readme_example() + check)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    teacher_macs, student_macs = map(int, done.stdout.split("MACS")[-1].split())
    assert 1 - student_macs / teacher_macs == pytest.approx(0.3, abs=0.01)


def test_every_public_name_resolves():
    assert sorted(vitshrink.__all__) == sorted(vitshrink._EXPORTS)
    for name in vitshrink.__all__:
        assert getattr(vitshrink, name).__doc__, f"vitshrink.{name} has no docstring"


def test_score_plan_cut_save_load_by_hand(tmp_path):
    """A loop of one's own from the public names alone, checked against the unpruned model's outputs."""
    model = tiny_vit(depth=2)
    data = TensorDataset(torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,)))
    teacher = vitshrink.wrap(model)
    assert teacher.name == "vit_tiny_patch16_224" and teacher.model_args["depth"] == 2

    scores = vitshrink.score(model, DataLoader(data, batch_size=16), batches=2)
    plan = vitshrink.plan(model, scores, "flops=0.2")
    before = count_macs(model)
    spec = vitshrink.apply_plan(model, teacher.spec, plan.plan)
    assert 1 - count_macs(model) / before == pytest.approx(0.2, abs=0.01)

    folder = vitshrink.save_artifact(tmp_path / "mine", dataclasses.replace(teacher, spec=spec), {"method": "by hand"})
    again = vitshrink.load_artifact(folder)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(again.model(x), model(x))

    loss = vitshrink.distillation_loss(model(x), again.model(x), torch.tensor([1, 2]), vitshrink.KDWeights())
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_wrap_refuses_arguments_that_do_not_rebuild_the_model():
    model = tiny_vit(depth=2)
    with pytest.raises(ModelSourceError, match="does not rebuild this model.*pass model_args="):
        vitshrink.wrap(model, model_args={"img_size": 16, "patch_size": 4, "depth": 2, "num_classes": 10})


def test_compress_takes_reduce_or_a_config_not_both(tmp_path):
    from vitshrink.compressor.pipeline import CompressConfig
    from vitshrink.compressor.planner import Budget

    data = DataLoader(TensorDataset(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))), batch_size=4)
    with pytest.raises(vitshrink.VitShrinkError, match="not both"):
        vitshrink.compress(tiny_vit(depth=2), data, data, reduce="flops=0.2", out=tmp_path / "s",
                           config=CompressConfig(budget=Budget("flops", 0.2)))
    assert not (tmp_path / "s").exists()
