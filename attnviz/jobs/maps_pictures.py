"""The pictures ``attnviz maps`` draws for one image, from arrays only (so worker processes can draw them)."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from attnviz.runtime.errors import describe
from attnviz.runtime.text import file_slug

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from attnviz.capturing.capturer import Capture
    from attnviz.render.canvas import Picture


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


@dataclass
class PictureFailure:
    """A picture that could not be drawn: its label, the error in one line, and the traceback."""

    picture: str
    error: str
    traceback: str = ""


@dataclass
class Drawn:
    """What :func:`draw_pictures` did: the files written and the pictures that failed."""

    files: list[Path] = field(default_factory=list)
    failed: list[PictureFailure] = field(default_factory=list)


#: A picture to draw: its label (in failures), its file, and the function that makes it: a matplotlib figure,
#: or for PNG output a :class:`~attnviz.render.canvas.Picture` drawn as pixels (ten to a hundred times faster).
_Picture = tuple[str, Path, Callable[[], "Figure | Picture"]]

#: The folder of each gate kind's pictures.
KIND_FOLDERS = {
    "channel": "bars",
    "spatial": "spatial",
    "full": "full",
    "axis": "axis",
    "branch": "branch",
    "other": "other",
}


def draw_pictures(job: PictureJob, folder: Path, options: PictureOptions) -> Drawn:
    """Draw every picture of one image into ``folder``; return the files written and the failures.

    A picture per gate, whatever its kind (channel bars, spatial overlay, full-size gate, coordinate
    gate, branch weights, or a heat map of any other shape), before/after feature grids per gated
    module, a grid per feature layer, the Grad-CAM overlay, and ``index.<fmt>``: a sheet of those
    drawn, at their own size. PNG pictures of bars, overlays and feature grids are drawn as pixels
    (:mod:`attnviz.render.pictures`); SVG and PDF, and the other gate kinds, through matplotlib.
    Each picture is drawn on its own: one that fails is removed and listed in
    :attr:`Drawn.failed`, the others are still drawn. Arrays with NaN or infinite values are not
    drawn (``summary.json`` lists them). An ``OSError`` (a full disk) or an interruption removes
    the pictures written so far and propagates.
    """
    pictures = [
        *_gate_pictures(job, folder, options),
        *_gating_pictures(job, folder, options),
        *_feature_pictures(job, folder, options),
        *_cam_picture(job, folder, options),
    ]
    drawn = Drawn()
    try:
        panels = []
        for label, path, make in pictures:
            rgb = _draw_one(label, path, make, options, drawn)
            if rgb is not None:
                panels.append((label, rgb))
        if panels:
            _draw_one(
                "index", folder / f"index.{options.format}", partial(_index_sheet, panels, job, options), options, drawn
            )
    except BaseException:
        for path in drawn.files:
            path.unlink(missing_ok=True)
        raise
    return drawn


def _gate_pictures(job: PictureJob, folder: Path, options: PictureOptions) -> list[_Picture]:
    """One picture per gate with finite values, drawn as its kind asks."""
    from attnviz import render

    pictures: list[_Picture] = []
    for name, values in job.group("gate").items():
        if not _finite(values):
            continue
        kind = job.gate_kinds.get(name, "other")
        kind = kind if kind in KIND_FOLDERS else "other"
        path = folder / KIND_FOLDERS[kind] / f"{file_slug(name)}.{options.format}"
        title = f"{name}: {_describe_gate(kind, values)}"
        if kind == "channel":
            title = f"{name}: channel gate"  # the bars add the channel count
        make: Callable[[], Figure | Picture]
        raster = options.format == "png"
        if kind == "channel":
            bars = render.bars_picture if raster else render.channel_bars
            make = partial(bars, values, title=title, order=options.order)
        elif kind == "spatial":
            overlay = render.overlay_picture if raster else render.spatial_overlay
            make = partial(overlay, job.original, values, title=title, scale=options.scale)
        elif kind == "full":
            make = partial(render.full_gate, job.original, values, title=title, scale=options.scale)
        elif kind == "axis":
            make = partial(render.axis_gate, values, title=title)
        elif kind == "branch":
            make = partial(render.branch_weights, values, title=title)
        else:
            make = partial(render.gate_heatmap, values, title=title)
        pictures.append((f"{name} ({kind})", path, make))
    return pictures


def _describe_gate(kind: str, values: np.ndarray) -> str:
    """The kind and size of a gate, for its picture's title."""
    shape = "x".join(map(str, values.shape))
    if kind == "channel":
        return f"channel gate, {values.size} channels"
    if kind == "spatial":
        return f"spatial gate {shape}"
    if kind == "full":
        return f"full-size gate, {values.shape[0]} channels x {values.shape[1]}x{values.shape[2]}"
    if kind == "axis":
        along = "height" if values.shape[-1] == 1 else "width"
        return f"coordinate gate along the {along}, {values.shape[0]} channels x {max(values.shape[1:])}"
    if kind == "branch":
        return f"branch weights, {values.shape[0]} branches x {values.shape[1]} channels"
    return f"gate {shape}"


