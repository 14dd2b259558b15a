"""Channel-gate bar charts: one bar per channel, optionally the per-class excitation lines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from attnviz.render._checks import as_array, check_choice, check_unit_range
from attnviz.render.fonts import font_context
from attnviz.render.output import new_figure
from attnviz.runtime.errors import UsageError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ORDERS: tuple[str, ...] = ("weight", "channel")
SPREADS: tuple[str, ...] = ("std", "quantile")
QUANTILES: tuple[float, float] = (0.1, 0.9)
UNTRAINED_GATE = 0.5
# Channel means closer than this (max - min) make a constant gate: its bars cannot be ranked.
CONSTANT_GATE_SPREAD = 1e-3
# Channel indices are written under every bar up to this many channels.
MAX_TICKED_CHANNELS = 64
# Above this many channels the spread is drawn as a band instead of individual error bars.
MAX_ERRORBAR_CHANNELS = 128
# Channel labels never start higher than this, so they stay inside the [0, 1] axes.
LABEL_CEILING = 0.9
# gid of the bars that draw the spread band.
BAND_GID = "spread-band"
# Channel labels are written horizontally up to this many channels, rotated above.
HORIZONTAL_LABEL_CHANNELS = 16
# Room taken by the margins beside the axes (the legend sits above them), in inches.
LEGEND_WIDTH_IN = 1.4
# Pixels a rotated 7-pt channel label needs across (its height and a gap).
ROTATED_LABEL_PX = 14.0


def bar_order(values: Any, order: str = "weight") -> np.ndarray:
    """Return the channel shown at each bar position, left to right.

    Args:
        values: Gate values ``[C]`` or ``[N, C]`` (ordered by their mean over N).
        order: ``"weight"`` (descending gate value, ties by channel index) or ``"channel"``.

    Returns:
        int array ``[C]``: ``bar_order(...)[x]`` is the channel of the bar at position ``x``.

    Raises:
        UsageError: Bad shape or unknown ``order``.
    """
    check_choice(order, ORDERS, "order")
    means = _as_gates(values).mean(axis=0)
    if order == "channel":
        return np.arange(means.size)
    return np.argsort(-means, kind="stable")


def channel_bars(
    values: Any,
    *,
    title: str = "",
    order: str = "weight",
    top_k: int = 5,
    labels: Any = None,
    class_names: Sequence[str] | None = None,
    spread: str = "std",
) -> Figure:
    """Bar chart of channel-attention gates.

    Args:
        values: Gate values ``[C]`` (one image) or ``[N, C]`` (bars are means over N images).
        title: Figure title.
        order: ``"weight"`` sorts bars by gate value (descending); ``"channel"`` keeps channel order.
        top_k: The k highest and k lowest bars are labelled with their channel index.
        labels: Optional ``[N]`` class indices; adds a panel with the mean gate per class.
        class_names: Names for the class indices in ``labels``.
        spread: For ``[N, C]``: ``"std"`` (mean ± 1 std) or ``"quantile"`` (10–90 % band).

    Returns:
        The figure; the bar axes is labelled ``"bars"``, the per-class axes ``"per-class"``.

    Raises:
        UsageError: Bad shapes, gate values outside [0, 1], or labels that do not fit.
    """
    check_choice(spread, SPREADS, "spread")
    gates = _as_gates(values)
    positions = bar_order(gates, order)
    per_class = _class_means(gates, labels, class_names) if labels is not None else None
    if top_k < 0:
        raise UsageError(f"top_k must be 0 or more, got {top_k}")
    texts = [title, *(name for name, _, _ in per_class or ())]
    n_images, n_channels = gates.shape
    width = float(np.clip(4.0 + 0.06 * n_channels, 7.0, 16.0))
    with font_context(texts):
        fig = new_figure(width, 4.6 if per_class is None else 8.4)
        axes = fig.subplots(1 if per_class is None else 2, 1, sharex=True, squeeze=False)[:, 0]
        _draw_bars(axes[0], gates, positions, top_k, spread)
        for ax in axes:
            _style_channel_axis(ax, positions, order, _fits_every_label(fig, positions.size, per_class is not None))
        if per_class is not None:
            _draw_class_lines(axes[1], per_class, positions)
        fig.suptitle(_title(title, n_images, n_channels))
    return fig


def _as_gates(values: Any) -> np.ndarray:
    gates = as_array(values, (1, 2), "values", "[C] or [N, C]")
    check_unit_range(gates, "gate values", "pass sigmoid gate outputs")
    return gates[None, :] if gates.ndim == 1 else gates


def _title(title: str, n_images: int, n_channels: int) -> str:
    images = "one image" if n_images == 1 else f"mean over N = {n_images} images"
    count = f"{n_channels} channels, {images}"
    return f"{title} ({count})" if title else count


def _draw_bars(ax: Axes, gates: np.ndarray, positions: np.ndarray, top_k: int, spread: str) -> None:
    means = gates.mean(axis=0)
    heights = means[positions]
    x = np.arange(positions.size)
    many = positions.size > MAX_ERRORBAR_CHANNELS
    label = "gate value" if gates.shape[0] == 1 else "mean gate value"
    ax.bar(x, heights, width=1.0 if many else 0.85, color="tab:blue", label=label)
    tops = heights
    if gates.shape[0] > 1:
        low, high, name = _spread(gates, spread)
        tops = np.maximum(heights, high[positions])
        _draw_spread(ax, x, heights, low[positions], high[positions], f"{name} over {gates.shape[0]} images", many)
    mean = float(means.mean())
    # The mean solid and wide under the dashed 0.5 line: both stay visible where they coincide.
    ax.axhline(mean, color="tab:green", linestyle="-", linewidth=3.0, label=f"mean over channels = {mean:.3f}")
    ax.axhline(
        UNTRAINED_GATE, color="tab:red", linestyle="--", linewidth=1.0, label="0.5: a sigmoid gate's neutral value"
    )
    if float(np.ptp(means)) < CONSTANT_GATE_SPREAD:  # ties: no highest or lowest channels to name
        ax.text(
            0.5,
            0.93,
            f"constant gate: {mean:.3f} for every channel",
            transform=ax.transAxes,
            ha="center",
            va="top",
            fontsize=9,
            color="0.2",
            gid="constant-note",
            bbox={"boxstyle": "round,pad=0.3", "facecolor": "lightyellow", "edgecolor": "0.6"},
        )
    else:
        _label_extremes(ax, heights, tops, positions, top_k)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("gate value" if gates.shape[0] == 1 else "mean gate value")
    ax.set_label("bars")
    fig = cast("Figure", ax.get_figure())
    columns = 4 if fig.get_figwidth() >= 10.0 else 2  # the legend above the bars, as wide as they are at most
    ax.legend(
        loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=columns, fontsize="small", frameon=False, borderaxespad=0
    )


def _draw_spread(
    ax: Axes, x: np.ndarray, heights: np.ndarray, low: np.ndarray, high: np.ndarray, label: str, many: bool
) -> None:
    """Error bars from ``low`` to ``high``; with many channels a translucent band (one bar per channel)."""
    if many:
        ax.bar(x, high - low, bottom=low, width=1.0, color="0.2", alpha=0.3, linewidth=0, label=label, gid=BAND_GID)
        return
    yerr = np.stack([heights - low, high - heights])
    ax.errorbar(x, heights, yerr=yerr, fmt="none", ecolor="0.25", elinewidth=0.8, label=label)


def _spread(gates: np.ndarray, spread: str) -> tuple[np.ndarray, np.ndarray, str]:
    if spread == "std":
        means, std = gates.mean(axis=0), gates.std(axis=0)
        return means - std, means + std, "±1 std"
    low, high = np.quantile(gates, QUANTILES, axis=0)
    return low, high, f"{QUANTILES[0]:.0%}–{QUANTILES[1]:.0%} quantile band"


def _label_extremes(ax: Axes, heights: np.ndarray, tops: np.ndarray, positions: np.ndarray, top_k: int) -> None:
    """Write the channel index above the k highest and k lowest bars, fanned out where bars are narrow."""
    if top_k == 0:
        return
    ranked = np.argsort(-heights, kind="stable")
    chosen = np.array(sorted(set(ranked[:top_k].tolist()) | set(ranked[-top_k:].tolist())))
    step = _label_step(ax, positions.size)
    spots = _spread_positions(chosen, step, positions.size)
    for cluster in _clusters(spots, step):
        first = max(0, int(min(chosen[cluster].min(), np.floor(spots[cluster].min()))))
        last = min(tops.size - 1, int(max(chosen[cluster].max(), np.ceil(spots[cluster].max()))))
        span = slice(first, last + 1)
        packed = len(cluster) > 1 or abs(spots[cluster[0]] - chosen[cluster[0]]) > 1e-9
        y = min(float(tops[span].max()) + (0.06 if packed else 0.01), LABEL_CEILING)
        for i in cluster:
            ax.annotate(
                str(int(positions[chosen[i]])),
                xy=(chosen[i], tops[chosen[i]]),
                xytext=(spots[i], y),
                textcoords="data",
                ha="center",
                va="bottom",
                fontsize=7,
                rotation=0 if positions.size <= HORIZONTAL_LABEL_CHANNELS else 90,
                arrowprops={"arrowstyle": "-", "color": "0.4", "linewidth": 0.5} if packed else None,
                bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8},
                gid="channel-label",
            )


def _clusters(spots: np.ndarray, step: float) -> list[np.ndarray]:
    """Split sorted label positions into runs that sit exactly one ``step`` apart (packed labels)."""
    breaks = np.flatnonzero(np.diff(spots) > step * (1 + 1e-9)) + 1
    return np.split(np.arange(spots.size), breaks)


def _label_step(ax: Axes, n_bars: int) -> float:
    """Horizontal room one label needs, in bars, estimated from the figure's width (legend outside)."""
    fig = cast("Figure", ax.get_figure())  # axes here come from new_figure(), never a subfigure
    axes_px = max(fig.get_figwidth() - LEGEND_WIDTH_IN, 2.0) * fig.dpi
    label_px = 22.0 if n_bars <= HORIZONTAL_LABEL_CHANNELS else ROTATED_LABEL_PX  # 3 digits at 7 pt, or rotated
    return max(1.0, label_px * n_bars / axes_px)


