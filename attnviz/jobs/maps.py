"""``attnviz maps``: capture a model's attention on image files and write it out, image by image.

For every image, ``OUT/<name>/`` receives (``<name>``: the image's stem made a safe folder name,
unique within the run, see :func:`_output_folders`):

- ``attention.npz``: every captured array, keyed ``gate/<name>``, ``in/<module>``,
  ``out/<module>``, ``feature/<layer>`` and ``cam/gradcam``, batch dimension dropped;
- ``summary.json`` (strict JSON: NaN and infinities are ``null``): model, preset, prediction (top-5),
  one row per gate, and ``non_finite``, the arrays that hold NaN or infinite values (a model with
  NaN weights; they are not drawn, and a warning says so);
- with pictures on: a picture per gate (channel bars, spatial overlays, and pictures of full-size,
  coordinate, branch and other gates), feature grids, the Grad-CAM overlay and ``index.<fmt>``, a
  sheet of all of them.

A file that cannot be decoded is skipped and reported; the others are still processed. A picture
that cannot be drawn costs only itself: the image keeps its arrays and other pictures, and its
``summary.json`` names the picture under ``failed_pictures``. Per-image failures are logged at DEBUG
level with their traceback (``attnviz --debug`` shows them). After a
Ctrl-C, the folders of images whose pictures were not finished hold only ``attention.npz``. An
output that cannot be written (a full disk) stops the run with an :class:`OutputError` that says how
many images were written; the unfinished images' folders are removed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import unicodedata
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnviz.capturing.capturer import Capture, Capturer
from attnviz.io.checkpoints import LoadedModel
from attnviz.io.inputs import InputImage, Preset, get_preset, load_input
from attnviz.jobs import maps_pictures
from attnviz.jobs.maps_pictures import Drawn, PictureFailure, PictureJob
from attnviz.runtime.errors import AttnvizError, OutputError, describe
from attnviz.runtime.files import atomic_file, write_bytes
from attnviz.runtime.outdir import claim_output_folder
from attnviz.runtime.pipeline import run_batches
from attnviz.runtime.text import finite, strict_json
from attnviz.runtime.workqueue import Outcome, WorkQueue

logger = logging.getLogger(__name__)


#: The file of every image's arrays (what an interrupted image keeps).
ARRAYS = "attention.npz"


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
    """What was written for one image.

    ``failed_pictures``: the pictures that could not be drawn (the image is then incomplete);
    ``nothing_found``: one line saying what the model showed instead of gates, when it had none.
    """

    path: str
    out_dir: Path
    summary: dict[str, Any]
    files: list[Path] = field(default_factory=list)
    failed_pictures: list[PictureFailure] = field(default_factory=list)
    nothing_found: str | None = None


@dataclass
class Failure:
    """An input that was skipped, and why."""

    path: str
    reason: str


#: An image waiting in the render queue: its outcome, and whom to hand it to when it is finished.
_Entry = tuple[ImageResult | Failure, Callable[[Any], None]]


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

    Raises:
        OutputError: An output could not be written (a full disk, no permission): the message says
            how many images were written (exit code 1; 2 when none); the unfinished ones are removed.
    """
    options = options or MapsOptions()
    preset = get_preset(preset or loaded.preset or "imagenet")
    names = list(class_names) if class_names is not None else loaded.class_names
    capturer = Capturer(
        loaded.model, layers=options.layers, class_names=names, model_name=loaded.arch, feature_images=None
    )
    out = Path(out)
    sources = [str(p) for p in paths]
    folders = _output_folders([Path(p) for p in sources])
    results: list[ImageResult] = []
    failures: list[Failure] = []

    def done(outcome: ImageResult | Failure) -> None:
        if isinstance(outcome, Failure):
            failures.append(outcome)
        else:
            results.append(outcome)
        if on_image:
            on_image(outcome)

    with claim_output_folder(out, "maps"), _Painter(options, len(sources)) as painter:  # refuses others' folders; locks
        steps = _Steps(loaded, preset, names, capturer, sources, options, out, folders, painter, done, results)
        run_batches(_decode(sources, preset, options.batch_size), _why, steps.skip, steps.analyse, steps.emit)
    _warn_non_finite(results, loaded.arch)
    return results, failures


