"""Specifications of attnviz.render: what each figure shows, read back from its artists."""

from __future__ import annotations

import subprocess
import sys
import warnings

import matplotlib
import numpy as np
import pytest
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.text import Text

from attnviz.render import (
    bar_order,
    cam_overlay,
    channel_bars,
    comparison_grid,
    feature_grid,
    figure_to_rgb,
    fonts,
    index_figure,
    index_image,
    overlay_rgb,
    save_figure,
    save_rgb,
    spatial_overlay,
)
from attnviz.runtime.errors import UsageError


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def axes_by_label(fig, label):
    found = [ax for ax in fig.axes if ax.get_label() == label]
    assert len(found) == 1, f"expected one axes labelled {label!r}, found {len(found)}"
    return found[0]


def bar_heights(ax, exclude_gid="spread-band"):
    bars = [c for c in ax.containers if isinstance(c, BarContainer) and c.patches[0].get_gid() != exclude_gid]
    assert len(bars) == 1
    patches = bars[0].patches
    return np.array([p.get_height() for p in patches]), np.array([p.get_x() + p.get_width() / 2 for p in patches])


def line_labelled(ax, prefix):
    lines = [line for line in ax.get_lines() if line.get_label().startswith(prefix)]
    assert len(lines) == 1, [line.get_label() for line in ax.get_lines()]
    return lines[0]


def all_texts(fig):
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


# ---------------------------------------------------------------- channel bars


def test_bar_order_sorts_by_weight_descending_or_keeps_channels():
    values = np.array([0.2, 0.9, 0.5, 0.9, 0.1])
    assert bar_order(values, "weight").tolist() == [1, 3, 2, 0, 4]
    assert bar_order(values, "channel").tolist() == [0, 1, 2, 3, 4]
    stacked = np.stack([values, values[::-1]])
    assert bar_order(stacked).tolist() == np.argsort(-stacked.mean(axis=0), kind="stable").tolist()


def test_single_image_bars_are_the_gate_values_sorted(rng):
    values = rng.uniform(0.05, 0.95, size=24)
    fig = channel_bars(values, title="se1", top_k=3)
    ax = axes_by_label(fig, "bars")
    heights, centres = bar_heights(ax)
    expected_order = np.argsort(-values)
    np.testing.assert_allclose(heights, values[expected_order])
    np.testing.assert_allclose(centres, np.arange(24))
    assert ax.get_ylim() == (0.0, 1.0)
    assert ax.get_xlabel() == "channel (sorted by gate weight)"
    assert line_labelled(ax, "0.5").get_ydata()[0] == 0.5
    np.testing.assert_allclose(line_labelled(ax, "mean").get_ydata()[0], values.mean())
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("0.5") for t in legend) and any(t.startswith("mean") for t in legend)
    # The labelled bars are the 3 highest and 3 lowest channels, each above its own bar.
    labels = [t for t in ax.texts if t.get_gid() == "channel-label"]
    expected = set(expected_order[:3].tolist()) | set(expected_order[-3:].tolist())
    assert {int(t.get_text()) for t in labels} == expected
    order = bar_order(values)
    for text in labels:
        assert order[int(round(text.xy[0]))] == int(text.get_text())
    assert "one image" in fig.get_suptitle()


def test_a_constant_gate_is_said_to_be_constant_instead_of_ranked(rng):
    values = np.full(64, 0.5) + rng.uniform(-1e-5, 1e-5, 64)  # a dead SE/CBAM MLP: sigmoid(0) everywhere
    ax = axes_by_label(channel_bars(values, title="cbam2.channel_attn"), "bars")
    assert not [t for t in ax.texts if t.get_gid() == "channel-label"]
    notes = [t.get_text() for t in ax.texts if t.get_gid() == "constant-note"]
    assert len(notes) == 1 and "constant gate" in notes[0] and "0.500" in notes[0]
    varied = axes_by_label(channel_bars(rng.uniform(0.2, 0.8, 64)), "bars")
    assert not [t for t in varied.texts if t.get_gid() == "constant-note"]
    assert [t for t in varied.texts if t.get_gid() == "channel-label"]


