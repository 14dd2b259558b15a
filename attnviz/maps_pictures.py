"""The pictures ``attnviz maps`` draws for one image of a :class:`~attnviz.capturing.Capture`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from attnviz.capturing import Capture

if TYPE_CHECKING:
    from attnviz.maps import MapsOptions


def draw_pictures(
    cap: Capture,
    index: int,
    original: np.ndarray,
    cams: torch.Tensor | None,
    folder: Path,
    options: MapsOptions,
) -> list[Path]:
    """Draw every picture of image ``index`` into ``folder``; return the files written.

    Channel bars per channel gate, an overlay per spatial gate, before/after feature grids per
    attention module, a grid per feature layer, the Grad-CAM overlay, and ``index.<fmt>``: a
    sheet of all of them.
    """
    from attnviz import render

    pictures: list[tuple[str, Path, Any]] = []
    prediction = cap.topk(index, 1)[0]
    for name, gate in cap.gates.items():
        values = gate.values[index].float().numpy()
        if gate.kind == "channel":
            title = f"{name}: channel gate, {values.size} channels"
            figure = render.channel_bars(values, title=title, order=options.order)
            pictures.append((f"{name} (channel)", folder / "bars" / f"{_safe(name)}.{options.format}", figure))
        elif gate.kind == "spatial":
            title = f"{name}: spatial gate {values.shape[0]}x{values.shape[1]}"
            figure = render.spatial_overlay(original, values, title=title, scale=options.scale)
            pictures.append((f"{name} (spatial)", folder / "spatial" / f"{_safe(name)}.{options.format}", figure))
    for module, before in cap.inputs.items():
        after = cap.outputs[module][index].float().numpy()
        channel_gate = next((g for g in cap.gates.values() if g.gated_module == module and g.kind == "channel"), None)
        kwargs: dict[str, Any] = {"top_n": options.top_n}
        if channel_gate is not None:
            weights = channel_gate.values[index].float().numpy()
            kwargs.update(channels=np.argsort(-weights, kind="stable")[: options.top_n].tolist(), rank_by="given",
                          channel_weights=weights)
        figure = render.feature_grid(before[index].float().numpy(), after=after,
                                     title=f"{module}: features before and after gating", **kwargs)
        pictures.append((f"{module} before/after", folder / "features" / f"{_safe(module)}.gating.{options.format}", figure))
    for layer, features in cap.features.items():
        if any(torch.equal(features, gated) for gated in cap.outputs.values()):
            continue  # the same tensor as an attention module's output, already drawn after gating
        figure = render.feature_grid(features[index].float().numpy(), top_n=options.top_n,
                                     title=f"{layer}: top {options.top_n} channels by mean activation")
        pictures.append((f"{layer} features", folder / "features" / f"{_safe(layer)}.{options.format}", figure))
    if cams is not None:
        layer = cap.metadata.get("cam_layer", "")
        title = f"Grad-CAM at {layer} for '{prediction.label}' (P = {prediction.prob:.3f})"
        figure = render.spatial_overlay(original, cams[index].numpy(), title=title, scale="absolute", quantity="Grad-CAM")
        pictures.append(("Grad-CAM", folder / f"gradcam.{options.format}", figure))

    written = []
    panels = []
    for label, path, figure in pictures:
        rgb = render.figure_to_rgb(figure)
        if options.format == "png":  # draw once: the pixels serve the file and the index sheet
            written.append(render.save_rgb(rgb, path))
        else:
            written.append(render.save_figure(figure, path, options.format))
        panels.append((label, rgb))
    if panels:
        sheet = render.index_figure(
            panels, columns=3, title=f"{cap.model_name or 'model'}: predicted '{prediction.label}' (P = {prediction.prob:.3f})"
        )
        written.append(render.save_figure(sheet, folder / f"index.{options.format}", options.format))
    return written


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "-", name)
