"""Every picture kind, at its default size: no two texts overlap, no text is smaller than 7 pt, no text
leaves the picture, and the picture carries its scale (a colour bar, or a value axis with tick labels).

Pictures drawn as pixels (``attnviz maps``' PNGs) record each text's box and size as they draw it;
matplotlib figures are drawn once with a renderer that notes every text it is asked to draw, whose
window extents are then compared.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from matplotlib.text import Text

from attnviz import render

MIN_PT = 7.0
RNG = np.random.default_rng(7)
IMAGE32 = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
IMAGE224 = RNG.integers(0, 256, (224, 224, 3), dtype=np.uint8)
FEATURES = RNG.uniform(0, 3, (64, 8, 8))
GATE64 = RNG.uniform(0, 1, 64)
TITLE = "layer3.1.attention.channel_attn: channel gate"


def _overlapping(boxes):
    """Pairs of (text, box) whose boxes share more than a pixel's edge."""
    return [
        (a[0], b[0])
        for a, b in itertools.combinations(boxes, 2)
        if a[1][0] < b[1][2] - 1 and b[1][0] < a[1][2] - 1 and a[1][1] < b[1][3] - 1 and b[1][1] < a[1][3] - 1
    ]


PIXEL_PICTURES = {
    "bars, 12 channels": lambda: render.bars_picture(RNG.uniform(0, 1, 12), title=TITLE),
    "bars, 32 channels": lambda: render.bars_picture(RNG.uniform(0, 1, 32), title=TITLE),
    "bars, 64 channels": lambda: render.bars_picture(GATE64, title=TITLE),
    "bars, 128 channels": lambda: render.bars_picture(RNG.uniform(0, 1, 128), title=TITLE),
    "bars, 128 channels, tied top": lambda: render.bars_picture(np.r_[np.full(10, 0.99), RNG.uniform(0, 0.5, 118)]),
    "bars, 512 channels, channel order": lambda: render.bars_picture(RNG.uniform(0, 1, 512), order="channel"),
    "bars, constant gate": lambda: render.bars_picture(np.full(64, 0.5), title=TITLE),
    "bars, mean over images": lambda: render.bars_picture(RNG.uniform(0, 1, (5, 40)), title=TITLE),
    "spatial overlay": lambda: render.overlay_picture(IMAGE32, RNG.uniform(0.19, 0.52, (16, 16)), title=TITLE),
    "spatial overlay, min-max": lambda: render.overlay_picture(IMAGE32, RNG.uniform(0.2, 0.3, (8, 8)), scale="minmax"),
    "spatial overlay, 224 input": lambda: render.overlay_picture(IMAGE224, RNG.uniform(0, 1, (7, 7)), title=TITLE * 3),
    "Grad-CAM overlay": lambda: render.overlay_picture(
        IMAGE32, RNG.uniform(0, 1, (32, 32)), title=TITLE, quantity="Grad-CAM", source_size=(4, 4)
    ),
    "features before/after": lambda: render.features_picture(
        FEATURES,
        after=FEATURES * 0.5,
        channels=list(np.argsort(-GATE64)[:8]),
        rank_by="given",
        channel_weights=GATE64,
        title=TITLE,
        ranking="with the largest gate values",
    ),
    "features of a layer, 12 channels": lambda: render.features_picture(FEATURES * 100 - 50, top_n=12, title=TITLE),
    "index sheet": lambda: render.sheet_picture(
        [("a", render.bars_picture(GATE64).rgb), ("b", render.overlay_picture(IMAGE32, np.eye(4)).rgb)] * 3,
        title="cbam_cnn: predicted 'circle' (P = 0.656)",
    ),
}


@pytest.mark.parametrize("kind", list(PIXEL_PICTURES))
def test_pixel_pictures_are_readable(kind):
    picture = PIXEL_PICTURES[kind]()
    height, width = picture.rgb.shape[:2]
    boxes = [(t.text, t.box) for t in picture.texts]
    assert boxes, "no text at all"
    assert not _overlapping(boxes), _overlapping(boxes)
    assert min(t.size_pt for t in picture.texts) >= MIN_PT
    outside = [t.text for t in picture.texts if t.box[0] < 0 or t.box[1] < 0 or t.box[2] > width or t.box[3] > height]
    assert not outside, outside
    if kind != "index sheet":  # the sheet's pictures carry theirs
        assert picture.scales, "no colour bar or value axis"