def test_channel_order_keeps_channel_order(rng):
    values = rng.uniform(size=10)
    fig = channel_bars(values, order="channel", top_k=0)
    ax = axes_by_label(fig, "bars")
    np.testing.assert_allclose(bar_heights(ax)[0], values)
    assert ax.get_xlabel() == "channel"
    assert not [t for t in ax.texts if t.get_gid() == "channel-label"]
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(c) for c in range(10)]


def test_image_set_bars_show_means_and_std_error_bars(rng):
    values = rng.uniform(size=(20, 16))
    fig = channel_bars(values, title="cbam1")
    ax = axes_by_label(fig, "bars")
    order = np.argsort(-values.mean(axis=0), kind="stable")
    heights, _ = bar_heights(ax)
    np.testing.assert_allclose(heights, values.mean(axis=0)[order])
    (errorbars,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    segments = np.array(errorbars.lines[2][0].get_segments())  # [C, 2 ends, (x, y)]
    np.testing.assert_allclose(segments[:, 0, 1], (values.mean(0) - values.std(0))[order])
    np.testing.assert_allclose(segments[:, 1, 1], (values.mean(0) + values.std(0))[order])
    np.testing.assert_allclose(line_labelled(ax, "mean").get_ydata()[0], values.mean())
    assert "N = 20" in fig.get_suptitle()
    assert "std" in errorbars.get_label()


def test_many_channels_show_a_quantile_band(rng):
    values = rng.uniform(size=(30, 200))
    fig = channel_bars(values, spread="quantile", order="channel")
    ax = axes_by_label(fig, "bars")
    (band,) = [c for c in ax.containers if isinstance(c, BarContainer) and c.patches[0].get_gid() == "spread-band"]
    low, high = np.quantile(values, [0.1, 0.9], axis=0)
    np.testing.assert_allclose([p.get_y() for p in band.patches], low)
    np.testing.assert_allclose([p.get_y() + p.get_height() for p in band.patches], high)
    assert "quantile" in band.get_label()


def test_per_class_panel_lines_are_class_means_in_bar_order(rng):
    values = rng.uniform(size=(40, 12))
    labels = rng.integers(0, 3, size=40)
    names = ["cat", "dog", "ship"]
    fig = channel_bars(values, labels=labels, class_names=names)
    ax = axes_by_label(fig, "per-class")
    order = np.argsort(-values.mean(axis=0), kind="stable")
    for k, name in enumerate(names):
        line = line_labelled(ax, f"{name} (n={(labels == k).sum()})")
        np.testing.assert_allclose(line.get_ydata(), values[labels == k].mean(axis=0)[order])
    assert {t.get_text().split(" (")[0] for t in ax.get_legend().get_texts()} == set(names)
    assert ax.get_ylim() == (0.0, 1.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"values": np.array([0.2, 1.4])},
        {"values": np.zeros((2, 2, 2))},
        {"values": np.array([0.2, np.nan])},
        {"values": np.full((3, 4), 0.5), "labels": [0, 1]},
        {"values": np.full((2, 4), 0.5), "labels": [0, 5], "class_names": ["a", "b"]},
        {"values": np.full(4, 0.5), "order": "random"},
        {"values": np.full((2, 4), 0.5), "spread": "iqr"},
    ],
)
def test_channel_bars_rejects_bad_input(kwargs):
    with pytest.raises(UsageError):
        channel_bars(**kwargs)


# ---------------------------------------------------------------- overlays


def grey_image(size=64, level=128):
    return np.full((size, size, 3), level, np.uint8)


def test_overlay_hot_cell_lands_in_the_matching_region():
    heat = np.zeros((4, 4))
    heat[1, 2] = 1.0
    image = grey_image()
    out = overlay_rgb(image, heat)
    assert out.dtype == np.uint8 and out.shape == (64, 64, 3)
    redness = out[:, :, 0].astype(int) - image[:, :, 0]
    row, col = np.unravel_index(np.argmax(redness), redness.shape)
    assert 16 <= row < 32 and 32 <= col < 48


