"""Image decoding, preprocessing presets and class names.

``load_rgb`` turns an image file into an ``HxWx3`` uint8 RGB array (EXIF orientation applied,
transparency composited on white, 16-bit data scaled rather than clipped). ``preprocess`` resizes
and normalises it exactly as torchvision does on a PIL image, so the tensor matches what a model
trained with those transforms saw: presets with a ``crop`` (``imagenet``) as ImageNet evaluation
does, ``Resize(size / crop)`` of the shorter side + ``CenterCrop(size)``; the others (``cifar10``)
as the course's notebooks do, ``Resize(size)`` of the whole image, with a warning when that
changes the aspect ratio by more than :data:`SQUASH_WARN_RATIO`. ``Preset.resize_description``
says which; ``InputImage.original`` is the part of the image the model saw.

Untrusted files are safe to decode:

* Only the formats in :data:`FORMATS` are opened (PNG, JPEG, BMP, GIF, TIFF, WebP, PPM/PGM/PBM and
  AVIF where Pillow has it), all decoded inside Pillow: content in any other format, whatever the
  file's name (EPS/PostScript, which Pillow would hand to the external Ghostscript, PSD, ...), is
  "not a supported image format".
* Memory is bounded. An image larger than ``max_side`` (:data:`MAX_SIDE` by default, or twice the
  model's input size if larger) is decoded at a reduced scale where the format allows it (JPEG:
  1/2, 1/4 or 1/8 by the decoder), and never decodes more than :data:`MAX_PIXELS` pixels (a larger
  image is "too large", like any broken file). The decoded pixels (at most 4 bytes each in Pillow,
  160 MB) are converted tile by tile in uint8 (compositing too) and reduced by an integer factor
  (box average) to a longest side of at most ``max_side``, so one image costs at most about
  250 MB above the interpreter, whatever its mode (measured by ``tests/test_input_safety.py``).
  ``attnviz report --workers N`` decodes N images at once: N times that.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from attnviz.runtime.errors import InputImageError, UsageError, first_line
from attnviz.runtime.files import require_file

__all__ = [
    "CIFAR10_CLASSES",
    "FORMATS",
    "MAX_PIXELS",
    "MAX_SIDE",
    "PRESETS",
    "SQUASH_WARN_RATIO",
    "InputImage",
    "Preset",
    "decode_image",
    "denormalize",
    "get_preset",
    "load_class_names",
    "load_input",
    "load_rgb",
    "model_view",
    "preprocess",
    "supported_formats",
    "working_side",
]

#: The image formats attnviz opens (Pillow's names), all decoded in-process by Pillow; AVIF only where
#: Pillow was built with it. Anything else (EPS, which needs Ghostscript, PSD, ...) is refused.
FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM", "AVIF")
#: The most pixels decoded for one image (after a JPEG's reduced-scale decoding): 40 megapixels.
MAX_PIXELS = 40_000_000
#: Longest side of a decoded image by default: larger ones are reduced by an integer factor.
MAX_SIDE = 2048
#: Side of the tiles that decoded pixels are converted in (a multiple of the reduction factor).
_TILE = 1024
#: Resizing a whole image to a preset's size warns when its aspect ratio changes by more than this factor.
SQUASH_WARN_RATIO = 1.25

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
        crop: None: the whole image is resized to ``size`` (squashed if its aspect ratio differs).
            A fraction in ``(0, 1]``: the shorter side is resized to ``floor(max(size) / crop)``,
            keeping the aspect ratio, then the centre ``size`` is cropped, as torchvision's ImageNet
            evaluation does (0.875: 256 then 224).
    """

    name: str
    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop: float | None = None

    def __repr__(self) -> str:
        """The dataclass repr, naming ``crop`` only when set (report keys hash it; those of presets
        that resize the whole image stay as they were before presets could crop)."""
        crop = "" if self.crop is None else f", crop={self.crop!r}"
        return f"Preset(name={self.name!r}, size={self.size!r}, mean={self.mean!r}, std={self.std!r}{crop})"

    def resize_side(self) -> int | None:
        """The length the shorter side is resized to before the centre crop; None: no crop."""
        if self.crop is None:
            return None
        return math.floor(max(self.size) / self.crop + 1e-9)

    def resize_description(self) -> str:
        """Which resize this preset does, sizes as width×height: ``"resize shorter side to 256,
        centre crop 224×224"`` or ``"resize to 32×32"``."""
        height, width = self.size
        side = self.resize_side()
        if side is None:
            return f"resize to {width}×{height}"
        return f"resize shorter side to {side}, centre crop {width}×{height}"

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` of the part of a ``height``×``width`` image the model sees
        (the whole image, or the centre crop mapped back to the image's pixels, within one pixel)."""
        if self.crop is None:
            return (0, 0, height, width)
        (resized_h, resized_w), (top, left) = _crop_geometry(height, width, self)
        crop_h, crop_w = self.size
        y0, x0 = round(top * height / resized_h), round(left * width / resized_w)
        y1 = max(y0 + 1, round((top + crop_h) * height / resized_h))
        x1 = max(x0 + 1, round((left + crop_w) * width / resized_w))
        return (y0, x0, min(y1, height), min(x1, width))

    def to_dict(self) -> dict[str, Any]:
        """Plain-type form, as stored in attnviz checkpoints."""
        return {
            "name": self.name,
            "size": list(self.size),
            "mean": list(self.mean),
            "std": list(self.std),
            "crop": self.crop,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preset:
        """Build a preset from :meth:`to_dict` output. Without ``crop`` (checkpoints written before
        presets had one), a preset named like one of :data:`PRESETS` crops as that one does.

        Raises:
            UsageError: If a field is missing or malformed.
        """
        if not isinstance(data, Mapping):
            raise UsageError(f"a preset must be a mapping, got {type(data).__name__}")
        missing = [k for k in ("name", "size", "mean", "std") if k not in data]
        if missing:
            raise UsageError(f"preset is missing {', '.join(missing)}")
        name = str(data["name"])
        known = PRESETS.get(name.lower())
        return cls(
            name=name,
            size=_parse_size(data["size"]),
            mean=_three_floats(data["mean"], "mean"),
            std=_three_floats(data["std"], "std", positive=True),
            crop=_parse_crop(data["crop"]) if "crop" in data else (known.crop if known else None),
        )


PRESETS: Mapping[str, Preset] = {
    "cifar10": Preset("cifar10", (32, 32), (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": Preset("imagenet", (224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), crop=0.875),
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
        raise UsageError(f"unknown preset {name_or_preset!r}; known presets: {', '.join(sorted(PRESETS))}")
    if size is None:
        return preset
    return dataclasses.replace(preset, size=_parse_size(size))


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


def load_rgb(path: str | os.PathLike[str], max_side: int | None = MAX_SIDE) -> np.ndarray:
    """Decode an image file into an ``HxWx3`` uint8 RGB array (see :func:`decode_image`).

    Any Pillow mode is accepted. Alpha and palette/colour-key transparency are composited
    on white; 16-bit (``I;16``) data is scaled by 255/65535; 32-bit ``I`` data in
    ``[0, 65535]`` is treated as 16-bit; other ``I``/``F`` ranges are stretched to
    ``[0, 255]`` with a warning. The EXIF orientation is applied.

    Raises:
        InputImageError: If the file is missing, empty, not an image, in an unsupported format,
            truncated, corrupt or too large.
    """
    return decode_image(path, max_side)[0]


def decode_image(
    path: str | os.PathLike[str], max_side: int | None = MAX_SIDE, *, nearest: bool = False
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an image file into ``HxWx3`` uint8 RGB, in bounded memory, and its own size.

    Args:
        path: The image file (one of :data:`FORMATS`).
        max_side: An image whose longest side is larger is reduced by the smallest integer factor
            that brings it to ``max_side`` or less (JPEG: partly while decoding); None: never.
        nearest: Reduce by taking the centre pixel of each block (for masks) instead of their mean.

    Returns:
        The RGB array and the image's own ``(height, width)``, both after the EXIF orientation.

    Raises:
        InputImageError: Missing, empty, not an image, not in :data:`FORMATS`, truncated, corrupt,
            or more than :data:`MAX_PIXELS` pixels to decode.
    """
    name = str(path)
    require_file(name, "image file", InputImageError)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PIXELS is lower
            img = Image.open(name, formats=supported_formats())
        with img:
            return _decode(img, name, max_side, nearest)
    except UnidentifiedImageError:
        raise InputImageError(_unidentified(name)) from None
    except Image.DecompressionBombError:
        raise InputImageError(f"{name!r} is too large to decode safely (possible decompression bomb)") from None
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as exc:
        raise InputImageError(f"cannot decode {name!r}: {first_line(exc)}") from None


def preprocess(
    rgb: np.ndarray, preset: str | Preset, *, name: str | None = None, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Resize (and crop), scale to ``[0, 1]`` and normalise an RGB image.

    Equivalent to torchvision on a PIL image (bilinear, antialiased): a preset with a ``crop``,
    ``Resize(preset.resize_side())`` + ``CenterCrop(size)``; without, ``Resize(size)``; then
    ``ToTensor()`` and ``Normalize(mean, std)``. Resizing the whole image warns (one
    ``UserWarning``) when its aspect ratio changes by more than :data:`SQUASH_WARN_RATIO`.

    Args:
        rgb: ``HxWx3`` uint8 array.
        preset: A preset or its name.
        name: What the warning calls the image (its file); default "image".
        size: The image's own ``(height, width)`` for the warning, if ``rgb`` was reduced.

    Returns:
        A float32 tensor of shape ``[3, H, W]`` at the preset's size.

    Raises:
        UsageError: If ``rgb`` is not an ``HxWx3`` uint8 array.
    """
    preset = get_preset(preset)
    _check_rgb(rgb)
    if preset.crop is None:
        _warn_if_squashed(size or (rgb.shape[0], rgb.shape[1]), preset, name)
        rgb = _resized(rgb, preset.size)
    else:
        (resized_h, resized_w), (top, left) = _crop_geometry(rgb.shape[0], rgb.shape[1], preset)
        height, width = preset.size
        rgb = _resized(rgb, (resized_h, resized_w))[top : top + height, left : left + width]
    tensor = torch.tensor(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(preset.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(preset.std, dtype=torch.float32).view(3, 1, 1)
    return tensor.sub_(mean).div_(std)


def model_view(rgb: np.ndarray, preset: str | Preset) -> np.ndarray:
    """The part of ``rgb`` the model sees with ``preset``, at ``rgb``'s resolution: the whole image,
    or its centre crop (:meth:`Preset.crop_box`), so that maps drawn over it line up."""
    _check_rgb(rgb)
    top, left, bottom, right = get_preset(preset).crop_box(rgb.shape[0], rgb.shape[1])
    return rgb[top:bottom, left:right]


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
        original: The part of the image the model saw (:func:`model_view`: all of it, or the
            preset's centre crop) as ``HxWx3`` uint8 RGB, at the image's own resolution, or reduced
            by an integer factor when its longest side exceeds ``max(MAX_SIDE, 2 * the preset's
            longest side)``.
        tensor: The preprocessed ``[3, H, W]`` float32 tensor.
        size: The image's own ``(height, width)``, all of it (None: that of ``original``).
        resize: Which resize made ``tensor`` (:meth:`Preset.resize_description`); None: not said.
    """

    path: str | None
    original: np.ndarray
    tensor: torch.Tensor
    size: tuple[int, int] | None = None
    resize: str | None = None

    def __repr__(self) -> str:
        """One line: the file, its size, the model's input size and the resize (sizes as width×height)."""
        height, width = self.size or self.original.shape[:2]
        in_h, in_w = self.tensor.shape[-2:]
        resize = f", {self.resize}" if self.resize else ""
        return f"InputImage({self.path!r}, {width}×{height}, model input {in_w}×{in_h}{resize})"

    def _repr_html_(self) -> str:
        """The part of the image the model sees as a small inline PNG, with the line of :meth:`__repr__`."""
        import base64
        import html

        from attnviz.render.output import png_bytes

        encoded = base64.b64encode(png_bytes(_thumbnail(self.original))).decode("ascii")
        caption = html.escape(repr(self))
        return f'<figure><img src="data:image/png;base64,{encoded}" alt="{caption}"><figcaption>{caption}</figcaption></figure>'


#: Longest side of the picture an :class:`InputImage` shows in a notebook.
THUMBNAIL_SIDE = 160


def _thumbnail(rgb: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """``rgb`` reduced (box filter, aspect ratio kept) so that its longest side is at most ``side``."""
    height, width = rgb.shape[:2]
    if max(height, width) <= side:
        return rgb
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))


def load_input(path: str | os.PathLike[str], preset: str | Preset) -> InputImage:
    """Decode an image file and preprocess it with ``preset``.

    Raises:
        InputImageError: If the image cannot be decoded.
        UsageError: If the preset is unknown.
    """
    preset = get_preset(preset)
    rgb, size = decode_image(path, working_side([preset]))
    return InputImage(
        path=str(path),
        original=model_view(rgb, preset),
        tensor=preprocess(rgb, preset, name=str(path), size=size),
        size=size,
        resize=preset.resize_description(),
    )


def working_side(presets: Iterable[Preset]) -> int:
    """The ``max_side`` to decode at for these presets: :data:`MAX_SIDE`, or twice the largest
    preset side if that is larger (a reduced image is never smaller than the model's input)."""
    return max([MAX_SIDE, *(2 * max(preset.size) for preset in presets)])


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


def supported_formats() -> list[str]:
    """:data:`FORMATS` that this Pillow can open."""
    Image.init()
    return [name for name in FORMATS if name in Image.OPEN]


def _unidentified(name: str) -> str:
    """Why Pillow could not open ``name`` with :data:`FORMATS`: content of another format (named
    by its signature only; nothing else of it is read) or no image at all."""
    supported = ", ".join(supported_formats())
    try:
        with open(name, "rb") as file:
            prefix = file.read(16)
    except OSError:
        prefix = b""
    for fmt, (_, accept) in Image.OPEN.items():
        if fmt not in FORMATS and accept is not None and prefix and accept(prefix):
            return f"{name!r} is {fmt} content, which is not a supported image format (supported: {supported})"
    return f"{name!r} is not an image file attnviz can read (supported formats: {supported})"


def _decode(img: Image.Image, name: str, max_side: int | None, nearest: bool) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an opened image at a reduced scale where possible, within MAX_PIXELS, to uint8 RGB."""
    width, height = img.size
    if max_side is not None and max(width, height) > max_side:
        img.draft(None, (-(-width * max_side // max(width, height)), -(-height * max_side // max(width, height))))
    if img.width * img.height > MAX_PIXELS:
        raise InputImageError(
            f"{name!r} is too large: {img.width}×{img.height} pixels, more than attnviz decodes for one image "
            f"({MAX_PIXELS / 1e6:g} MP)"
        )
    img.load()  # decodes now, so truncation raises here
    factor = 1 if max_side is None else max(1, -(-max(img.size) // max_side))
    rgb = _reduced_rgb(img, _tile_converter(img, name), factor, nearest)
    method = _ORIENTATIONS.get(img.getexif().get(0x0112, 1))
    if method is None:
        return rgb, (height, width)
    turned = np.asarray(Image.fromarray(rgb).transpose(method))
    swapped = method in (
        Image.Transpose.TRANSPOSE,
        Image.Transpose.TRANSVERSE,
        Image.Transpose.ROTATE_90,
        Image.Transpose.ROTATE_270,
    )
    return turned, (width, height) if swapped else (height, width)


_ORIENTATIONS = {  # EXIF orientation -> transposition, as ImageOps.exif_transpose
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _reduced_rgb(
    img: Image.Image, convert: Callable[[Image.Image], np.ndarray], factor: int, nearest: bool
) -> np.ndarray:
    """Convert a loaded image to uint8 RGB tile by tile, reducing each tile by ``factor`` (box
    average, or the centre pixel of each block with ``nearest``). Tiles start at multiples of
    ``factor``, so the result equals reducing the whole image at once."""
    width, height = img.size
    offset = factor // 2 if nearest else 0
    rows, cols = (
        (len(range(offset, height, factor)), len(range(offset, width, factor)))
        if nearest
        else (-(-height // factor), -(-width // factor))
    )
    out = np.empty((rows, cols, 3), np.uint8)
    step = max(factor, _TILE // factor * factor)
    for top in range(0, height, step):
        for left in range(0, width, step):
            tile = convert(img.crop((left, top, min(left + step, width), min(top + step, height))))
            if factor > 1:
                tile = (
                    tile[offset::factor, offset::factor]
                    if nearest
                    else np.asarray(Image.fromarray(tile).reduce(factor))
                )
            out[top // factor : top // factor + tile.shape[0], left // factor : left // factor + tile.shape[1]] = tile
    return out


def _tile_converter(img: Image.Image, name: str) -> Callable[[Image.Image], np.ndarray]:
    """How a tile of ``img`` becomes uint8 RGB (the scaling of 16/32-bit data is decided on the
    whole image)."""
    if img.mode in _SIXTEEN_BIT_MODES or img.mode in ("I", "F"):
        scale, low = _gray_scaling(img, name)

        def gray(tile: Image.Image) -> np.ndarray:
            values = (np.asarray(tile).astype(np.float64) - low) * scale
            return np.repeat(np.clip(np.round(values), 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)

        return gray
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        return lambda tile: _composite_on_white(np.asarray(tile.convert("RGBA")))

    def plain(tile: Image.Image) -> np.ndarray:
        try:
            return np.asarray(tile.convert("RGB"), dtype=np.uint8)
        except ValueError:
            raise InputImageError(f"{name!r} uses image mode {img.mode!r}, which cannot be shown as RGB") from None

    return plain


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Blend straight-alpha RGBA over a white background, in integers: round((c*a + 255*(255-a)) / 255)."""
    alpha = rgba[:, :, 3:].astype(np.uint16)
    mixed = rgba[:, :, :3].astype(np.uint16) * alpha + 255 * (255 - alpha)  # at most 65025
    return ((mixed + 127) // 255).astype(np.uint8)  # exact rounding (x/255 is never halfway)


def _gray_scaling(img: Image.Image, name: str) -> tuple[float, float]:
    """``(scale, low)`` that map single-channel 16/32-bit or float data to 0..255 without clipping."""
    # single-channel images: getextrema() is one (min, max) pair, not one per band
    low, high = (float(v) for v in cast("tuple[float, float]", img.getextrema()))
    if img.mode in _SIXTEEN_BIT_MODES or (img.mode == "I" and 0 <= low and high <= 65535):
        return 255.0 / 65535.0, 0.0
    if img.mode == "F" and 0.0 <= low and high <= 1.0:
        return 255.0, 0.0
    warnings.warn(
        f"{name!r}: mode {img.mode} values span [{low:g}, {high:g}]; stretched to 0..255 for display",
        stacklevel=5,
    )
    return (255.0 / (high - low), low) if high > low else (0.0, low)


def _resized(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``rgb`` resized to ``(height, width)`` by Pillow's antialiased bilinear filter, as torchvision
    resizes a PIL image (unchanged when it already has that size)."""
    height, width = size
    if rgb.shape[:2] == (height, width):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))


def _crop_geometry(height: int, width: int, preset: Preset) -> tuple[tuple[int, int], tuple[int, int]]:
    """For a cropping preset: the ``(height, width)`` the image is resized to (the shorter side to
    ``preset.resize_side()``, the longer truncated as torchvision's ``Resize(int)``) and the
    ``(top, left)`` of the centre crop in it (rounded as torchvision's ``CenterCrop``)."""
    side = preset.resize_side()
    if side is None:
        raise UsageError(f"preset {preset.name!r} resizes the whole image; it has no crop")
    if width <= height:
        resized_h, resized_w = int(side * height / width), side
    else:
        resized_h, resized_w = side, int(side * width / height)
    crop_h, crop_w = preset.size
    return (resized_h, resized_w), (int(round((resized_h - crop_h) / 2.0)), int(round((resized_w - crop_w) / 2.0)))


def _warn_if_squashed(size: tuple[int, int], preset: Preset, name: str | None) -> None:
    """One ``UserWarning`` when resizing a ``size`` image to the preset's size changes its aspect
    ratio by more than :data:`SQUASH_WARN_RATIO`."""
    (height, width), (out_h, out_w) = size, preset.size
    before, after = width / height, out_w / out_h
    if max(before / after, after / before) <= SQUASH_WARN_RATIO:
        return
    warnings.warn(
        f"{name or 'image'} is {width}×{height}; resized to {out_w}×{out_h} (aspect {before:.2f} → {after:.2f}, "
        "the image is squashed); crop it first or use a preset that crops",
        UserWarning,
        stacklevel=3,
    )


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


def _parse_crop(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1:
        return float(value)
    raise UsageError(f"preset crop must be a number in (0, 1] or null, got {value!r}")


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
