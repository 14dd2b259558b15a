"""The ``shapes`` data set: find one target shape among distractors and clutter.

Every 32×32 RGB image holds exactly one *target* object whose form is the class (circle,
square, ...), drawn at a random position, size and colour, plus a few smaller *distractors*
whose forms belong to no class (an L, a T, a half-disc, a crescent, a zigzag) and background
clutter (a colour gradient, thin lines, pixel noise). The label depends on the target alone,
so a model has to find it; the binary mask of the target lets one score where a model looks.

Images are generated on the fly with OpenCV from a random generator seeded by
``(seed, split, index)``, so a sample never depends on which worker draws it or in what
order. ``docs/SHAPES.md`` is the full definition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from attnviz.runtime.errors import UsageError

#: Class names, in label order.
SHAPES_CLASSES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "star",
    "diamond",
    "heart",
    "arrow",
    "bar",
)
#: Forms drawn as distractors; none of them is a class.
DISTRACTOR_FORMS: tuple[str, ...] = ("L", "T", "half_disc", "crescent", "zigzag")
#: Default number of images per split.
DEFAULT_SIZES: dict[str, int] = {"train": 20000, "test": 4000}
#: Split ids that enter every sample's seed, so the splits never share a sample.
SPLIT_IDS: dict[str, int] = {"train": 0, "test": 1}

IMAGE_SIZE = 32
TARGET_SCALE = (6.0, 10.0)  # half-extent of a target, pixels
DISTRACTOR_SCALE = (2.5, 4.5)  # half-extent of a distractor, pixels
DISTRACTOR_COUNT = (2, 4)  # inclusive
LINE_COUNT = (1, 3)  # inclusive
NOISE = 10  # uniform pixel noise in [-NOISE, NOISE] on every channel
SAME_COLOUR_P = 0.3  # chance that a distractor takes the target's colour
_SHIFT = 4  # OpenCV fixed-point bits: coordinates are drawn with 1/16-pixel precision
_PLACEMENT_TRIES = 8


@dataclass(frozen=True)
class ShapeSample:
    """One generated image with everything that was drawn into it.

    Attributes:
        image: ``[32, 32, 3]`` uint8 RGB image.
        mask: ``[32, 32]`` bool, True exactly on the pixels of the target object.
        label: Class index into :data:`SHAPES_CLASSES`.
        colour: RGB colour the target was filled with (before noise).
        center: ``(x, y)`` centre of the target in pixels.
        scale: Half-extent of the target in pixels.
        distractor_mask: ``[32, 32]`` bool, True on the pixels of any distractor.
        distractors: Form name of each distractor drawn.
    """

    image: np.ndarray
    mask: np.ndarray
    label: int
    colour: tuple[int, int, int]
    center: tuple[float, float]
    scale: float
    distractor_mask: np.ndarray
    distractors: tuple[str, ...]

    @property
    def class_name(self) -> str:
        """Name of the target's class."""
        return SHAPES_CLASSES[self.label]


