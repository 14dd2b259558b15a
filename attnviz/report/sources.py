"""What a report runs on: the images of a folder, a list file or a data spec, with labels and masks.

``resolve_source(text)`` understands:

* a folder: every image file under it (by extension; hidden files and folders skipped). An image in
  a sub-folder has that sub-folder's name as its true class (the ``ImageFolder`` layout); a
  ``labels.csv`` (columns ``image,label``) in the folder gives classes too. A mask is a file beside
  the image named ``<stem>.mask.<ext>`` (or, with ``masks=DIR``, the file of the same relative path
  in ``DIR``); non-zero pixels are the object;
* an image file: that image alone;
* a list file: one image path per line (relative to the file's folder; ``#`` starts a comment);
  an image's parent folder is its class when that folder is named after a class;
* a data spec: ``shapes`` / ``shapes:N`` (the test split of the generated data set, or its first
  N images, with exact masks), ``cifar10`` / ``cifar10:N`` (the test set from ``data_dir``) or
  ``folder:PATH`` (the held-out images of an ``ImageFolder`` tree, split as ``attnviz train``
  splits it).

Every item gets a stable id (readable name + hash of its key), so re-runs, shards and merges
agree on which image is which. :class:`DecodingDataset` decodes items in ``DataLoader`` workers,
each in the bounded memory of :func:`attnviz.io.inputs.decode_image` (``--workers N``: N images at
once), and a worker exits when the process that started it dies.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from attnviz.io.inputs import (
    Preset,
    decode_image,
    preprocess,
    supported_formats,
    working_side,
)
from attnviz.report.shard import parse_shard  # noqa: F401 - re-exported: the shard parser's old home
from attnviz.runtime.errors import AttnvizError, InputImageError, UsageError
from attnviz.runtime.pool import exit_with_parent

#: Masks larger than this (longest side, pixels) are reduced with nearest-neighbour sampling.
MASK_MAX_SIDE = 1024
#: Longest side of the thumbnail drawn in the report: small images are enlarged (nearest) to at
#: least THUMB_MIN, large ones reduced to THUMB_MAX.
THUMB_MIN, THUMB_MAX = 128, 192
MASK_INFIX = ".mask"
LABELS_FILE = "labels.csv"
_SPEC = re.compile(r"^(shapes|cifar10)(?::(\d+))?$", re.IGNORECASE)


@dataclass(frozen=True)
class Item:
    """One image of a source.

    Attributes:
        index: Position in the source (stable for a given source).
        key: What identifies the image: a path relative to the source, or ``shapes:test:SEED:I``.
        name: Name shown in the report.
        path: The image file, or ``None`` for generated and in-memory data sets.
        truth: True class name (or index as text), if known.
        mask: The mask file, if any.
    """

    index: int
    key: str
    name: str
    path: str | None = None
    truth: str | None = None
    mask: str | None = None

    @property
    def id(self) -> str:
        """Stable, file-name-safe id: a readable part and 10 hex digits of the key's hash."""
        slug = re.sub(r"[^\w.-]+", "_", Path(self.name).stem)[:40].strip("._") or "image"
        return f"{slug}-{key_hash(self.key)[:10]}"


@dataclass
class Source:
    """The resolved input of a report.

    Attributes:
        text: The input as given.
        kind: ``"folder"``, ``"list"``, ``"image"`` (one image file), ``"shapes"``, ``"cifar10"`` or
            ``"folder-spec"``.
        items: Every image, in order.
        class_names: The source's own classes (data spec, sub-folders), if any.
        ignored: Files left out because their names are not image names.
        options: What the decoder needs (seed, data_dir).
    """

    text: str
    kind: str
    items: list[Item]
    class_names: list[str] | None = None
    ignored: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """Plain description for ``run.json``."""
        return {
            "input": self.text,
            "kind": self.kind,
            "count": len(self.items),
            "ignored": self.ignored,
            "identity": self.identity(),
        }

    def identity(self) -> str:
        """What makes two sources the same for resuming: the resolved folder or list file (item keys
        are relative to it), or the data set (its keys hold the split and seed)."""
        if self.kind in ("folder", "list", "image"):
            return f"{self.kind}:{Path(self.text).expanduser().resolve()}"
        if self.kind == "folder-spec":
            return f"folder:{Path(self.text.split(':', 1)[1].strip()).expanduser().resolve()}"
        if self.kind == "cifar10":
            return f"cifar10:{Path(self.options.get('data_dir') or '.').resolve()}"
        return self.kind