#: A decoded input: its position among the inputs, and the image or why it could not be read.
_Decoded = tuple[int, InputImage | str]


def _decode(sources: Sequence[str], preset: Preset, batch_size: int) -> Iterator[list[_Decoded]]:
    """The inputs decoded, ``batch_size`` at a time (one batch in memory at once)."""
    for start in range(0, len(sources), batch_size):
        batch: list[_Decoded] = []
        for position in range(start, min(start + batch_size, len(sources))):
            try:
                batch.append((position, load_input(sources[position], preset)))
            except AttnvizError as error:
                logger.debug("reading %s failed", sources[position], exc_info=True)
                batch.append((position, str(error)))
        yield batch


def _why(sample: _Decoded) -> str | None:
    return sample[1] if isinstance(sample[1], str) else None


def _image(sample: _Decoded) -> InputImage:
    assert not isinstance(sample[1], str)
    return sample[1]


@dataclass
class _Steps:
    """``run_maps``'s stages of the shared pipeline (:func:`attnviz.runtime.pipeline.run_batches`)."""

    loaded: LoadedModel
    preset: Preset
    names: Sequence[str] | None
    capturer: Capturer
    sources: list[str]
    options: MapsOptions
    out: Path
    folders: list[str]
    painter: _Painter
    done: Callable[[ImageResult | Failure], None]
    results: list[ImageResult]

    def skip(self, sample: _Decoded, reason: str) -> None:
        """An input that could not be read: a failure, in its place among the outcomes."""
        self.painter.put(Failure(self.sources[sample[0]], reason), self.done)

    def analyse(self, inputs: list[_Decoded]) -> list[tuple[Capture, int, torch.Tensor | None]]:
        """One forward (and Grad-CAM) of the model on a batch of images."""
        images = [_image(sample) for sample in inputs]
        cap = self.capturer(torch.stack([image.tensor for image in images]), originals=[i.original for i in images])
        cams = _gradcam(self.loaded, cap, self.names) if self.options.cam else None
        return [(cap, index, cams) for index in range(len(images))]

    def emit(self, sample: _Decoded, analysed: tuple[Capture, int, torch.Tensor | None]) -> None:
        """Write one image's arrays, and queue its pictures and summary."""
        (position, _), item = sample, _image(sample)
        cap, index, cams = analysed
        folder = self.out / self.folders[position]
        try:
            result, job = _write_arrays(self.loaded, self.preset, cap, index, item, cams, folder)
        except OSError as error:  # a full disk fails every image: stop, and say what was written
            _remove_folder_if_empty(folder)
            raise output_error(error, folder, len(self.results)) from None
        except Exception as error:  # one image failing must not lose the others
            logger.debug("writing %s failed", item.path, exc_info=True)
            _remove_folder_if_empty(folder)
            reason = f"could not write its outputs: {type(error).__name__}: {error}"
            self.painter.put(Failure(str(item.path), reason), self.done)
            return
        self.painter.put(result, self.done, job)


def output_error(error: OSError, folder: Path, written: int) -> OutputError:
    """The one-line error for an output that could not be written while writing an image's
    ``folder``: exit code 1 when ``written`` images were finished before it, 2 when none were."""
    what = "disk full" if error.errno in (errno.ENOSPC, errno.EDQUOT) else (error.strerror or type(error).__name__)
    kept = f"wrote {written} image(s) to {folder.parent}" if written else "nothing written"
    return OutputError(
        f"{what}: could not write {error.filename or folder}; {kept}; the unfinished images were removed",
        exit_code=1 if written else 2,
    )


def _warn_non_finite(results: Sequence[ImageResult], model: str) -> None:
    bad = sum(1 for result in results if result.summary.get("non_finite"))
    if bad:
        warnings.warn(
            f"{bad} of {len(results)} image(s) gave NaN or infinite values from model {model} (check its "
            "weights): they are null in summary.json, and the maps holding them are not drawn",
            stacklevel=3,
        )


