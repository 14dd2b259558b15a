"""Channel-gate strips drawn straight into uint8 RGB arrays (no matplotlib), so that thousands cost little."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

BAR_COLOUR = (31, 119, 180)  # matplotlib's tab:blue
HALF_COLOUR = (214, 39, 40)  # tab:red, the 0.5 line
PANEL_HEIGHT = 44
LABEL_HEIGHT = 14
MIN_WIDTH = 384


def channel_strip(gates: Mapping[str, Any]) -> np.ndarray:
    """One panel per channel gate, stacked: a bar per channel (height = gate value on [0, 1]),
    the 0.5 line dashed in red, and the gate's name, channel count and mean above the bars.

    A gate holding NaN or infinite values gets no bars, and its label says so.

    Returns:
        uint8 ``[len(gates) * (LABEL_HEIGHT + PANEL_HEIGHT), W, 3]``, ``W`` at least :data:`MIN_WIDTH`
        and at least the largest channel count.
    """
    width = max(MIN_WIDTH, max(np.asarray(v).size for v in gates.values()))
    return np.concatenate([_panel(name, values, width) for name, values in gates.items()], axis=0)


def _panel(name: str, values: Any, width: int) -> np.ndarray:
    """One gate's panel: its label, then its bars over ``width`` pixels."""
    import cv2

    values = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = bool(np.isfinite(values).all())
    values = np.clip(values, 0.0, 1.0) if finite else np.zeros_like(values)
    panel = np.full((LABEL_HEIGHT + PANEL_HEIGHT, width, 3), 255, np.uint8)
    text = f"{name}: {values.size} ch, " + (f"mean {values.mean():.3f}" if finite else "NaN values, not drawn")
    cv2.putText(
        panel,
        text.encode("ascii", "replace").decode(),
        (2, LABEL_HEIGHT - 4),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.35,
        (0, 0, 0),
        1,
        cv2.LINE_AA,
    )
    columns = np.minimum((np.arange(width) * values.size) // width, values.size - 1)
    heights = np.round(values[columns] * (PANEL_HEIGHT - 1)).astype(int)
    rows = np.arange(PANEL_HEIGHT)[:, None]
    filled = rows >= (PANEL_HEIGHT - heights)[None, :]
    edges = np.r_[True, np.diff(columns) != 0] if values.size * 3 <= width else np.zeros(width, bool)
    filled &= ~edges[None, :]  # a white gap between bars when there is room
    body = panel[LABEL_HEIGHT:]
    body[filled] = BAR_COLOUR
    half = PANEL_HEIGHT - 1 - round(0.5 * (PANEL_HEIGHT - 1))
    dashes = (np.arange(width) // 4) % 2 == 0
    body[half, dashes] = HALF_COLOUR
    body[-1, :] = (128, 128, 128)
    return panel
