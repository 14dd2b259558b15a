"""``run_report``: stream images through every model, write one record per image, rebuild the report.

Images are decoded in ``DataLoader`` workers and run through the models batch by batch; only the
per-image numbers (and the small arrays the pictures need) outlive a batch. Pictures are drawn, and
records written, in worker processes that receive arrays only (``render_workers``), so that the
process that runs the models does neither. Each image's record is written after its pictures, so
a re-run of the same command skips every finished image; ``--shard K/N`` takes a deterministic
slice of the input, and :func:`attnviz.report.merge.merge_reports` joins the shards' folders.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from attnviz.io.checkpoints import LoadedModel
from attnviz.report import pictures
from attnviz.report import records as store
from attnviz.report.analysis import (
    AnalysisOptions,
    ModelRun,
    analyse_batch,
    prepare_models,
)
from attnviz.report.build import build_report
from attnviz.report.schema import FailedImage, ImageRecord, ModelOutcome
from attnviz.report.sources import (
    DecodingDataset,
    Item,
    Source,
    collate_decoded,
    resolve_source,
    shard_items,
    truth_index,
)
from attnviz.runtime.errors import UsageError
from attnviz.runtime.outdir import claim_output_folder
from attnviz.runtime.pipeline import run_batches
from attnviz.runtime.progress import phase, progress_bar
from attnviz.runtime.workqueue import Outcome, WorkQueue

#: Images whose pictures may wait in the render queue: this many batches (so that drawing one batch
#: overlaps with running the models on the next), and at least this many per render worker.
QUEUE_BATCHES, QUEUE_PER_WORKER = 2, 4


@dataclass
class ReportOptions:
    """How ``run_report`` works.

    Attributes:
        batch_size: Images per forward pass.
        workers: ``DataLoader`` worker processes that decode images (0: in this process).
        render_workers: Processes that draw the pictures and write each image's record, with or
            without pictures (0: in this process, between batches).
        build_workers: Processes that read the records back to write the tables and the page,
            500 records each, when there are more than 500, and draw the per-class excitation
            figures (0: this process; see :func:`attnviz.report.build_report`).
        shard: ``(K, N)``: process only the K-th of N deterministic slices (1-based).
        method: CAM method (any of :data:`attnviz.explain.cam.METHODS`).
        steps: Steps of the deletion/insertion curves.
        deletion_baseline: What removed pixels become (see :func:`attnviz.explain.metrics.deletion_insertion`).
        sanity_images: Images of the randomisation sanity check (the first ones of the input; 0: off).
        pictures: Draw the pictures (off: numbers only).
        class_names: Overrides the models' class names.
        masks: Folder of masks mirroring the input folder.
        data_dir: Where CIFAR-10 lives.
        seed: Seed of the ``shapes`` data set and of ``folder:`` splits.
        progress: Show a progress bar on stderr (``None``: when stderr is a terminal).
        force: Write into a folder that holds other files (never replacing one that attnviz did
            not write); without it such a folder is refused.
    """

    batch_size: int = 32
    workers: int = 0
    render_workers: int = 0
    build_workers: int = 0
    shard: tuple[int, int] = (1, 1)
    method: str = "gradcam"
    steps: int = 10
    deletion_baseline: str = "blur"
    sanity_images: int = 16
    pictures: bool = True
    class_names: Sequence[str] | None = None
    masks: str | os.PathLike[str] | None = None
    data_dir: str | os.PathLike[str] | None = None
    seed: int = 0
    progress: bool | None = None
    force: bool = False


@dataclass
class ReportResult:
    """What a run did.

    Attributes:
        out: The report folder.
        index: Its ``index.html``.
        total: Images in this run's input (after sharding).
        processed: Images processed by this run.
        resumed: Images skipped because an earlier run finished them.
        failures: ``{"id", "source", "reason"}`` of every input that could not be used.
        timings: Seconds per stage (``decode``, ``model``, ``cam``, ``metrics``, ``render``,
            ``sanity``, ``html``...).
    """

    out: Path
    index: Path
    total: int
    processed: int
    resumed: int
    failures: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no input was skipped."""
        return not self.failures