def test_overlay_colours_match_matplotlib_and_clip(rng):
    heat = rng.uniform(-0.2, 1.2, size=(8, 8))
    image = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    cmap = matplotlib.colormaps["jet"]
    expected_colour = cmap(np.clip(heat, 0.0, 1.0))[:, :, :3] * 255  # the colour bar's colours
    expected = np.rint(0.6 * image + 0.4 * expected_colour)
    out = overlay_rgb(image, heat, alpha=0.4)
    assert np.abs(out.astype(int) - expected).max() <= 1
    # alpha = 1 shows the colour alone: exactly matplotlib's colour, also for a coarse colormap object.
    for colormap in (cmap, matplotlib.colormaps["viridis"].resampled(7)):
        colours = overlay_rgb(image, heat, alpha=1.0, cmap=colormap)
        np.testing.assert_array_equal(colours, np.rint(colormap(np.clip(heat, 0.0, 1.0))[:, :, :3] * 255))


def test_overlay_upsamples_bilinearly_with_centred_pixels():
    heat = np.array([[0.0, 1.0]])
    out = overlay_rgb(np.zeros((1, 4, 3), np.uint8), heat, cmap="gray", alpha=1.0)
    # Half-pixel centres: output pixels 0..3 sample x = -0.25, 0.25, 0.75, 1.25 → 0, 0.25, 0.75, 1.
    expected = np.rint(matplotlib.colormaps["gray"](np.array([0.0, 0.25, 0.75, 1.0]))[:, 0] * 255)
    np.testing.assert_array_equal(out[0, :, 0], expected)


def test_cam_overlay_requires_a_normalised_cam(rng):
    image = grey_image(16)
    cam = rng.uniform(size=(4, 4))
    np.testing.assert_array_equal(cam_overlay(image, cam), overlay_rgb(image, cam))
    with pytest.raises(UsageError, match="normalise"):
        cam_overlay(image, cam * 3)
    with pytest.raises(UsageError):
        overlay_rgb(image, cam, alpha=1.5)
    with pytest.raises(UsageError):
        overlay_rgb(np.zeros((4, 4, 5)), cam)


def test_flat_gate_map_is_uniform_on_the_absolute_scale(rng):
    image = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    fig = spatial_overlay(image, np.full((8, 8), 0.5), title="cbam1.sa")
    overlay = axes_by_label(fig, "overlay").images[0].get_array()
    colour_part = overlay.astype(float) - 0.5 * image
    assert np.ptp(colour_part.reshape(-1, 3), axis=0).max() <= 1.0  # no hot spot anywhere
    assert axes_by_label(fig, "colorbar").get_ylim() == (0.0, 1.0)
    raw = axes_by_label(fig, "gate map").images[0]
    assert raw.get_array().shape == (8, 8) and raw.get_clim() == (0.0, 1.0)
    assert "min–max" not in fig.get_suptitle()


def test_spatial_overlay_hot_spot_and_minmax_scale():
    image = grey_image(64)
    gate = np.full((4, 4), 0.4)
    gate[3, 0] = 0.6
    fig = spatial_overlay(image, gate, title="cbam2.sa", scale="minmax")
    assert "(min–max scaled)" in fig.get_suptitle()
    np.testing.assert_allclose(axes_by_label(fig, "colorbar").get_ylim(), (0.4, 0.6))
    overlay = axes_by_label(fig, "overlay").images[0].get_array()
    redness = overlay[:, :, 0].astype(int) - image[:, :, 0]
    row, col = np.unravel_index(np.argmax(redness), redness.shape)
    assert row >= 48 and col < 16


def test_minmax_of_a_flat_map_warns_and_falls_back():
    with pytest.warns(UserWarning, match="constant"):
        fig = spatial_overlay(grey_image(16), np.full((4, 4), 0.5), scale="minmax")
    assert axes_by_label(fig, "colorbar").get_ylim() == (0.0, 1.0)


# ---------------------------------------------------------------- feature grid


def panel_channels(fig, prefix):
    axes = [ax for ax in fig.axes if ax.get_label().startswith(prefix + " ") and ax.images]
    return axes, [int(ax.get_label().split()[1]) for ax in axes]


