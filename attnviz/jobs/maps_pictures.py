"""The pictures ``attnviz maps`` draws for one image, from arrays only (so worker processes can draw them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from attnviz.runtime.text import file_slug

if TYPE_CHECKING:
    from attnviz.capturing.capturer import Capture


class PictureOptions(Protocol):
    """What the pictures need of the command's options (:class:`attnviz.jobs.maps.MapsOptions` has it)."""

    format: str
    order: str
    scale: str
    top_n: int


@dataclass
class PictureJob:
    """Everything the pictures of one image need: plain arrays and strings, picklable.

    ``arrays`` holds the keys of ``attention.npz`` (``gate/``, ``in/``, ``out/``, ``feature/``,
    ``cam/gradcam``); ``gate_kinds`` maps each gate to its kind and ``gated_modules`` to the
    module whose input and output it gates.
    """

    arrays: dict[str, np.ndarray]
    original: np.ndarray
    gate_kinds: dict[str, str]
    gated_modules: dict[str, str]
    label: str
    prob: float
    model_name: str = ""
    cam_layer: str = ""

    @classmethod
    def from_capture(cls, cap: Capture, index: int, original: np.ndarray, arrays: dict[str, np.ndarray]) -> PictureJob:
        top = cap.topk(index, 1)[0]
        return cls(
            arrays=arrays,
            original=original,
            gate_kinds={name: gate.kind for name, gate in cap.gates.items()},
            gated_modules={name: gate.gated_module for name, gate in cap.gates.items() if gate.gated_module},
            label=top.label,
            prob=top.prob,
            model_name=cap.model_name or "",
            cam_layer=str(cap.metadata.get("cam_layer", "")),
        )

    def group(self, prefix: str) -> dict[str, np.ndarray]:
        return {key[len(prefix) + 1 :]: value for key, value in self.arrays.items() if key.startswith(prefix + "/")}


def draw_pictures(job: PictureJob, folder: Path, options: PictureOptions) -> list[Path]:
    """Draw every picture of one image into ``folder``; return the files written.

    Channel bars per channel gate, an overlay per spatial gate, before/after feature grids per
    attention module, a grid per feature layer, the Grad-CAM overlay, and ``index.<fmt>``: a
    sheet of all of them. Arrays with NaN or infinite values are not drawn (``summary.json``
    lists them). When a write fails, the pictures written so far are removed.
    """
    from attnviz import render

    pictures: list[tuple[str, Path, Any]] = []
    gates = job.group("gate")
    for name, values in gates.items():
        if not _finite(values):
            continue
        if job.gate_kinds.get(name) == "channel":
            title = f"{name}: channel gate, {values.size} channels"
            figure = render.channel_bars(values, title=title, order=options.order)
            pictures.append((f"{name} (channel)", folder / "bars" / f"{file_slug(name)}.{options.format}", figure))
        elif job.gate_kinds.get(name) == "spatial":
            title = f"{name}: spatial gate {values.shape[0]}x{values.shape[1]}"
            figure = render.spatial_overlay(job.original, values, title=title, scale=options.scale)
            pictures.append((f"{name} (spatial)", folder / "spatial" / f"{file_slug(name)}.{options.format}", figure))
    outputs = job.group("out")
    for module, before in job.group("in").items():
        channel_gate = next(
            (g for g, m in job.gated_modules.items() if m == module and job.gate_kinds.get(g) == "channel"), None
        )
        if not _finite(before, outputs[module], gates.get(channel_gate) if channel_gate is not None else None):
            continue
        kwargs: dict[str, Any] = {"top_n": options.top_n}
        if channel_gate is not None:
            weights = gates[channel_gate]
            kwargs.update(
                channels=np.argsort(-weights, kind="stable")[: options.top_n].tolist(),
                rank_by="given",
                channel_weights=weights,
            )
        figure = render.feature_grid(
            before, after=outputs[module], title=f"{module}: features before and after gating", **kwargs
        )
        pictures.append(
            (f"{module} before/after", folder / "features" / f"{file_slug(module)}.gating.{options.format}", figure)
        )
    for layer, features in job.group("feature").items():
        if not _finite(features) or any(np.array_equal(features, gated) for gated in outputs.values()):
            continue  # the same tensor as an attention module's output, already drawn after gating
        figure = render.feature_grid(
            features, top_n=options.top_n, title=f"{layer}: top {options.top_n} channels by mean activation"
        )
        pictures.append((f"{layer} features", folder / "features" / f"{file_slug(layer)}.{options.format}", figure))
    cam = job.arrays.get("cam/gradcam")
    if cam is not None and _finite(cam):
        title = f"Grad-CAM at {job.cam_layer} for '{job.label}' (P = {job.prob:.3f})"
        figure = render.spatial_overlay(job.original, cam, title=title, scale="absolute", quantity="Grad-CAM")
        pictures.append(("Grad-CAM", folder / f"gradcam.{options.format}", figure))

    written: list[Path] = []
    try:
        _save(pictures, folder, options, job, written)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written


def _save(
    pictures: list[tuple[str, Path, Any]], folder: Path, options: PictureOptions, job: PictureJob, written: list[Path]
) -> None:
    """Save each picture and the index sheet of them all, adding each file to ``written`` before
    it is written (so that a file cut short is removed too)."""
    from attnviz import render

    panels = []
    for label, path, figure in pictures:
        rgb = render.figure_to_rgb(figure)
        written.append(path)
        if options.format == "png":  # draw once: the pixels serve the file and the index sheet
            render.save_rgb(rgb, path)
        else:
            render.save_figure(figure, path, options.format)
        panels.append((label, rgb))
    if panels:
        title = f"{job.model_name or 'model'}: predicted '{job.label}' (P = {job.prob:.3f})"
        sheet = render.index_figure(panels, columns=3, title=title)
        path = folder / f"index.{options.format}"
        written.append(path)
        if options.format == "png":  # at the panels' own resolution: a larger sheet would only upsample them
            render.save_rgb(render.figure_to_rgb(sheet), path)
        else:
            render.save_figure(sheet, path, options.format)


def _finite(*arrays: Any) -> bool:
    """True when every given array (``None``: none) holds only finite values."""
    return all(array is None or bool(np.isfinite(array).all()) for array in arrays)