def _spread_positions(xs: np.ndarray, step: float, n_bars: int) -> np.ndarray:
    """Move sorted label positions apart to at least ``step`` while keeping them inside the axis."""
    spots = xs.astype(np.float64)
    if spots.size > 1:
        step = min(step, (n_bars - 1) / (spots.size - 1))
    for i in range(1, spots.size):
        spots[i] = max(spots[i], spots[i - 1] + step)
    spots[-1] = min(spots[-1], n_bars - 1)
    for i in range(spots.size - 2, -1, -1):
        spots[i] = min(spots[i], spots[i + 1] - step)
    return spots


def _fits_every_label(fig: Figure, n_bars: int, class_legend: bool) -> bool:
    """True when every bar can carry its channel index (rotated, 7 pt) without touching the next
    (a legend of classes beside the axes takes another 2 inches)."""
    axes_px = max(fig.get_figwidth() - LEGEND_WIDTH_IN - (2.0 if class_legend else 0.0), 2.0) * fig.dpi
    return n_bars <= MAX_TICKED_CHANNELS and axes_px / n_bars >= ROTATED_LABEL_PX


def _style_channel_axis(ax: Axes, positions: np.ndarray, order: str, every: bool) -> None:
    ax.set_xlabel("channel (sorted by gate weight)" if order == "weight" else "channel")
    ax.set_xlim(-0.6, positions.size - 0.4)
    if every:
        ax.set_xticks(np.arange(positions.size), [str(int(c)) for c in positions], fontsize=7, rotation=90)
    elif order == "weight":
        # Bar positions are ranks, not channel indices: show none rather than misleading numbers.
        ax.set_xticks([])


