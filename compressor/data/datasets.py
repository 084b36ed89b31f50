"""Datasets a user names on the command line, transformed to the input the model takes.

Every dataset yields `(image (C, H, W) normalised with the model's mean/std, label)`. Evaluation
uses timm's eval transform for the model's data config. Training images get the augmentation named
by `augment` (`AUGMENTS`), the same for every method: "none"; "crop-flip" (the eval geometry, then a
random shift of up to 1/8 of the side by reflect padding + crop, and a horizontal flip); "rrc" (random
resized crop at scale 0.6-1 + horizontal flip); "auto" picks crop-flip for inputs up to 64 px and rrc
above (`auto_augment`). Digits are the exception: they are not mirror-symmetric, so nothing flips them,
and their "auto" is a small affine jitter (rotation 10 degrees, shift 10%, scale 0.9-1.1; `DigitsDataset`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from timm.data.transforms import MaybeToTensor
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets as tv_datasets
from torchvision import transforms as tv_transforms
from torchvision.transforms import v2

from vitshrink.compressor.core.errors import DataError

DATASETS: dict[str, Callable[..., Dataset]] = {}

# Training augmentations a user can name (--augment); "auto" is resolved by `auto_augment`.
AUGMENTS = ("auto", "none", "crop-flip", "rrc")
AUTO_CROP_FLIP_MAX_SIDE = 64  # provisional: inputs up to this side get crop-flip under "auto", larger ones rrc
DEFAULT_VAL_FRACTION = 0.1  # default validation split: 10% of the training split ...
DEFAULT_VAL_CAP = 5_000  # ... capped at this many images


def register(name: str):
    def wrap(fn):
        DATASETS[name] = fn
        return fn

    return wrap


def auto_augment(input_side: int) -> str:
    """What `--augment auto` means for an input of `input_side` pixels (the larger of height and width).

    crop-flip (reflect-pad 1/8 of the side, random crop, flip) for small inputs such as CIFAR's 32 px:
    it is the usual small-image recipe and the one the reference CIFAR-10 teacher was trained with, and a
    random resized crop at 32 px throws away or stretches too much of a tiny image. rrc (random resized
    crop 0.6-1 + flip) above 64 px, the usual ImageNet-style recipe. Provisional: to be confirmed or
    replaced by validation measurements. (The digits dataset never flips; its "auto" is a small affine jitter.)
    """
    return "crop-flip" if input_side <= AUTO_CROP_FLIP_MAX_SIDE else "rrc"


def named_augment(augment: str | bool) -> str:
    """One of `AUGMENTS` ("auto" unresolved): True means "auto", False "none"; anything else is refused."""
    if isinstance(augment, bool):
        augment = "auto" if augment else "none"
    if augment not in AUGMENTS:
        raise DataError(f"unknown augmentation {augment!r}; choose one of {', '.join(AUGMENTS)}")
    return augment


def resolve_augment(augment: str | bool, input_size: Sequence[int]) -> str:
    """The concrete augmentation ("none", "crop-flip" or "rrc") for a (C, H, W) input; True means "auto"."""
    augment = named_augment(augment)
    return auto_augment(max(input_size[-2:])) if augment == "auto" else augment


def build_dataset(
    name: str,
    data_dir: str | Path | None,
    split: str,
    data_config: dict,
    *,
    augment: str | bool = "none",
    download: bool = False,
    limit: int | None = None,
    seed: int = 0,
    indices: Sequence[int] | None = None,
) -> Dataset:
    """`split` is "train" or "eval" (the dataset's test/val folder).

    `augment` is one of `AUGMENTS` (True = "auto", False = "none"). `indices` restricts the split to
    those images (e.g. the training part of a `TrainSplit`); `limit` then keeps a fixed random subset of
    what is left (the same for every call with `seed`).
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(DATASETS))}")
    if split not in ("train", "eval"):
        raise DataError(f"split must be 'train' or 'eval', got {split!r}")
    augment = named_augment(augment)  # "auto" is resolved by each dataset (digits' auto is its own jitter)
    ds = DATASETS[name](data_dir=data_dir, split=split, data_config=data_config, augment=augment, download=download)
    if indices is None and (limit is None or limit >= len(ds)):
        return ds
    pool = list(range(len(ds))) if indices is None else list(indices)
    return Subset(ds, fixed_subset(pool, limit, seed))


