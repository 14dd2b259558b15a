"""attnviz.render: pure figures from arrays.

Every function takes numpy arrays (and plain strings/lists) and returns a matplotlib ``Figure``
on its own Agg canvas or a uint8 RGB array. Nothing here runs models, reads files, shows windows
or changes matplotlib's global settings. Importing this package imports matplotlib; importing
``attnviz`` alone does not.
"""

from __future__ import annotations

from attnviz.render.bars import bar_order, channel_bars
from attnviz.render.canvas import Picture
from attnviz.render.colormaps import apply_colormap, colormap_lut
from attnviz.render.compare import comparison_grid, index_figure, index_image
from attnviz.render.fonts import font_context, font_families
from attnviz.render.gatemaps import axis_gate, branch_weights, full_gate, gate_heatmap
from attnviz.render.grids import feature_grid, select_channels
from attnviz.render.output import figure_to_rgb, new_figure, png_bytes, rgb_figure, save_figure, save_rgb
from attnviz.render.overlays import cam_overlay, greyscale, overlay_rgb, spatial_overlay
from attnviz.render.pictures import bars_picture, features_picture, overlay_picture, sheet_picture
from attnviz.render.strips import channel_strip

__all__ = [
    "Picture",
    "apply_colormap",
    "axis_gate",
    "bar_order",
    "bars_picture",
    "branch_weights",
    "cam_overlay",
    "channel_bars",
    "channel_strip",
    "colormap_lut",
    "comparison_grid",
    "feature_grid",
    "features_picture",
    "figure_to_rgb",
    "font_context",
    "font_families",
    "full_gate",
    "gate_heatmap",
    "greyscale",
    "index_figure",
    "index_image",
    "new_figure",
    "overlay_picture",
    "overlay_rgb",
    "png_bytes",
    "rgb_figure",
    "save_figure",
    "save_rgb",
    "select_channels",
    "sheet_picture",
    "spatial_overlay",
]