class _Painter:
    """Draws each image's pictures (in this process or in worker processes), then writes its
    ``summary.json`` and hands the outcome on, in input order, at most ``window`` images behind
    (a :class:`WorkQueue`). On the way out of a failed run the images not finished are removed
    (:func:`_abandon`).
    """

    def __init__(self, options: MapsOptions, n_images: int) -> None:
        workers = min(options.render_workers, n_images) if options.pictures and n_images > 1 else 0
        self.queue: WorkQueue[_Entry] = WorkQueue(workers, 2 * workers, self._finish_image, abandon=_abandon)
        self.options = options
        self.finished = 0  # images whose summary.json is written

    @property
    def window(self) -> int:
        """How many images may wait for their pictures."""
        return self.queue.window

    @window.setter
    def window(self, value: int) -> None:
        self.queue.window = value

    def __enter__(self) -> _Painter:
        self.queue.__enter__()
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        self.queue.__exit__(kind, error, trace)

    def put(self, outcome: ImageResult | Failure, done: Callable[[Any], None], job: PictureJob | None = None) -> None:
        """Queue ``outcome`` (with its pictures' ``job``, if any); ``done`` receives it when finished."""
        if isinstance(outcome, ImageResult) and self.options.pictures and job is not None:
            self.queue.put((outcome, done), maps_pictures.draw_pictures, job, outcome.out_dir, self.options)
        else:
            self.queue.put((outcome, done))

    def _finish_image(self, entry: _Entry, drawing: Outcome) -> None:
        """Store the pictures drawn and write ``summary.json``; an output that cannot be written
        stops the run."""
        outcome, done = entry
        if isinstance(outcome, ImageResult):
            try:
                _store_pictures(outcome, drawing)
                text = strict_json(outcome.summary, indent=2)
                outcome.files.append(write_bytes(outcome.out_dir / "summary.json", text.encode("utf-8")))
            except OSError as error:  # a full disk fails every image: stop, and say what was written
                raise output_error(error, outcome.out_dir, self.finished) from None  # _abandon removes it
            self.finished += 1
        done(outcome)


def _store_pictures(outcome: ImageResult, drawing: Outcome) -> None:
    """Add the pictures drawn to ``outcome`` and its summary, with those that failed. A drawing that
    failed as a whole (not one picture: its worker, say) leaves the image its arrays only."""
    try:
        drawn: Drawn | None = drawing.result()
    except OSError:
        raise
    except Exception as error:  # one image's pictures failing must not lose the image
        logger.debug("drawing the pictures of %s failed", outcome.path, exc_info=True)
        _remove_unfinished(outcome, keep_arrays=True)
        drawn = Drawn(failed=[PictureFailure("all pictures", describe(error))])
    if drawn is None:  # no pictures asked for
        return
    outcome.files.extend(drawn.files)
    outcome.summary["pictures"] = [str(path.relative_to(outcome.out_dir)) for path in drawn.files]
    if drawn.failed:
        outcome.failed_pictures = drawn.failed
        outcome.summary["failed_pictures"] = [{"picture": f.picture, "error": f.error} for f in drawn.failed]
    for failure in drawn.failed:
        if failure.traceback:
            logger.debug("picture %r of %s failed:\n%s", failure.picture, outcome.path, failure.traceback.rstrip())


def _abandon(entries: list[_Entry], error: BaseException) -> None:
    """After a Ctrl-C the unfinished images keep their arrays; after an output error nothing is kept."""
    keep_arrays = not isinstance(error, OutputError)
    for outcome, _ in entries:
        if isinstance(outcome, ImageResult):
            _remove_unfinished(outcome, keep_arrays)