def test_feature_grid_shows_the_top_channels_by_mean_activation(rng):
    features = rng.uniform(size=(20, 6, 6)) * rng.uniform(size=(20, 1, 1))
    fig = feature_grid(features, top_n=5, title="conv2")
    axes, shown = panel_channels(fig, "channel")
    assert len([ax for ax in fig.axes if ax.images]) == 5
    assert shown == np.argsort(-features.mean(axis=(1, 2)))[:5].tolist()
    for ax, channel in zip(axes, shown):
        np.testing.assert_allclose(ax.images[0].get_array(), features[channel])
        assert ax.get_title() == f"ch {channel}"


def test_feature_grid_before_and_after_share_a_scale_per_channel(rng):
    features = rng.uniform(size=(12, 5, 5))
    weights = rng.uniform(size=12)
    after = features * weights[:, None, None]
    given = np.argsort(-weights)
    fig = feature_grid(features, after=after, channels=given, rank_by="given", top_n=4, channel_weights=weights)
    assert len([ax for ax in fig.axes if ax.images]) == 8
    before_axes, before = panel_channels(fig, "before")
    after_axes, after_shown = panel_channels(fig, "after")
    assert before == after_shown == given[:4].tolist()
    for top, bottom, channel in zip(before_axes, after_axes, before):
        np.testing.assert_allclose(bottom.images[0].get_array(), after[channel])
        assert top.images[0].get_clim() == bottom.images[0].get_clim()
        assert top.images[0].get_clim()[1] == pytest.approx(features[channel].max())
        assert top.get_title() == f"ch {channel} · gate {weights[channel]:.3f}"
    assert "before gate" in all_texts(fig) and "after gate" in all_texts(fig)


def test_feature_grid_rejects_bad_arguments(rng):
    features = rng.uniform(size=(4, 3, 3))
    with pytest.raises(UsageError):
        feature_grid(features, rank_by="given")
    with pytest.raises(UsageError):
        feature_grid(features, channels=[7])
    with pytest.raises(UsageError):
        feature_grid(features, after=features[:2])


# ---------------------------------------------------------------- comparison grid and contact sheet


def test_comparison_grid_layout_titles_and_captions(rng):
    images = [rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8) for _ in range(2)]
    overlays = [[cam_overlay(im, rng.uniform(size=(4, 4))) for im in images] for _ in range(2)]
    captions = [["", ""], ["P = 0.873", "P = 0.120"], ["P = 0.910", "P = 0.455"]]
    titles = ["input", "baseline (cnn)", "cbam_cnn"]
    rows = ["truth: cat", "truth: dog"]
    fig = comparison_grid(images, [images, *overlays], row_titles=rows, column_titles=titles, captions=captions)
    panels = [ax for sub in fig.subfigs for ax in sub.axes if ax.images]
    assert len(panels) == 2 * 3
    row1_col1 = [ax for ax in panels if ax.get_label() == "panel 1,1"][0]
    np.testing.assert_array_equal(row1_col1.images[0].get_array(), overlays[0][1])
    texts = all_texts(fig)
    for expected in [*titles, "truth: cat", "truth: dog", "P = 0.873", "P = 0.455"]:
        assert expected in texts
    assert all(not ax.get_xticks().size and not ax.get_yticks().size for ax in panels)
    with pytest.raises(UsageError):
        comparison_grid(images, [images, overlays[0][:1]])
    with pytest.raises(UsageError):
        comparison_grid(images, [images], column_titles=["a", "b"])


def test_index_image_is_a_contact_sheet(rng):
    panels = [(f"picture {k}", rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)) for k in range(4)]
    fig = index_figure(panels, columns=3, title="img_001.png")
    assert len([ax for ax in fig.axes if ax.images and ax.get_visible()]) == 4
    assert {f"picture {k}" for k in range(4)} <= set(all_texts(fig))
    sheet = index_image(panels, columns=3)
    assert sheet.dtype == np.uint8 and sheet.ndim == 3 and sheet.shape[2] == 3
    with pytest.raises(UsageError):
        index_image([])