def _gating_pictures(job: PictureJob, folder: Path, options: PictureOptions) -> list[_Picture]:
    """The features before and after gating, one grid per gated module (channels ordered by its
    channel gate's weights, when it has one)."""
    from attnviz import render

    gates, inputs, outputs = job.group("gate"), job.group("in"), job.group("out")
    modules: dict[str, str | None] = {}  # module -> its channel gate
    for gate, module in job.gated_modules.items():
        if module in inputs and module in outputs:
            channel = gate if job.gate_kinds.get(gate) == "channel" and gate in gates else None
            modules[module] = modules.get(module) or channel
    pictures: list[_Picture] = []
    for module, channel_gate in modules.items():
        weights = gates[channel_gate] if channel_gate is not None else None
        if not _finite(inputs[module], outputs[module], weights):
            continue
        kwargs: dict[str, Any] = {"top_n": options.top_n}
        ranking = "by mean activation before the gate"
        if weights is not None:
            order = np.argsort(-weights, kind="stable")[: options.top_n].tolist()
            kwargs.update(channels=order, rank_by="given", channel_weights=weights)
            ranking = "with the largest gate values"
        title = f"{module}: features before and after gating"
        kwargs["ranking"] = ranking
        draw = render.features_picture if options.format == "png" else render.feature_grid
        make = partial(draw, inputs[module], after=outputs[module], title=title, **kwargs)
        path = folder / "features" / f"{file_slug(module)}.gating.{options.format}"
        pictures.append((f"{module} before/after", path, make))
    return pictures


def _feature_pictures(job: PictureJob, folder: Path, options: PictureOptions) -> list[_Picture]:
    """A grid of the top channels of each feature layer not already drawn after gating."""
    from attnviz import render

    outputs = job.group("out")
    pictures: list[_Picture] = []
    for layer, features in job.group("feature").items():
        if not _finite(features) or any(np.array_equal(features, gated) for gated in outputs.values()):
            continue  # the same tensor as an attention module's output, already drawn after gating
        title = f"{layer}: feature maps"
        draw = render.features_picture if options.format == "png" else render.feature_grid
        make = partial(draw, features, top_n=options.top_n, title=title)
        pictures.append((f"{layer} features", folder / "features" / f"{file_slug(layer)}.{options.format}", make))
    return pictures


def _cam_picture(job: PictureJob, folder: Path, options: PictureOptions) -> list[_Picture]:
    """The Grad-CAM overlay, when there is a finite one."""
    from attnviz import render

    cam = job.arrays.get("cam/gradcam")
    if cam is None or not _finite(cam):
        return []
    title = f"Grad-CAM at {job.cam_layer} for the predicted class '{job.label}' (P = {job.prob:.3f})"
    layer = job.group("feature").get(job.cam_layer)
    size = tuple(layer.shape[-2:]) if layer is not None and layer.ndim == 3 else None
    raw = size if size is not None and size != tuple(cam.shape) else None
    overlay = render.overlay_picture if options.format == "png" else render.spatial_overlay
    make = partial(overlay, job.original, cam, title=title, quantity="Grad-CAM", source_size=raw)
    return [("Grad-CAM", folder / f"gradcam.{options.format}", make)]


def _index_sheet(panels: list[tuple[str, np.ndarray]], job: PictureJob, options: PictureOptions) -> Figure | Picture:
    """Every picture drawn, at its own size, on one sheet (a figure holding that sheet for SVG/PDF)."""
    from attnviz import render

    title = f"{job.model_name or 'model'}: predicted '{job.label}' (P = {job.prob:.3f})"
    sheet = render.sheet_picture(panels, title=title)
    return sheet if options.format == "png" else render.rgb_figure(sheet.rgb)


def _draw_one(
    label: str, path: Path, make: Callable[[], Figure | Picture], options: PictureOptions, drawn: Drawn
) -> np.ndarray | None:
    """Make, draw and save one picture; return its pixels (for the index sheet), or ``None`` when
    it failed (recorded in ``drawn``, its file removed). An ``OSError`` or an interruption removes
    the file and propagates."""
    from attnviz import render

    try:
        made = make()
        if isinstance(made, render.Picture):
            rgb = made.rgb
        else:
            rgb = render.figure_to_rgb(made)
        if options.format == "png":  # draw once: the pixels serve the file and the index sheet
            render.save_rgb(rgb, path)
        else:
            assert not isinstance(made, render.Picture)
            render.save_figure(made, path, options.format)
    except BaseException as error:
        path.unlink(missing_ok=True)  # a file cut short
        if isinstance(error, OSError) or not isinstance(error, Exception):
            raise
        drawn.failed.append(PictureFailure(label, describe(error), traceback.format_exc()))
        return None
    drawn.files.append(path)
    return rgb


def _finite(*arrays: Any) -> bool:
    """True when every given array (``None``: none) holds only finite values."""
    return all(array is None or bool(np.isfinite(array).all()) for array in arrays)
