"""Side-by-side pictures: the CBAM paper's comparison grid and a contact sheet of rendered pictures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from attnviz.render._checks import as_rgb_image
from attnviz.render.fonts import font_context
from attnviz.render.output import figure_to_rgb, new_figure
from attnviz.runtime.errors import UsageError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PANEL_IN = 2.0
# A contact-sheet cell is as wide as its widest picture at 100 dpi, within these bounds (inches).
SHEET_CELL_MIN_IN, SHEET_CELL_MAX_IN = 3.0, 8.0


def comparison_grid(
    images: Sequence[Any],
    columns: Sequence[Sequence[Any]],
    *,
    row_titles: Sequence[str] | None = None,
    column_titles: Sequence[str] | None = None,
    captions: Sequence[Sequence[str]] | None = None,
    caption_colors: Sequence[Sequence[str | None]] | None = None,
    scale: tuple[str, float, float, str] | None = None,
) -> Figure:
    """Rows of images, columns of methods/models: the layout of the CBAM paper's Grad-CAM figure.

    Every row repeats the column titles, so that a reader of any row knows its columns.

    Args:
        images: The original image of each row (sets the number of rows).
        columns: ``columns[j][i]`` is the RGB picture in row ``i``, column ``j``; column 0 is
            usually the input itself (``images``), the others overlays.
        row_titles: One title above each row (e.g. ``"truth: cat"``).
        column_titles: One title per column (e.g. ``"input"``, ``"baseline (cnn)"``, ``"cbam_cnn"``).
        captions: ``captions[j][i]`` under each panel (e.g. ``"P(true class) = 0.873"``).
        caption_colors: ``caption_colors[j][i]``: a colour for that caption (``None``: the default),
            e.g. red for a wrong prediction.
        scale: ``(cmap, vmin, vmax, label)`` of the overlays: adds a colour bar under the grid,
            its axes labelled ``"colorbar"``.

    Returns:
        The figure; the panel in row ``i``, column ``j`` is the axes labelled ``"panel i,j"``.

    Raises:
        UsageError: Counts of images, columns, titles or captions do not fit together.
    """
    n_rows, n_cols = len(images), len(columns)
    if n_rows == 0 or n_cols == 0:
        raise UsageError("comparison_grid needs at least one image and one column")
    _check_rows(images, columns, n_rows)
    _check_texts(row_titles, n_rows, "row_titles", "one per image")
    _check_texts(column_titles, n_cols, "column_titles", "one per column")
    if captions is not None:
        _check_texts(captions, n_cols, "captions", "one list per column")
        for j, column in enumerate(captions):
            _check_texts(column, n_rows, f"captions[{j}]", "one per image")
    if caption_colors is not None:
        _check_texts(caption_colors, n_cols, "caption_colors", "one list per column")
    texts = [*(row_titles or ()), *(column_titles or ()), *(c for column in captions or () for c in column)]
    bar_in = 0.9 if scale is not None else 0.0
    with font_context(texts):
        fig = new_figure(PANEL_IN * n_cols + 0.4, (PANEL_IN + 1.3) * n_rows + bar_in)
        ratios = [PANEL_IN + 1.3] * n_rows + ([bar_in] if scale is not None else [])
        parts = fig.subfigures(len(ratios), 1, squeeze=False, height_ratios=ratios)[:, 0]
        for i, row in enumerate(parts[:n_rows]):
            axes = row.subplots(1, n_cols, squeeze=False)[0]
            for j, ax in enumerate(axes):
                _panel(ax, as_rgb_image(columns[j][i], f"columns[{j}][{i}]"), f"panel {i},{j}")
                if column_titles is not None:
                    ax.set_title(str(column_titles[j]), fontsize="medium")
                if captions is not None:
                    colour = caption_colors[j][i] if caption_colors is not None else None
                    ax.set_xlabel(str(captions[j][i]), color=colour or "black")
            if row_titles is not None:
                row.suptitle(str(row_titles[i]), fontweight="bold")
        if scale is not None:
            _scale_bar(parts[-1], *scale)
    return fig


def _scale_bar(part: Any, cmap: str, vmin: float, vmax: float, label: str) -> None:
    """A horizontal colour bar across the middle of ``part`` (a subfigure), its axes labelled ``"colorbar"``."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    grid = part.add_gridspec(1, 3, width_ratios=[1.0, 3.0, 1.0])
    cax = part.add_subplot(grid[0, 1])
    colorbar = part.colorbar(ScalarMappable(Normalize(vmin, vmax), cmap), cax=cax, orientation="horizontal")
    colorbar.set_label(label)
    cax.set_label("colorbar")