def run_report(
    models: Mapping[str, LoadedModel],
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: ReportOptions | None = None,
) -> ReportResult:
    """Run every model on every image of ``source`` and write the report into ``out``.

    Args:
        models: Name -> loaded model; the first is the baseline the others' maps are compared with.
        source: A folder, a list file or a data spec (``shapes``, ``shapes:N``, ``cifar10``,
            ``folder:PATH``); see :mod:`attnviz.report.sources`.
        out: The report folder (``index.html``, ``results.csv``, ``results.json``...). A folder
            of an earlier run of the same models and options is resumed. It must be new, empty or
            attnviz's own report folder (see :mod:`attnviz.runtime.outdir`; ``options.force``), and
            is locked while the run writes it.
        options: How to run; defaults to :class:`ReportOptions()`.

    Returns:
        What was done; ``failures`` lists the inputs that could not be decoded.

    Raises:
        UsageError: No models, bad options, an input with no images, or an ``out`` that holds
            other files or is in use by another run.
    """
    options = options or ReportOptions()
    _check(models, options)
    out = Path(out)
    timings: dict[str, float] = {}
    source_obj = resolve_source(
        source, masks=options.masks, data_dir=options.data_dir, seed=options.seed, exclude=[out]
    )
    class_names = resolve_class_names(options.class_names, models, source_obj)
    runs = prepare_models(models, class_names, options.method)
    _check_outputs(runs, options.class_names is not None)
    # only once the input and the models are known to be usable
    with claim_output_folder(out, "report", names=store.REPORT_NAMES, force=options.force):
        return _write_report(runs, source_obj, class_names, out, options, timings)


def _write_report(
    runs: list[ModelRun],
    source_obj: Source,
    class_names: list[str] | None,
    out: Path,
    options: ReportOptions,
    timings: dict[str, float],
) -> ReportResult:
    """Everything ``run_report`` writes, into the claimed folder ``out``."""
    run_info = _run_info(runs, source_obj, class_names, options)
    config = run_info["config"]
    items = shard_items(source_obj.items, options.shard)
    store.clean_report(out)
    store.write_json(out / store.RUN_FILE, run_info)
    store.write_manifest(out, ({"index": i.index, "id": i.id, "key": i.key, "name": i.name} for i in items))
    stamps = {item.id: store.file_stamp(item.path, item.mask) for item in items}  # taken before decoding
    pending = [item for item in items if not store.is_finished(out, item.id, config, stamps[item.id])]
    _warn_unknown_labels(source_obj, items, class_names, min(run.num_classes for run in runs))
    if not pending:
        phase(f"report: all {len(items)} image(s) finished earlier", options.progress)
    _process(runs, source_obj, pending, out, config, class_names, options, timings, len(items), stamps)
    if options.shard[0] == 1 and options.sanity_images > 0:
        start = time.perf_counter()
        _sanity(runs, source_obj, out, config, options)
        timings["sanity"] = time.perf_counter() - start
    phase(f"report: writing {out / 'index.html'}, results.csv and results.json", options.progress)
    built = build_report(out, workers=options.build_workers)
    timings.update({f"build {k}": v for k, v in built.seconds.items()})
    return ReportResult(out, built.index, len(items), len(pending), len(items) - len(pending), built.failures, timings)


def name_models(loaded: Sequence[LoadedModel]) -> dict[str, LoadedModel]:
    """Name models by architecture, adding the checkpoint's file name when two share one."""
    named: dict[str, LoadedModel] = {}
    for model in loaded:
        name = model.arch
        if name in named:
            name = f"{model.arch} ({Path(model.source).stem})" if model.source else f"{model.arch} ({len(named) + 1})"
        while name in named:
            name = f"{name}'"
        named[name] = model
    return named