def drawn_texts(fig):
    """Every non-empty text the figure draws: (text, window box in pixels from the top, size in points)."""
    from attnviz.render.fonts import font_context

    with font_context():
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        seen = []
        draw_text = renderer.draw_text

        def record(gc, x, y, s, prop, angle, ismath=False, mtext=None):
            if s.strip() and mtext is not None and mtext not in seen:
                seen.append(mtext)
            return draw_text(gc, x, y, s, prop, angle, ismath=ismath, mtext=mtext)

        renderer.draw_text = record  # this one renderer, for this one draw
        try:
            fig.draw(renderer)
        finally:
            del renderer.draw_text
        height = fig.bbox.height
        found = []
        for text in seen:
            box = Text.get_window_extent(text, renderer)  # the text's own box (an annotation's without its arrow)
            found.append((text.get_text(), (box.x0, height - box.y1, box.x1, height - box.y0), text.get_fontsize()))
    return found, (fig.bbox.width, height)


def _carries_scale(fig):
    """A colour bar, or axes whose y axis has numeric tick labels."""
    for ax in fig.axes:
        if hasattr(ax, "_colorbar"):
            return True
        labels = [t.get_text() for t in ax.yaxis.get_ticklabels() if t.get_visible()]
        if ax.yaxis.get_visible() and any(label.replace(".", "").replace("−", "").isdigit() for label in labels):
            return True
    return False


FIGURES = {
    "channel bars, 32": lambda: render.channel_bars(RNG.uniform(0, 1, 32), title=TITLE),
    "channel bars, 64": lambda: render.channel_bars(GATE64, title=TITLE),
    "channel bars, 128": lambda: render.channel_bars(RNG.uniform(0, 1, 128), title=TITLE),
    "channel bars, constant": lambda: render.channel_bars(np.full(64, 0.5), title=TITLE),
    "channel bars, per class": lambda: render.channel_bars(
        RNG.uniform(0, 1, (40, 32)), labels=RNG.integers(0, 4, 40), class_names=["cat", "dog", "car", "ship"]
    ),
    "spatial overlay": lambda: render.spatial_overlay(IMAGE32, RNG.uniform(0, 1, (16, 16)), title=TITLE),
    "Grad-CAM overlay": lambda: render.spatial_overlay(IMAGE32, RNG.uniform(0, 1, (32, 32)), quantity="Grad-CAM"),
    "feature grid, before/after": lambda: render.feature_grid(
        FEATURES, after=FEATURES * 0.5, channel_weights=GATE64, title=TITLE
    ),
    "feature grid, 12 channels": lambda: render.feature_grid(FEATURES, top_n=12, title=TITLE),
    "full gate": lambda: render.full_gate(IMAGE32, RNG.uniform(0, 1, (64, 8, 8)), title=TITLE),
    "axis gate": lambda: render.axis_gate(RNG.uniform(0, 1, (64, 16, 1)), title=TITLE),
    "branch weights": lambda: render.branch_weights(RNG.uniform(0, 1, (3, 64)), title=TITLE),
    "other gate": lambda: render.gate_heatmap(RNG.uniform(0, 1, (6, 4, 5)), title=TITLE),
    "comparison grid": lambda: render.comparison_grid(
        [IMAGE32] * 3,
        [[IMAGE32] * 3] * 4,
        row_titles=["truth: circle"] * 3,
        column_titles=["input", "cnn (baseline)", "se_cnn", "cbam_cnn"],
        captions=[[""] * 3, *([["P(true class) = 0.075\npredicted: triangle"] * 3] * 3)],
        caption_colors=[[None] * 3, *([["tab:red"] * 3] * 3)],
        scale=("viridis", 0.0, 1.0, "Grad-CAM (each map divided by its maximum)"),
    ),
}


@pytest.mark.parametrize("kind", list(FIGURES))
def test_matplotlib_figures_are_readable(kind):
    fig = FIGURES[kind]()
    texts, (width, height) = drawn_texts(fig)
    boxes = [(text, box) for text, box, _ in texts]
    assert not _overlapping(boxes), _overlapping(boxes)
    small = [(text, size) for text, _, size in texts if size < MIN_PT]
    assert not small, small
    outside = [t for t, b in boxes if b[0] < -1 or b[1] < -1 or b[2] > width + 1 or b[3] > height + 1]
    assert not outside, outside
    assert _carries_scale(fig)