def index_figure(panels: Sequence[tuple[str, Any]], *, columns: int = 3, title: str = "") -> Figure:
    """A contact sheet: several rendered pictures (RGB arrays) with their titles, on one figure.

    Raises:
        UsageError: No panels, a panel that is not ``(title, RGB array)``, or ``columns < 1``.
    """
    if not panels:
        raise UsageError("index_image needs at least one (title, picture) panel")
    if columns < 1:
        raise UsageError(f"columns must be 1 or more, got {columns}")
    pictures = [_sheet_panel(panel, k) for k, panel in enumerate(panels)]
    n_cols = min(columns, len(pictures))
    n_rows = -(-len(pictures) // n_cols)
    # Each row as tall as its tallest picture (a sheet of wide bars and square overlays wastes no space).
    aspects = [max(p.shape[0] / p.shape[1] for _, p in pictures[r * n_cols : (r + 1) * n_cols]) for r in range(n_rows)]
    cell = float(np.clip(max(p.shape[1] for _, p in pictures) / 100.0, SHEET_CELL_MIN_IN, SHEET_CELL_MAX_IN))
    with font_context([title, *(name for name, _ in pictures)]):
        fig = new_figure(cell * n_cols, sum(cell * a + 0.4 for a in aspects) + (0.4 if title else 0.0))
        axes = fig.subplots(n_rows, n_cols, squeeze=False, gridspec_kw={"height_ratios": aspects}).ravel()
        for ax, (name, picture) in zip(axes, pictures):
            _panel(ax, picture, name)
            ax.set_title(name)
            ax.set_frame_on(False)
        for ax in axes[len(pictures) :]:
            ax.set_visible(False)
        if title:
            fig.suptitle(title)
    return fig


def index_image(panels: Sequence[tuple[str, Any]], *, columns: int = 3, title: str = "") -> np.ndarray:
    """Render :func:`index_figure` to a uint8 ``[H, W, 3]`` array."""
    return figure_to_rgb(index_figure(panels, columns=columns, title=title))


def _panel(ax: Any, picture: np.ndarray, label: str) -> None:
    ax.imshow(picture, interpolation="nearest" if max(picture.shape[:2]) <= 64 else None)
    ax.set_label(label)
    ax.set_xticks([])
    ax.set_yticks([])


def _check_rows(images: Sequence[Any], columns: Sequence[Sequence[Any]], n_rows: int) -> None:
    for i, image in enumerate(images):
        as_rgb_image(image, f"images[{i}]")
    for j, column in enumerate(columns):
        if len(column) != n_rows:
            raise UsageError(f"columns[{j}] has {len(column)} pictures but there are {n_rows} images (one per row)")


def _check_texts(texts: Sequence[Any] | None, count: int, name: str, what: str) -> None:
    if texts is not None and len(texts) != count:
        raise UsageError(f"{name} has {len(texts)} entries; expected {count} ({what})")


def _sheet_panel(panel: Any, index: int) -> tuple[str, np.ndarray]:
    if not isinstance(panel, tuple | list) or len(panel) != 2:
        raise UsageError(f"panel {index} must be a (title, RGB array) pair")
    name, picture = panel
    return str(name), as_rgb_image(picture, f"panel {index} ({name})")