@dataclass
class Decoded:
    """One item after decoding (in a ``DataLoader`` worker).

    Attributes:
        position: Index into the list of items given to the data set.
        thumb: The image for the report (uint8 RGB, see THUMB_MIN/THUMB_MAX).
        size: The original ``(height, width)``.
        tensors: Preprocessed ``[3,H,W]`` tensor per preset key.
        mask: Boolean object mask, or ``None``.
        error: Why the image could not be used, or ``None``.
        note: Something the report should say about this image (an unreadable mask).
    """

    position: int
    thumb: np.ndarray | None = None
    size: tuple[int, int] | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    mask: np.ndarray | None = None
    error: str | None = None
    note: str | None = None


def key_hash(key: str) -> str:
    """SHA-1 hex digest of an item key."""
    return hashlib.sha1(key.encode("utf-8")).hexdigest()


def preset_key(preset: Preset) -> str:
    """A short key naming a preset's exact preprocessing."""
    return f"{preset.name}-{preset.size[0]}x{preset.size[1]}-{key_hash(repr(preset))[:6]}"


def resolve_source(
    text: str | os.PathLike[str],
    *,
    masks: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    exclude: Sequence[str | os.PathLike[str]] = (),
) -> Source:
    """Turn a report's INPUT into a :class:`Source`.

    Args:
        text: A folder, a list file or a data spec (see the module docstring).
        masks: A folder of masks with the same relative paths as the images.
        data_dir: Where CIFAR-10 lives (``cifar10`` specs).
        seed: Seed of the ``shapes`` data set and of ``folder:`` splits.
        exclude: Folders never scanned (the report's own output folder); a folder input that is
            one of them or inside one is refused. Sub-folders that hold a report are skipped too.

    Raises:
        UsageError: Nothing found, an unknown spec, an unreadable list file, a file that is
            neither an image nor a list, or a folder input that is (or is inside) a report folder.
    """
    raw = str(text)
    path = Path(raw).expanduser()
    if path.is_dir():
        excluded = [Path(e).expanduser().resolve() for e in exclude]
        _check_not_a_report(raw, path, excluded)
        source = _folder(path, Path(masks) if masks else None, excluded)
    elif path.is_file():
        source = _single_image(path, Path(masks) if masks else None) if _is_image_file(path) else _list_file(path)
    else:
        source = _spec(raw.strip(), data_dir, seed)
    source.text = raw
    if not source.items:
        hint = f" ({len(source.ignored)} file(s) without an image extension ignored)" if source.ignored else ""
        raise UsageError(f"no images found in {raw!r}{hint}")
    return source


def shard_items(items: Sequence[Item], shard: tuple[int, int]) -> list[Item]:
    """The items of shard ``K/N`` (1-based K): those whose key hash is K-1 modulo N."""
    k, n = shard
    if n == 1:
        return list(items)
    return [item for item in items if int(key_hash(item.key)[:12], 16) % n == k - 1]


def truth_index(truth: str | None, class_names: Sequence[str] | None) -> int | None:
    """The class index of a truth label: its position in ``class_names``, or the number it spells."""
    if truth is None:
        return None
    if class_names is not None and truth in class_names:
        return list(class_names).index(truth)
    if truth.isdigit() and (class_names is None or int(truth) < len(class_names)):
        return int(truth)
    return None


