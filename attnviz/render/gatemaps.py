"""Pictures for the gate kinds other than channel and spatial gates.

``full_gate`` draws a gate the size of the feature map (BAM, Gather-Excite), ``axis_gate`` coordinate
attention's per-axis gates, ``branch_weights`` selective-kernel softmax weights, and ``gate_heatmap``
any other array. Every heat map is coloured on an absolute range and has a colour bar whose axes is
labelled ``"colorbar"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from attnviz.render._checks import as_array, as_rgb_image, check_choice, check_unit_range
from attnviz.render.fonts import font_context
from attnviz.render.output import new_figure
from attnviz.render.overlays import SCALES, _colour_range, _image_panel, overlay_rgb
from attnviz.runtime.errors import UsageError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

GATE_CMAP = "viridis"  # the colormap of the spatial-gate pictures, so that a value reads the same everywhere
SPREAD_CMAP = "magma"
# The largest standard deviation values in [0, 1] can have (half at 0, half at 1).
MAX_STD = 0.5
# Heat maps up to this many cells a side are drawn cell by cell (nearest: at the saved size every cell gets a
# pixel); larger ones through matplotlib's anti-aliasing filter, so that no channel drops out of the picture.
MAX_NEAREST_CELLS = 512
# Channel (or position) indices under every bar up to this many bars.
MAX_TICKED_BARS = 32


def full_gate(original: Any, values: Any, *, title: str, scale: str = "absolute") -> Figure:
    """A gate the size of the feature map (BAM's ``g`` in ``x * (1 + g)``, Gather-Excite with extent).

    Panels: the input; the mean over channels overlaid on it (bilinear, colour bar on [0, 1], or on
    the mean's own min..max with ``scale="minmax"``, said in the title and colour bar); the standard
    deviation over channels at each position (where the channels disagree); and each channel's
    spatial mean as bars (which channels the gate favours).

    Args:
        original: The input image ``[H, W, 3]``.
        values: The gate ``[C, h, w]``, values in [0, 1] (``g`` itself, not ``1 + g``).
        title: Figure title (the gate's name).
        scale: ``"absolute"`` or ``"minmax"``, for the overlay.

    Returns:
        The figure; axes labelled ``"input"``, ``"overlay"``, ``"channel spread"``, ``"channel means"``,
        ``"colorbar"`` (the overlay's) and ``"spread colorbar"``.

    Raises:
        UsageError: Bad shapes, values outside [0, 1] or non-finite, or an unknown ``scale``.
    """
    check_choice(scale, SCALES, "scale")
    pixels = as_rgb_image(original, "original")
    gate = as_array(values, (3,), "values", "[C, H, W]")
    check_unit_range(gate, "gate values", "pass the sigmoid output g, not 1 + g")
    mean_map, spread = gate.mean(axis=0), gate.std(axis=0)
    vmin, vmax, scale = _colour_range(mean_map, scale)
    channels, height, width = gate.shape
    scaled = " (min–max scaled)" if scale == "minmax" else ""
    full_title = f"{title}: gate the size of the feature map ({channels}×{height}×{width}){scaled}"
    with font_context([title]):
        fig = new_figure(13.0, 7.6)
        grid = fig.add_gridspec(2, 3, height_ratios=[3.0, 1.4])
        _image_panel(fig.add_subplot(grid[0, 0]), pixels, "input", f"input ({pixels.shape[0]}×{pixels.shape[1]})")
        ax_over = fig.add_subplot(grid[0, 1])
        overlay = overlay_rgb(pixels, mean_map, vmin=vmin, vmax=vmax, cmap=GATE_CMAP)
        _image_panel(ax_over, overlay, "overlay", f"channel mean (bilinear from {height}×{width})")
        _colorbar(fig, _scalar_mappable(vmin, vmax, GATE_CMAP), ax_over, f"mean gate value{scaled}")
        ax_spread = fig.add_subplot(grid[0, 2])
        spread_image = _heatmap(ax_spread, spread, 0.0, MAX_STD, SPREAD_CMAP, "channel spread", aspect="equal")
        _style_map_axes(ax_spread, f"std over channels ({height}×{width})", height, width)
        _colorbar(fig, spread_image, ax_spread, "std of the gate over channels", label="spread colorbar")
        _channel_mean_bars(fig.add_subplot(grid[1, :]), gate.mean(axis=(1, 2)))
        fig.suptitle(full_title)
    return fig


def axis_gate(values: Any, *, title: str) -> Figure:
    """Coordinate attention's gate along one axis: ``[C, H, 1]`` (height) or ``[C, 1, W]`` (width).

    A channels × positions heat map on [0, 1] with its colour bar, and above it the mean over
    channels at each position.

    Returns:
        The figure; axes labelled ``"profile"``, ``"heatmap"`` and ``"colorbar"``.

    Raises:
        UsageError: A shape other than ``[C, H, 1]`` / ``[C, 1, W]``, or values outside [0, 1].
    """
    gate = as_array(values, (3,), "values", "[C, H, 1] or [C, 1, W]")
    channels, height, width = gate.shape
    if (height == 1) == (width == 1):
        raise UsageError(
            f"values must have shape [C, H, 1] (along height) or [C, 1, W] (along width), got shape {gate.shape}"
        )
    check_unit_range(gate, "gate values", "pass sigmoid gate outputs")
    matrix = gate.reshape(channels, -1)
    along = "height (rows)" if width == 1 else "width (columns)"
    full_title = f"{title}: coordinate attention along {along.split()[0]} ({channels} channels × {matrix.shape[1]})"
    with font_context([title]):
        fig = new_figure(9.0, float(np.clip(3.0 + 0.04 * channels, 5.0, 9.0)))
        grid = fig.add_gridspec(2, 2, height_ratios=[1.0, 3.0], width_ratios=[40.0, 1.0])
        ax_heat = fig.add_subplot(grid[1, 0])
        ax_profile = fig.add_subplot(grid[0, 0], sharex=ax_heat)
        image = _heatmap(ax_heat, matrix, 0.0, 1.0, GATE_CMAP, "heatmap")
        _style_map_axes(ax_heat, "", channels, matrix.shape[1], xlabel=along, ylabel="channel")
        _colorbar(fig, image, fig.add_subplot(grid[1, 1]), "gate value", cax=True)
        _profile(ax_profile, matrix.mean(axis=0), channels)
        fig.suptitle(full_title)
    return fig


def branch_weights(values: Any, *, title: str) -> Figure:
    """Selective-kernel softmax weights ``[M, C]``: how much of each channel comes from each branch.

    A branches × channels heat map on [0, 1] with its colour bar, and each branch's mean weight as
    bars against the uniform share 1/M.

    Returns:
        The figure; axes labelled ``"heatmap"``, ``"colorbar"`` and ``"branch means"``.

    Raises:
        UsageError: A shape other than ``[M, C]``, or values outside [0, 1].
    """
    weights = as_array(values, (2,), "values", "[M, C] (branches × channels)")
    check_unit_range(weights, "branch weights", "pass the softmax weights over the branches")
    branches, channels = weights.shape
    names = [f"branch {k}" for k in range(branches)]
    with font_context([title]):
        fig = new_figure(12.0, float(np.clip(2.2 + 0.45 * branches, 3.4, 8.0)))
        grid = fig.add_gridspec(1, 3, width_ratios=[30.0, 0.8, 7.0])
        ax_heat = fig.add_subplot(grid[0, 0])
        image = _heatmap(ax_heat, weights, 0.0, 1.0, GATE_CMAP, "heatmap")
        _style_map_axes(ax_heat, "", branches, channels, xlabel="channel", ylabel="")
        ax_heat.set_yticks(np.arange(branches), names)
        _colorbar(fig, image, fig.add_subplot(grid[0, 1]), "weight", cax=True)
        _branch_mean_bars(fig.add_subplot(grid[0, 2], sharey=ax_heat), weights.mean(axis=1), names)
        fig.suptitle(f"{title}: selective-kernel branch weights ({branches} branches × {channels} channels)")
    return fig


def gate_heatmap(values: Any, *, title: str) -> Figure:
    """Any other gate as a heat map: the first axis as rows, the other axes flattened into columns.

    Values in [0, 1] are coloured on [0, 1]; others on their own min..max (said in the title and colour bar).

    Returns:
        The figure; axes labelled ``"heatmap"`` and ``"colorbar"``.

    Raises:
        UsageError: A scalar, an empty array, or non-finite values.
    """
    array = as_array(values, tuple(range(1, 33)), "values", "[N, ...] (at least one axis)")
    matrix = array.reshape(array.shape[0], -1)
    vmin, vmax, ranged = _value_range(matrix)
    rest = "×".join(str(n) for n in array.shape[1:]) or "1"
    shape_text = "×".join(str(n) for n in array.shape)
    with font_context([title]):
        fig = new_figure(float(np.clip(4.0 + 0.02 * matrix.shape[1], 7.0, 13.0)), 5.0)
        ax = fig.add_subplot()
        image = _heatmap(ax, matrix, vmin, vmax, GATE_CMAP, "heatmap")
        xlabel = f"axes 1.. flattened ({rest})" if array.ndim > 2 else "axis 1"
        _style_map_axes(ax, "", matrix.shape[0], matrix.shape[1], xlabel=xlabel, ylabel="axis 0")
        _colorbar(fig, image, ax, "value" if ranged == "absolute" else "value (on the values' own range)")
        scaled = " (values outside [0, 1]: coloured on their own range)" if ranged == "own" else ""
        fig.suptitle(f"{title}: gate of shape {shape_text}{scaled}")
    return fig


def _value_range(matrix: np.ndarray) -> tuple[float, float, str]:
    """[0, 1] for values inside it; otherwise the values' own min..max (a constant gets ±0.5 around it)."""
    low, high = float(matrix.min()), float(matrix.max())
    if low >= 0.0 and high <= 1.0:
        return 0.0, 1.0, "absolute"
    if high - low <= 1e-12 * max(1.0, abs(high)):
        return low - 0.5, high + 0.5, "own"
    return low, high, "own"


def _heatmap(
    ax: Axes,
    matrix: np.ndarray,
    vmin: float,
    vmax: float,
    cmap: str,
    label: str,
    *,
    aspect: Literal["equal", "auto"] = "auto",
) -> Any:
    interpolation = "nearest" if max(matrix.shape) <= MAX_NEAREST_CELLS else "antialiased"
    image = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, aspect=aspect, interpolation=interpolation)
    ax.set_label(label)
    return image


def _style_map_axes(
    ax: Axes, title: str, rows: int, columns: int, *, xlabel: str | None = None, ylabel: str | None = None
) -> None:
    from matplotlib.ticker import MaxNLocator

    if title:
        ax.set_title(title)
    ax.set_xlabel(f"x (cell, {columns} wide)" if xlabel is None else xlabel)
    ax.set_ylabel(f"y (cell, {rows} high)" if ylabel is None else ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=min(columns, 10), integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=min(rows, 8), integer=True))


def _scalar_mappable(vmin: float, vmax: float, cmap: str) -> Any:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    return ScalarMappable(norm=Normalize(vmin=vmin, vmax=vmax), cmap=cmap)


def _colorbar(fig: Figure, mappable: Any, ax: Axes, text: str, *, label: str = "colorbar", cax: bool = False) -> None:
    """A colour bar beside ``ax`` (or drawn into ``ax`` itself with ``cax=True``), its axes labelled ``label``."""
    colorbar = fig.colorbar(mappable, cax=ax) if cax else fig.colorbar(mappable, ax=ax, shrink=0.85)
    colorbar.ax.set_label(label)
    colorbar.set_label(text)


def _channel_mean_bars(ax: Axes, means: np.ndarray) -> None:
    x = np.arange(means.size)
    ax.bar(x, means, width=1.0 if means.size > MAX_TICKED_BARS else 0.85, color="tab:blue")
    ax.axhline(0.5, color="tab:red", linestyle="--", linewidth=1.0, label="0.5")
    ax.set_xlim(-0.6, means.size - 0.4)
    ax.set_ylim(0.0, 1.0)
    if means.size <= MAX_TICKED_BARS:
        ax.set_xticks(x)
    ax.set_xlabel("channel")
    ax.set_ylabel("spatial mean")
    ax.set_title("each channel's mean gate over all positions", fontsize="medium")
    ax.set_label("channel means")


def _profile(ax: Axes, means: np.ndarray, channels: int) -> None:
    ax.plot(np.arange(means.size), means, color="tab:blue", marker="o", markersize=3, label="mean over channels")
    ax.axhline(0.5, color="tab:red", linestyle="--", linewidth=1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("mean gate")
    ax.set_title(f"mean over the {channels} channels at each position", fontsize="medium")
    ax.tick_params(labelbottom=False)
    ax.set_label("profile")


def _branch_mean_bars(ax: Axes, means: np.ndarray, names: list[str]) -> None:
    ax.barh(np.arange(means.size), means, height=0.6, color="tab:blue")
    for row, value in enumerate(means):
        ax.text(min(value, 0.75) + 0.02, row, f"{value:.3f}", va="center", fontsize=8)
    ax.axvline(1.0 / means.size, color="tab:red", linestyle="--", linewidth=1.0)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("mean over channels")
    ax.set_title(f"mean weight (dashed: 1/{means.size})", fontsize="medium")
    ax.tick_params(labelleft=False)
    ax.set_label("branch means")