def resolve_class_names(
    given: Sequence[str] | None, models: Mapping[str, LoadedModel], source: Source
) -> list[str] | None:
    """The report's class names: given, else the models' (which must agree), else the input's own
    (data spec, sub-folders), else CIFAR-10's when every model takes CIFAR-10 input, else none.

    Raises:
        UsageError: Two models' checkpoints name their classes differently (and none are given).
    """
    from attnviz.io.inputs import CIFAR10_CLASSES

    if given is not None:
        return list(given)
    named = {name: list(loaded.class_names) for name, loaded in models.items() if loaded.class_names}
    if named:
        (first, names), *others = named.items()
        for other, other_names in others:
            if other_names != names:
                raise UsageError(
                    f"the models' classes differ ({first}: {_shown(names)}; {other}: {_shown(other_names)}); "
                    "report models of the same classes, or give the names with --classes"
                )
        return names
    if source.class_names:
        return list(source.class_names)
    if all(getattr(m.preset, "name", None) == "cifar10" for m in models.values()):
        return list(CIFAR10_CLASSES)
    return None


# --------------------------------------------------------------------------- processing


def _process(
    runs: list[ModelRun],
    source: Source,
    pending: list[Item],
    out: Path,
    config: str,
    class_names: list[str] | None,
    options: ReportOptions,
    timings: dict[str, float],
    total: int,
    stamps: Mapping[str, Any],
) -> None:
    """Decode, analyse and draw every pending image; write their records (failures included);
    ``stamps``: each item's :func:`records.file_stamp`, kept in its record."""
    if not pending:
        return
    presets = {run.key: run.preset for run in runs}
    loader = DataLoader(
        DecodingDataset(source, pending, presets),
        batch_size=options.batch_size,
        num_workers=options.workers,
        collate_fn=collate_decoded,
        pin_memory=any(_on_cuda(run) for run in runs),
    )
    analysis = AnalysisOptions(options.method, options.steps, options.deletion_baseline)
    classes = min(run.num_classes for run in runs)
    with ExitStack() as stack:
        # runs last: after a Ctrl-C, remove what picture workers stopped mid-write left (records are whole)
        stack.push(lambda kind, error, trace: kind is not None and _clean_after(out))
        batches = _timed(iter(loader), timings, "decode")
        advance = stack.enter_context(progress_bar(total, total - len(pending), options.progress, "report"))
        workers = options.render_workers  # they draw the pictures (if any) and write the records
        writer = _RecordWriter(out, config, timings, advance, in_process=workers == 0)
        # workers ignore Ctrl-C; on any exit, queued drawings are dropped (their images are redone on resume)
        queue: WorkQueue[ImageRecord] = stack.enter_context(
            WorkQueue(workers, _queue_size(options) if workers else 0, writer, ordered=False)
        )

        slugs = {run.name: run.slug for run in runs}

        def skip(sample: Any, reason: str) -> None:
            _write_failure(out, pending[sample.position], config, reason)
            advance(1)

        def analyse(good: list[Any]) -> list[tuple[int | None, Any]]:
            truths = [_truth(pending[sample.position], class_names, classes) for sample in good]
            return list(zip(truths, analyse_batch(runs, good, truths, analysis, timings)))

        def emit(sample: Any, analysed: tuple[int | None, Any]) -> None:
            truth, (entries, arrays) = analysed
            item = pending[sample.position]
            record = _record(item, sample, truth, class_names, entries, config, stamps[item.id])
            job = {"id": item.id, "thumb": sample.thumb, "slugs": slugs, **arrays} if options.pictures else None
            queue.put(record, pictures.finish, record, job, str(out))

        run_batches(batches, lambda sample: sample.error, skip, analyse, emit)
        queue.drain(0)
        if workers:
            timings["render (waiting)"] = timings.get("render (waiting)", 0.0) + queue.waited


def _queue_size(options: ReportOptions) -> int:
    """How many images may wait for their pictures while the models run on the next batch."""
    return max(QUEUE_BATCHES * options.batch_size, QUEUE_PER_WORKER * options.render_workers)