class DecodingDataset(Dataset):
    """Decodes items for a ``DataLoader``: thumbnail, one tensor per preset, mask; errors kept.

    Never raises for a bad image: the item comes back with ``error`` set.
    """

    def __init__(self, source: Source, items: Sequence[Item], presets: Mapping[str, Preset]) -> None:
        self.kind = source.kind
        self.options = dict(source.options)
        self.items = list(items)
        self.presets = dict(presets)
        self._data: Any = None
        self._guarded: int | None = None  # the worker process whose exit with its parent is set up

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int) -> Decoded:
        self._guard_worker()
        item = self.items[position]
        try:
            rgb, size, mask, note = self._read(item)
            tensors = {key: preprocess(rgb, preset) for key, preset in self.presets.items()}
        except AttnvizError as error:
            return Decoded(position, error=str(error))
        except Exception as error:  # noqa: BLE001 - one bad file must not stop the run
            return Decoded(position, error=f"cannot decode {item.name!r}: {type(error).__name__}: {error}")
        return Decoded(position, thumb=thumbnail(rgb), size=size, tensors=tensors, mask=mask, note=note)

    def _guard_worker(self) -> None:
        """In a ``DataLoader`` worker, once: exit when the main process dies (an OOM killer's kill -9)."""
        if self._guarded != os.getpid():
            self._guarded = os.getpid()
            if get_worker_info() is not None:
                exit_with_parent()

    def _read(self, item: Item) -> tuple[np.ndarray, tuple[int, int], np.ndarray | None, str | None]:
        """The item's RGB image (reduced if large), its own ``(height, width)``, mask and note."""
        if self.kind == "shapes":
            from attnviz.data.shapes import make_sample

            sample = make_sample(int(item.key.rsplit(":", 1)[1]), seed=self.options["seed"], split="test")
            return sample.image, sample.image.shape[:2], sample.mask, None
        if self.kind == "cifar10":
            image = np.ascontiguousarray(self._cifar().data[int(item.key.rsplit(":", 1)[1])])
            return image, image.shape[:2], None, None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reasons reach the report through errors, not warnings
            if item.path is None:  # only cifar10 items, handled above, have no file
                raise ValueError(f"{item.name} has no image file")
            rgb, size = decode_image(item.path, working_side(self.presets.values()))
        mask, note = None, None
        if item.mask is not None:
            try:
                mask = load_mask(item.mask)
            except InputImageError as error:
                note = f"mask not used: {error}"
        return rgb, size, mask, note

    def _cifar(self) -> Any:
        if self._data is None:  # opened once per worker
            from attnviz.data.specs import make_datasets

            self._data = make_datasets("cifar10", self.options.get("data_dir"))[1]
        return self._data


class DecodedBatch:
    """A ``DataLoader`` batch: the decoded items, each preset's tensors rows of one ``[B,3,H,W]``
    tensor (:func:`collate_decoded`).

    Not a list on purpose: some torch releases pin a list item by item (which leaves these items as
    they are) before they ask an object for its own ``pin_memory``.
    """

    def __init__(self, items: list[Decoded]) -> None:
        self.items = items

    def __iter__(self) -> Iterator[Decoded]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Decoded:
        return self.items[index]

    def pin_memory(self, device: Any = None) -> DecodedBatch:
        """Each preset's tensors in pinned memory, one copy per preset (the ``DataLoader`` calls this
        when a model runs on CUDA), still rows of one tensor."""
        _into_blocks(self.items, lambda tensors: stack_rows(tensors).pin_memory())
        return self


def collate_decoded(batch: list[Decoded]) -> DecodedBatch:
    """A ``DataLoader`` batch, each preset's tensors of the decoded images made views of one
    ``[B,3,H,W]`` tensor, so that a worker hands the batch over in one shared-memory block per preset
    instead of one per image, and :func:`stack_rows` gives the model that block without a copy."""
    _into_blocks(batch, lambda tensors: torch.stack(list(tensors)))  # a new block, never a view of the items'
    return DecodedBatch(batch)


def _into_blocks(batch: Sequence[Decoded], block: Callable[[Sequence[torch.Tensor]], torch.Tensor]) -> None:
    """Each preset's tensors of ``batch`` replaced by the rows of ``block(those tensors)``, for the presets
    whose tensors have one shape (a preset's fixed size: always)."""
    for key in sorted({key for sample in batch for key in sample.tensors}):
        holders = [sample for sample in batch if key in sample.tensors]
        if len({sample.tensors[key].shape for sample in holders}) != 1:
            continue
        for sample, row in zip(holders, block([sample.tensors[key] for sample in holders])):
            sample.tensors[key] = row


