"""Validation of the arrays the render functions accept; every failure is a one-line UsageError."""

from __future__ import annotations

from typing import Any

import numpy as np

from attnviz.runtime.errors import UsageError


def as_rgb_image(image: Any, name: str = "image") -> np.ndarray:
    """Return ``image`` as uint8 ``[H, W, 3]``.

    Accepts uint8 or float (0..1) arrays of shape ``[H, W]`` (grey), ``[H, W, 3]`` or ``[H, W, 4]``
    (alpha dropped).

    Raises:
        UsageError: Wrong shape, empty, non-finite, or float values outside [0, 1].
    """
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or array.shape[0] == 0 or array.shape[1] == 0:
        raise UsageError(f"{name} must be an RGB array of shape [H, W, 3], got shape {tuple(np.shape(image))}")
    array = array[:, :, :3]
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
        raise UsageError(f"{name} must hold uint8 or float pixel values, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise UsageError(f"{name} holds integers outside 0..255; pass uint8 pixels")
        return array.astype(np.uint8)
    if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
        raise UsageError(f"{name} holds float pixels outside [0, 1]; pass uint8 or values scaled to [0, 1]")
    return np.rint(array * 255.0).astype(np.uint8)


def as_array(values: Any, ndims: tuple[int, ...], name: str, shape_doc: str) -> np.ndarray:
    """Return ``values`` as a finite float64 array with one of the allowed ranks.

    Raises:
        UsageError: Wrong rank, empty, or NaN/inf values.
    """
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a numeric array of shape {shape_doc}") from None
    if array.ndim not in ndims or array.size == 0:
        raise UsageError(f"{name} must have shape {shape_doc}, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise UsageError(f"{name} contains NaN or infinite values")
    return array


def check_choice(value: str, choices: tuple[str, ...], name: str) -> str:
    """Return ``value`` when it is one of ``choices``.

    Raises:
        UsageError: Any other value.
    """
    if value not in choices:
        raise UsageError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_unit_range(array: np.ndarray, name: str, hint: str = "", tolerance: float = 1e-6) -> None:
    """Require values in [0, 1] (gates, normalised CAMs).

    Raises:
        UsageError: A value lies outside [0, 1] by more than ``tolerance``.
    """
    low, high = float(array.min()), float(array.max())
    if low < -tolerance or high > 1.0 + tolerance:
        suffix = f"; {hint}" if hint else ""
        raise UsageError(f"{name} must lie in [0, 1], got values from {low:.4g} to {high:.4g}{suffix}")
