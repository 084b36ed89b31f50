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
from vitshrink.compressor.core.errors import ModelSourceError
from vitshrink.compressor.core.flops import count_macs

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
             "print('MACS', vitshrink.compressor.core.flops.count_macs(model), vitshrink.compressor.core.flops.count_macs(student))\n")
    script = tmp_path / "example.py"
    script.write_text("import vitshrink.compressor.core.flops\n" + readme_example() + check)
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
    from vitshrink.compressor.jobs.pipeline import CompressConfig
    from vitshrink.compressor.planning.planner import Budget

    data = DataLoader(TensorDataset(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))), batch_size=4)
    with pytest.raises(vitshrink.VitShrinkError, match="not both"):
        vitshrink.compress(tiny_vit(depth=2), data, data, reduce="flops=0.2", out=tmp_path / "s",
                           config=CompressConfig(budget=Budget("flops", 0.2)))
    assert not (tmp_path / "s").exists()


class _Samples(torch.utils.data.Dataset):
    """32 random 16x16 images with labels, each sample in the shape `kind` names."""

    def __init__(self, kind: str):
        generator = torch.Generator().manual_seed(0)
        self.kind = kind
        self.images, self.labels = torch.randn(32, 3, 16, 16, generator=generator), torch.randint(0, 10, (32,))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x, y = self.images[i], self.labels[i]
        return {"triple": (x, y, i), "image_label": {"image": x, "label": y, "id": i},
                "pixel_values_labels": {"pixel_values": x, "labels": y}, "bare": x,
                "other_keys": {"img": x, "target": y}}[self.kind]


@pytest.mark.parametrize("kind", ["triple", "image_label", "pixel_values_labels"])
def test_compress_and_score_read_triples_and_dict_batches(kind, tmp_path):
    model = tiny_vit(depth=2)
    before = count_macs(model)
    loader = DataLoader(_Samples(kind), batch_size=8)
    scores = vitshrink.score(model, loader, batches=2)
    assert len(scores.heads) == 2
    student = vitshrink.compress(model, loader, loader, reduce="flops=0.2", epochs=1, out=tmp_path / "s",
                                 progress=False, log=lambda *a: None)
    assert 1 - count_macs(student) / before == pytest.approx(0.2, abs=0.01)
    assert vitshrink.load_artifact(tmp_path / "s").compression["stages"][0]["history"]  # trained on them


@pytest.mark.parametrize("kind, named", [
    ("bare", "train_loader.dataset[0] is a tensor of shape (3, 16, 16)"),
    ("other_keys", "train_loader.dataset[0] is a dict with keys ['img', 'target']"),
])
def test_compress_refuses_samples_of_another_shape_saying_what_is_expected(kind, named, tmp_path):
    loader = DataLoader(_Samples(kind), batch_size=8)
    good = DataLoader(_Samples("triple"), batch_size=8)
    expected = "expected an (image, label, ...) tuple or list, or a dict with the image under 'image' or 'pixel_values'"
    with pytest.raises(vitshrink.VitShrinkError, match=re.escape(named) + ".*" + re.escape(expected)):
        vitshrink.compress(tiny_vit(depth=2), loader, good, out=tmp_path / "s", progress=False, log=lambda *a: None)
    with pytest.raises(vitshrink.VitShrinkError, match=re.escape("a batch of eval_loader is")):
        vitshrink.compress(tiny_vit(depth=2), good, loader, out=tmp_path / "s", progress=False, log=lambda *a: None)
    assert not (tmp_path / "s").exists() and not (tmp_path / "s.work").exists()


def test_compress_refuses_latency_settings_with_a_flops_budget(tmp_path):
    data = DataLoader(TensorDataset(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))), batch_size=4)
    with pytest.raises(vitshrink.VitShrinkError, match=r"latency= applies to a latency budget.*not flops=0.2"):
        vitshrink.compress(tiny_vit(depth=2), data, data, reduce="flops=0.2", out=tmp_path / "s",
                           latency=vitshrink.LatencyTarget(target="ort-cpu"), progress=False)
    assert not (tmp_path / "s").exists() and not (tmp_path / "s.work").exists()


def test_plan_takes_a_latency_table_made_for_the_model(tmp_path):
    """vitshrink.plan plans a latency budget on a table (object or file) and refuses one made for another model."""
    import numpy as np

    from tests.test_latency import _staircase_table
    from vitshrink.exporters.runtime.latency_profile import table_key

    model = tiny_vit()
    scores = vitshrink.score(model, DataLoader(TensorDataset(torch.randn(32, 3, 16, 16),
                                                             torch.randint(0, 10, (32,))), batch_size=16), batches=1)
    table = dataclasses.replace(_staircase_table(), key=table_key(model, "ort-cpu", 1, 1))
    table.save(tmp_path / "lut.json")
    for given in (table, tmp_path / "lut.json", str(tmp_path / "lut.json")):
        planned = vitshrink.plan(model, scores, "latency=0.3", round_to=32, latency_table=given)
        kept = [(len(planned.plan.keep_heads.get(i, range(4))), 256) for i in range(3)]
        assert np.isfinite(table.predict(kept)) and planned.removed > 0
    with pytest.raises(vitshrink.VitShrinkError, match="latency_table"):
        vitshrink.plan(model, scores, "latency=0.3")
    with pytest.raises(vitshrink.VitShrinkError, match="applies to a latency budget"):
        vitshrink.plan(model, scores, "flops=0.3", latency_table=table)
    with pytest.raises(vitshrink.VitShrinkError, match="num_heads|heads"):
        vitshrink.plan(tiny_vit(embed_dim=96, num_heads=6), scores, "latency=0.3", round_to=32, latency_table=table)


def test_the_config_objects_are_public():
    for name in ("CompressConfig", "TrainConfig", "ExportConfig", "BenchConfig"):
        assert name in vitshrink.__all__ and isinstance(getattr(vitshrink, name), type)
    assert vitshrink.CompressConfig(budget=vitshrink.compressor.planning.planner.Budget.parse("flops=0.3")).round_to == 8