def fixed_subset(pool: Sequence[int], limit: int | None, seed: int) -> list[int]:
    """A fixed random subset of `limit` items of `pool` (all of it when `limit` is None), sorted."""
    if limit is None or limit >= len(pool):
        return sorted(pool)
    order = np.random.default_rng(seed).permutation(len(pool))[:limit]
    return sorted(pool[i] for i in order.tolist())


# ---- the validation split: held-out training images, what every choice is made on ----


@dataclass(frozen=True)
class TrainSplit:
    """A dataset's training split cut in two: images to train (and calibrate) on, and held-out ones."""

    train: tuple[int, ...]  # indices into the training split, sorted
    val: tuple[int, ...]  # held out: never trained or calibrated on; per-epoch evaluation and choices

    def to_dict(self) -> dict:
        return {"train_images": len(self.train), "val_images": len(self.val)}


def parse_val_split(text: str) -> float | int:
    """"0.1" -> a fraction in [0, 1); "500" -> an image count; "0" -> no validation split."""
    try:
        value: float | int = float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError as e:
        raise DataError(f"--val-split {text!r}: give a fraction in [0, 1) such as 0.1, or an image count such as 5000") from e
    if isinstance(value, float) and not 0.0 <= value < 1.0:
        raise DataError(f"--val-split {text}: a fraction must be in [0, 1); for an image count write an integer")
    if value < 0:
        raise DataError(f"--val-split {text}: an image count must be >= 0")
    return value


def val_size(n_train: int, val_split: float | int | None) -> int:
    """Images held out of an `n_train`-image training split: None = 10% capped at 5,000.

    At least one image is always left to train and calibrate on (else a DataError naming the numbers).
    """
    if n_train < 1:
        raise DataError("the training split has no images: check the dataset folder or the DataLoader's dataset")
    if val_split is None:
        return min(DEFAULT_VAL_CAP, round(DEFAULT_VAL_FRACTION * n_train))
    if isinstance(val_split, float):
        if not 0.0 <= val_split < 1.0:
            raise DataError(f"validation fraction {val_split} must be in [0, 1)")
        k = round(val_split * n_train)
        if k >= n_train:
            raise DataError(
                f"--val-split {val_split}: holds out {k} of the {n_train} training images and leaves none to train "
                "or calibrate on; give a smaller fraction such as 0.1"
            )
        return k
    if val_split < 0:
        raise DataError(f"validation image count {val_split} must be >= 0")
    if val_split >= n_train:
        raise DataError(
            f"--val-split {val_split}: the training split has only {n_train} images and at least one must be left "
            "to train on; give a smaller count or a fraction such as 0.1"
        )
    return val_split


def split_train(n_train: int, val_split: float | int | None, seed: int) -> TrainSplit:
    """Hold out a fixed random part of the training split (the same for the same seed)."""
    k = val_size(n_train, val_split)
    # its own stream: the validation images do not move when --train-limit (stream `seed`) changes
    order = np.random.default_rng([seed, 1]).permutation(n_train)
    return TrainSplit(train=tuple(sorted(order[k:].tolist())), val=tuple(sorted(order[:k].tolist())))


@dataclass(frozen=True)
class Splits:
    """Everything a training job reads, disjoint where it matters (val shares nothing with train or calib)."""

    train: Dataset  # augmented training images (val excluded; --train-limit applied)
    val: Dataset | None  # held-out training images, evaluation transform; None with --val-split 0
    calib: Dataset | None  # un-augmented training images for scoring (val excluded); None if not asked for
    test: Dataset  # the dataset's test/val folder: only for the numbers that are reported
    split: TrainSplit
    augment: str  # the augmentation actually used ("auto" resolved)

    def describe(self) -> dict:
        return {**self.split.to_dict(), "train_used": len(self.train), "test_images": len(self.test),
                "augment": self.augment}


