"""A user's DataLoader or dataset (the Python API's input), read as the (image, label) pairs the library takes.

Each sample or batch may be `(image, label, *rest)` (a tuple or list; the rest is ignored) or a mapping with
the image under "image" or "pixel_values" and the label under "label" or "labels" (torchvision, Hugging Face
datasets). Anything else is refused with a DataError that says what came in and what is expected.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch.utils.data import DataLoader, Dataset

from vitshrink.compressor.core.errors import DataError

IMAGE_KEYS = ("image", "pixel_values")
LABEL_KEYS = ("label", "labels")
EXPECTED = (
    "an (image, label, ...) tuple or list, or a dict with the image under 'image' or 'pixel_values' and "
    "the label under 'label' or 'labels'"
)


def image_label(item: object, where: str) -> tuple:
    """(image, label) of one sample or batch; `where` names it in the error."""
    if isinstance(item, Mapping):
        image = next((item[k] for k in IMAGE_KEYS if k in item), None)
        label = next((item[k] for k in LABEL_KEYS if k in item), None)
        if image is None or label is None:
            raise DataError(f"{where} is a dict with keys {sorted(map(str, item))}; expected {EXPECTED}")
        return image, label
    if isinstance(item, tuple | list) and len(item) >= 2:
        return item[0], item[1]
    raise DataError(f"{where} is {_describe(item)}; expected {EXPECTED}")


def _describe(item: object) -> str:
    if isinstance(item, torch.Tensor):
        return f"a tensor of shape {tuple(item.shape)}"
    if isinstance(item, tuple | list):
        return f"a {type(item).__name__} of {len(item)} item{'s' if len(item) != 1 else ''}"
    return f"a {type(item).__name__}"


class PairDataset(Dataset):
    """`dataset` whose samples come out as (image, label)."""

    def __init__(self, dataset: Dataset, where: str):
        self.dataset, self.where = dataset, where

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple:
        return image_label(self.dataset[index], f"{self.where}[{index}]")


class PairLoader:
    """`loader` whose batches come out as (image, label); its dataset's samples likewise (`PairDataset`)."""

    def __init__(self, loader: DataLoader, where: str):
        self.loader, self.where = loader, where

    @property
    def dataset(self) -> PairDataset:
        return PairDataset(self.loader.dataset, f"{self.where}.dataset")

    @property
    def batch_size(self) -> int | None:
        return self.loader.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple]:
        for batch in self.loader:
            yield image_label(batch, f"a batch of {self.where}")


def pair_loader(loader: DataLoader | None, where: str) -> PairLoader | None:
    """`loader` read as (image, label) batches; its first batch is read now, so that a loader of another
    shape is refused before anything runs."""
    if loader is None:
        return None
    pairs = loader if isinstance(loader, PairLoader) else PairLoader(loader, where)
    first = next(iter(pairs.loader), None)
    if first is not None:
        image_label(first, f"a batch of {where}")
    return pairs


def pair_samples(loader: DataLoader, where: str) -> PairLoader:
    """`loader` whose dataset the library re-reads by index (training, the validation split): its first
    sample is read now, so that a dataset of another shape is refused before anything runs."""
    pairs = loader if isinstance(loader, PairLoader) else PairLoader(loader, where)
    dataset = pairs.dataset
    if len(dataset):
        dataset[0]
    return pairs
