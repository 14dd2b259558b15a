"""The report's aggregate figure: the mean excitation of each channel gate per class, as a
class × channel heat map (the SE paper's analysis of the role of excitation, Hu et al.).

Rows are the classes, columns the channels in one order for every class (by their mean over the
classes, highest first), and the colour is the class's mean gate value on [0, 1]. The numbers are
``results.json``'s exact per-class means (``summary.models.M.channel_gates.G.per_class``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from attnviz.runtime.files import write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CMAP = "viridis"
#: Every class is named on its row up to this many rows; beyond, a few evenly spaced rows are.
MAX_NAMED_ROWS = 40
#: Every column is labelled with its channel up to this many channels; beyond, a few evenly spaced ones are.
MAX_NAMED_COLUMNS = 32
#: Up to this many cells a side are drawn cell by cell; larger maps through matplotlib's anti-aliasing.
MAX_NEAREST_CELLS = 512


def class_matrix(per_class: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], np.ndarray]:
    """Row labels (``"name (n=K)"``) and the per-class mean vectors ``[classes, channels]``."""
    labels = [f"{name} (n={facts['n']})" for name, facts in per_class.items()]
    means = np.asarray([[np.nan if v is None else v for v in facts["mean"]] for facts in per_class.values()], float)
    return labels, means.reshape(len(labels), -1)


def channel_order(means: np.ndarray) -> np.ndarray:
    """Channels by their mean over the classes (each class counts once), highest first; ties by index."""
    return np.argsort(-np.nanmean(means, axis=0), kind="stable")


def excitation_figure(per_class: Mapping[str, Mapping[str, Any]], title: str, *, note: str = "") -> Figure:
    """The class × channel heat map of one channel gate.

    Args:
        per_class: Class name -> ``{"n": images, "mean": [C] mean gate}`` (``results.json``'s ``per_class``).
        title: The figure's title (model and gate).
        note: A second title line (the gate is constant, for example).

    Returns:
        The figure; the heat map's axes is labelled ``"heatmap"``, its colour bar's ``"colorbar"``.
    """
    from attnviz import render

    labels, means = class_matrix(per_class)
    order = channel_order(means)
    rows, columns = means.shape
    with render.font_context([title, note, *labels]):
        figure = render.new_figure(
            float(np.clip(4.0 + 0.05 * columns, 7.0, 14.0)), float(np.clip(2.2 + 0.3 * rows, 3.4, 12.5))
        )
        ax = figure.add_subplot()
        interpolation = "nearest" if max(means.shape) <= MAX_NEAREST_CELLS else "antialiased"
        image = ax.imshow(means[:, order], cmap=CMAP, vmin=0.0, vmax=1.0, aspect="auto", interpolation=interpolation)
        ax.set_label("heatmap")
        _label_rows(ax, labels)
        _label_columns(ax, order)
        colorbar = figure.colorbar(image, ax=ax, shrink=0.9)
        colorbar.ax.set_label("colorbar")
        colorbar.set_label("mean gate value of the class")
        lines = [title, f"mean excitation per class ({rows} classes × {columns} channels)", note]
        figure.suptitle("\n".join(line for line in lines if line), wrap=True)
    return figure


def _label_rows(ax: Any, labels: list[str]) -> None:
    shown = _evenly(len(labels), MAX_NAMED_ROWS)
    ax.set_yticks(shown, [labels[i] for i in shown])
    ax.set_ylabel("class")


def _label_columns(ax: Any, order: np.ndarray) -> None:
    shown = _evenly(order.size, MAX_NAMED_COLUMNS)
    ax.set_xticks(shown, [str(order[i]) for i in shown], fontsize="small")
    if shown.size > 16:
        ax.tick_params(axis="x", labelrotation=90)
    ax.set_xlabel("channel (its index under each labelled column), sorted by the mean over classes: highest left")


def _evenly(count: int, most: int) -> np.ndarray:
    """Every index below ``count``, or ``most`` evenly spaced ones (the first and last included)."""
    if count <= most:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, most).round().astype(int))


def excitation_png(per_class: Mapping[str, Mapping[str, Any]], title: str, *, note: str = "") -> bytes:
    """PNG bytes of :func:`excitation_figure`."""
    from attnviz import render

    return render.png_bytes(render.figure_to_rgb(excitation_figure(per_class, title, note=note)))


def write_excitation(path: Path, per_class: Mapping[str, Mapping[str, Any]], title: str, *, note: str = "") -> Path:
    """Draw the per-class excitation heat map of one gate into ``path`` (atomically)."""
    return write_bytes(path, excitation_png(per_class, title, note=note))
