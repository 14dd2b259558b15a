"""Heat maps over images: the RGB overlay (hot path) and the three-panel spatial-gate figure."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from attnviz.render._checks import (
    as_array,
    as_rgb_image,
    check_choice,
    check_unit_range,
)
from attnviz.render.colormaps import apply_colormap
from attnviz.render.fonts import font_context
from attnviz.render.output import new_figure
from attnviz.runtime.errors import UsageError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SCALES: tuple[str, ...] = ("absolute", "minmax")
#: On the absolute scale, values spanning less than this much of [0, 1] get a note naming --scale minmax.
NARROW_SPAN = 0.5


def overlay_rgb(
    image: Any,
    heatmap: Any,
    *,
    vmin: float = 0.0,
    vmax: float = 1.0,
    cmap: Any = "jet",
    alpha: float = 0.5,
) -> np.ndarray:
    """Blend a low-resolution heat map over an image.

    The map is upsampled bilinearly (``cv2.INTER_LINEAR``, pixel centres aligned) to the image's
    size, coloured on the absolute range ``[vmin, vmax]`` (values outside are clipped) and blended
    as ``(1 - alpha) * image + alpha * colour``.

    Args:
        image: ``[H, W, 3]`` uint8 (or float in [0, 1], or grey ``[H, W]``).
        heatmap: ``[h, w]`` values.
        vmin: Value drawn with the colormap's first colour.
        vmax: Value drawn with the colormap's last colour.
        cmap: Matplotlib colormap name or object.
        alpha: Weight of the colour layer, in [0, 1].

    Returns:
        uint8 ``[H, W, 3]``.

    Raises:
        UsageError: Bad shapes, non-finite values, ``alpha`` outside [0, 1] or ``vmax <= vmin``.
    """
    pixels = as_rgb_image(image)
    heat = as_array(heatmap, (2,), "heatmap", "[h, w]")
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"alpha must lie in [0, 1], got {alpha}")
    colour = apply_colormap(upsample(heat, pixels.shape[:2]), vmin, vmax, cmap)
    return cv2.addWeighted(np.ascontiguousarray(pixels), 1.0 - alpha, colour, alpha, 0.0)


def greyscale(image: Any) -> np.ndarray:
    """The image in grey (its luminance in all three channels), uint8 ``[H, W, 3]``: the ground an overlay's
    colours read true on, whatever the image's own colours.

    Raises:
        UsageError: Not an RGB (or grey) image.
    """
    pixels = np.ascontiguousarray(as_rgb_image(image))
    return cv2.cvtColor(cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def cam_overlay(image: Any, cam: Any, *, alpha: float = 0.5, cmap: Any = "jet") -> np.ndarray:
    """Overlay a normalised class-activation map (values in [0, 1]) on an image.

    Raises:
        UsageError: The CAM holds values outside [0, 1] (normalise it first) or has a bad shape.
    """
    heat = as_array(cam, (2,), "cam", "[h, w]")
    check_unit_range(heat, "cam", "normalise it first (e.g. divide by its maximum)")
    return overlay_rgb(image, heat, vmin=0.0, vmax=1.0, cmap=cmap, alpha=alpha)


def upsample(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``[h, w]`` to ``size = (H, W)`` bilinearly (half-pixel centres, edges clamped)."""
    height, width = size
    if heatmap.shape == (height, width):
        return heatmap.astype(np.float32)
    return cv2.resize(heatmap.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def spatial_overlay(
    image: Any,
    gate_map: Any,
    *,
    title: str = "",
    scale: str = "absolute",
    cmap: Any = "viridis",
    alpha: float = 0.5,
    quantity: str = "gate",
    source_size: tuple[int, int] | None = None,
) -> Figure:
    """Three panels: the image, the gate map at its true resolution, and the overlay.

    Args:
        image: The original image, ``[H, W, 3]``.
        gate_map: A spatial gate ``[h, w]`` (values in [0, 1] for sigmoid gates).
        title: Figure title.
        scale: ``"absolute"`` colours on [0, 1], so a flat 0.5 map looks flat and mid-range;
            ``"minmax"`` stretches the map's own min..max (said in the title).
        cmap: Matplotlib colormap.
        alpha: Weight of the colour layer in the overlay.
        quantity: What the map holds, for the panel title and colour bar ("gate", "Grad-CAM").
        source_size: The size the map was computed at, when ``gate_map`` was upsampled (Grad-CAM).

    On the absolute scale, a map whose values use less than half of [0, 1] says so in the title and
    names the min–max scale.

    Returns:
        The figure; its axes are labelled ``"input"``, ``"gate map"``, ``"overlay"``, ``"colorbar"``.

    Raises:
        UsageError: Bad shapes or values, or an unknown ``scale``.
    """
    check_choice(scale, SCALES, "scale")
    pixels = as_rgb_image(image)
    gate = as_array(gate_map, (2,), "gate_map", "[h, w]")
    vmin, vmax, scale = _colour_range(gate, scale)
    overlay = overlay_rgb(pixels, gate, vmin=vmin, vmax=vmax, cmap=cmap, alpha=alpha)
    full_title = f"{title} (min–max scaled)" if scale == "minmax" else title
    note = range_note(gate, scale, quantity)
    full_title = f"{full_title}\n{note}" if note and full_title else full_title or note
    with font_context([full_title]):
        fig = new_figure(12.0, 4.4)
        ax_img, ax_map, ax_over = fig.subplots(1, 3)
        _image_panel(ax_img, pixels, "input", f"input ({pixels.shape[0]}×{pixels.shape[1]})")
        mappable = _map_panel(ax_map, gate, vmin, vmax, cmap, quantity, source_size)
        _image_panel(ax_over, overlay, "overlay", f"overlay (bilinear to {pixels.shape[0]}×{pixels.shape[1]})")
        colorbar = fig.colorbar(mappable, ax=[ax_map, ax_over], shrink=0.85, extend=_extend(gate, vmin, vmax))
        colorbar.ax.set_label("colorbar")
        colorbar.set_label(f"{quantity} value (min–max scaled)" if scale == "minmax" else f"{quantity} value")
        if full_title:
            fig.suptitle(full_title)
    return fig


def _colour_range(gate: np.ndarray, scale: str) -> tuple[float, float, str]:
    if scale == "absolute":
        return 0.0, 1.0, scale
    low, high = float(gate.min()), float(gate.max())
    if high - low <= 1e-12 * max(1.0, abs(high)):
        warnings.warn(
            f"gate map is constant ({low:.4g}); min–max scaling is undefined, showing the absolute [0, 1] scale",
            UserWarning,
            stacklevel=3,
        )
        return 0.0, 1.0, "absolute"
    return low, high, scale


def _extend(gate: np.ndarray, vmin: float, vmax: float) -> str:
    below, above = bool(gate.min() < vmin), bool(gate.max() > vmax)
    return {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}[(below, above)]


def _image_panel(ax: Any, pixels: np.ndarray, label: str, title: str) -> None:
    # Small inputs (CIFAR's 32×32) show their true pixels; large ones are smoothed when shrunk.
    ax.imshow(pixels, interpolation="nearest" if max(pixels.shape[:2]) <= 64 else None)
    ax.set_label(label)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])


