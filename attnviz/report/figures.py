"""The report's aggregate figure: mean excitation of each channel gate per class (the SE paper's)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from attnviz.runtime.files import write_bytes


def excitation_png(
    values: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str] | None,
    title: str,
) -> bytes:
    """PNG bytes of :func:`attnviz.render.channel_bars` on ``values [N,C]`` with per-class lines."""
    import cv2

    from attnviz import render

    names = list(class_names) if class_names is not None and labels.max() < len(class_names) else None
    figure = render.channel_bars(values, title=title, order="channel", labels=labels, class_names=names)
    rgb = render.figure_to_rgb(figure)
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise RuntimeError("could not encode the excitation figure as PNG")
    return encoded.tobytes()


def write_excitation(
    path: Path, values: np.ndarray, labels: np.ndarray, class_names: Sequence[str] | None, title: str
) -> Path:
    """Draw the per-class excitation figure of one gate into ``path`` (atomically)."""
    return write_bytes(path, excitation_png(values, labels, class_names, title))