def test_index_rows_are_as_tall_as_their_own_pictures(rng):
    wide = [(f"bars {k}", rng.integers(0, 256, size=(100, 400, 3), dtype=np.uint8)) for k in range(3)]
    square = [(f"overlay {k}", rng.integers(0, 256, size=(400, 400, 3), dtype=np.uint8)) for k in range(3)]
    fig = index_figure(wide + square, columns=3)
    figure_to_rgb(fig)  # lay it out
    heights = {ax.get_label(): ax.get_position().height * fig.get_figheight() for ax in fig.axes if ax.images}
    assert max(heights[f"bars {k}"] for k in range(3)) < 0.5 * min(heights[f"overlay {k}"] for k in range(3))
    uniform = index_figure(square + square, columns=3)
    assert fig.get_figheight() < 0.8 * uniform.get_figheight()


# ---------------------------------------------------------------- fonts


def test_fallback_list_keeps_the_callers_family_then_dejavu_then_cjk():
    installed = ["DejaVu Sans", "WenQuanYi Micro Hei", "Noto Sans CJK JP", "Comic Neue"]
    chosen = fonts.choose_families(installed, ["sans-serif"])
    assert chosen == ["sans-serif", "DejaVu Sans", "Noto Sans CJK JP", "WenQuanYi Micro Hei"]
    assert fonts.choose_families(["DejaVu Sans"], ["SimHei"]) == ["SimHei", "DejaVu Sans"]
    assert fonts.needs_cjk(["truth: 猫"]) and fonts.needs_cjk(["고양이"])
    assert not fonts.needs_cjk(["cat – 0.5 ±"])


def draw_recording_warnings(build):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figure_to_rgb(build())
    return [str(w.message) for w in caught]


def build_cjk_figure():
    values = np.random.default_rng(0).uniform(size=(6, 8))
    names = ["猫", "狗", "飛行機"]
    return channel_bars(values, title="通道注意力", labels=[0, 1, 2, 0, 1, 2], class_names=names)


def test_cjk_class_names_render_without_missing_glyphs_when_a_font_exists():
    messages = draw_recording_warnings(build_cjk_figure)
    if fonts.cjk_families():
        assert not [m for m in messages if "missing from font" in m], messages
    else:
        # No CJK font: the figure still renders and the problem is reported, not hidden.
        assert any("CJK" in m for m in messages)
        assert any("missing from font" in m for m in messages)


def test_without_a_cjk_font_the_fallback_runs_and_warns(monkeypatch):
    monkeypatch.setattr(fonts, "installed_families", lambda: ["DejaVu Sans"])
    messages = draw_recording_warnings(build_cjk_figure)
    assert any("CJK" in m and ("install" in m or "cache" in m) for m in messages)
    assert any("missing from font" in m for m in messages)


def test_rendering_leaves_global_settings_alone(rng):
    before = dict(matplotlib.rcParams)
    spatial_overlay(grey_image(16), rng.uniform(size=(4, 4)), title="猫")
    channel_bars(rng.uniform(size=(3, 8)), labels=[0, 1, 0], class_names=["猫", "dog"])
    assert dict(matplotlib.rcParams) == before
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []


# ---------------------------------------------------------------- output


def test_figure_to_rgb_and_save_figure(tmp_path, rng):
    fig = spatial_overlay(grey_image(32), rng.uniform(size=(4, 4)), title="cbam1")
    rgb = figure_to_rgb(fig)
    width, height = fig.get_size_inches() * fig.dpi
    assert rgb.dtype == np.uint8 and rgb.shape == (round(height), round(width), 3)
    for name, magic in [("a/b/fig.png", b"\x89PNG"), ("fig.svg", b"<?xml"), ("fig.pdf", b"%PDF")]:
        path = save_figure(fig, tmp_path / name)
        assert path.read_bytes().startswith(magic)
    assert save_figure(fig, tmp_path / "noext", format="svg").read_bytes().startswith(b"<?xml")
    with pytest.raises(UsageError):
        save_figure(fig, tmp_path / "fig.bmp")
    assert save_rgb(rgb, tmp_path / "c/rgb.png").read_bytes().startswith(b"\x89PNG")
    assert figure_to_rgb(fig).shape == rgb.shape  # the figure is still usable after saving


