"""The pictures of one report card, drawn from arrays only (safe to run in worker processes).

Per image: the thumbnail, each model's Grad-CAM overlay, an overlay per spatial gate (on the
gate's absolute [0, 1] scale) and one strip of channel bars per model (every channel gate, in
channel order, with the 0.5 line of an untrained gate: :func:`attnviz.render.channel_strip`).
Everything is drawn by :mod:`attnviz.render`; this module only says what goes where.

Beside the pictures, ``arrays/<id>.npz`` holds the maps they were drawn from, as float16:
``cam/<model>`` (the Grad-CAM ``[h,w]`` at the model's input size, in [0, 1]) and
``gate/<model>/<gate>`` (each spatial gate ``[h,w]`` at its own resolution). The channel gates'
values are in the image's record (``items/<id>.json``) at full precision.

:func:`finish` is what the report's render queue runs per image, in a worker process when there
are render workers: the pictures (when asked for), then the image's record, so that neither the
drawing nor the record's JSON holds up the process that runs the models.
"""

from __future__ import annotations

import io
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attnviz.runtime.text import file_slug

#: The colormap of every overlay (Grad-CAM and spatial gates, both on [0, 1]); the page's colour bar uses it too.
OVERLAY_CMAP = "jet"

PNG_COMPRESSION = 3


def picture_paths(item_id: str, job: dict[str, Any]) -> dict[str, Any]:
    """Where the pictures of ``job`` go, relative to the report folder."""
    paths: dict[str, Any] = {"image": f"images/{item_id}.png", "arrays": f"arrays/{item_id}.npz", "models": {}}
    for name, slug in job["slugs"].items():
        entry: dict[str, Any] = {"cam": f"cam/{slug}/{item_id}.png"}
        entry["spatial"] = {g: f"gates/{slug}/{item_id}.{file_slug(g)}.png" for g in job["spatial"].get(name, {})}
        if job["channel"].get(name):
            entry["bars"] = f"bars/{slug}/{item_id}.png"
        paths["models"][name] = entry
    return paths


def draw(job: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every picture of one card as uint8 RGB arrays, keyed by relative path.

    Args:
        job: ``id``, ``thumb`` ``[H,W,3]``, ``slugs`` (model -> slug), ``cams`` (model ->
            ``[h,w]`` in [0,1]), ``spatial`` (model -> gate -> ``[h,w]``), ``channel``
            (model -> gate -> ``[C]``).
    """
    from attnviz import render

    paths = picture_paths(job["id"], job)
    thumb = job["thumb"]
    pictures = {paths["image"]: thumb}
    for name, entry in paths["models"].items():
        cam = job["cams"][name]  # a map with NaN (a model with NaN weights) has no overlay: the plain thumbnail
        pictures[entry["cam"]] = (
            render.cam_overlay(thumb, np.clip(cam, 0.0, 1.0), cmap=OVERLAY_CMAP) if _finite(cam) else thumb
        )
        for gate, path in entry["spatial"].items():
            values = job["spatial"][name][gate]
            pictures[path] = (
                render.overlay_rgb(thumb, values, vmin=0.0, vmax=1.0, cmap=OVERLAY_CMAP) if _finite(values) else thumb
            )
        if "bars" in entry:
            pictures[entry["bars"]] = render.channel_strip(job["channel"][name])
    return pictures


def maps(job: dict[str, Any]) -> dict[str, np.ndarray]:
    """The maps behind one card's overlays as float16 arrays: ``cam/<model>`` and ``gate/<model>/<gate>``."""
    arrays = {}
    for name in job["slugs"]:
        arrays[f"cam/{name}"] = np.asarray(job["cams"][name], dtype=np.float16)
        for gate, values in job["spatial"].get(name, {}).items():
            arrays[f"gate/{name}/{gate}"] = np.asarray(values, dtype=np.float16).reshape(np.shape(values)[-2:])
    return arrays


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """``arrays`` as a compressed ``.npz`` (``numpy.load`` reads it) with fixed time stamps, so the
    same maps always give the same bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w") as member:
                np.lib.format.write_array(member, np.ascontiguousarray(value), allow_pickle=False)
    return buffer.getvalue()


def write(job: dict[str, Any], out: str) -> tuple[dict[str, Any], float]:
    """Draw one card's pictures and write them, and the maps they show (:func:`maps`), atomically under ``out``.

    Returns:
        The relative paths (as :func:`picture_paths`) and the seconds it took.
    """
    from attnviz import render
    from attnviz.runtime.files import write_bytes

    start = time.perf_counter()
    root = Path(out)
    for relative, rgb in draw(job).items():
        write_bytes(root / relative, render.png_bytes(rgb, PNG_COMPRESSION))
    paths = picture_paths(job["id"], job)
    write_bytes(root / paths["arrays"], npz_bytes(maps(job)))
    return paths, time.perf_counter() - start


@dataclass(frozen=True)
class Finished:
    """What :func:`finish` did for one image.

    Attributes:
        pictures: The pictures' relative paths (as :func:`picture_paths`), ``None`` when none were asked for.
        drawing: Seconds spent drawing and writing the pictures.
        record: Seconds spent writing the record.
    """

    pictures: dict[str, Any] | None
    drawing: float
    record: float


def finish(record: Any, job: dict[str, Any] | None, out: str) -> Finished:
    """Draw and write one image's pictures (``job``; ``None``: none), then write its record
    (:class:`~attnviz.report.schema.ImageRecord`) with their paths into the report folder ``out``.

    Raises:
        Exception: What drawing or writing raised; the record is then not written.
    """
    from attnviz.report import records
    from attnviz.report.schema import replace

    paths, drawing = write(job, out) if job is not None else (None, 0.0)
    if paths is not None:
        record = replace(record, pictures=paths)
    start = time.perf_counter()
    records.write_record(Path(out), record)
    return Finished(paths, drawing, time.perf_counter() - start)


def _finite(values: Any) -> bool:
    return bool(np.isfinite(np.asarray(values, dtype=np.float64)).all())
