"""``attnviz maps``: capture a model's attention on image files and write it out, image by image.

For every image, ``OUT/<image stem>/`` receives:

- ``attention.npz``: every captured array, keyed ``gate/<name>``, ``in/<module>``,
  ``out/<module>``, ``feature/<layer>`` and ``cam/gradcam``, batch dimension dropped;
- ``summary.json``: model, preset, prediction (top-5) and one row per gate;
- with pictures on: channel bars per channel gate, overlays per spatial gate, feature grids,
  the Grad-CAM overlay and ``index.<fmt>``, a sheet of all of them.

A file that cannot be decoded is skipped and reported; the others are still processed. After a
Ctrl-C, the folders of images whose pictures were not finished hold only ``attention.npz``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from attnviz._files import atomic_file, write_bytes
from attnviz._outdir import claim_output_folder
from attnviz.capturing import Capture, Capturer
from attnviz.checkpoints import LoadedModel
from attnviz.errors import AttnvizError
from attnviz.inputs import InputImage, Preset, get_preset, load_input

if TYPE_CHECKING:
    from attnviz.maps_pictures import PictureJob

logger = logging.getLogger(__name__)


@dataclass
class MapsOptions:
    """What ``run_maps`` draws and how.

    ``render_workers`` > 0 draws the pictures in that many worker processes while the model runs
    on the next images (0: draw them in this process).
    """

    pictures: bool = True
    format: str = "png"
    order: str = "weight"
    scale: str = "absolute"
    cam: bool = True
    top_n: int = 8
    batch_size: int = 16
    layers: Sequence[str] | None = None
    render_workers: int = 0


@dataclass
class ImageResult:
    """What was written for one image."""

    path: str
    out_dir: Path
    summary: dict[str, Any]
    files: list[Path] = field(default_factory=list)


@dataclass
class Failure:
    """An input that was skipped, and why."""

    path: str
    reason: str


def run_maps(
    loaded: LoadedModel,
    paths: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    options: MapsOptions | None = None,
    preset: Preset | str | None = None,
    class_names: Sequence[str] | None = None,
    on_image: Callable[[ImageResult | Failure], None] | None = None,
) -> tuple[list[ImageResult], list[Failure]]:
    """Capture ``loaded.model`` on every image in ``paths`` and write the results under ``out``.

    Args:
        loaded: The model and what its checkpoint says about it.
        paths: Image files.
        out: Output folder; one sub-folder per image, named after the image's stem.
        options: What to draw; defaults to everything.
        preset: Overrides the checkpoint's input preset.
        class_names: Overrides the checkpoint's class names.
        on_image: Called after each image, in input order, with its result or its failure
            (progress, printing).

    Returns:
        The images written and the inputs skipped.
    """
    options = options or MapsOptions()
    preset = get_preset(preset or loaded.preset or "imagenet")
    names = list(class_names) if class_names is not None else loaded.class_names
    capturer = Capturer(loaded.model, layers=options.layers, class_names=names, model_name=loaded.arch)
    out = Path(out)
    folders = _output_folders([Path(p) for p in paths])
    results: list[ImageResult] = []
    failures: list[Failure] = []

    def done(outcome: ImageResult | Failure) -> None:
        (failures if isinstance(outcome, Failure) else results).append(outcome)
        if on_image:
            on_image(outcome)

    with claim_output_folder(out, "maps"), _Painter(options, len(paths)) as painter:  # refuses others' folders; locks
        for start in range(0, len(paths), options.batch_size):
            inputs: list[InputImage] = []
            for path in (str(p) for p in paths[start : start + options.batch_size]):
                try:
                    inputs.append(load_input(path, preset))
                except AttnvizError as error:
                    painter.put(Failure(path, str(error)), done)
            if not inputs:
                continue
            cap = capturer(torch.stack([item.tensor for item in inputs]), originals=[item.original for item in inputs])
            cams = _gradcam(loaded, cap, names) if options.cam else None
            for index, item in enumerate(inputs):
                folder = out / folders[item.path]
                try:
                    result, job = _write_arrays(loaded, preset, cap, index, item, cams, folder)
                except Exception as error:  # one image failing must not lose the others
                    logger.debug("writing %s failed", item.path, exc_info=True)
                    painter.put(Failure(str(item.path), f"could not write its outputs: {type(error).__name__}: {error}"), done)
                    continue
                painter.put(result, done, job)
    return results, failures


class _Painter:
    """Draws each image's pictures (in this process or in worker processes), then writes its
    ``summary.json`` and hands the outcome on, in input order, at most ``window`` images behind."""

    def __init__(self, options: MapsOptions, n_images: int) -> None:
        self.options = options
        workers = min(options.render_workers, n_images) if options.pictures and n_images > 1 else 0
        self.pool = None
        if workers > 0:
            from attnviz._pool import WorkerPool

            self.pool = WorkerPool(workers)  # workers ignore Ctrl-C: the main process stops them
        self.window = 2 * workers
        self.pending: deque[tuple[ImageResult | Failure, Callable[[Any], None], Any]] = deque()

    def __enter__(self) -> _Painter:
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        failed = kind is not None
        try:
            if not failed:
                while self.pending:
                    self._finish()
        except BaseException:
            failed = True
            raise
        finally:
            try:
                if self.pool is not None:
                    self.pool.close(failed=failed)  # after a Ctrl-C: busy workers stopped after a grace time
            finally:
                if failed:
                    for outcome, _, _ in self.pending:
                        if isinstance(outcome, ImageResult):
                            _remove_unfinished(outcome)

    def put(self, outcome: ImageResult | Failure, done: Callable[[Any], None], job: PictureJob | None = None) -> None:
        from attnviz.maps_pictures import draw_pictures

        work: Any = None
        if isinstance(outcome, ImageResult) and self.options.pictures and job is not None:
            if self.pool is None:
                work = lambda: draw_pictures(job, outcome.out_dir, self.options)  # noqa: E731
            else:
                work = self.pool.submit(draw_pictures, job, outcome.out_dir, self.options)
        self.pending.append((outcome, done, work))
        while len(self.pending) > self.window:
            self._finish()

    def _finish(self) -> None:
        outcome, done, work = self.pending[0]  # stays pending (see __exit__) until its pictures are in
        if isinstance(outcome, ImageResult):
            try:
                if work is not None:
                    pictures = work() if callable(work) else work.result()
                    outcome.summary["pictures"] = [str(path.relative_to(outcome.out_dir)) for path in pictures]
                    outcome.files.extend(pictures)
                text = json.dumps(outcome.summary, indent=2, ensure_ascii=False)
                outcome.files.append(write_bytes(outcome.out_dir / "summary.json", text.encode("utf-8")))
            except Exception as error:  # a picture failing must not lose the other images
                logger.debug("drawing %s failed", outcome.path, exc_info=True)
                outcome = Failure(outcome.path, f"could not draw its pictures: {type(error).__name__}: {error}")
        self.pending.popleft()
        done(outcome)


def _remove_unfinished(outcome: ImageResult) -> None:
    """Leave an abandoned image's folder with its ``attention.npz`` only: pictures of a worker
    stopped while drawing may be cut short, and no ``summary.json`` lists them."""
    keep = {Path(path) for path in outcome.files}
    for path in sorted(outcome.out_dir.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir():
            with contextlib.suppress(OSError):
                path.rmdir()  # only when empty
        elif path not in keep:
            path.unlink(missing_ok=True)


def summary_dict(loaded: LoadedModel, preset: Preset, cap: Capture, index: int, image_path: str | None) -> dict[str, Any]:
    """The JSON summary of one image: model, preset, prediction and a row per gate."""
    top = cap.topk(index, k=5)
    return {
        "image": image_path,
        "model": {"arch": loaded.arch, "source": loaded.source, "format": loaded.format},
        "preset": {"name": preset.name, "size": list(preset.size), "mean": list(preset.mean), "std": list(preset.std)},
        "prediction": {
            "index": top[0].index,
            "label": top[0].label,
            "prob": top[0].prob,
            "top5": [{"index": p.index, "label": p.label, "prob": p.prob} for p in top],
        },
        "gates": cap.gate_table(index),
    }


def _write_arrays(
    loaded: LoadedModel,
    preset: Preset,
    cap: Capture,
    index: int,
    item: InputImage,
    cams: torch.Tensor | None,
    folder: Path,
) -> tuple[ImageResult, PictureJob]:
    """Write one image's ``attention.npz``; return its result (summary not yet written) and picture job."""
    from attnviz.maps_pictures import PictureJob

    folder.mkdir(parents=True, exist_ok=True)
    summary = summary_dict(loaded, preset, cap, index, item.path)
    arrays = cap.arrays(index)
    if cams is not None:
        arrays["cam/gradcam"] = cams[index].numpy()
        summary["gradcam"] = {"layer": cap.metadata.get("cam_layer"), "target": summary["prediction"]["index"]}
    result = ImageResult(str(item.path), folder, summary)
    with atomic_file(folder / "attention.npz") as file:
        np.savez_compressed(file, **arrays)
    result.files.append(folder / "attention.npz")
    return result, PictureJob.from_capture(cap, index, item.original, arrays)


def _gradcam(loaded: LoadedModel, cap: Capture, class_names: Sequence[str] | None) -> torch.Tensor:
    from attnviz.cam import gradcam

    result = gradcam(loaded.model, cap.images, class_names=class_names)
    cap.metadata["cam_layer"] = result.layer
    return result.maps.detach().cpu()


def _output_folders(paths: list[Path]) -> dict[str, str]:
    """One folder name per input: the image's stem, made unique when two images share it."""
    used: dict[str, int] = {}
    folders: dict[str, str] = {}
    for path in paths:
        stem = re.sub(r"[^\w.-]+", "_", path.stem) or "image"
        count = used.get(stem, 0)
        used[stem] = count + 1
        folders[str(path)] = stem if count == 0 else f"{stem}-{count + 1}"
    return folders