def _remove_unfinished(outcome: ImageResult, keep_arrays: bool = True) -> None:
    """Leave an abandoned image's folder with its ``attention.npz`` only (``keep_arrays``, after a
    Ctrl-C), or remove it: pictures of a worker stopped while drawing may be cut short, and no
    ``summary.json`` lists them."""
    # the arrays only: pictures already stored for the image (a Ctrl-C between storing them and
    # writing summary.json) would otherwise stay, listed nowhere
    keep = {Path(path) for path in outcome.files if Path(path).name == ARRAYS} if keep_arrays else set()
    for path in sorted(outcome.out_dir.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir():
            with contextlib.suppress(OSError):
                path.rmdir()  # only when empty
        elif path not in keep:
            path.unlink(missing_ok=True)
    _remove_folder_if_empty(outcome.out_dir)


def _remove_folder_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def summary_dict(
    loaded: LoadedModel, preset: Preset, cap: Capture, index: int, image_path: str | None
) -> dict[str, Any]:
    """The JSON summary of one image: model, preset, prediction and a row per gate."""
    top = cap.topk(index, k=5)
    return {
        "image": image_path,
        "model": {"arch": loaded.arch, "source": loaded.source, "format": loaded.format},
        "preset": {
            "name": preset.name,
            "size": list(preset.size),
            "mean": list(preset.mean),
            "std": list(preset.std),
            "resize": preset.resize_description(),
        },
        "class_names_source": loaded.class_names_source,
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
    """Write one image's ``attention.npz`` into ``folder`` (made here, inside the output folder);
    return its result (summary not yet written) and picture job."""
    try:
        folder.mkdir(exist_ok=True)
        summary = summary_dict(loaded, preset, cap, index, item.path)
        arrays = cap.arrays(index)
        if cams is not None:
            arrays["cam/gradcam"] = cams[index].numpy()
            summary["gradcam"] = {"layer": cap.metadata.get("cam_layer"), "target": summary["prediction"]["index"]}
        summary["non_finite"] = sorted(key for key, values in arrays.items() if not np.isfinite(values).all())
        result = ImageResult(str(item.path), folder, finite(summary), nothing_found=cap.nothing_found())
        with atomic_file(folder / ARRAYS) as file:
            np.savez_compressed(file, **arrays)  # type: ignore[arg-type]  # numpy's stub takes **kwds as allow_pickle
    except BaseException:  # a Ctrl-C or a full disk before the arrays exist: no empty folder stays
        _remove_folder_if_empty(folder)
        raise
    result.files.append(folder / ARRAYS)
    return result, PictureJob.from_capture(cap, index, item.original, arrays)


def _gradcam(loaded: LoadedModel, cap: Capture, class_names: Sequence[str] | None) -> torch.Tensor | None:
    from attnviz.explain.cam import gradcam
    from attnviz.runtime.errors import UsageError

    try:
        result = gradcam(loaded.model, cap.images, class_names=class_names)
    except UsageError as error:
        if not isinstance(loaded.model, torch.jit.ScriptModule):
            raise
        warnings.warn(f"no Grad-CAM: {error}", stacklevel=2)  # TorchScript hides its layers: predictions only
        return None
    cap.metadata["cam_layer"] = result.layer
    maps = result.maps.detach().cpu().clone()
    maps[~torch.isfinite(result.scores.detach().cpu())] = float("nan")  # NaN scores (NaN weights): no map, not zeros
    return maps


#: The longest folder name taken from an image's stem, in UTF-8 bytes (file systems allow 255).
NAME_BYTES = 80


def _output_folders(paths: Sequence[Path]) -> list[str]:
    """One folder name per input, in input order: the image's stem made safe (:func:`_safe_stem`);
    when several inputs share one, the later ones get the first ``-2``, ``-3``, … that is no
    input's name nor taken yet, compared case-insensitively (as macOS and Windows disks compare)."""
    stems = [_safe_stem(path) for path in paths]
    taken = {_key(stem) for stem in stems}
    used: set[str] = set()
    folders = []
    for stem in stems:
        name, number = stem, 1
        while _key(name) in used or (number > 1 and _key(name) in taken):
            number += 1
            name = f"{stem}-{number}"
        used.add(_key(name))
        taken.add(_key(name))
        folders.append(name)
    return folders


def _safe_stem(path: Path) -> str:
    """``path``'s stem as one plain folder name: characters other than letters, digits, ``_ . -``
    become ``_``, leading and trailing dots go (no ``.``, ``..`` or hidden name), at most
    :data:`NAME_BYTES` bytes; ``image`` when nothing is left."""
    stem = re.sub(r"[^\w.-]+", "_", unicodedata.normalize("NFC", path.stem)).strip(".")
    stem = stem.encode("utf-8")[:NAME_BYTES].decode("utf-8", "ignore").rstrip(".")
    return stem or "image"


def _key(name: str) -> str:
    return unicodedata.normalize("NFKC", name).casefold()
