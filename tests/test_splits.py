"""The validation split (held out of the training split) and the training augmentations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from timm.data.transforms import MaybeToTensor, RandomResizedCropAndInterpolation
from torch.utils.data import Subset
from torchvision import transforms as T
from torchvision.transforms import v2

from vitshrink.cli import main
from vitshrink.compressor.core.errors import DataError
from vitshrink.compressor.data.datasets import (
    DigitsDataset,
    auto_augment,
    build_dataset,
    build_splits,
    image_transform,
    parse_val_split,
    split_train,
    val_size,
)

DIGITS_CFG = {"input_size": (3, 16, 16), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
CIFAR_CFG = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear",
             "crop_pct": 1.0, "crop_mode": "center"}
DIGITS_TRAIN = 1437  # scikit-learn digits: 1,797 images, 80% in our training split


def _digits_splits(**kw):
    return build_splits("digits", None, DIGITS_CFG, **kw)


def test_val_is_disjoint_from_training_and_calibration_images():
    s = _digits_splits(val_split=200, calib_size=256, train_limit=500, seed=3)
    val, train, calib = set(s.val.indices), set(s.train.indices), set(s.calib.indices)
    assert len(val) == 200 and len(train) == 500 and len(calib) == 256
    assert not val & train and not val & calib
    assert val | set(s.split.train) == set(range(DIGITS_TRAIN))  # the split covers the training split exactly
    assert train <= set(s.split.train) and calib <= set(s.split.train)


def test_val_images_are_training_images_with_the_eval_transform():
    s = _digits_splits(val_split=10)
    plain = build_dataset("digits", None, "train", DIGITS_CFG)
    for k, i in enumerate(s.val.indices):
        torch.testing.assert_close(s.val[k][0], plain[i][0])
        assert s.val[k][1] == plain[i][1]


def test_same_seed_same_split_other_seed_other_split():
    a, b, c = split_train(1000, 0.1, seed=0), split_train(1000, 0.1, seed=0), split_train(1000, 0.1, seed=1)
    assert a == b and a.val != c.val
    # the validation images do not depend on --train-limit
    assert _digits_splits(train_limit=100).split == _digits_splits().split


@pytest.mark.parametrize("val_split, expected", [(0, 0), (0.0, 0), (1, 1), (0.25, 359), (None, 144)])
def test_val_split_edges(val_split, expected):
    s = _digits_splits(val_split=val_split)
    assert len(s.split.val) == expected and len(s.split.train) == DIGITS_TRAIN - expected
    assert (s.val is None) == (expected == 0)
    assert len(s.train) == DIGITS_TRAIN - expected


def test_default_is_ten_percent_capped_at_5000():
    assert val_size(1437, None) == 144
    assert val_size(50_000, None) == 5_000
    assert val_size(1_000_000, None) == 5_000


@pytest.mark.parametrize("text, value", [("0", 0), ("1", 1), ("5000", 5000), ("0.1", 0.1), ("0.0", 0.0), ("1e-1", 0.1)])
def test_parse_val_split(text, value):
    parsed = parse_val_split(text)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize("text", ["1.0", "1.5", "-3", "ten", "-0.1"])
def test_parse_val_split_rejects(text):
    with pytest.raises(DataError, match="--val-split"):
        parse_val_split(text)


def test_count_larger_than_training_split_is_one_clear_line(tmp_path):
    result = CliRunner().invoke(main, ["finetune", "--model", "vit_tiny_patch16_224", "--val-split", "2000",
                                       "--model-arg", "img_size=16", "--model-arg", "patch_size=4",
                                       "--out", str(tmp_path / "o"), "--no-progress"])
    assert result.exit_code == 1
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "2000" in lines[0] and "1437" in lines[0] and "Traceback" not in result.output, result.output


def test_fraction_out_of_range_is_a_bad_parameter(tmp_path):
    result = CliRunner().invoke(main, ["compress", "--val-split", "1.5", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--val-split" in result.output


# ---- augmentation ----


def test_auto_rule_by_input_size():
    assert auto_augment(32) == "crop-flip" and auto_augment(64) == "crop-flip"
    assert auto_augment(65) == "rrc" and auto_augment(224) == "rrc"


def _types(transform):
    return [type(t) for t in transform.transforms]


def test_each_choice_has_the_right_transforms():
    crop_flip = image_transform(CIFAR_CFG, "crop-flip")
    assert _types(crop_flip) == [T.Resize, T.CenterCrop, T.RandomCrop, T.RandomHorizontalFlip, MaybeToTensor,
                                 T.Normalize]
    crop = crop_flip.transforms[2]
    assert crop.padding == [4, 4] and crop.padding_mode == "reflect" and tuple(crop.size) == (32, 32)
    assert _types(image_transform(CIFAR_CFG, "rrc"))[:2] == [RandomResizedCropAndInterpolation, T.RandomHorizontalFlip]
    assert not any(t in (T.RandomCrop, T.RandomHorizontalFlip) for t in _types(image_transform(CIFAR_CFG, "none")))
    assert _types(image_transform(CIFAR_CFG, "auto")) == _types(crop_flip)  # 32 px: crop-flip
    assert _types(image_transform({**CIFAR_CFG, "input_size": (3, 96, 96)}, "auto"))[0] is RandomResizedCropAndInterpolation
    assert image_transform({**CIFAR_CFG, "input_size": (3, 224, 224)}, "crop-flip").transforms[2].padding == [28, 28]


def test_crop_flip_is_the_eval_image_shifted_and_maybe_mirrored():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    reference = image_transform(CIFAR_CFG, "none")(image)
    transform = image_transform(CIFAR_CFG, "crop-flip")
    seen = set()
    for seed in range(30):
        torch.manual_seed(seed)
        out = transform(image)
        assert out.shape == (3, 32, 32)
        seen.add(_match_shift(out, reference))
    assert None not in seen, "a crop-flip output is not a shifted (and maybe mirrored) eval image"
    assert {flip for _, _, flip in seen} == {False, True} and len(seen) > 5


def _match_shift(out: torch.Tensor, ref: torch.Tensor):
    """(dy, dx, flipped) with out[y, x] == ref'[y + dy, x + dx] on the overlap, ref' maybe mirrored."""
    for flip in (False, True):
        r = ref.flip(-1) if flip else ref
        for dy in range(-4, 5):
            for dx in range(-4, 5):
                a = out[:, max(0, -dy) : 32 - max(0, dy), max(0, -dx) : 32 - max(0, dx)]
                b = r[:, max(0, dy) : 32 - max(0, -dy), max(0, dx) : 32 - max(0, -dx)]
                if torch.equal(a, b):
                    return dy, dx, flip
    return None


@pytest.mark.parametrize("augment", ["auto", "none", "crop-flip", "rrc", True])
def test_digits_never_flips(augment):
    ds = DigitsDataset("train", DIGITS_CFG, augment)
    kinds = _types(ds.transform)
    assert not any("Flip" in k.__name__ for k in kinds), kinds
    assert ds[0][0].shape == (3, 16, 16)
    expected = {"auto": v2.RandomAffine, True: v2.RandomAffine, "crop-flip": v2.RandomCrop,
                "rrc": v2.RandomResizedCrop}.get(augment)
    assert (expected in kinds) if expected else kinds == [v2.Resize, v2.Normalize]


def test_train_set_uses_the_named_augmentation():
    s = _digits_splits(augment="rrc")
    assert isinstance(s.train, Subset) and v2.RandomResizedCrop in _types(s.train.dataset.transform)
    assert s.augment == "rrc (no flip)" and _digits_splits().augment == "affine"


@pytest.mark.parametrize("fraction", ["0.9999", "0.9997"])
def test_fraction_that_leaves_no_training_image_is_one_clear_line(fraction, trained_digits, tmp_path):
    """round(0.9999 * 1437) = 1437: nothing left to train or score on; refused before anything is written."""
    from vitshrink.compressor.core.artifact import save_artifact

    teacher = save_artifact(tmp_path / "teacher", trained_digits, {"method": "test teacher"})
    out = tmp_path / "o"
    result = CliRunner().invoke(main, ["compress", "--model", str(teacher), "--val-split", fraction, "--epochs", "0",
                                       "--calib-batches", "1", "--out", str(out), "--no-progress"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and "1437" in lines[0] and fraction in lines[0] and "Traceback" not in result.output
    assert not out.exists() and not (tmp_path / "o.work").exists()


def test_fraction_that_leaves_no_training_image_is_refused_from_python():
    with pytest.raises(DataError, match="leaves none"):
        split_train(1437, 0.9999, seed=0)
    assert len(split_train(1437, 0.999, seed=0).train) == 1  # round(1435.6) = 1436 held out: one image left


def test_an_empty_training_split_is_refused():
    with pytest.raises(DataError, match="no images"):
        split_train(0, None, seed=0)
