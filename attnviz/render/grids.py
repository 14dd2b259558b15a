"""Grids of feature maps: the top-N channels, before and after an attention gate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from attnviz.render._checks import as_array, check_choice
from attnviz.render.fonts import font_context
from attnviz.render.output import new_figure
from attnviz.runtime.errors import UsageError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RANKINGS: tuple[str, ...] = ("activation", "given")
# Panels per row before the grid wraps into another block of rows.
MAX_COLUMNS = 8
PANEL_IN = 1.7
FEATURE_CMAP = "viridis"


def select_channels(
    features: Any, *, channels: Sequence[int] | None = None, top_n: int = 8, rank_by: str = "activation"
) -> np.ndarray:
    """Return the channels :func:`feature_grid` shows, in display order.

    Args:
        features: ``[C, H, W]`` feature maps.
        channels: Candidate channels; with ``rank_by="given"`` their order is kept.
        top_n: How many channels to show at most.
        rank_by: ``"activation"`` (highest spatial mean first, ties by index) or ``"given"``.

    Raises:
        UsageError: Bad shape, ``rank_by="given"`` without channels, or channel indices out of range.
    """
    check_choice(rank_by, RANKINGS, "rank_by")
    maps = as_array(features, (3,), "features", "[C, H, W]")
    if top_n < 1:
        raise UsageError(f"top_n must be 1 or more, got {top_n}")
    if channels is None:
        if rank_by == "given":
            raise UsageError("rank_by='given' needs channels=[...] in the order to show them")
        candidates = np.arange(maps.shape[0])
    else:
        candidates = _check_channels(channels, maps.shape[0])
    if rank_by == "activation":
        means = maps[candidates].mean(axis=(1, 2))
        candidates = candidates[np.argsort(-means, kind="stable")]
    return candidates[:top_n]


def feature_grid(
    features: Any,
    *,
    channels: Sequence[int] | None = None,
    top_n: int = 8,
    rank_by: str = "activation",
    title: str = "",
    after: Any = None,
    channel_weights: Any = None,
    ranking: str = "",
) -> Figure:
    """Small images of the top-N feature channels, optionally before and after the gate.

    Args:
        features: ``[C, H, W]`` feature maps (the gate's input when ``after`` is given).
        channels: Candidate channels (e.g. sorted by gate weight); see :func:`select_channels`.
        top_n: Number of channels shown.
        rank_by: ``"activation"`` ranks by spatial mean of ``features``; ``"given"`` keeps ``channels``.
        title: Figure title.
        after: ``[C, H, W]`` features after the gate: adds a second row on a colour scale shared
            with the first, per channel column.
        channel_weights: ``[C]`` gate weight per channel, written in the panel titles.
        ranking: How the channels were chosen, for the title (e.g. ``"with the largest gate values"``;
            default: ``"by mean activation"``, or ``"in the order given"``).

    Returns:
        The figure; image axes are labelled ``"before <c>"`` / ``"after <c>"`` (or ``"channel <c>"``).

    Raises:
        UsageError: Bad shapes or arguments.
    """
    maps = as_array(features, (3,), "features", "[C, H, W]")
    chosen = select_channels(maps, channels=channels, top_n=top_n, rank_by=rank_by)
    gated = _same_shape(after, maps.shape, "after") if after is not None else None
    weights = _weights(channel_weights, maps.shape[0]) if channel_weights is not None else None
    rows = [("", "channel", maps)]
    if gated is not None:
        rows = [("before gate", "before", maps), ("after gate", "after", gated)]
    n_cols = min(MAX_COLUMNS, chosen.size)
    n_blocks = -(-chosen.size // n_cols)
    with font_context([title]):
        fig = new_figure(PANEL_IN * n_cols + 1.2, (PANEL_IN + 0.5) * len(rows) * n_blocks + 0.6)
        axes = fig.subplots(len(rows) * n_blocks, n_cols, squeeze=False)
        for slot, channel in enumerate(chosen):
            block, column = divmod(slot, n_cols)
            column_axes = axes[block * len(rows) : (block + 1) * len(rows), column]
            _draw_column(fig, column_axes, rows, int(channel), weights, first=column == 0)
        for slot in range(chosen.size, axes.shape[1] * n_blocks):
            block, column = divmod(slot, n_cols)
            for ax in axes[block * len(rows) : (block + 1) * len(rows), column]:
                ax.set_visible(False)
        ranking = ranking or ("by mean activation" if rank_by == "activation" else "in the order given")
        summary = f"{chosen.size} channels {ranking}"
        fig.suptitle(f"{title} ({summary})" if title else summary)
    return fig


def _draw_column(
    fig: Any, column_axes: Any, rows: list[tuple[str, str, np.ndarray]], channel: int, weights: Any, *, first: bool
) -> None:
    images = [maps[channel] for _, _, maps in rows]
    vmin = min(float(image.min()) for image in images)
    vmax = max(float(image.max()) for image in images)
    if vmax <= vmin:
        vmax = vmin + 1e-6
    mappable = None
    for ax, (row_title, key, _), image in zip(column_axes, rows, images):
        mappable = ax.imshow(image, cmap=FEATURE_CMAP, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_label(f"{key} {channel}")
        ax.set_xticks([])
        ax.set_yticks([])
        if row_title and first:
            ax.set_ylabel(row_title)
    heading = f"ch {channel}" if weights is None else f"ch {channel} · gate {weights[channel]:.3f}"
    column_axes[0].set_title(heading, fontsize="medium")
    colorbar = fig.colorbar(
        mappable, ax=list(column_axes), orientation="horizontal", fraction=0.08, pad=0.04, aspect=12
    )
    from matplotlib.ticker import MaxNLocator

    colorbar.ax.xaxis.set_major_locator(MaxNLocator(nbins=3))
    colorbar.ax.tick_params(labelsize=8)
    colorbar.ax.set_label(f"colorbar {channel}")


def _check_channels(channels: Sequence[int], n_channels: int) -> np.ndarray:
    array = np.asarray(channels)
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise UsageError("channels must be a non-empty list of channel indices")
    if array.min() < 0 or array.max() >= n_channels:
        bad = int(array.max() if array.max() >= n_channels else array.min())
        raise UsageError(f"channel index {bad} is out of range for {n_channels} channels")
    return array.astype(np.intp)


def _same_shape(values: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    array = as_array(values, (3,), name, "[C, H, W]")
    if array.shape != shape:
        raise UsageError(f"{name} has shape {array.shape} but features have shape {shape}")
    return array


def _weights(values: Any, n_channels: int) -> np.ndarray:
    array = as_array(values, (1,), "channel_weights", "[C]")
    if array.size != n_channels:
        raise UsageError(f"channel_weights has {array.size} values but features have {n_channels} channels")
    return array
