"""The artifact: recipe + safetensors, rebuilt through timm, strict load, atomic writes; model sources."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import vitshrink.compressor.core.artifact as artifact_module
from tests.conftest import SHARED, TINY_ARGS
from vitshrink.compressor.core.artifact import load_artifact, save_artifact
from vitshrink.compressor.core.errors import (
    ArtifactError,
    ModelSourceError,
    UnreadableFileError,
    UnsupportedModelError,
)
from vitshrink.compressor.core.model_loading import load_model
from vitshrink.compressor.core.surgery import PrunePlan, apply_plan


def _pruned(tmp_path):
    loaded = load_model("vit_tiny_patch16_224", model_args=dict(TINY_ARGS))
    spec = apply_plan(loaded.model, loaded.spec,
                      PrunePlan(keep_heads={0: (0, 3)}, keep_neurons={2: tuple(range(0, 256, 2))}, drop_blocks=(1,)))
    return dataclasses.replace(loaded, spec=spec)


def test_round_trip_gives_identical_outputs(tmp_path):
    loaded = _pruned(tmp_path)
    save_artifact(tmp_path / "a", loaded, {"method": "test"})
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["compression.json", "config.json", "model.safetensors"]
    back = load_artifact(tmp_path / "a")
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(back.model(x), loaded.model(x), rtol=0, atol=0)
    assert back.spec == loaded.spec
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["architecture"] == "vit_tiny_patch16_224" and config["model_args"]["depth"] == 2
    assert "mean" in config["pretrained_cfg"] and config["num_classes"] == 10


def test_spec_that_does_not_fit_the_weights_names_the_tensor(tmp_path):
    save_artifact(tmp_path / "a", _pruned(tmp_path), {})
    record = json.loads((tmp_path / "a" / "compression.json").read_text())
    record["spec"]["blocks"][0]["num_heads"] = 3
    (tmp_path / "a" / "compression.json").write_text(json.dumps(record))
    with pytest.raises(ArtifactError, match=r"blocks\.0\.attn\.qkv\.weight.*\(96, 64\).*\(144, 64\)"):
        load_artifact(tmp_path / "a")


def test_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="not a vitshrink artifact"):
        load_artifact(tmp_path)
    with pytest.raises(ArtifactError, match="not a folder"):
        load_artifact(tmp_path / "missing")


def test_crash_while_saving_leaves_nothing_that_looks_valid(tmp_path, monkeypatch):
    loaded = _pruned(tmp_path)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(artifact_module, "save_file", broken_save)
    with pytest.raises(OSError):
        save_artifact(tmp_path / "a", loaded, {})
    assert not (tmp_path / "a").exists()
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_pth_is_read_with_weights_only(tmp_path):
    source = load_model("vit_tiny_patch16_224", model_args=dict(TINY_ARGS))
    torch.save({"state_dict": source.model.state_dict()}, tmp_path / "w.pth")
    loaded = load_model("vit_tiny_patch16_224", checkpoint=tmp_path / "w.pth", model_args=dict(TINY_ARGS))
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(loaded.model(x), source.model(x))


def test_pickled_module_is_refused(tmp_path):
    source = load_model("vit_tiny_patch16_224", model_args=dict(TINY_ARGS))
    torch.save(source.model, tmp_path / "whole.pth")
    with pytest.raises(UnreadableFileError, match="weights_only"):
        load_model("vit_tiny_patch16_224", checkpoint=tmp_path / "whole.pth", model_args=dict(TINY_ARGS))


def test_checkpoint_for_another_model_names_the_tensor(tmp_path):
    other = load_model("vit_tiny_patch16_224", model_args={**TINY_ARGS, "embed_dim": 32, "num_heads": 2})
    torch.save(other.model.state_dict(), tmp_path / "w.pth")
    with pytest.raises(ModelSourceError, match="cls_token"):
        load_model("vit_tiny_patch16_224", checkpoint=tmp_path / "w.pth", model_args=dict(TINY_ARGS))


def test_unknown_model_suggests_names():
    with pytest.raises(ModelSourceError, match="did you mean.*vit_small_patch16_224"):
        load_model("vit_smal_patch16_224")


def test_non_vit_is_unsupported():
    with pytest.raises(UnsupportedModelError, match="ResNet is not a model class vitshrink can cut"):
        load_model("resnet18", model_args={"num_classes": 3})


@pytest.mark.skipif(not (SHARED / "models" / "cifar10-vit").is_dir(), reason="../shared/models/cifar10-vit absent")
def test_timm_folder_loads_like_stock_timm():
    import timm

    folder = SHARED / "models" / "cifar10-vit"
    ours = load_model(str(folder))
    stock = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours.model(x), stock(x), rtol=0, atol=0)
    assert ours.input_size == (3, 32, 32) and ours.data_config["mean"][0] == pytest.approx(0.4914)
