"""Pictures of the full, axis, branch and other gate kinds, checked on their rendered pixels."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from matplotlib.text import Text

from attnviz.render import axis_gate, branch_weights, figure_to_rgb, full_gate, gate_heatmap
from attnviz.render.gatemaps import GATE_CMAP
from attnviz.runtime.errors import UsageError

JET = np.asarray(matplotlib.colormaps[GATE_CMAP](np.linspace(0.0, 1.0, 256)))[:, :3] * 255.0  # the gate colours


def axes_by_label(fig, label):
    found = [ax for ax in fig.axes if ax.get_label() == label]
    assert len(found) == 1, f"expected one axes labelled {label!r}, found {[a.get_label() for a in fig.axes]}"
    return found[0]


def decode_jet(colours):
    """The [0, 1] value whose jet colour is nearest to each RGB colour, NaN where none is near (text, spines)."""
    colours = np.asarray(colours, dtype=np.float64)
    unique, inverse = np.unique(colours.reshape(-1, 3), axis=0, return_inverse=True)
    distance = np.linalg.norm(unique[:, None, :] - JET, axis=-1)
    values = np.where(distance.min(axis=1) < 12.0, distance.argmin(axis=1) / 255.0, np.nan)
    return values[inverse.reshape(-1)].reshape(colours.shape[:-1])


def axes_pixels(fig, rgb, ax, inset=3):
    """The rendered pixels inside ``ax`` and the display coordinates (x, y from the bottom) of each."""
    box = ax.get_window_extent()
    height = rgb.shape[0]
    x0, x1 = int(np.ceil(box.x0)) + inset, int(np.floor(box.x1)) - inset
    top, bottom = height - int(np.floor(box.y1)) + inset, height - int(np.ceil(box.y0)) - inset
    ys, xs = np.mgrid[top:bottom, x0:x1]
    return rgb[top:bottom, x0:x1], xs + 0.5, height - ys - 0.5


def colour_at(rgb, ax, x, y):
    """The rendered RGB colour at data point (x, y) of ``ax``."""
    px, py = ax.transData.transform((x, y))
    return rgb[int(rgb.shape[0] - py), int(px)]


def texts(fig):
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


# ---------------------------------------------------------------- axis gates (coordinate attention)


@pytest.mark.parametrize(("shape", "along"), [((8, 10, 1), "height (rows)"), ((8, 1, 10), "width (columns)")])
def test_axis_gate_hot_cell_is_drawn_at_its_channel_and_position(shape, along):
    values = np.zeros(shape)
    values.reshape(8, 10)[3, 5] = 1.0
    fig = axis_gate(values, title="layer1.0.ca#1")
    rgb = figure_to_rgb(fig)
    heat = axes_by_label(fig, "heatmap")
    pixels, xs, ys = axes_pixels(fig, rgb, heat)
    decoded = decode_jet(pixels)
    hot = decoded > 0.9
    assert hot.any()
    # Every other pixel of the map is drawn as 0.
    np.testing.assert_allclose(decoded[~hot & np.isfinite(decoded)], 0.0, atol=0.01)
    centre = heat.transData.inverted().transform((xs[hot].mean(), ys[hot].mean()))
    np.testing.assert_allclose(centre, (5.0, 3.0), atol=0.25)
    assert heat.get_xlabel() == along
    assert heat.get_ylabel() == "channel"
    profile = axes_by_label(fig, "profile").get_lines()[0]
    np.testing.assert_allclose(profile.get_ydata(), values.reshape(8, 10).mean(axis=0))


def test_axis_gate_values_read_back_from_the_pixels():
    rng = np.random.default_rng(3)
    values = rng.uniform(0.0, 1.0, size=(5, 6, 1))
    fig = axis_gate(values, title="ca")
    rgb = figure_to_rgb(fig)
    heat = axes_by_label(fig, "heatmap")
    drawn = np.array([[decode_jet(colour_at(rgb, heat, x, c)) for x in range(6)] for c in range(5)])
    np.testing.assert_allclose(drawn, values[:, :, 0], atol=1.5 / 255)
    colorbar = axes_by_label(fig, "colorbar")
    assert colorbar.get_ylim() == (0.0, 1.0)


@pytest.mark.parametrize("shape", [(4, 5, 6), (4, 1, 1), (4, 5), (4, 5, 1, 1)])
def test_axis_gate_rejects_other_shapes(shape):
    with pytest.raises(UsageError, match=r"\[C, H, 1\]"):
        axis_gate(np.full(shape, 0.5), title="ca")


# ---------------------------------------------------------------- full gates (BAM)


def test_full_gate_overlay_hot_spot_is_where_the_channel_mean_is_highest():
    gate = np.full((4, 8, 8), 0.2)
    gate[:, 2, 6] = 1.0  # channel mean 1.0 at row 2, column 6; 0.2 elsewhere
    gate[0, 5, 1] = 1.0  # one channel alone: mean 0.4
    image = np.zeros((64, 64, 3), np.uint8)  # black, so the overlay's pixels are half the colour
    fig = full_gate(image, gate, title="bam1")
    rgb = figure_to_rgb(fig)
    overlay = axes_by_label(fig, "overlay")
    pixels, xs, ys = axes_pixels(fig, rgb, overlay)
    decoded = decode_jet(np.clip(pixels.astype(np.float64) * 2.0, 0, 255))
    hot = decoded >= np.nanmax(decoded) - 0.05
    col, row = overlay.transData.inverted().transform((xs[hot].mean(), ys[hot].mean()))
    # Image pixel (row, col) lies in gate cell (row // 8, col // 8).
    assert (int(row // 8), int(col // 8)) == (2, 6)
    # Bilinear upsampling (half-pixel centres) reaches 0.2 + 0.8 * (1 - 0.5 / 8) ** 2 at the pixels nearest the centre.
    assert np.nanmax(decoded) == pytest.approx(0.2 + 0.8 * (15 / 16) ** 2, abs=0.02)
    assert np.nanmin(decoded) == pytest.approx(0.2, abs=0.02)


def test_full_gate_shows_the_spread_and_the_per_channel_means():
    gate = np.zeros((3, 4, 4))
    gate[0, 1, 1] = 1.0  # the channels disagree at (1, 1) only: std = sqrt(2)/3
    gate[1] = 0.5
    fig = full_gate(np.zeros((16, 16, 3)), gate, title="bam1")
    rgb = figure_to_rgb(fig)
    spread_ax = axes_by_label(fig, "channel spread")
    std = gate.std(axis=0)
    magma = np.asarray(matplotlib.colormaps["magma"](np.linspace(0.0, 1.0, 256)))[:, :3] * 255.0
    for r in range(4):
        for c in range(4):
            colour = colour_at(rgb, spread_ax, c, r).astype(np.float64)
            drawn = np.linalg.norm(colour - magma, axis=1).argmin() / 255.0 * 0.5
            assert drawn == pytest.approx(std[r, c], abs=0.005)
    bars = axes_by_label(fig, "channel means").patches
    np.testing.assert_allclose([p.get_height() for p in bars], gate.mean(axis=(1, 2)))
    assert axes_by_label(fig, "colorbar").get_ylim() == (0.0, 1.0)
    assert axes_by_label(fig, "spread colorbar").get_ylim() == (0.0, 0.5)


def test_full_gate_minmax_scale_stretches_the_mean_and_says_so():
    gate = np.full((2, 4, 4), 0.4)
    gate[:, 0, 0] = 0.6
    fig = full_gate(np.zeros((8, 8, 3)), gate, title="bam1", scale="minmax")
    assert axes_by_label(fig, "colorbar").get_ylim() == pytest.approx((0.4, 0.6))
    assert any("min–max" in t for t in texts(fig))
    absolute = full_gate(np.zeros((8, 8, 3)), gate, title="bam1")
    assert not any("min–max" in t for t in texts(absolute))


@pytest.mark.parametrize(
    ("values", "scale", "message"),
    [
        (np.full((4, 4), 0.5), "absolute", r"\[C, H, W\]"),
        (np.full((2, 4, 4), 1.5), "absolute", "1 \\+ g"),
        (np.full((2, 4, 4), 0.5), "log", "scale"),
    ],
)
def test_full_gate_rejects_bad_input(values, scale, message):
    with pytest.raises(UsageError, match=message):
        full_gate(np.zeros((8, 8, 3)), values, title="bam1", scale=scale)


# ---------------------------------------------------------------- branch weights (selective kernel)


def test_branch_weights_cells_show_each_weight():
    weights = np.full((3, 6), 1.0 / 3.0)
    weights[:, 2] = [0.8, 0.15, 0.05]
    weights[:, 4] = [0.0, 0.1, 0.9]
    fig = branch_weights(weights, title="layer2.0.sk")
    rgb = figure_to_rgb(fig)
    heat = axes_by_label(fig, "heatmap")
    drawn = np.array([[decode_jet(colour_at(rgb, heat, c, m)) for c in range(6)] for m in range(3)])
    np.testing.assert_allclose(drawn, weights, atol=1.5 / 255)
    assert drawn[0, 2] > drawn[1, 2] > drawn[2, 2]
    assert [t.get_text() for t in heat.get_yticklabels()] == ["branch 0", "branch 1", "branch 2"]
    means = axes_by_label(fig, "branch means").patches
    np.testing.assert_allclose([p.get_width() for p in means], weights.mean(axis=1))


@pytest.mark.parametrize("values", [np.full(4, 0.5), np.full((2, 3, 4), 0.5), np.full((2, 3), 1.2)])
def test_branch_weights_rejects_bad_input(values):
    with pytest.raises(UsageError, match="branch"):
        branch_weights(values, title="sk")


# ---------------------------------------------------------------- any other gate


def test_gate_heatmap_flattens_the_trailing_axes_in_order():
    rng = np.random.default_rng(7)
    values = rng.uniform(0.0, 1.0, size=(2, 3, 4))
    fig = gate_heatmap(values, title="odd")
    rgb = figure_to_rgb(fig)
    heat = axes_by_label(fig, "heatmap")
    drawn = np.array([[decode_jet(colour_at(rgb, heat, c, r)) for c in range(12)] for r in range(2)])
    np.testing.assert_allclose(drawn, values.reshape(2, 12), atol=1.5 / 255)
    assert axes_by_label(fig, "colorbar").get_ylim() == (0.0, 1.0)


def test_gate_heatmap_outside_the_unit_range_uses_min_max_and_says_so():
    values = np.array([[-2.0, 0.0], [1.0, 2.0]])
    fig = gate_heatmap(values, title="logits")
    assert axes_by_label(fig, "colorbar").get_ylim() == (-2.0, 2.0)
    assert any("own range" in t for t in texts(fig))
    constant = gate_heatmap(np.full((2, 2), 3.0), title="logits")
    assert axes_by_label(constant, "colorbar").get_ylim() == (2.5, 3.5)
    assert not any("own range" in t for t in texts(gate_heatmap(np.full((2, 2), 0.5), title="g")))


@pytest.mark.parametrize("values", [np.float64(0.5), np.zeros((0, 3)), np.array([0.5, np.nan])])
def test_gate_heatmap_rejects_scalars_empty_and_nan(values):
    with pytest.raises(UsageError, match="values"):
        gate_heatmap(values, title="odd")


# ---------------------------------------------------------------- every picture


@pytest.mark.parametrize(
    "draw",
    [
        lambda: full_gate(np.zeros((8, 8, 3)), np.full((2, 4, 4), 0.5), title="gate-name"),
        lambda: axis_gate(np.full((2, 4, 1), 0.5), title="gate-name"),
        lambda: branch_weights(np.full((2, 4), 0.5), title="gate-name"),
        lambda: gate_heatmap(np.full((2, 4), 0.5), title="gate-name"),
    ],
)
def test_every_picture_has_a_colour_bar_and_its_title(draw):
    fig = draw()
    axes_by_label(fig, "colorbar")
    assert fig._suptitle is not None and fig._suptitle.get_text().startswith("gate-name: ")
    assert figure_to_rgb(fig).std() > 0  # draws without error and is not blank