def _map_panel(
    ax: Any,
    gate: np.ndarray,
    vmin: float,
    vmax: float,
    cmap: Any,
    quantity: str = "gate",
    source_size: tuple[int, int] | None = None,
) -> Any:
    from matplotlib.ticker import MaxNLocator

    height, width = gate.shape
    mappable = ax.imshow(gate, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_label("gate map")
    raw = "raw" if source_size is None else f"upsampled from {source_size[0]}×{source_size[1]}"
    ax.set_title(f"{quantity} map ({height}×{width}, {raw})", fontsize="medium")
    ax.set_xlabel(f"x (cell, {width} wide)")
    ax.set_ylabel(f"y (cell, {height} high)")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=min(width, 8), integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=min(height, 8), integer=True))
    return mappable


def range_note(heat: np.ndarray, scale: str, quantity: str) -> str:
    """On the absolute scale, a note when the values use less than :data:`NARROW_SPAN` of [0, 1] (else ``""``)."""
    low, high = float(heat.min()), float(heat.max())
    if scale != "absolute" or high - low >= NARROW_SPAN or high - low <= 1e-6:
        return ""
    return (
        f"The {quantity} values span only {low:.2f}–{high:.2f} ({high - low:.0%} of the 0–1 scale), so their "
        "colours differ little; --scale minmax stretches them over the colour bar."
    )