def make_sample(index: int, *, seed: int = 0, split: str = "train") -> ShapeSample:
    """Generate sample ``index`` of a split; the same arguments always give the same sample.

    The label is ``index % 10``, so any run of ten consecutive indices holds every class once.

    Raises:
        UsageError: On an unknown split or a negative index or seed.
    """
    _check_split(split)
    if index < 0 or seed < 0:
        raise UsageError(f"shapes: index and seed must be >= 0, got index={index}, seed={seed}")
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    label = index % len(SHAPES_CLASSES)
    image = _background(rng)
    _draw_lines(image, rng)

    scale = float(rng.uniform(*TARGET_SCALE))
    margin = scale + 1.0
    center = (float(rng.uniform(margin, IMAGE_SIZE - 1 - margin)), float(rng.uniform(margin, IMAGE_SIZE - 1 - margin)))
    mask = _TARGETS[SHAPES_CLASSES[label]](center, scale, rng)
    colour = _bright_colour(rng)

    distractor_mask = np.zeros_like(mask)
    forms: list[str] = []
    keep_out = cv2.dilate(mask.view(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    for _ in range(int(rng.integers(DISTRACTOR_COUNT[0], DISTRACTOR_COUNT[1] + 1))):
        form = DISTRACTOR_FORMS[int(rng.integers(len(DISTRACTOR_FORMS)))]
        shape = _place_distractor(form, keep_out, rng)
        if shape is None:
            continue
        fill = colour if rng.random() < SAME_COLOUR_P else _bright_colour(rng)
        image[shape] = fill
        distractor_mask |= shape
        keep_out |= cv2.dilate(shape.view(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        forms.append(form)

    image[mask] = colour
    noise = rng.integers(-NOISE, NOISE + 1, size=image.shape, dtype=np.int16)
    image = np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return ShapeSample(image, mask, label, colour, center, scale, distractor_mask, tuple(forms))


class ShapesDataset(Dataset):
    """The ``shapes`` data set as a torch ``Dataset`` of PIL images (like torchvision's CIFAR10).

    Args:
        split: ``"train"`` or ``"test"``; the splits are generated from different seeds.
        size: Number of images (default 20,000 for train, 4,000 for test).
        seed: Seed of the whole data set; sample ``i`` is a pure function of (seed, split, i).
        transform: Applied to the PIL image (not to the mask).
        return_mask: Also return the target mask as a ``[32, 32]`` bool tensor.

    Items are ``(image, label)`` or, with ``return_mask``, ``(image, label, mask)``.
    """

    classes: tuple[str, ...] = SHAPES_CLASSES

    def __init__(
        self,
        split: str = "train",
        size: int | None = None,
        seed: int = 0,
        transform: Callable[[Image.Image], Any] | None = None,
        return_mask: bool = False,
    ) -> None:
        _check_split(split)
        size = DEFAULT_SIZES[split] if size is None else size
        if size < 1:
            raise UsageError(f"shapes: size must be at least 1, got {size}")
        if seed < 0:
            raise UsageError(f"shapes: seed must be >= 0, got {seed}")
        self.split = split
        self.size = size
        self.seed = seed
        self.transform = transform
        self.return_mask = return_mask

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        if not -self.size <= index < self.size:
            raise IndexError(f"shapes index {index} out of range for size {self.size}")
        sample = self.sample(index % self.size)
        image: Any = Image.fromarray(sample.image, mode="RGB")
        if self.transform is not None:
            image = self.transform(image)
        if self.return_mask:
            return image, sample.label, torch.from_numpy(sample.mask)
        return image, sample.label

    def sample(self, index: int) -> ShapeSample:
        """The raw :class:`ShapeSample` behind item ``index``."""
        return make_sample(index, seed=self.seed, split=self.split)

    @property
    def targets(self) -> list[int]:
        """Label of every item, without generating the images."""
        return [i % len(SHAPES_CLASSES) for i in range(self.size)]

    def __repr__(self) -> str:
        return f"ShapesDataset(split={self.split!r}, size={self.size}, seed={self.seed})"


def _check_split(split: str) -> None:
    if split not in SPLIT_IDS:
        raise UsageError(f"shapes: split must be 'train' or 'test', got {split!r}")


# --- background and clutter -------------------------------------------------------------


_YS, _XS = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] / (IMAGE_SIZE - 1) - 0.5
_YS.flags.writeable = _XS.flags.writeable = False


def _background(rng: np.random.Generator) -> np.ndarray:
    """A linear gradient between two dark colours at a random angle."""
    start, end = rng.uniform(0, 100, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * _XS + np.sin(angle) * _YS) / np.sqrt(0.5) + 0.5
    t = np.clip(t, 0.0, 1.0)[..., None]
    return np.ascontiguousarray((start * (1 - t) + end * t).astype(np.uint8))


def _draw_lines(image: np.ndarray, rng: np.random.Generator) -> None:
    """Thin straight lines of mid-grey-ish colours across the background."""
    for _ in range(int(rng.integers(LINE_COUNT[0], LINE_COUNT[1] + 1))):
        p0 = _fixed(rng.uniform(-4, IMAGE_SIZE + 4, size=2))
        p1 = _fixed(rng.uniform(-4, IMAGE_SIZE + 4, size=2))
        colour = tuple(int(c) for c in rng.integers(60, 161, size=3))
        cv2.line(image, p0, p1, colour, 1, cv2.LINE_8, _SHIFT)


def _bright_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A saturated, bright RGB colour (HSV with S in [0.5, 1] and V in [0.7, 1])."""
    hue = rng.uniform(0, 180)
    sat = rng.uniform(0.5, 1.0) * 255
    val = rng.uniform(0.7, 1.0) * 255
    hsv = np.array([[[hue, sat, val]]], dtype=np.float32).round().astype(np.uint8)
    r, g, b = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return int(r), int(g), int(b)


# --- drawing helpers --------------------------------------------------------------------


def _fixed(point: np.ndarray) -> tuple[int, int]:
    """A float (x, y) point in OpenCV's fixed-point coordinates."""
    return int(round(point[0] * (1 << _SHIFT))), int(round(point[1] * (1 << _SHIFT)))


def _polygon(points: np.ndarray, center: tuple[float, float], scale: float, angle: float = 0.0) -> np.ndarray:
    """Fill a polygon given in unit coordinates (y down) into a new bool mask."""
    cos, sin = np.cos(angle), np.sin(angle)
    rotated = points @ np.array([[cos, sin], [-sin, cos]])
    pixels = rotated * scale + np.asarray(center)
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    fixed = np.round(pixels * (1 << _SHIFT)).astype(np.int32)
    cv2.fillPoly(mask, [fixed], 1, cv2.LINE_8, _SHIFT)
    return mask.astype(bool)


def _disc(center: tuple[float, float], radius: float) -> np.ndarray:
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    cv2.circle(mask, _fixed(np.asarray(center)), int(round(radius * (1 << _SHIFT))), 1, -1, cv2.LINE_8, _SHIFT)
    return mask.astype(bool)


def _rect(half_w: float, half_h: float) -> np.ndarray:
    return np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])


def _regular(n: int, outer: float, inner: float | None = None, phase: float = -np.pi / 2) -> np.ndarray:
    """Vertices of a regular polygon (or a star when ``inner`` is given), unit coordinates."""
    if inner is None:
        angles = phase + 2 * np.pi * np.arange(n) / n
        return np.stack([np.cos(angles), np.sin(angles)], axis=1) * outer
    angles = phase + np.pi * np.arange(2 * n) / n
    radii = np.where(np.arange(2 * n) % 2 == 0, outer, inner)
    return np.stack([np.cos(angles) * radii, np.sin(angles) * radii], axis=1)


def _heart_outline() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    points = np.stack([x, y], axis=1)
    points -= (points.max(0) + points.min(0)) / 2
    return points / np.abs(points).max()


_HEART = _heart_outline()
_ARROW = np.array([[-1.0, -0.22], [0.1, -0.22], [0.1, -0.65], [1.0, 0.0], [0.1, 0.65], [0.1, 0.22], [-1.0, 0.22]])
_TRIANGLE = np.array([[0.0, -1.0], [0.95, 0.75], [-0.95, 0.75]])


def _cross(center: tuple[float, float], scale: float, rng: np.random.Generator) -> np.ndarray:
    return _polygon(_rect(1.0, 0.3), center, scale) | _polygon(_rect(0.3, 1.0), center, scale)


def _ring(center: tuple[float, float], scale: float, rng: np.random.Generator) -> np.ndarray:
    return _disc(center, scale) & ~_disc(center, scale * 0.55)


def _arrow(center: tuple[float, float], scale: float, rng: np.random.Generator) -> np.ndarray:
    return _polygon(_ARROW, center, scale, angle=float(rng.integers(4)) * np.pi / 2)


def _bar(center: tuple[float, float], scale: float, rng: np.random.Generator) -> np.ndarray:
    return _polygon(_rect(1.0, 0.3), center, scale, angle=float(rng.integers(2)) * np.pi / 2)


_Target = Callable[[tuple[float, float], float, np.random.Generator], np.ndarray]
_TARGETS: dict[str, _Target] = {
    "circle": lambda c, s, rng: _disc(c, s),
    "square": lambda c, s, rng: _polygon(_rect(0.8, 0.8), c, s),
    "triangle": lambda c, s, rng: _polygon(_TRIANGLE, c, s),
    "cross": _cross,
    "ring": _ring,
    "star": lambda c, s, rng: _polygon(_regular(5, 1.0, 0.45), c, s),
    "diamond": lambda c, s, rng: _polygon(_rect(0.7071, 0.7071), c, s, angle=np.pi / 4),
    "heart": lambda c, s, rng: _polygon(_HEART, c, s),
    "arrow": _arrow,
    "bar": _bar,
}


# --- distractors ------------------------------------------------------------------------

_L = np.array([[-1.0, -1.0], [-0.4, -1.0], [-0.4, 0.4], [1.0, 0.4], [1.0, 1.0], [-1.0, 1.0]])
_T = np.array(
    [[-1.0, -1.0], [1.0, -1.0], [1.0, -0.4], [0.3, -0.4], [0.3, 1.0], [-0.3, 1.0], [-0.3, -0.4], [-1.0, -0.4]]
)
_ARC = np.linspace(np.pi, 2 * np.pi, 13)
_HALF_DISC = np.stack([np.cos(_ARC), np.sin(_ARC) + 0.3], axis=1)  # flat side down, closed by fillPoly


def _distractor(form: str, center: tuple[float, float], scale: float, angle: float) -> np.ndarray:
    if form == "L":
        return _polygon(_L, center, scale, angle)
    if form == "T":
        return _polygon(_T, center, scale, angle)
    if form == "half_disc":
        return _polygon(_HALF_DISC, center, scale, angle)
    if form == "crescent":
        offset = np.array([np.cos(angle), np.sin(angle)]) * scale * 0.55
        return _disc(center, scale) & ~_disc(tuple(np.asarray(center) + offset), scale * 0.85)
    if form == "zigzag":
        points = np.array([[-1.0, 0.6], [-0.33, -0.6], [0.33, 0.6], [1.0, -0.6]])
        cos, sin = np.cos(angle), np.sin(angle)
        pixels = points @ np.array([[cos, sin], [-sin, cos]]) * scale + np.asarray(center)
        mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        fixed = np.round(pixels * (1 << _SHIFT)).astype(np.int32)
        cv2.polylines(mask, [fixed], False, 1, 1, cv2.LINE_8, _SHIFT)
        return mask.astype(bool)
    raise ValueError(f"unknown distractor form {form!r}")


def _place_distractor(form: str, keep_out: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """Draw a distractor mask at a random place that does not touch ``keep_out``; None if none fits."""
    free = cv2.distanceTransform((~keep_out).view(np.uint8), cv2.DIST_L2, 3)
    for _ in range(_PLACEMENT_TRIES):
        scale = float(rng.uniform(*DISTRACTOR_SCALE))
        # Every distractor form lies within sqrt(2) * scale of its centre.
        candidates = np.flatnonzero(free > 1.42 * scale + 1.0)
        if candidates.size == 0:
            continue
        y, x = divmod(int(candidates[rng.integers(candidates.size)]), IMAGE_SIZE)
        center = (x + float(rng.uniform(-0.5, 0.5)), y + float(rng.uniform(-0.5, 0.5)))
        shape = _distractor(form, center, scale, float(rng.uniform(0, 2 * np.pi)))
        if shape.any() and not (shape & keep_out).any():
            return shape
    return None
