"""Image decoding, preprocessing presets and class names.

``load_rgb`` turns any image file Pillow can read into an ``HxWx3`` uint8 RGB array (EXIF
orientation applied, transparency composited on white, 16-bit data scaled rather than
clipped). ``preprocess`` resizes and normalises it exactly as torchvision's
``Resize`` + ``ToTensor`` + ``Normalize`` do on a PIL image, so the tensor matches what a
model trained with those transforms saw.
"""

from __future__ import annotations

import json
import os
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from attnviz.errors import InputImageError, UsageError

__all__ = [
    "CIFAR10_CLASSES",
    "PRESETS",
    "InputImage",
    "Preset",
    "denormalize",
    "get_preset",
    "load_class_names",
    "load_input",
    "load_rgb",
    "preprocess",
]

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


@dataclass(frozen=True)
class Preset:
    """How images are resized and normalised before they reach a model.

    Attributes:
        name: Short name, e.g. ``"cifar10"``.
        size: Target ``(height, width)`` in pixels.
        mean: Per-channel mean subtracted after scaling to ``[0, 1]``.
        std: Per-channel standard deviation divided by after subtracting the mean.
    """

    name: str
    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        """Plain-type form, as stored in attnviz checkpoints."""
        return {
            "name": self.name,
            "size": list(self.size),
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preset:
        """Build a preset from :meth:`to_dict` output.

        Raises:
            UsageError: If a field is missing or malformed.
        """
        if not isinstance(data, Mapping):
            raise UsageError(f"a preset must be a mapping, got {type(data).__name__}")
        missing = [k for k in ("name", "size", "mean", "std") if k not in data]
        if missing:
            raise UsageError(f"preset is missing {', '.join(missing)}")
        return cls(
            name=str(data["name"]),
            size=_parse_size(data["size"]),
            mean=_three_floats(data["mean"], "mean"),
            std=_three_floats(data["std"], "std", positive=True),
        )


PRESETS: Mapping[str, Preset] = {
    "cifar10": Preset("cifar10", (32, 32), (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": Preset("imagenet", (224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def get_preset(name_or_preset: str | Preset, size: int | Sequence[int] | None = None) -> Preset:
    """Look up a preset by name, optionally overriding its size.

    Args:
        name_or_preset: A name from :data:`PRESETS` or a :class:`Preset`.
        size: New size, an int (square) or ``(height, width)``.

    Raises:
        UsageError: If the name is unknown or the size is not positive.
    """
    if isinstance(name_or_preset, Preset):
        preset = name_or_preset
    elif isinstance(name_or_preset, str) and name_or_preset.lower() in PRESETS:
        preset = PRESETS[name_or_preset.lower()]
    else:
        raise UsageError(
            f"unknown preset {name_or_preset!r}; known presets: {', '.join(sorted(PRESETS))}"
        )
    if size is None:
        return preset
    return Preset(preset.name, _parse_size(size), preset.mean, preset.std)


def load_class_names(path: str | os.PathLike[str]) -> list[str]:
    """Read class names: one per line (blank lines ignored) or a JSON list of strings.

    Raises:
        UsageError: If the file cannot be read, is not UTF-8, or holds no names.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"class-names file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"class-names file {str(path)!r} is a directory") from None
    except UnicodeDecodeError:
        raise UsageError(f"class-names file {str(path)!r} is not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"cannot read class-names file {str(path)!r}: {exc.strerror}") from None
    if text.lstrip().startswith("["):
        names = _json_names(text, path)
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise UsageError(f"class-names file {str(path)!r} holds no class names")
    return names


def load_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an image file into an ``HxWx3`` uint8 RGB array.

    Any Pillow mode is accepted. Alpha and palette/colour-key transparency are composited
    on white; 16-bit (``I;16``) data is scaled by 255/65535; 32-bit ``I`` data in
    ``[0, 65535]`` is treated as 16-bit; other ``I``/``F`` ranges are stretched to
    ``[0, 255]`` with a warning. The EXIF orientation is applied.

    Raises:
        InputImageError: If the file is missing, empty, not an image, truncated, corrupt
            or too large to decode safely.
    """
    name = str(path)
    _check_image_file(name)
    try:
        with Image.open(name) as img:
            img.load()  # decodes now, so truncation raises here
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img, name)
    except UnidentifiedImageError:
        raise InputImageError(f"{name!r} is not an image file Pillow can read") from None
    except Image.DecompressionBombError:
        raise InputImageError(
            f"{name!r} is too large to decode safely (possible decompression bomb)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputImageError(f"cannot decode {name!r}: {reason}") from None


def preprocess(rgb: np.ndarray, preset: str | Preset) -> torch.Tensor:
    """Resize, scale to ``[0, 1]`` and normalise an RGB image.

    Equivalent to torchvision's ``Resize(size)`` (bilinear, antialiased, on a PIL image),
    ``ToTensor()`` and ``Normalize(mean, std)``.

    Args:
        rgb: ``HxWx3`` uint8 array.
        preset: A preset or its name.

    Returns:
        A float32 tensor of shape ``[3, H, W]`` at the preset's size.

    Raises:
        UsageError: If ``rgb`` is not an ``HxWx3`` uint8 array.
    """
    preset = get_preset(preset)
    _check_rgb(rgb)
    height, width = preset.size
    if rgb.shape[:2] != (height, width):
        resized = Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR)
        rgb = np.asarray(resized)
    tensor = torch.tensor(rgb).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(preset.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(preset.std, dtype=torch.float32).view(3, 1, 1)
    return tensor.sub_(mean).div_(std)


def denormalize(tensor: torch.Tensor, preset: str | Preset) -> np.ndarray:
    """Undo :func:`preprocess`'s normalisation: the image the model saw, as uint8 RGB.

    Args:
        tensor: ``[3, H, W]`` or ``[1, 3, H, W]``.
        preset: The preset the tensor was normalised with.

    Raises:
        UsageError: If the tensor does not have three channels.
    """
    preset = get_preset(preset)
    if tensor.dim() == 4 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 3 or tensor.shape[0] != 3:
        raise UsageError(f"expected a [3, H, W] tensor, got shape {list(tensor.shape)}")
    t = tensor.detach().to("cpu", torch.float32)
    mean = torch.tensor(preset.mean).view(3, 1, 1)
    std = torch.tensor(preset.std).view(3, 1, 1)
    pixels = (t * std + mean).mul(255).round().clamp(0, 255)
    return pixels.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


@dataclass
class InputImage:
    """An image as decoded and as the model sees it.

    Attributes:
        path: The file it came from, or None for in-memory images.
        original: The decoded ``HxWx3`` uint8 RGB image at its own size.
        tensor: The preprocessed ``[3, H, W]`` float32 tensor.
    """

    path: str | None
    original: np.ndarray
    tensor: torch.Tensor


def load_input(path: str | os.PathLike[str], preset: str | Preset) -> InputImage:
    """Decode an image file and preprocess it with ``preset``.

    Raises:
        InputImageError: If the image cannot be decoded.
        UsageError: If the preset is unknown.
    """
    preset = get_preset(preset)
    original = load_rgb(path)
    return InputImage(path=str(path), original=original, tensor=preprocess(original, preset))


def as_image_batch(images: Any) -> torch.Tensor:
    """Check preprocessed images and return them as a contiguous float ``[B,C,H,W]`` batch.

    Accepts a ``[B,C,H,W]`` or ``[C,H,W]`` tensor, or a sequence of ``[C,H,W]`` tensors.

    Raises:
        UsageError: Not a tensor (or sequence of tensors), an empty batch, a wrong number of
            dimensions, or integer pixels that were never preprocessed.
    """
    if isinstance(images, (list, tuple)) and images and all(isinstance(i, torch.Tensor) for i in images):
        images = torch.stack(list(images))
    if not isinstance(images, torch.Tensor):
        raise UsageError(f"images must be a torch.Tensor [B,C,H,W], got {type(images).__name__}")
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4 or images.shape[0] == 0:
        raise UsageError(f"images must be a [B,C,H,W] tensor, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise UsageError(f"images must be floating point (preprocess them first), got {images.dtype}")
    return images.detach().contiguous()


# ----------------------------------------------------------------------------- helpers

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def _check_image_file(name: str) -> None:
    if not os.path.exists(name):
        raise InputImageError(f"image file {name!r} does not exist")
    if os.path.isdir(name):
        raise InputImageError(f"{name!r} is a directory, not an image file")
    try:
        if os.path.getsize(name) == 0:
            raise InputImageError(f"image file {name!r} is empty (0 bytes)")
    except OSError as exc:
        raise InputImageError(f"cannot read image file {name!r}: {exc.strerror}") from None


def _to_rgb(img: Image.Image, name: str) -> np.ndarray:
    """Convert a loaded Pillow image of any mode to uint8 RGB."""
    if img.mode in _SIXTEEN_BIT_MODES or img.mode in ("I", "F"):
        gray = _scale_to_uint8(np.asarray(img), img.mode, name)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        return _composite_on_white(np.asarray(img.convert("RGBA")))
    try:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except ValueError:
        raise InputImageError(f"{name!r} uses image mode {img.mode!r}, which cannot be shown as RGB") from None


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Blend straight-alpha RGBA over a white background."""
    rgb = rgba[:, :, :3].astype(np.float64)
    alpha = rgba[:, :, 3:].astype(np.float64) / 255.0
    out = rgb * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _scale_to_uint8(values: np.ndarray, mode: str, name: str) -> np.ndarray:
    """Scale single-channel 16/32-bit or float data to uint8 without clipping."""
    data = values.astype(np.float64)
    if mode in _SIXTEEN_BIT_MODES or (mode == "I" and _within(data, 0, 65535)):
        scaled = data * (255.0 / 65535.0)
    elif mode == "F" and _within(data, 0.0, 1.0):
        scaled = data * 255.0
    else:
        low, high = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
        warnings.warn(
            f"{name!r}: mode {mode} values span [{low:g}, {high:g}]; stretched to 0..255 for display",
            stacklevel=3,
        )
        scaled = (data - low) * (255.0 / (high - low)) if high > low else np.zeros_like(data)
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def _within(data: np.ndarray, low: float, high: float) -> bool:
    return data.size == 0 or (float(data.min()) >= low and float(data.max()) <= high)


def _check_rgb(rgb: Any) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = getattr(rgb, "shape", None)
        dtype = getattr(rgb, "dtype", type(rgb).__name__)
        raise UsageError(f"expected an HxWx3 uint8 RGB array, got shape {shape} dtype {dtype}")


def _parse_size(size: Any) -> tuple[int, int]:
    if isinstance(size, bool):
        raise UsageError(f"size must be an int or (height, width), got {size!r}")
    if isinstance(size, int):
        pair: tuple[Any, ...] = (size, size)
    elif isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2:
        pair = tuple(size)
    else:
        raise UsageError(f"size must be an int or (height, width), got {size!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise UsageError(f"size must hold positive integers, got {size!r}")
    return (pair[0], pair[1])


def _three_floats(values: Any, what: str, positive: bool = False) -> tuple[float, float, float]:
    if not isinstance(values, Sequence) or isinstance(values, str) or len(values) != 3:
        raise UsageError(f"preset {what} must hold three numbers, got {values!r}")
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise UsageError(f"preset {what} must hold three numbers, got {values!r}") from None
    if positive and not all(v > 0 for v in out):
        raise UsageError(f"preset {what} must be positive, got {values!r}")
    return (out[0], out[1], out[2])


def _json_names(text: str, path: str | os.PathLike[str]) -> list[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"class-names file {str(path)!r} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
    if not isinstance(data, list) or not all(isinstance(n, str) for n in data):
        raise UsageError(f"class-names file {str(path)!r} must hold a JSON list of strings")
    return [n.strip() for n in data if n.strip()]