def build_splits(
    name: str,
    data_dir: str | Path | None,
    data_config: dict,
    *,
    augment: str | bool = "auto",
    val_split: float | int | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    calib_size: int = 0,
    seed: int = 0,
    download: bool = False,
) -> Splits:
    """The training set, the validation split carved from it, calibration images and the test split."""
    plain = build_dataset(name, data_dir, "train", data_config, download=download)
    split = split_train(len(plain), val_split, seed)
    train = build_dataset(name, data_dir, "train", data_config, augment=augment, download=download,
                          limit=train_limit, seed=seed, indices=split.train)
    calib = Subset(plain, fixed_subset(split.train, calib_size, seed + 1)) if calib_size > 0 else None
    val = Subset(plain, list(split.val)) if split.val else None
    test = build_dataset(name, data_dir, "eval", data_config, download=download, limit=test_limit, seed=seed)
    return Splits(train=train, val=val, calib=calib, test=test, split=split,
                  augment=augment_used(name, augment, data_config["input_size"]))


def augment_used(name: str, augment: str | bool, input_size: Sequence[int]) -> str:
    """What a dataset's training transform does for `augment`, in words for the record."""
    kind = resolve_augment(augment, input_size)
    if name == "digits":  # never flips (see DigitsDataset)
        if augment in ("auto", True):
            return "affine"
        return {"crop-flip": "crop (no flip)", "rrc": "rrc (no flip)"}.get(kind, kind)
    return kind


def build_loader(
    dataset: Dataset, batch_size: int, *, shuffle: bool = False, num_workers: int = 0, seed: int = 0
) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, generator=generator, drop_last=False
    )


def pad_for(side: int) -> int:
    """Reflect padding of crop-flip: 1/8 of the side (4 px at 32), at least 1."""
    return max(1, side // 8)


def image_transform(data_config: dict, augment: str | bool = "none", hflip: bool = True) -> Callable:
    """timm's transform for the model (PIL image in, normalised tensor out) with the named augmentation."""
    eval_transform = create_transform(**data_config, is_training=False)
    kind = resolve_augment(augment, data_config["input_size"])
    _, h, w = data_config["input_size"]
    if kind == "none":
        return eval_transform
    if kind == "rrc":
        return create_transform(
            input_size=data_config["input_size"],
            is_training=True,
            scale=(0.6, 1.0),
            hflip=0.5 if hflip else 0.0,
            color_jitter=None,
            interpolation=data_config["interpolation"],
            mean=data_config["mean"],
            std=data_config["std"],
        )
    # crop-flip: the evaluation geometry (resize + centre crop to the input size), then a random shift by up
    # to 1/8 of the side (reflect padding + random crop back to the input size) and a horizontal flip
    steps = list(eval_transform.transforms)
    at = next(i for i, t in enumerate(steps) if isinstance(t, (MaybeToTensor, tv_transforms.ToTensor)))
    shift = [tv_transforms.RandomCrop((h, w), padding=[pad_for(w), pad_for(h)], padding_mode="reflect")]
    if hflip:
        shift.append(tv_transforms.RandomHorizontalFlip())
    return tv_transforms.Compose([*steps[:at], *shift, *steps[at:]])


def _require_dir(path: str | Path | None, what: str) -> Path:
    if path is None:
        raise DataError(f"{what} needs --data-dir")
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"data folder {path} does not exist ({what})")
    return path


class DigitsDataset(Dataset):
    """scikit-learn's bundled 8x8 digits (1,797 images, no download), resized and channel-expanded.

    Digits are not mirror-symmetric, so no augmentation here flips: "auto" is a small affine jitter
    (rotation 10 degrees, shift 10%, scale 0.9-1.1), "crop-flip" only shifts (reflect pad + crop),
    "rrc" only crops (random resized crop 0.6-1).
    """

    def __init__(self, split: str, data_config: dict, augment: str | bool):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32) / 16.0  # (N, 8, 8) in [0, 1]
        labels = torch.tensor(digits.target, dtype=torch.long)
        train_idx, eval_idx = train_test_split(
            np.arange(len(labels)), test_size=0.2, random_state=0, stratify=digits.target
        )
        index = torch.tensor(train_idx if split == "train" else eval_idx)
        self.images, self.labels = images[index], labels[index]
        c, h, w = data_config["input_size"]
        steps = [v2.Resize((h, w), antialias=True)]
        kind = "auto" if augment is True else "none" if augment is False else augment
        if kind == "auto":
            steps.append(v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)))
        elif kind == "crop-flip":  # the shift only
            steps.append(v2.RandomCrop((h, w), padding=[pad_for(w), pad_for(h)], padding_mode="reflect"))
        elif kind == "rrc":
            steps.append(v2.RandomResizedCrop((h, w), scale=(0.6, 1.0), antialias=True))
        steps.append(v2.Normalize(mean=list(data_config["mean"]), std=list(data_config["std"])))
        self.channels = c
        self.transform = v2.Compose(steps)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = self.images[i].unsqueeze(0).expand(self.channels, -1, -1)
        return self.transform(image), int(self.labels[i])


