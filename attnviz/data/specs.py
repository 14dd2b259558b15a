"""Training data: the course's transforms and the data sets ``fit`` can train on.

A data spec names the data set:

* ``shapes`` — the generated shapes data set (:mod:`attnviz.data.shapes`), no files needed;
* ``cifar10`` — torchvision's CIFAR-10 from ``data_dir`` (downloaded only with ``download=True``);
* ``folder:PATH`` — an ``ImageFolder`` tree: ``PATH/train`` and ``PATH/test`` (or ``PATH/val``),
  or a single tree split 80/20 by the seed.

Every data set is served at 32×32 with the CIFAR-10 mean/std, as in the course notebooks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch
from torch.utils.data import Dataset, Subset
from torchvision import datasets, transforms

from attnviz.data.shapes import SHAPES_CLASSES, ShapesDataset
from attnviz.io.inputs import CIFAR10_CLASSES, PRESETS
from attnviz.runtime.errors import UsageError, first_line

#: The data specs :func:`make_datasets` understands (``folder:`` takes a path).
DATA_SPECS: tuple[str, ...] = ("shapes", "cifar10", "folder:PATH")
#: Where CIFAR-10 is looked for when no ``data_dir`` is given (the notebooks' ``root``).
DEFAULT_DATA_DIR = "./data"
#: Fraction of a single ``folder:`` tree used for training when it has no train/test folders.
FOLDER_TRAIN_FRACTION = 0.8


def train_transform(preset: str = "cifar10") -> transforms.Compose:
    """The notebooks' training augmentation followed by normalisation with ``preset``."""
    spec = PRESETS[preset]
    return transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1),
            transforms.RandomRotation(15),
            transforms.ToTensor(),
            transforms.Normalize(spec.mean, spec.std),
        ]
    )


def eval_transform(preset: str = "cifar10") -> transforms.Compose:
    """The notebooks' test transform (no augmentation): tensor conversion and normalisation with ``preset``."""
    spec = PRESETS[preset]
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)])


def make_datasets(
    spec: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    train_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
    download: bool = False,
    augment: bool = True,
) -> tuple[Dataset, Dataset, list[str]]:
    """Build the train and test data sets of a data spec.

    Args:
        spec: ``"shapes"``, ``"cifar10"`` or ``"folder:PATH"``.
        data_dir: Where CIFAR-10 lives (default ``./data``); unused by the other specs.
        train_size: Number of training images (shapes: generated; others: a seeded random subset).
        test_size: Number of test images, likewise.
        seed: Seed of the shapes data set and of subsets and folder splits.
        download: Let torchvision download CIFAR-10 when it is not in ``data_dir``.
        augment: Use the training augmentation for the training set (else the test transform).

    Returns:
        ``(train_dataset, test_dataset, class_names)``; items are ``(image_tensor, label)``.

    Raises:
        UsageError: Unknown spec, bad sizes, or data that cannot be found or read.
    """
    for name, size in (("train_size", train_size), ("test_size", test_size)):
        if size is not None and size < 1:
            raise UsageError(f"{name} must be at least 1, got {size}")
    kind, path = parse_data_spec(spec)
    train_tf = train_transform() if augment else eval_transform()
    test_tf = eval_transform()
    train: Dataset
    test: Dataset
    if kind == "shapes":
        train = ShapesDataset("train", size=train_size, seed=seed, transform=train_tf)
        test = ShapesDataset("test", size=test_size, seed=seed, transform=test_tf)
        return train, test, list(SHAPES_CLASSES)
    if kind == "cifar10":
        root = Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR)
        train, test = _cifar10(root, train_tf, test_tf, download)
        names = list(CIFAR10_CLASSES)
    else:
        train, test, names = _folder(Path(cast(str, path)), train_tf, test_tf, seed)  # "folder" always has a path
    return _subset(train, train_size, seed), _subset(test, test_size, seed + 1), names


def parse_data_spec(spec: str) -> tuple[str, str | None]:
    """Split a data spec into its kind and (for ``folder:``) its path.

    Raises:
        UsageError: If the spec is none of :data:`DATA_SPECS`.
    """
    text = spec.strip()
    if text.lower() in ("shapes", "cifar10"):
        return text.lower(), None
    if text.lower().startswith("folder:") and text[len("folder:") :].strip():
        return "folder", text[len("folder:") :].strip()
    raise UsageError(f"unknown data spec {spec!r}; use one of: {', '.join(DATA_SPECS)}")


def _cifar10(
    root: Path, train_tf: transforms.Compose, test_tf: transforms.Compose, download: bool
) -> tuple[Dataset, Dataset]:
    try:
        train = datasets.CIFAR10(root=str(root), train=True, download=download, transform=train_tf)
        test = datasets.CIFAR10(root=str(root), train=False, download=download, transform=test_tf)
    except RuntimeError as error:  # torchvision's "Dataset not found or corrupted"
        raise UsageError(
            f"CIFAR-10 not found in {root} (expected {root / 'cifar-10-batches-py'}); "
            "pass --data-dir with a local copy, or --download when online"
        ) from error
    except OSError as error:  # download failed (offline, proxy, disk)
        raise UsageError(
            f"could not download CIFAR-10 into {root}: {error}; pass --data-dir with a local copy"
        ) from error
    return train, test


def _folder(
    path: Path, train_tf: transforms.Compose, test_tf: transforms.Compose, seed: int
) -> tuple[Dataset, Dataset, list[str]]:
    if not path.is_dir():
        raise UsageError(f"image folder not found: {path}")
    resize = transforms.Resize((32, 32))
    train_tf = transforms.Compose([resize, train_tf])
    test_tf = transforms.Compose([resize, test_tf])
    test_dir = next((path / name for name in ("test", "val") if (path / name).is_dir()), None)
    if (path / "train").is_dir() and test_dir is not None:
        train = _image_folder(path / "train", train_tf)
        test = _image_folder(test_dir, test_tf)
        if train.classes != test.classes:
            raise UsageError(f"{path / 'train'} and {test_dir} hold different class folders")
        return train, test, list(train.classes)
    train_all = _image_folder(path, train_tf)
    test_all = _image_folder(path, test_tf)
    if len(train_all) < 2:
        raise UsageError(f"{path} holds {len(train_all)} image(s); a train/test split needs at least 2")
    order = torch.randperm(len(train_all), generator=torch.Generator().manual_seed(seed)).tolist()
    cut = max(1, min(len(order) - 1, round(FOLDER_TRAIN_FRACTION * len(order))))
    return Subset(train_all, order[:cut]), Subset(test_all, order[cut:]), list(train_all.classes)


def _image_folder(path: Path, transform: transforms.Compose) -> datasets.ImageFolder:
    try:
        return datasets.ImageFolder(str(path), transform=transform)
    except (FileNotFoundError, OSError) as error:
        raise UsageError(f"cannot read image folder {path}: {first_line(error)}") from error


def _subset(dataset: Dataset, size: int | None, seed: int) -> Dataset:
    """A seeded random subset of ``size`` items (the data set itself when size is None or too big)."""
    total = len(dataset)  # type: ignore[arg-type]
    if size is None or size >= total:
        return dataset
    indices: Sequence[int] = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:size].tolist()
    return Subset(dataset, indices)
