"""The pictures of ``attnviz maps`` drawn as pixels (:mod:`attnviz.render.canvas`): channel bars, gate and
Grad-CAM overlays, feature grids and the index sheet. Each takes the arrays its matplotlib counterpart
takes (:func:`~attnviz.render.channel_bars`, :func:`~attnviz.render.spatial_overlay`,
:func:`~attnviz.render.feature_grid`), shows the same values, and returns a :class:`Picture`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from attnviz.render._checks import as_array, as_rgb_image, check_choice
from attnviz.render.bars import UNTRAINED_GATE, _as_gates, bar_order
from attnviz.render.canvas import BODY, INK, MUTED, SMALL, TITLE, WARN, Canvas, Picture, line_height
from attnviz.render.colormaps import apply_colormap
from attnviz.render.grids import FEATURE_CMAP, MAX_COLUMNS, _same_shape, _weights, select_channels
from attnviz.render.overlays import NARROW_SPAN, SCALES, _colour_range, greyscale, range_note, upsample
from attnviz.runtime.errors import UsageError

#: The colour map of gates and Grad-CAM: perceptually uniform, readable over any image (drawn on grey).
HEAT_CMAP = "viridis"
#: The overlay outlines the region holding this share of the highest values.
HOT_SHARE = 0.2
BAR_BLUE, HALF_RED, MEAN_GREEN = (31, 119, 180), (214, 39, 40), (44, 160, 44)
PAD = 12
_TICK_GAP = 3


def bars_picture(values: Any, *, title: str = "", order: str = "weight", top_k: int = 5) -> Picture:
    """Channel-gate bars (one per channel on [0, 1]), the 0.5 line, the mean, the top/bottom channels named.

    A gate that is the same for every channel says so instead of naming channels.

    Args:
        values: Gate values ``[C]`` (or ``[N, C]``: bars are the means over N images).
        title: The picture's title.
        order: ``"weight"`` (descending gate value) or ``"channel"``.
        top_k: How many of the highest and of the lowest bars are named (when bars are too narrow
            for every channel index under them).

    Raises:
        UsageError: Bad shape, values outside [0, 1], unknown ``order`` or negative ``top_k``.
    """
    gates = _as_gates(values)
    positions = bar_order(gates, order)
    if top_k < 0:
        raise UsageError(f"top_k must be 0 or more, got {top_k}")
    means = gates.mean(axis=0)
    heights = means[positions]
    n = heights.size
    canvas = Canvas(int(np.clip(140 + 9 * n, 640, 1400)), 380)
    images = "one image" if gates.shape[0] == 1 else f"mean over {gates.shape[0]} images"
    y = _title(canvas, f"{title} ({n} channels, {images})" if title else f"{n} channels, {images}")
    mean = float(means.mean())
    y = _bar_key(canvas, y, mean) + 20  # room for the channel labels above the tallest bars
    plot = (64, y, canvas.width - 96, canvas.height - 58)
    _value_axis(canvas, plot, "gate value" if gates.shape[0] == 1 else "mean gate value")
    x0, top, x1, bottom = plot
    canvas.regions["plot"] = plot
    step = (x1 - x0) / n
    for i, height in enumerate(heights):
        gap = 1 if step >= 4 else 0
        canvas.rect((x0 + i * step + gap, _y(plot, height), x0 + (i + 1) * step - gap - 1, bottom), fill=BAR_BLUE)
    canvas.line([(x0, _y(plot, mean)), (x1, _y(plot, mean))], fill=MEAN_GREEN, width=3)
    canvas.dashed(x0, x1, _y(plot, UNTRAINED_GATE), HALF_RED)
    canvas.text((x1 + 6, _y(plot, mean)), f"mean {mean:.3f}", size=SMALL, anchor="lm", fill=(30, 110, 30))
    constant = float(np.ptp(means)) < 1e-3
    ticked = _channel_axis(canvas, plot, positions, order, named=not constant and top_k > 0)
    if constant:
        note = f"constant gate: {mean:.3f} for every channel"
        box = canvas.text(((x0 + x1) / 2, top + 6), note, size=BODY, anchor="ma", fill=WARN)
        canvas.rect((box[0] - 4, box[1] - 3, box[2] + 4, box[3] + 3), outline=WARN)
    elif not ticked:
        _name_extremes(canvas, plot, heights, positions, top_k)
    return canvas.picture()


def overlay_picture(
    image: Any,
    gate_map: Any,
    *,
    title: str = "",
    scale: str = "absolute",
    quantity: str = "gate",
    source_size: tuple[int, int] | None = None,
) -> Picture:
    """The input, the map at its own resolution, and the map over the input (on grey, outlined where the
    top 20 % of its values lie), with a colour bar that says the scale.

    Args:
        image: The input ``[H, W, 3]``.
        gate_map: ``[h, w]`` values (a gate in [0, 1], or a normalised Grad-CAM).
        title: The picture's title.
        scale: ``"absolute"`` colours [0, 1]; ``"minmax"`` the map's own min..max (said on the bar).
        quantity: What the map holds ("gate", "Grad-CAM").
        source_size: The size the map was computed at when ``gate_map`` was already upsampled (Grad-CAM).

    Raises:
        UsageError: Bad shapes or values, or an unknown ``scale``.
    """
    check_choice(scale, SCALES, "scale")
    pixels = as_rgb_image(image)
    heat = as_array(gate_map, (2,), "gate_map", "[h, w]")
    vmin, vmax, scale = _colour_range(heat, scale)
    side = 240
    canvas = Canvas(3 * side + 4 * PAD + 150, 0)  # height set once the title is wrapped
    lines = canvas.wrap(title, canvas.width - 2 * PAD, TITLE) if title else []
    note = range_note(heat, scale, quantity)
    top = PAD + len(lines) * line_height(TITLE) + 2 * line_height(SMALL) + 6
    canvas = Canvas(canvas.width, top + side + PAD + (2 * line_height(SMALL) + 4 if note else 0))
    _title(canvas, title)
    height, width = pixels.shape[:2]
    h, w = heat.shape
    raw = f"{quantity} map ({h}×{w}" + (
        ", raw)" if source_size is None else f", upsampled from {source_size[0]}×{source_size[1]})"
    )
    headers = [f"input ({height}×{width})", raw, f"over the input (outline: top {HOT_SHARE:.0%})"]
    panels = [_fit(pixels, side), _cells(heat, side, vmin, vmax), _overlay(pixels, heat, side, vmin, vmax)]
    for k, (header, panel, region) in enumerate(zip(headers, panels, ("input", "map", "overlay"))):
        x = PAD + k * (side + PAD)
        canvas.paragraph(x, top - 2 * line_height(SMALL) - 4, header, side, size=SMALL)
        canvas.paste(panel, x, top, region)
    bar_x = PAD + 3 * (side + PAD) + 8
    label = f"{quantity} value" + (f" (min–max: {vmin:.2f}–{vmax:.2f})" if scale == "minmax" else " (absolute 0–1)")
    canvas.colorbar((bar_x, top, bar_x + 16, top + side), HEAT_CMAP, vmin, vmax, label=label)
    if note:
        canvas.paragraph(PAD, top + side + 6, note, canvas.width - 2 * PAD, size=SMALL, fill=WARN)
    return canvas.picture()


def features_picture(
    features: Any,
    *,
    channels: Sequence[int] | None = None,
    top_n: int = 8,
    rank_by: str = "activation",
    title: str = "",
    after: Any = None,
    channel_weights: Any = None,
    ranking: str = "",
) -> Picture:
    """The top channels' feature maps (before and after the gate, with ``after``), each column on its
    own colour scale shared by its rows, shown under it.

    Args:
        features: ``[C, H, W]`` (the gate's input when ``after`` is given).
        channels, top_n, rank_by: Which channels, as :func:`~attnviz.render.select_channels` takes them.
        title: The picture's title.
        after: ``[C, H, W]`` features after the gate.
        channel_weights: ``[C]`` gate values, written over each column.
        ranking: How the channels were chosen, for the subtitle (default: from ``rank_by``).

    Raises:
        UsageError: Bad shapes or arguments.
    """
    maps = as_array(features, (3,), "features", "[C, H, W]")
    chosen = select_channels(maps, channels=channels, top_n=top_n, rank_by=rank_by)
    rows = [("", maps)] if after is None else [("before", maps), ("after", _same_shape(after, maps.shape, "after"))]
    weights = _weights(channel_weights, maps.shape[0]) if channel_weights is not None else None
    n_cols = min(MAX_COLUMNS, chosen.size)
    n_blocks = -(-chosen.size // n_cols)
    side, gap, left = 112, 16, 64 if after is not None else PAD
    header = 2 * line_height(SMALL) if weights is not None else line_height(SMALL)
    scale_h = 10 + 4 + line_height(SMALL)
    block_h = header + len(rows) * (side + 6) + scale_h + PAD
    ranking = ranking or ("by mean activation" if rank_by == "activation" else "in the order given")
    shared = ", shared by before and after" if after is not None else ""
    subtitle = f"{chosen.size} channels {ranking}; colour scale per column (below it){shared}"
    canvas = Canvas(left + n_cols * (side + gap) + PAD, 0)
    head = len(canvas.wrap(title, canvas.width - 2 * PAD, TITLE)) * line_height(TITLE) if title else 0
    head += len(canvas.wrap(subtitle, canvas.width - 2 * PAD, SMALL)) * line_height(SMALL)
    canvas = Canvas(canvas.width, PAD + head + 8 + n_blocks * block_h)
    y = _title(canvas, title)
    y = canvas.paragraph(PAD, y, subtitle, canvas.width - 2 * PAD, size=SMALL, fill=MUTED) + 8
    for slot, channel in enumerate(chosen):
        block, column = divmod(slot, n_cols)
        x, y0 = left + column * (side + gap), y + block * block_h
        _feature_column(canvas, x, y0, side, int(channel), rows, weights)
        if column == 0 and after is not None:
            for r, (name, _) in enumerate(rows):
                canvas.text((left / 2, y0 + header + r * (side + 6) + side / 2), name, size=BODY, rotate=True)
    return canvas.picture()


def sheet_picture(panels: Sequence[tuple[str, Any]], *, title: str = "", width: int = 2400) -> Picture:
    """The pictures at their own size, packed row by row (in order) into a sheet ``width`` pixels wide
    (or as wide as the widest), under ``title``. Each picture carries its own title; the panels' names
    are not written again.

    Raises:
        UsageError: No panels, or a panel that is not ``(name, RGB array)``.
    """
    if not panels:
        raise UsageError("the index sheet needs at least one (name, picture) panel")
    pictures = [_sheet_panel(panel, k) for k, panel in enumerate(panels)]
    width = max(width, *(p.shape[1] + 2 * PAD for p in pictures))
    rows: list[list[np.ndarray]] = [[]]
    for picture in pictures:
        used = sum(p.shape[1] + PAD for p in rows[-1]) + PAD
        if rows[-1] and used + picture.shape[1] + PAD > width:
            rows.append([])
        rows[-1].append(picture)
    width = max(sum(p.shape[1] + PAD for p in row) + PAD for row in rows)
    probe = Canvas(width, 1)
    head = len(probe.wrap(title, width - 2 * PAD, TITLE)) * line_height(TITLE) + PAD if title else 0
    canvas = Canvas(width, PAD + head + sum(max(p.shape[0] for p in row) + PAD for row in rows))
    y = _title(canvas, title) + (PAD if title else 0) if title else PAD
    placed = 0
    for row in rows:
        x = PAD
        for picture in row:
            canvas.paste(picture, x, y, f"panel {placed}")
            placed += 1
            canvas.rect((x - 1, y - 1, x + picture.shape[1], y + picture.shape[0]), outline=(200, 200, 200))
            x += picture.shape[1] + PAD
        y += max(p.shape[0] for p in row) + PAD
    return canvas.picture()


def _sheet_panel(panel: Any, index: int) -> np.ndarray:
    if not isinstance(panel, tuple | list) or len(panel) != 2:
        raise UsageError(f"panel {index} must be a (name, RGB array) pair")
    return as_rgb_image(panel[1], f"panel {index} ({panel[0]})")


def _title(canvas: Canvas, title: str) -> int:
    """Write the title wrapped across the top; return the y below it."""
    if not title:
        return PAD
    return canvas.paragraph(PAD, PAD, title, canvas.width - 2 * PAD, size=TITLE)


def _bar_key(canvas: Canvas, y: int, mean: float) -> int:
    """One line saying what the bars and lines are; return the y below it."""
    x, middle = PAD, y + line_height(SMALL) // 2
    canvas.rect((x, middle - 5, x + 10, middle + 5), fill=BAR_BLUE)
    x = canvas.text((x + 14, middle), "gate value of the channel", size=SMALL, anchor="lm")[2] + 18
    canvas.dashed(x, x + 24, middle, HALF_RED, dash=5)
    x = canvas.text((x + 28, middle), "0.5: a sigmoid gate's neutral value", size=SMALL, anchor="lm")[2] + 18
    canvas.line([(x, middle), (x + 24, middle)], fill=MEAN_GREEN, width=3)
    canvas.text((x + 28, middle), f"mean over the channels ({mean:.3f})", size=SMALL, anchor="lm")
    return y + line_height(SMALL)


def _y(plot: tuple[int, int, int, int], value: float) -> float:
    return plot[3] - value * (plot[3] - plot[1])


def _value_axis(canvas: Canvas, plot: tuple[int, int, int, int], label: str) -> None:
    """The frame of a [0, 1] plot with tick labels at every quarter and the axis label upwards."""
    x0, top, x1, bottom = plot
    for value in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = _y(plot, value)
        canvas.line([(x0, y), (x1, y)], fill=(232, 232, 232))
        canvas.line([(x0 - 4, y), (x0, y)], fill=MUTED)
        canvas.text((x0 - 6, y), f"{value:.2f}", size=SMALL, anchor="rm")
    canvas.rect((x0, top, x1, bottom), outline=MUTED)
    canvas.text((18, (top + bottom) / 2), label, size=BODY, rotate=True)
    canvas.scales.append("value axis 0–1")


def _channel_axis(
    canvas: Canvas, plot: tuple[int, int, int, int], positions: np.ndarray, order: str, *, named: bool
) -> bool:
    """Channel indices under the bars: every bar's when there is room (returns True), else every k-th
    position's (the rank, when bars are sorted by weight; ``named``: the extremes are named above)."""
    x0, _, x1, bottom = plot
    n = positions.size
    step = (x1 - x0) / n
    room = step >= line_height(SMALL)
    every = 1 if room else _nice_step(n, (x1 - x0) // 40)
    for i in range(0, n, every):
        x = x0 + (i + 0.5) * step
        text = str(int(positions[i])) if room or order == "channel" else str(i + 1)
        canvas.line([(x, bottom), (x, bottom + 3)], fill=MUTED)
        canvas.text((x, bottom + 5), text, size=SMALL, anchor="ma" if not room else "mt", rotate=False)
    if room:
        label = "channel (sorted by gate value)" if order == "weight" else "channel"
    elif order == "weight":
        label = "rank of the channel by gate value" + (
            " (the highest and lowest named above their bars)" if named else ""
        )
    else:
        label = "channel"
    canvas.text(((x0 + x1) / 2, bottom + 8 + line_height(SMALL)), label, size=BODY, anchor="ma")
    return room


def _nice_step(n: int, most: int) -> int:
    for step in (1, 2, 4, 5, 8, 10, 16, 20, 25, 32, 50, 64, 100, 128, 200, 256, 500):
        if n / step <= max(most, 1):
            return step
    return max(1, n // max(most, 1))


def _name_extremes(
    canvas: Canvas, plot: tuple[int, int, int, int], heights: np.ndarray, positions: np.ndarray, top_k: int
) -> None:
    """The channel index above the ``top_k`` highest and lowest bars, moved apart where they would
    touch, with a leader line to their bar."""
    if top_k == 0:
        return
    x0, top, x1, _ = plot
    step = (x1 - x0) / heights.size
    ranked = np.argsort(-heights, kind="stable")
    chosen = sorted(set(ranked[:top_k].tolist()) | set(ranked[-top_k:].tolist()))
    texts = [str(int(positions[i])) for i in chosen]
    widths = [canvas.text_width(t, SMALL) + 4 for t in texts]
    centres = _spread([x0 + (i + 0.5) * step for i in chosen], widths, x0, x1)
    for i, text, width, centre in zip(chosen, texts, widths, centres):
        bar_x = x0 + (i + 0.5) * step
        first = int(max(0, min(i, (centre - width / 2 - x0) // step)))
        last = int(min(heights.size - 1, max(i, (centre + width / 2 - x0) // step)))
        base = max(top - line_height(SMALL) - 4, _y(plot, float(heights[first : last + 1].max())) - 6)
        base = min(base, _y(plot, float(heights[i])) - 4)
        if abs(centre - bar_x) > 1:
            canvas.line([(centre, base), (bar_x, _y(plot, float(heights[i])))], fill=MUTED)
        canvas.text((centre, base), text, size=SMALL, anchor="md")


def _spread(centres: list[float], widths: list[int], low: float, high: float) -> list[float]:
    """Move sorted label centres apart until no two labels touch, keeping them within [low, high]."""
    spots = list(centres)
    for k in range(1, len(spots)):
        spots[k] = max(spots[k], spots[k - 1] + (widths[k - 1] + widths[k]) / 2 + _TICK_GAP)
    if spots:
        spots[-1] = min(spots[-1], high - widths[-1] / 2)
    for k in range(len(spots) - 2, -1, -1):
        spots[k] = min(spots[k], spots[k + 1] - (widths[k] + widths[k + 1]) / 2 - _TICK_GAP)
    if spots and spots[0] < low + widths[0] / 2:
        shift = low + widths[0] / 2 - spots[0]
        spots = [s + shift for s in spots]
    return spots


def _fit(pixels: np.ndarray, side: int) -> np.ndarray:
    """The image scaled to ``side`` pixels on its longer side (nearest for small inputs: their true
    pixels), centred on a white square."""
    longer = max(pixels.shape[:2])
    method = cv2.INTER_NEAREST if longer <= 64 else cv2.INTER_AREA if side < longer else cv2.INTER_LINEAR
    return _centred(pixels, side, method, 255)


def _cells(heat: np.ndarray, side: int, vmin: float, vmax: float, cmap: str = HEAT_CMAP) -> np.ndarray:
    """The map cell by cell (nearest), coloured on ``[vmin, vmax]``, scaled to ``side`` (aspect kept)."""
    return _centred(apply_colormap(heat, vmin, vmax, cmap), side, cv2.INTER_NEAREST, 255)


def _overlay(pixels: np.ndarray, heat: np.ndarray, side: int, vmin: float, vmax: float) -> np.ndarray:
    """The map (bilinear to the input's size) coloured over the input in grey, then outlined where
    its highest :data:`HOT_SHARE` of values lie."""
    grey = greyscale(pixels)
    values = upsample(heat, pixels.shape[:2])
    colours = apply_colormap(values, vmin, vmax, HEAT_CMAP)
    blended = _fit(cv2.addWeighted(grey, 0.4, colours, 0.6, 0.0), side)
    if float(np.ptp(values)) <= 1e-6:
        return blended
    fitted = _fit_values(values, side)
    threshold = float(np.quantile(values, 1.0 - HOT_SHARE))
    mask = ((fitted >= threshold) & ~np.isnan(fitted)).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(blended, contours, -1, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.drawContours(blended, contours, -1, (255, 255, 255), 1, cv2.LINE_AA)
    return blended


def _fit_values(values: np.ndarray, side: int) -> np.ndarray:
    """``values`` placed as :func:`_fit` places the image (bilinear), NaN outside it."""
    return _centred(values.astype(np.float32), side, cv2.INTER_LINEAR, np.nan)


def _centred(array: np.ndarray, side: int, interpolation: int, fill: float) -> np.ndarray:
    """``array`` (``[h, w]`` or ``[h, w, 3]``) scaled with ``interpolation`` to ``side`` pixels on its
    longer side, centred on a ``side`` × ``side`` square of ``fill`` (same dtype)."""
    height, width = array.shape[:2]
    factor = side / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    scaled = cv2.resize(np.ascontiguousarray(array), size, interpolation=interpolation)
    square = np.full((side, side, *array.shape[2:]), fill, array.dtype)
    top, left = (side - size[1]) // 2, (side - size[0]) // 2
    square[top : top + size[1], left : left + size[0]] = scaled
    return square


def _feature_column(
    canvas: Canvas,
    x: int,
    y: int,
    side: int,
    channel: int,
    rows: list[tuple[str, np.ndarray]],
    weights: np.ndarray | None,
) -> None:
    """One channel: its header, its maps (one per row) on one colour scale, and that scale under them."""
    images = [maps[channel] for _, maps in rows]
    vmin = min(float(image.min()) for image in images)
    vmax = max(float(image.max()) for image in images)
    if vmax <= vmin:
        vmax = vmin + 1e-6
    canvas.text((x + side / 2, y), f"ch {channel}", size=SMALL, anchor="ma")
    y += line_height(SMALL)
    if weights is not None:
        canvas.text((x + side / 2, y), f"gate {weights[channel]:.3f}", size=SMALL, anchor="ma", fill=MUTED)
        y += line_height(SMALL)
    for (name, _), image in zip(rows, images):
        canvas.paste(_cells(image, side, vmin, vmax, FEATURE_CMAP), x, y, f"{name or 'channel'} {channel}")
        y += side + 6
    canvas.colorbar((x, y, x + side, y + 10), FEATURE_CMAP, vmin, vmax, ticks=[vmin, vmax], horizontal=True)


__all__ = ["HEAT_CMAP", "INK", "NARROW_SPAN", "bars_picture", "features_picture", "overlay_picture", "sheet_picture"]
