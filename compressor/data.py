"""Datasets a user names on the command line, transformed to the input the model takes.

Every dataset yields `(image (C, H, W) normalised with the model's mean/std, label)`. Evaluation
uses timm's eval transform for the model's data config; `augment=True` gives a mild train transform
(random resized crop at scale 0.6-1 and, except for digits, horizontal flip), the same for every method.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets as tv_datasets
from torchvision.transforms import v2

from compressor.errors import DataError

DATASETS: dict[str, Callable[..., Dataset]] = {}


def register(name: str):
    def wrap(fn):
        DATASETS[name] = fn
        return fn

    return wrap


def build_dataset(
    name: str,
    data_dir: str | Path | None,
    split: str,
    data_config: dict,
    *,
    augment: bool = False,
    download: bool = False,
    limit: int | None = None,
    seed: int = 0,
) -> Dataset:
    """`split` is "train" or "eval"; `limit` keeps a fixed random subset (same for every call with `seed`)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(DATASETS))}")
    if split not in ("train", "eval"):
        raise DataError(f"split must be 'train' or 'eval', got {split!r}")
    ds = DATASETS[name](data_dir=data_dir, split=split, data_config=data_config, augment=augment, download=download)
    if limit is not None and limit < len(ds):
        order = np.random.default_rng(seed).permutation(len(ds))[:limit]
        ds = Subset(ds, sorted(order.tolist()))
    return ds


def build_loader(
    dataset: Dataset, batch_size: int, *, shuffle: bool = False, num_workers: int = 0, seed: int = 0
) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, generator=generator, drop_last=False
    )


def image_transform(data_config: dict, augment: bool, hflip: bool = True) -> Callable:
    """timm's transform for the model (PIL image in, normalised tensor out)."""
    if not augment:
        return create_transform(**data_config, is_training=False)
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


def _require_dir(path: str | Path | None, what: str) -> Path:
    if path is None:
        raise DataError(f"{what} needs --data-dir")
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"data folder {path} does not exist ({what})")
    return path


class DigitsDataset(Dataset):
    """scikit-learn's bundled 8x8 digits (1,797 images, no download), resized and channel-expanded."""

    def __init__(self, split: str, data_config: dict, augment: bool):
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
        if augment:
            steps.append(v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)))
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
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    if isinstance(base, DigitsDataset):
        return 10
    if hasattr(base, "classes"):
        return len(base.classes)
    return int(max(label for _, label in getattr(base, "samples", []))) + 1