def _class_means(
    gates: np.ndarray, labels: Any, class_names: Sequence[str] | None
) -> list[tuple[str, int, np.ndarray]]:
    """Return ``(name, count, mean gates [C])`` for every class present in ``labels``."""
    label_array = np.asarray(labels)
    if label_array.shape != (gates.shape[0],) or not np.issubdtype(label_array.dtype, np.integer):
        raise UsageError(f"labels must be {gates.shape[0]} integer class indices (one per row of values)")
    if label_array.min() < 0 or (class_names is not None and label_array.max() >= len(class_names)):
        raise UsageError(
            f"labels hold class index {int(label_array.max())} but only {len(class_names or [])} class names were given"
        )
    classes = np.unique(label_array)
    return [
        (
            str(class_names[k]) if class_names is not None else f"class {k}",
            int((label_array == k).sum()),
            gates[label_array == k].mean(axis=0),
        )
        for k in classes
    ]


def _draw_class_lines(ax: Axes, per_class: list[tuple[str, int, np.ndarray]], positions: np.ndarray) -> None:
    import matplotlib

    colours = matplotlib.colormaps["tab10" if len(per_class) <= 10 else "tab20"]
    x = np.arange(positions.size)
    for index, (name, count, means) in enumerate(per_class):
        ax.plot(x, means[positions], color=colours(index % colours.N), linewidth=1.0, label=f"{name} (n={count})")
    ax.axhline(UNTRAINED_GATE, color="tab:red", linestyle="--", linewidth=1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("mean gate value per class")
    ax.set_title("per-class mean excitation (same channel order as above)", fontsize="medium")
    ax.set_label("per-class")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", ncol=max(1, (len(per_class) + 19) // 20))