def stack_rows(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(tensors)``; without a copy when they are, in order, the rows of one contiguous
    tensor (as :func:`collate_decoded` leaves them, also after a worker process or pinning)."""
    first = tensors[0]
    size, start = first.numel(), first.storage_offset()
    storage = first.untyped_storage().data_ptr()
    rows = all(
        t.is_contiguous()
        and not t.requires_grad  # a view would pass gradients to the first row only
        and not t.is_conj()
        and not t.is_neg()
        and t.shape == first.shape
        and t.dtype == first.dtype
        and t.device == first.device
        and t.untyped_storage().data_ptr() == storage
        and t.storage_offset() == start + i * size
        for i, t in enumerate(tensors)
    )
    if not rows:
        return torch.stack(list(tensors))
    return first.as_strided((len(tensors), *first.shape), (size, *first.stride()), start)


def load_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a mask file: True where any channel is non-zero (reduced to MASK_MAX_SIDE at most by
    taking the centre pixel of each block).

    Raises:
        InputImageError: The file cannot be decoded.
    """
    return decode_image(path, MASK_MAX_SIDE, nearest=True)[0].max(axis=2) > 0


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """The picture of an image shown in the report: enlarged by an integer factor (nearest) to a
    longest side of at least THUMB_MIN, or reduced (area averaging) to THUMB_MAX."""
    import cv2

    height, width = rgb.shape[:2]
    longest = max(height, width)
    if longest < THUMB_MIN:
        factor = int(np.ceil(THUMB_MIN / longest))
        return np.ascontiguousarray(np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1))
    if longest > THUMB_MAX:
        scale = THUMB_MAX / longest
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(rgb)


# --------------------------------------------------------------------------- folders and lists


def _image_suffixes() -> frozenset[str]:
    from PIL import Image

    return frozenset(ext.lower() for ext in Image.registered_extensions())


def _is_mask_name(name: str) -> bool:
    return Path(name).stem.lower().endswith(MASK_INFIX)


def _folder(root: Path, masks: Path | None, exclude: list[Path]) -> Source:
    suffixes = _image_suffixes()
    files: list[Path] = []
    ignored: list[Path] = []
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".") and (here / d).resolve() not in exclude and not is_report_folder(here / d)
        )
        for name in sorted(names):
            if name.startswith(".") or _is_mask_name(name) or (here == root and name == LABELS_FILE):
                continue
            relative = (here / name).relative_to(root)
            (files if Path(name).suffix.lower() in suffixes else ignored).append(relative)
    table = _labels_table(root / LABELS_FILE)
    items = []
    for index, relative in enumerate(files):
        truth = table.get(relative.as_posix(), table.get(relative.name))
        if truth is None and len(relative.parts) > 1:
            truth = relative.parts[0]
        items.append(
            Item(
                index,
                relative.as_posix(),
                relative.as_posix(),
                str(root / relative),
                truth,
                _mask_for(root / relative, masks / relative if masks else None),
            )
        )
    classes = sorted({p.parts[0] for p in files if len(p.parts) > 1}) or None
    return Source(str(root), "folder", items, classes, [p.as_posix() for p in ignored])


