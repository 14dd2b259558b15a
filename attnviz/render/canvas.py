"""Pictures drawn straight into pixels: text through FreeType (Pillow), shapes and images through numpy.

The pictures ``attnviz maps`` writes as PNG are drawn here instead of as matplotlib figures: a figure
costs 100–400 ms (axes, constrained layout, text layout), a :class:`Canvas` a few milliseconds. Every
text drawn is recorded with its box and size (:attr:`Picture.texts`), and every scale drawn (colour bar,
value axis) in :attr:`Picture.scales`, so that tests can check the layout of the pixels.

Sizes are pixels at :data:`DPI` (100 dots per inch, the pictures' default size): 11 px is 7.9 pt.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DPI = 100
SMALL, BODY, TITLE = 11, 13, 16  # font sizes in pixels: 7.9, 9.4 and 11.5 pt
INK = (20, 20, 20)
MUTED = (90, 90, 90)
WARN = (178, 34, 34)
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class TextBox:
    """One text drawn on a picture: its string, box ``(x0, y0, x1, y1)`` in pixels and size in points."""

    text: str
    box: tuple[int, int, int, int]
    size_pt: float


@dataclass
class Picture:
    """A picture as pixels: uint8 ``[H, W, 3]``, the texts on it, the scales it carries, and the boxes
    ``(x0, y0, x1, y1)`` of its named parts (``"plot"``, ``"map"``, ``"overlay"``, ``"panel 0"``, …)."""

    rgb: np.ndarray
    texts: list[TextBox] = field(default_factory=list)
    scales: list[str] = field(default_factory=list)
    regions: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)

    def _repr_png_(self) -> bytes:
        from attnviz.render.output import png_bytes

        return png_bytes(self.rgb)


def points(size_px: int) -> float:
    """A font size in pixels at :data:`DPI`, in points."""
    return size_px * 72.0 / DPI


class Canvas:
    """A white RGB canvas that records what is written on it."""

    def __init__(self, width: int, height: int) -> None:
        from PIL import Image, ImageDraw

        self.image = Image.new("RGB", (int(width), int(height)), WHITE)
        self.draw = ImageDraw.Draw(self.image)
        self.texts: list[TextBox] = []
        self.scales: list[str] = []
        self.regions: dict[str, tuple[int, int, int, int]] = {}

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height

    def text(
        self,
        xy: tuple[float, float],
        text: str,
        *,
        size: int = BODY,
        anchor: str = "la",
        fill: tuple[int, int, int] = INK,
        rotate: bool = False,
    ) -> tuple[int, int, int, int]:
        """Write ``text`` at ``xy`` (Pillow's anchors: ``"la"`` left-ascender, ``"mm"`` centre, …);
        ``rotate`` writes it upwards (90°), centred on ``xy``. Returns its box."""
        font = _font(size, _needs_cjk(text))
        if rotate:
            return self._rotated(xy, text, font, size, fill)
        box = self.draw.textbbox(xy, text, font=font, anchor=anchor)
        self.draw.text(xy, text, font=font, anchor=anchor, fill=fill)
        return self._record(text, box, size)

    def text_width(self, text: str, size: int = BODY) -> int:
        """The width of ``text`` at ``size`` pixels."""
        return int(np.ceil(_font(size, _needs_cjk(text)).getlength(text)))

    def wrap(self, text: str, width: int, size: int = BODY) -> list[str]:
        """``text`` broken at spaces into lines no wider than ``width`` (a longer word stays whole)."""
        lines: list[str] = []
        for word in text.split(" "):
            if lines and self.text_width(f"{lines[-1]} {word}", size) <= width:
                lines[-1] = f"{lines[-1]} {word}"
            else:
                lines.append(word)
        return lines or [""]

    def paragraph(self, x: int, y: int, text: str, width: int, *, size: int = BODY, **kwargs: Any) -> int:
        """Write ``text`` wrapped to ``width`` from ``(x, y)`` down; return the y below it."""
        for line in self.wrap(text, width, size):
            self.text((x, y), line, size=size, **kwargs)
            y += line_height(size)
        return y

    def paste(self, rgb: np.ndarray, x: int, y: int, region: str = "") -> None:
        """Put uint8 ``[h, w, 3]`` pixels with their top-left corner at ``(x, y)`` (recorded as ``region``)."""
        from PIL import Image

        self.image.paste(Image.fromarray(np.ascontiguousarray(rgb)), (int(x), int(y)))
        if region:
            self.regions[region] = (int(x), int(y), int(x) + rgb.shape[1], int(y) + rgb.shape[0])

    def rect(self, box: Sequence[float], fill: Any = None, outline: Any = None, width: int = 1) -> None:
        self.draw.rectangle([float(v) for v in box], fill=fill, outline=outline, width=width)

    def line(self, points_xy: Sequence[tuple[float, float]], fill: Any = INK, width: int = 1) -> None:
        self.draw.line(list(points_xy), fill=fill, width=width)

    def dashed(self, x0: float, x1: float, y: float, fill: Any, *, dash: int = 6, width: int = 1) -> None:
        """A horizontal dashed line from ``x0`` to ``x1`` at ``y``."""
        for start in np.arange(x0, x1, 2 * dash):
            self.draw.line([(start, y), (min(start + dash, x1), y)], fill=fill, width=width)

    def colorbar(
        self,
        box: tuple[int, int, int, int],
        cmap: str,
        vmin: float,
        vmax: float,
        *,
        label: str = "",
        ticks: Sequence[float] | None = None,
        horizontal: bool = False,
        size: int = SMALL,
    ) -> None:
        """A colour bar filling ``box`` with tick labels (right of a vertical bar, under a horizontal
        one) and, for a vertical bar, ``label`` written upwards beside them."""
        from attnviz.render.colormaps import colormap_lut

        x0, y0, x1, y1 = box
        lut = colormap_lut(cmap)
        length = (x1 - x0) if horizontal else (y1 - y0)
        ramp = lut[np.minimum((np.arange(length) * len(lut)) // max(length, 1), len(lut) - 1)]
        strip = np.repeat(ramp[None], y1 - y0, 0) if horizontal else np.repeat(ramp[::-1, None], x1 - x0, 1)
        self.paste(strip, x0, y0)
        self.rect((x0, y0, x1 - 1, y1 - 1), outline=MUTED)
        values = list(ticks) if ticks is not None else list(np.linspace(vmin, vmax, 5))
        widest = 0
        for value in values:
            fraction = (value - vmin) / (vmax - vmin)
            text = tick_text(value, vmax - vmin)
            if horizontal:
                x = x0 + fraction * (x1 - x0 - 1)
                anchor = "la" if value == values[0] else "ra" if value == values[-1] else "ma"
                self.line([(x, y1), (x, y1 + 3)], fill=MUTED)
                self.text((x, y1 + 4), text, size=size, anchor=anchor)
            else:
                y = y1 - 1 - fraction * (y1 - y0 - 1)
                self.line([(x1, y), (x1 + 3, y)], fill=MUTED)
                widest = max(widest, self.text((x1 + 5, y), text, size=size, anchor="lm")[2] - x1)
        if label and not horizontal:
            self.text((x1 + widest + 4 + line_height(size) // 2, (y0 + y1) / 2), label, size=size, rotate=True)
        self.scales.append(f"colour bar {tick_text(vmin, vmax - vmin)}–{tick_text(vmax, vmax - vmin)}")

    def picture(self) -> Picture:
        """The pixels and what was recorded."""
        return Picture(np.asarray(self.image).copy(), list(self.texts), list(self.scales), dict(self.regions))

    def _rotated(
        self, xy: tuple[float, float], text: str, font: Any, size: int, fill: Any
    ) -> tuple[int, int, int, int]:
        from PIL import Image, ImageDraw

        left, top, right, bottom = font.getbbox(text, anchor="la")
        tile = Image.new("L", (right - left + 2, bottom - top + 2), 0)
        ImageDraw.Draw(tile).text((1 - left, 1 - top), text, font=font, fill=255, anchor="la")
        tile = tile.rotate(90, expand=True)
        x, y = int(xy[0] - tile.width / 2), int(xy[1] - tile.height / 2)
        self.image.paste(Image.new("RGB", tile.size, fill), (x, y), tile)
        return self._record(text, (x, y, x + tile.width, y + tile.height), size)

    def _record(self, text: str, box: Sequence[float], size: int) -> tuple[int, int, int, int]:
        rounded = (int(box[0]), int(box[1]), int(np.ceil(box[2])), int(np.ceil(box[3])))
        if text.strip():
            self.texts.append(TextBox(text, rounded, points(size)))
        return rounded


def line_height(size: int) -> int:
    """The distance between two lines of text ``size`` pixels high."""
    return int(round(size * 1.35))


def tick_text(value: float, span: float) -> str:
    """A tick label with as many decimals as the span needs (0.25 steps: ``0.25``; ranges of 100: ``40``)."""
    decimals = int(np.clip(2 - np.floor(np.log10(abs(span) or 1.0)), 0, 4))
    text = f"{value:.{decimals}f}"
    return text.lstrip("-") if float(text) == 0 else text


def overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """True when two boxes ``(x0, y0, x1, y1)`` share more than a pixel's edge."""
    return a[0] < b[2] - 1 and b[0] < a[2] - 1 and a[1] < b[3] - 1 and b[1] < a[3] - 1


def _needs_cjk(text: str) -> bool:
    if text.isascii():
        return False
    from attnviz.render.fonts import needs_cjk

    return needs_cjk([text])


@functools.lru_cache(maxsize=16)
def _font(size: int, cjk: bool = False) -> Any:
    """DejaVu Sans (shipped with matplotlib) at ``size`` pixels; a CJK font for CJK text where one is installed."""
    from PIL import ImageFont

    return ImageFont.truetype(_font_file(cjk), size)


@functools.lru_cache(maxsize=2)
def _font_file(cjk: bool) -> str:
    from pathlib import Path

    import matplotlib

    if cjk:
        from matplotlib import font_manager

        from attnviz.render.fonts import cjk_families

        for family in cjk_families():
            return str(font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=True))
    return str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf")