@dataclass
class _RecordWriter:
    """Finishes an image of the render queue once :func:`pictures.finish` drew its pictures and wrote
    its record (here or in a worker process): adds the seconds it took, or writes a failure record
    when it failed; then advances the progress."""

    out: Path
    config: str
    timings: dict[str, float]
    advance: Callable[[int], None]
    in_process: bool

    def __call__(self, record: ImageRecord, drawing: Outcome) -> None:
        try:
            finished: pictures.Finished = drawing.result()
        except Exception as error:  # one picture failing must not lose the others
            notes = getattr(error, "__notes__", ())
            what = "write its record" if store.WRITING_RECORD in notes else "draw its pictures"
            logging.getLogger(__name__).debug("%s: could not %s", record.source, what, exc_info=True)
            reason = f"could not {what}: {type(error).__name__}: {error}"
            _write_failure(self.out, _item_of(record), self.config, reason)
        else:
            where = "" if self.in_process else " (workers)"
            if finished.pictures is not None:
                self.timings[f"render{where}"] = self.timings.get(f"render{where}", 0.0) + finished.drawing
            self.timings[f"records{where}"] = self.timings.get(f"records{where}", 0.0) + finished.record
        self.advance(1)


def _truth(item: Item, class_names: list[str] | None, classes: int) -> int | None:
    """The item's class index, if it names one of the models' outputs."""
    index = truth_index(item.truth, class_names)
    return index if index is not None and index < classes else None


def _on_cuda(run: ModelRun) -> bool:
    parameter = next(run.loaded.model.parameters(), None)
    return parameter is not None and parameter.is_cuda


def _record(
    item: Item,
    sample: Any,
    truth: int | None,
    class_names: list[str] | None,
    entries: dict[str, ModelOutcome],
    config: str,
    files: Any,
) -> ImageRecord:
    label = class_names[truth] if truth is not None and class_names and truth < len(class_names) else None
    return ImageRecord(
        **_identity(item),
        config=config,
        truth=label if label is not None else (str(truth) if truth is not None else None),
        truth_index=truth,
        size=tuple(sample.size),
        thumb_size=tuple(sample.thumb.shape[:2]),
        has_mask=sample.mask is not None,
        note=sample.note,
        models=entries,
        files=files,
    )


def _write_failure(out: Path, item: Item, config: str, reason: str) -> None:
    store.write_record(out, FailedImage(**_identity(item), config=config, reason=reason))


def _identity(item: Item) -> dict[str, Any]:
    return {"id": item.id, "index": item.index, "key": item.key, "name": item.name, "source": item.path or item.key}


def _item_of(record: ImageRecord) -> Item:
    source = record.source
    return Item(record.index, record.key, record.name, source if source != record.key else None)


def _timed(iterator: Iterator[Any], timings: dict[str, float], key: str) -> Iterator[Any]:
    """Yield from ``iterator``, adding the time spent waiting for each item to ``timings[key]``."""
    while True:
        start = time.perf_counter()
        try:
            value = next(iterator)
        except StopIteration:
            return
        finally:
            timings[key] = timings.get(key, 0.0) + time.perf_counter() - start
        yield value


# --------------------------------------------------------------------------- sanity check