def is_report_folder(folder: Path) -> bool:
    """True when ``folder`` holds an attnviz report (its ``run.json``)."""
    from attnviz.report.records import FORMAT, RUN_FILE

    run = folder / RUN_FILE
    if not run.is_file():
        return False
    try:
        return json.loads(run.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _check_not_a_report(raw: str, root: Path, excluded: list[Path]) -> None:
    """A report must not read its own output: refuse a folder that is (or is inside) an excluded
    one, or that holds a report."""
    resolved = root.resolve()
    for folder in excluded:
        if resolved == folder or folder in resolved.parents:
            where = "is" if resolved == folder else "is inside"
            raise UsageError(
                f"INPUT {raw!r} {where} the report folder {str(folder)!r}; write the report to another folder (--out)"
            )
    if is_report_folder(root):
        raise UsageError(
            f"INPUT {raw!r} is an attnviz report folder (it holds {'run.json'}); give the folder of the images"
        )


def _labels_table(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            return {row["image"].strip(): row["label"].strip() for row in csv.DictReader(file)}
    except (OSError, KeyError, csv.Error, UnicodeDecodeError, AttributeError) as error:
        raise UsageError(f"cannot read {path}: expected a CSV with columns image,label ({error})") from error


def _mask_for(image: Path, explicit: Path | None) -> str | None:
    if explicit is not None:
        return str(explicit) if explicit.is_file() else None
    for suffix in dict.fromkeys((image.suffix, ".png")):
        candidate = image.with_name(f"{image.stem}{MASK_INFIX}{suffix}")
        if candidate.is_file():
            return str(candidate)
    return None


def _is_image_file(path: Path) -> bool:
    """An image by its name, or (a file that is no text) by its content."""
    if path.suffix.lower() in _image_suffixes():
        return True
    try:
        with open(path, "rb") as file:
            head = file.read(4096)
        head.decode("utf-8-sig")
        if b"\0" not in head:
            return False
    except UnicodeDecodeError:
        pass
    except OSError:
        return False
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path, formats=supported_formats()):
            return True
    except (OSError, UnidentifiedImageError, ValueError):
        return False


def _single_image(path: Path, masks: Path | None) -> Source:
    """One image file as the whole input (its mask beside it, or of the same name in ``masks``)."""
    item = Item(0, path.name, path.name, str(path), None, _mask_for(path, masks / path.name if masks else None))
    return Source(str(path), "image", [item])


def _list_file(path: Path) -> Source:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise UsageError(
            f"{str(path)!r} is neither an image nor a list file (a text file with one image path per line)"
        ) from error
    except OSError as error:
        raise UsageError(f"cannot read the list file {str(path)!r}: {error}") from error
    if any("\0" in line for line in lines):
        raise UsageError(
            f"{str(path)!r} is neither an image nor a list file (a text file with one image path per line)"
        )
    items: list[Item] = []
    for line in lines:
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        image = Path(entry).expanduser()
        image = image if image.is_absolute() else path.parent / image
        items.append(Item(len(items), entry, entry, str(image), image.parent.name, _mask_for(image, None)))
    return Source(str(path), "list", items)


# --------------------------------------------------------------------------- data specs


def _spec(text: str, data_dir: str | os.PathLike[str] | None, seed: int) -> Source:
    match = _SPEC.match(text)
    if match:
        kind, count = match[1].lower(), int(match[2]) if match[2] else None
        if count == 0:
            raise UsageError(f"{text!r}: the number of images must be at least 1")
        return _shapes(count, seed) if kind == "shapes" else _cifar(count, data_dir)
    if text.lower().startswith("folder:"):
        return _folder_spec(text, seed)
    raise UsageError(
        f"{text!r} is neither a folder, a list file nor a data spec (shapes, shapes:N, cifar10, cifar10:N, folder:PATH)"
    )


def _shapes(count: int | None, seed: int) -> Source:
    from attnviz.data.shapes import DEFAULT_SIZES, SHAPES_CLASSES

    total = DEFAULT_SIZES["test"] if count is None else count
    items = [
        Item(i, f"shapes:test:{seed}:{i}", f"shapes-{i:05d}", None, SHAPES_CLASSES[i % len(SHAPES_CLASSES)])
        for i in range(total)
    ]
    return Source("", "shapes", items, list(SHAPES_CLASSES), options={"seed": seed})


def _cifar(count: int | None, data_dir: str | os.PathLike[str] | None) -> Source:
    from attnviz.data.specs import make_datasets
    from attnviz.io.inputs import CIFAR10_CLASSES

    test: Any = make_datasets("cifar10", data_dir)[1]  # torchvision's CIFAR10 (len, targets)
    total = len(test) if count is None else min(count, len(test))
    items = [
        Item(i, f"cifar10:test:{i}", f"cifar10-{i:05d}", None, CIFAR10_CLASSES[int(test.targets[i])])
        for i in range(total)
    ]
    return Source(
        "", "cifar10", items, list(CIFAR10_CLASSES), options={"data_dir": str(data_dir) if data_dir else None}
    )


def _folder_spec(text: str, seed: int) -> Source:
    from torch.utils.data import Subset

    from attnviz.data.specs import make_datasets

    _, test, names = make_datasets(text, seed=seed)
    indices = list(test.indices) if isinstance(test, Subset) else None
    folder: Any = test.dataset if isinstance(test, Subset) else test  # torchvision's ImageFolder
    root = Path(folder.root)
    samples = [folder.samples[i] for i in indices] if indices is not None else list(folder.samples)
    items = []
    for index, (path, label) in enumerate(samples):
        relative = Path(path).relative_to(root).as_posix()
        items.append(Item(index, relative, relative, path, folder.classes[label], _mask_for(Path(path), None)))
    return Source("", "folder-spec", items, list(names), options={"seed": seed})
