"""Numbers about maps: how two saliency maps agree (and, later, how well they localise).

Every function takes plain arrays (numpy or torch) of one map ``[H,W]`` each and returns a float.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def top_fraction_mask(saliency: Any, fraction: float = 0.2) -> np.ndarray:
    """Boolean mask of the ``fraction`` of pixels with the highest values.

    Exactly ``ceil(fraction * H * W)`` pixels are chosen; ties at the boundary go to the
    pixel that comes first in row-major order, so the mask's size never depends on ties.
    """
    values = _as_numpy(saliency).ravel()
    count = max(1, int(np.ceil(fraction * values.size)))
    chosen = np.argsort(-values, kind="stable")[:count]
    mask = np.zeros(values.size, dtype=bool)
    mask[chosen] = True
    return mask.reshape(np.shape(_as_numpy(saliency)))


def top_region_iou(first: Any, second: Any, fraction: float = 0.2) -> float:
    """Intersection over union of the top-``fraction`` regions of two maps of the same shape."""
    a, b = top_fraction_mask(first, fraction), top_fraction_mask(second, fraction)
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same shape, got {a.shape} and {b.shape}")
    return float((a & b).sum() / (a | b).sum())


def spearman(first: Any, second: Any) -> float:
    """Spearman rank correlation of two maps' pixels (ties get their average rank).

    Returns ``nan`` when either map is constant (its ranks have no spread).
    """
    x, y = _average_ranks(_as_numpy(first).ravel()), _average_ranks(_as_numpy(second).ravel())
    if x.shape != y.shape:
        raise ValueError(f"maps must have the same number of pixels, got {x.size} and {y.size}")
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else float("nan")


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    averages = ends - (counts - 1) / 2.0
    return averages[inverse].astype(np.float64)


def _as_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array, dtype=np.float64)