def _sanity(runs: list[ModelRun], source: Source, out: Path, config: str, options: ReportOptions) -> None:
    """The randomisation sanity check of every model on the first decodable images of the input."""
    from attnviz.report.measures import SANITY_FORMAT, sanity

    path = out / store.SANITY_FILE
    existing = store.read_json(path)
    if (
        isinstance(existing, dict)
        and existing.get("config") == config
        and existing.get("count") == options.sanity_images
        and existing.get("format") == SANITY_FORMAT
    ):
        return
    dataset = DecodingDataset(source, source.items[: 4 * options.sanity_images], {r.key: r.preset for r in runs})
    chosen = []
    for position in range(len(dataset)):
        sample = dataset[position]
        if sample.error is None:
            chosen.append(sample)
        if len(chosen) == options.sanity_images:
            break
    if not chosen:
        return
    phase(f"report: randomisation sanity check on {len(chosen)} image(s), {len(runs)} model(s)", options.progress)
    result: dict[str, Any] = {
        "config": config,
        "count": options.sanity_images,
        "format": SANITY_FORMAT,
        "images": [dataset.items[s.position].name for s in chosen],
        "method": options.method,
        "models": {},
    }
    for run in runs:
        if isinstance(run.loaded.model, torch.jit.ScriptModule):  # hooks cannot see the order its layers run in
            warnings.warn(
                f"no sanity check for {run.name}: TorchScript hides the layers it randomises one by one", stacklevel=2
            )
            continue
        images = torch.stack([s.tensors[run.key] for s in chosen])
        result["models"][run.name] = sanity(
            run.loaded.model, images, method=options.method, layer=run.cam_layer or None
        )
    store.write_json(path, result)


# --------------------------------------------------------------------------- set-up


def _check(models: Mapping[str, LoadedModel], options: ReportOptions) -> None:
    if not models:
        raise UsageError("a report needs at least one model")
    for name in ("batch_size", "steps"):
        if int(getattr(options, name)) < 1:
            raise UsageError(f"{name} must be at least 1, got {getattr(options, name)}")
    for name in ("workers", "render_workers", "build_workers", "sanity_images"):
        if int(getattr(options, name)) < 0:
            raise UsageError(f"{name} must be 0 or more, got {getattr(options, name)}")
    k, n = options.shard
    if not 1 <= k <= n:
        raise UsageError(f"shard must be K/N with 1 <= K <= N, got {k}/{n}")


def _check_outputs(runs: list[ModelRun], given: bool) -> None:
    """The models must have as many outputs as each other, unless the class names are given."""
    counts = {run.name: run.num_classes for run in runs}
    if len(set(counts.values())) > 1 and not given:
        shown = ", ".join(f"{name}: {count}" for name, count in counts.items())
        raise UsageError(
            f"the models have different numbers of classes ({shown}); report models of the same "
            "classes, or give the names with --classes"
        )


def _shown(names: Sequence[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (f", … ({len(names)} in all)" if len(names) > limit else "")


def _run_info(
    runs: list[ModelRun], source: Source, class_names: list[str] | None, options: ReportOptions
) -> dict[str, Any]:
    numbers = {
        "method": options.method,
        "steps": options.steps,
        "deletion_baseline": options.deletion_baseline,
        "pictures": options.pictures,
    }
    models = [run.describe() | {"parameters": store.parameters_hash(run.loaded.model)} for run in runs]
    config = store.fingerprint(
        {
            "models": [{k: m[k] for k in ("name", "arch", "preset", "cam_layer", "parameters")} for m in models],
            "class_names": class_names,
            "options": numbers,
            "source": source.identity(),
            "seed": options.seed,
        }
    )
    return {
        "format": store.FORMAT,
        "version": store.VERSION,
        "config": config,
        "source": source.describe(),
        "models": models,
        "baseline": runs[0].name,
        "class_names": class_names,
        "options": numbers | {"batch_size": options.batch_size, "sanity_images": options.sanity_images},
        "shard": list(options.shard),
    }


def _warn_unknown_labels(source: Source, items: list[Item], class_names: list[str] | None, classes: int) -> None:
    """Say when folder or data-set labels name no class of the models (a list file's parent folders
    are only candidate labels, so they are not warned about)."""
    if source.kind == "list":
        return
    unknown = sorted({i.truth for i in items if i.truth is not None and _truth(i, class_names, classes) is None})
    if unknown:
        shown = ", ".join(unknown[:5]) + (" …" if len(unknown) > 5 else "")
        warnings.warn(f"labels that name no class of the models are ignored: {shown}", stacklevel=3)


def _clean_after(out: Path) -> bool:
    """Remove what an interrupted run left half-written; ``False``: the exception goes on."""
    store.clean_report(out)
    return False