def test_importing_attnviz_does_not_import_matplotlib():
    code = "import sys, attnviz; assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_channel_strip_bars_are_the_gate_values_with_the_half_line():
    from attnviz.render import channel_strip
    from attnviz.render.strips import BAR_COLOUR, HALF_COLOUR, LABEL_HEIGHT, MIN_WIDTH, PANEL_HEIGHT

    values = np.array([0.0, 0.25, 1.0, 1.5])  # above 1 is drawn as 1
    strip = channel_strip({"a": values, "b": np.full(8, 0.5)})
    assert strip.dtype == np.uint8 and strip.shape == (2 * (LABEL_HEIGHT + PANEL_HEIGHT), MIN_WIDTH, 3)
    body = strip[LABEL_HEIGHT : LABEL_HEIGHT + PANEL_HEIGHT]
    per_bar = MIN_WIDTH // values.size
    for channel, value in enumerate(np.clip(values, 0, 1)):
        column = body[:-1, channel * per_bar + per_bar // 2]  # the middle of the bar, above the grey base line
        blue = np.all(column == BAR_COLOUR, axis=1)
        height = round(value * (PANEL_HEIGHT - 1))  # rows from the bottom, the grey base line included
        half = PANEL_HEIGHT - 1 - round(0.5 * (PANEL_HEIGHT - 1))
        top = PANEL_HEIGHT - height
        assert not blue[:top].any() and blue[top:].sum() >= height - 2  # the 0.5 dash may cross the bar
        assert set(np.flatnonzero(~blue[top:]) + top) <= {half}
    assert np.all(body[half, 0:4] == HALF_COLOUR) and np.all(body[half, 4:8] != HALF_COLOUR)  # dashed
    assert np.all(body[-1] == 128)


def test_channel_strip_is_as_wide_as_the_most_channels_and_leaves_non_finite_gates_empty():
    from attnviz.render import channel_strip
    from attnviz.render.strips import BAR_COLOUR, LABEL_HEIGHT, PANEL_HEIGHT

    strip = channel_strip({"wide": np.ones(500), "nan": np.array([0.5, np.nan])})
    assert strip.shape == (2 * (LABEL_HEIGHT + PANEL_HEIGHT), 500, 3)
    second = strip[2 * LABEL_HEIGHT + PANEL_HEIGHT :]
    assert not np.all(second == BAR_COLOUR, axis=-1).any()  # no bars for a gate with NaN values
    bottom = strip[LABEL_HEIGHT + PANEL_HEIGHT - 2]  # just above the grey base line
    assert np.all(bottom == BAR_COLOUR, axis=-1).all()  # 500 bars of one pixel each, no gaps between them


def test_png_bytes_round_trips_the_pixels(rng):
    import io

    from PIL import Image

    from attnviz.render import png_bytes

    rgb = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    data = png_bytes(rgb)
    assert data.startswith(b"\x89PNG")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), rgb)
    with pytest.raises(UsageError):
        png_bytes(np.zeros((4, 4)) + 2.0)


# Pictures drawn as pixels (attnviz maps' PNG pictures): read back from the pixels and the recorded layout.


def _crop(picture, region):
    x0, y0, x1, y1 = picture.regions[region]
    return picture.rgb[y0:y1, x0:x1]


def _texts(picture):
    return [t.text for t in picture.texts]


def test_pixel_bars_are_the_gate_values_sorted_with_mean_and_names(rng):
    from attnviz.render import bars_picture

    values = rng.uniform(0.05, 0.95, 12)
    picture = bars_picture(values, title="g: channel gate")
    plot = _crop(picture, "plot")
    inner = plot[1:-1, 1:-1]
    blue = np.all(inner == (31, 119, 180), axis=2)
    expected = np.sort(values)[::-1]
    step = inner.shape[1] / values.size
    for position, value in enumerate(expected):
        column = blue[:, int((position + 0.5) * step)]
        assert column.sum() / inner.shape[0] == pytest.approx(value, abs=0.02)
    assert _texts(picture)[0] == "g: channel gate (12 channels, one image)"
    ticks = [t for t in _texts(picture) if t.isdigit()]
    assert ticks == [str(c) for c in np.argsort(-values, kind="stable")]  # every bar's channel under it
    assert f"mean {values.mean():.3f}" in _texts(picture)
    assert "value axis 0–1" in picture.scales