@register("digits")
def _digits(data_dir, split, data_config, augment, download):
    return DigitsDataset(split, data_config, augment)


def _torchvision_cifar(cls, data_dir, split, data_config, augment, download):
    root = Path(data_dir) if data_dir is not None else Path("data")
    transform = image_transform(data_config, augment)
    try:
        return cls(root=str(root), train=split == "train", transform=transform, download=download)
    except RuntimeError as e:
        raise DataError(f"{cls.__name__} not found under {root} ({e}); pass --download or the right --data-dir") from e


@register("cifar10")
def _cifar10(data_dir, split, data_config, augment, download):
    return _torchvision_cifar(tv_datasets.CIFAR10, data_dir, split, data_config, augment, download)


@register("cifar100")
def _cifar100(data_dir, split, data_config, augment, download):
    return _torchvision_cifar(tv_datasets.CIFAR100, data_dir, split, data_config, augment, download)


@register("imagefolder")
def _imagefolder(data_dir, split, data_config, augment, download):
    """`DATA_DIR/train/<class>/*` and `DATA_DIR/val/<class>/*` (or `test/`)."""
    root = _require_dir(data_dir, "imagefolder")
    candidates = ["train"] if split == "train" else ["val", "test", "validation"]
    folder = next((root / c for c in candidates if (root / c).is_dir()), None)
    if folder is None:
        raise DataError(f"{root} has no {' or '.join(candidates)}/ folder (expected DATA_DIR/<split>/<class>/image)")
    return tv_datasets.ImageFolder(str(folder), transform=image_transform(data_config, augment))


class TinyImageNet(Dataset):
    """Tiny ImageNet's standard layout: train/<wnid>/images/*.JPEG, val/images + val/val_annotations.txt."""

    def __init__(self, root: Path, split: str, transform: Callable):
        wnids_file = root / "wnids.txt"
        classes = (
            wnids_file.read_text().split()
            if wnids_file.is_file()
            else sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        )
        index = {w: i for i, w in enumerate(classes)}
        if split == "train":
            self.samples = [
                (p, index[w]) for w in classes for p in sorted((root / "train" / w / "images").glob("*.JPEG"))
            ]
        else:
            annotations = root / "val" / "val_annotations.txt"
            if not annotations.is_file():
                raise DataError(f"{annotations} is missing; is {root} a Tiny ImageNet folder?")
            rows = [line.split("\t") for line in annotations.read_text().splitlines() if line.strip()]
            self.samples = [(root / "val" / "images" / r[0], index[r[1]]) for r in rows]
        if not self.samples:
            raise DataError(f"no images found for the {split} split under {root}")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        return self.transform(Image.open(path).convert("RGB")), label


@register("tiny-imagenet")
def _tiny_imagenet(data_dir, split, data_config, augment, download):
    root = _require_dir(data_dir, "tiny-imagenet")
    return TinyImageNet(root, split, image_transform(data_config, augment))


def num_classes_of(dataset: Dataset) -> int:
    """Number of classes a dataset has (for building a teacher head)."""
    base = dataset
    while isinstance(base, Subset):
        base = base.dataset
    if isinstance(base, DigitsDataset):
        return 10
    if hasattr(base, "classes"):
        return len(base.classes)
    return int(max(label for _, label in getattr(base, "samples", []))) + 1
