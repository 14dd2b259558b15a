"""Figures out: a new Agg-backed figure, its pixels as an RGB array, or a saved file."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from attnviz.render.fonts import font_context
from attnviz.runtime.errors import UsageError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SAVE_FORMATS: tuple[str, ...] = ("png", "svg", "pdf")
DEFAULT_DPI = 100
SAVE_DPI = 150


def new_figure(
    width: float,
    height: float,
    *,
    layout: Literal["constrained", "compressed", "tight"] | None = "constrained",
    dpi: int = DEFAULT_DPI,
) -> Figure:
    """Return a figure with its own Agg canvas, not registered with pyplot (nothing global to close),
    that notebooks display inline (:class:`attnviz.render.inline.InlineFigure`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from attnviz.render.inline import InlineFigure

    fig = InlineFigure(figsize=(width, height), dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def rgb_figure(rgb: Any) -> Figure:
    """A figure showing uint8 ``[H, W, 3]`` pixels one to one at its own dpi (a drawn picture, for SVG/PDF).

    Raises:
        UsageError: The array is not an RGB image.
    """
    from attnviz.render._checks import as_rgb_image

    pixels = as_rgb_image(rgb, "rgb")
    fig = new_figure(pixels.shape[1] / DEFAULT_DPI, pixels.shape[0] / DEFAULT_DPI, layout=None)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(pixels, interpolation="nearest")
    ax.set_axis_off()
    return fig


def figure_to_rgb(fig: Figure) -> np.ndarray:
    """Draw ``fig`` and return its pixels as a uint8 ``[H, W, 3]`` array (the figure stays open)."""
    with font_context():
        canvas = fig.canvas
        if hasattr(canvas, "buffer_rgba"):
            canvas.draw()
            return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()
        # A figure on a non-Agg canvas: render through savefig without touching its canvas.
        buffer = io.BytesIO()
        fig.savefig(buffer, format="rgba", dpi=fig.dpi)
    width, height = (int(round(v)) for v in fig.get_size_inches() * fig.dpi)
    return np.frombuffer(buffer.getvalue(), np.uint8).reshape(height, width, 4)[:, :, :3].copy()


def save_figure(fig: Figure, path: str | Path, format: str | None = None, *, dpi: int = SAVE_DPI) -> Path:
    """Save ``fig`` as PNG, SVG or PDF, creating parent folders; the figure stays open.

    Args:
        fig: The figure to save.
        path: Destination file; its suffix picks the format unless ``format`` is given.
        format: ``"png"``, ``"svg"`` or ``"pdf"``; overrides the suffix.
        dpi: Resolution of raster output.

    Returns:
        The path written.

    Raises:
        UsageError: The format is neither given nor implied by a known suffix.
    """
    path = Path(path)
    fmt = (format or path.suffix.lstrip(".")).lower()
    if fmt not in SAVE_FORMATS:
        raise UsageError(f"cannot save a figure as {fmt or path.name!r}; use a .png, .svg or .pdf file name or format=")
    path.parent.mkdir(parents=True, exist_ok=True)
    with font_context():
        fig.savefig(path, format=fmt, dpi=dpi)
    return path


def save_rgb(rgb: Any, path: str | Path) -> Path:
    """Save a uint8 ``[H, W, 3]`` array (e.g. an overlay or an index image) as a PNG, creating parent folders.

    Raises:
        UsageError: The path does not end in .png, or the array is not an RGB image.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UsageError(f"RGB arrays are saved as PNG; use a .png file name instead of {path.name!r}")
    encoded = png_bytes(rgb, fast=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encoded)
    return path


def png_bytes(rgb: Any, compression: int = 3, *, fast: bool = False) -> bytes:
    """A uint8 ``[H, W, 3]`` array encoded as PNG (OpenCV's encoder, zlib level ``compression``).

    ``fast`` encodes twice as fast for files about a third larger (zlib level 1, every row filtered
    by its left neighbour only): what ``attnviz maps`` writes.

    Raises:
        UsageError: The array is not an RGB image.
    """
    import cv2

    from attnviz.render._checks import as_rgb_image

    pixels = as_rgb_image(rgb, "rgb")
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1 if fast else compression]
    if fast and hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV 4.11 and later
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise UsageError("could not encode the array as PNG")
    return encoded.tobytes()