def test_pixel_bars_name_the_extremes_when_bars_are_narrow(rng):
    from attnviz.render import bars_picture

    values = rng.uniform(0.0, 1.0, 128)
    picture = bars_picture(values, top_k=3)
    order = np.argsort(-values, kind="stable")
    named = {str(c) for c in (*order[:3], *order[-3:])}
    texts = set(_texts(picture))
    assert named <= texts
    assert "rank of the channel by gate value (the highest and lowest named above their bars)" in texts


def test_pixel_bars_say_a_constant_gate_is_constant():
    from attnviz.render import bars_picture

    picture = bars_picture(np.full(64, 0.5))
    assert "constant gate: 0.500 for every channel" in _texts(picture)
    assert not any("highest and lowest" in t for t in _texts(picture))


def test_pixel_overlay_hot_cell_colour_and_outline():
    from attnviz.render import colormap_lut, overlay_picture

    gate = np.full((4, 4), 0.1)
    gate[1, 2] = 0.9
    image = np.full((32, 32, 3), 128, np.uint8)
    picture = overlay_picture(image, gate, title="s: spatial gate")
    cells = _crop(picture, "map")
    side = cells.shape[0]
    hot = cells[int(1.5 * side / 4), int(2.5 * side / 4)]
    lut = colormap_lut("viridis")
    np.testing.assert_array_equal(hot, lut[int(0.9 * 256)])  # absolute scale: 0.9 is 0.9 of the bar
    np.testing.assert_array_equal(cells[side // 8, side // 8], lut[int(0.1 * 256)])
    over = _crop(picture, "overlay").astype(int)
    brightness = over.sum(axis=2)
    centre = brightness[int(1.5 * side / 4), int(2.5 * side / 4)]
    assert centre > brightness[int(3.5 * side / 4), int(0.5 * side / 4)] + 100
    white = np.all(over == 255, axis=2)
    rows, cols = np.nonzero(white)  # the outline of the top 20 % surrounds the hot cell
    assert rows.min() < 1.5 * side / 4 < rows.max() and cols.min() < 2.5 * side / 4 < cols.max()
    assert rows.max() < 2.6 * side / 4 and cols.min() > 1.4 * side / 4
    assert any(s.startswith("colour bar 0") for s in picture.scales)
    assert "gate value (absolute 0–1)" in _texts(picture)


def test_pixel_overlay_says_when_values_use_little_of_the_scale_and_minmax_says_its_range():
    from attnviz.render import overlay_picture

    gate = np.linspace(0.19, 0.52, 16).reshape(4, 4)
    image = np.zeros((32, 32, 3), np.uint8)
    narrow = " ".join(_texts(overlay_picture(image, gate)))
    assert "0.19–0.52" in narrow and "--scale minmax" in narrow
    stretched = _texts(overlay_picture(image, gate, scale="minmax"))
    assert "gate value (min–max: 0.19–0.52)" in stretched and "0.190" in stretched and "0.520" in stretched
    assert not any("--scale minmax" in t for t in stretched)


def test_pixel_gradcam_says_it_is_upsampled_from_its_layer():
    from attnviz.render import overlay_picture

    cam = np.zeros((32, 32))
    cam[8:16, 8:16] = 1.0
    texts = " ".join(
        _texts(overlay_picture(np.zeros((32, 32, 3), np.uint8), cam, quantity="Grad-CAM", source_size=(4, 4)))
    )
    assert "Grad-CAM map (32×32, upsampled from 4×4)" in texts and "raw" not in texts


def test_pixel_feature_grid_columns_share_a_scale_shown_under_them(rng):
    from attnviz.render import colormap_lut, features_picture

    before = rng.uniform(0, 2, (6, 4, 4))
    after = before * rng.uniform(0, 1, (6, 1, 1))
    weights = rng.uniform(0, 1, 6)
    order = list(np.argsort(-weights)[:3])
    picture = features_picture(
        before,
        after=after,
        channels=order,
        rank_by="given",
        channel_weights=weights,
        ranking="with the largest gate values",
    )
    texts = _texts(picture)
    assert [t for t in texts if t.startswith("ch ")] == [f"ch {c}" for c in order]
    assert any("3 channels with the largest gate values" in t for t in texts)
    lut = colormap_lut("viridis")
    for c in order:
        low, high = min(before[c].min(), after[c].min()), max(before[c].max(), after[c].max())
        assert f"{low:.2f}" in texts or f"{low:.3f}" in texts
        for name, maps in (("before", before), ("after", after)):
            panel = _crop(picture, f"{name} {c}")
            cell = panel[panel.shape[0] // 8, panel.shape[1] // 8]
            index = min(int((maps[c, 0, 0] - low) / (high - low) * 256), 255)
            np.testing.assert_array_equal(cell, lut[index])


def test_pixel_sheet_holds_every_picture_unchanged_at_its_own_size(rng):
    from attnviz.render import sheet_picture

    panels = [(f"p{k}", rng.integers(0, 256, (100 + 20 * k, 300 + 150 * k, 3), dtype=np.uint8)) for k in range(5)]
    sheet = sheet_picture(panels, title="model: predicted 'cat'", width=1200)
    for k, (_, pixels) in enumerate(panels):
        np.testing.assert_array_equal(_crop(sheet, f"panel {k}"), pixels)
    assert sheet.rgb.shape[1] <= 1200 and _texts(sheet) == ["model: predicted 'cat'"]


def test_comparison_figure_says_what_p_is_marks_wrong_predictions_and_has_a_scale(rng):
    import torch
    from matplotlib.colors import to_rgb

    from attnviz.jobs.compare import Comparison

    images = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(2)]
    comparison = Comparison(
        names=["cnn", "se_cnn"],
        images=images,
        labels=["a.png", "b.png"],
        targets=[0, 1],
        target_source=["truth", "given"],
        class_names=["circle", "bar", "triangle"],
        maps={name: torch.rand(2, 16, 16) for name in ("cnn", "se_cnn")},
        scores={"cnn": torch.tensor([0.9, 0.8]), "se_cnn": torch.tensor([0.075, 0.6])},
        predicted={"cnn": torch.tensor([0, 1]), "se_cnn": torch.tensor([2, 1])},
        agreement=[{"se_cnn": {"top20_iou": 0.5, "spearman": 0.5}}] * 2,
    )
    fig = comparison.figure()
    labels = {ax.get_label(): ax for sub in fig.subfigs for ax in sub.axes}
    wrong, right = labels["panel 0,2"].xaxis.label, labels["panel 0,1"].xaxis.label
    assert wrong.get_text() == "P(true class) = 0.075\npredicted: triangle"
    assert to_rgb(wrong.get_color()) == to_rgb("tab:red") and right.get_text() == "P(true class) = 0.900"
    assert labels["panel 1,1"].xaxis.label.get_text() == "P(target) = 0.800"  # a given target, not the truth
    assert [labels[f"panel {i},2"].get_title() for i in range(2)] == ["se_cnn"] * 2  # headers on every row
    assert "colorbar" in labels


def test_overlays_in_maps_and_compare_are_drawn_on_the_image_in_grey():
    from attnviz.render import greyscale, overlay_picture

    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 200
    grey = greyscale(red)
    assert np.all(grey == round(0.299 * 200))  # luminance in every channel
    picture = overlay_picture(red, np.zeros((2, 2)))  # a map of zeros: the darkest colour over the grey image
    over = _crop(picture, "overlay").astype(int)
    assert np.ptp(over[over.shape[0] // 2, over.shape[1] // 2] - over[2, 2]) == 0
    assert abs(over[2, 2, 0] - over[2, 2, 2]) < 30  # no red left: viridis' purple over grey
