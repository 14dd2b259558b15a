"""Colormap lookup tables: values on an absolute range ─► uint8 RGB, without building a figure."""

from __future__ import annotations

import functools
from typing import Any

import cv2
import numpy as np

from attnviz.runtime.errors import UsageError


def colormap_lut(cmap: Any) -> np.ndarray:
    """Return the ``[N, 3]`` uint8 colours of a matplotlib colormap name or object (N = ``cmap.N``).

    Raises:
        UsageError: The name is not a registered matplotlib colormap.
    """
    if isinstance(cmap, str):
        return _named_lut(cmap)
    return _lut_of(cmap)


def apply_colormap(values: np.ndarray, vmin: float, vmax: float, cmap: Any = "jet") -> np.ndarray:
    """Map values to RGB through ``cmap`` on the absolute range ``[vmin, vmax]`` (values are clipped).

    Args:
        values: Array of any shape.
        vmin: Value shown with the colormap's first colour.
        vmax: Value shown with the colormap's last colour; must exceed ``vmin``.
        cmap: Matplotlib colormap name or object.

    Returns:
        uint8 array of shape ``values.shape + (3,)``.

    Raises:
        UsageError: ``vmax <= vmin``, or an unknown colormap.
    """
    if not vmax > vmin:
        raise UsageError(f"colour range needs vmax > vmin, got vmin={vmin}, vmax={vmax}")
    lut = colormap_lut(cmap)
    size = len(lut)
    # The same arithmetic as matplotlib's Normalize + Colormap, so colours agree with the colour bar.
    scaled = np.subtract(values, vmin, dtype=np.float64)
    scaled /= vmax - vmin
    scaled *= size
    np.clip(scaled, 0, size - 1, out=scaled)
    if size == 256 and scaled.ndim == 2:
        index = scaled.astype(np.uint8)
        return cv2.LUT(cv2.merge([index, index, index]), lut.reshape(256, 1, 3))
    return np.take(lut, scaled.astype(np.intp), axis=0)


@functools.lru_cache(maxsize=32)
def _named_lut(name: str) -> np.ndarray:
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        message = f"unknown colormap {name!r}; use a matplotlib colormap name such as 'jet' or 'viridis'"
        raise UsageError(message) from None
    lut = _lut_of(cmap)
    lut.setflags(write=False)
    return lut


def _lut_of(cmap: Any) -> np.ndarray:
    rgba = cmap(np.arange(cmap.N))
    return np.rint(np.asarray(rgba)[:, :3] * 255).astype(np.uint8)
