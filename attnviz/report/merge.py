"""Join the folders of ``attnviz report --shard K/N`` runs into one report.

The shards must come from the same models, options and input (their ``run.json`` configuration
fingerprints agree) and be distinct slices of it. Records and pictures are hard-linked into the
merged folder where the file system allows it (copied otherwise); the sanity check comes from
shard 1; then every output is rebuilt from the records, so the merged report equals the report
of one run over the whole input.

Shard folders are untrusted input: before anything is written, every path that a shard's
``run.json``, manifest or records name (model slugs, item ids, pictures) must be a plain relative
path inside the shard (no ``..``, no absolute path, no symbolic link out of it, pictures only in the
picture folders); else the merge is refused with one line. The merged folder is claimed and locked
as any report folder (:func:`attnviz.runtime.outdir.claim_output_folder`).
"""

from __future__ import annotations

import heapq
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from attnviz.report import records as store
from attnviz.report.build import BuildResult, build_report
from attnviz.report.schema import ImageRecord, RunInfo
from attnviz.runtime.errors import UsageError
from attnviz.runtime.files import temporary_sibling
from attnviz.runtime.outdir import claim_output_folder


def merge_reports(
    dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *, force: bool = False, workers: int = 0
) -> BuildResult:
    """Merge shard report folders ``dirs`` into ``out`` and build its outputs (``force``: as
    :class:`attnviz.report.ReportOptions`'s; ``workers``: processes that read the records, as
    :func:`attnviz.report.build_report`'s).

    Unfinished shards (an interrupted run) and missing ones are merged as far as they go, with a
    warning; the result's ``pending`` counts the unfinished images (``results.json``:
    ``summary.pending``), ``run.json``'s ``missing_shards`` the shards not given.

    Raises:
        UsageError: No folders, a folder that is not a report, reports of different
            configurations, the same shard twice, ``out`` among the inputs, a shard naming a path
            outside itself, or an ``out`` that holds other files or is in use.
    """
    folders = [Path(d) for d in dirs]
    out = Path(out)
    runs, missing = _check(folders, out)
    for folder, run in zip(folders, runs):
        _check_paths(folder, run["config"])
    with claim_output_folder(out, "report", names=store.REPORT_NAMES, force=force):
        return _merge(folders, runs, missing, out, workers)


def _merge(folders: list[Path], runs: list[RunInfo], missing: list[int], out: Path, workers: int) -> BuildResult:
    store.clean_report(out)
    shards = sorted(tuple(run["shard"]) for run in runs)
    merged = {**runs[0], "shard": [1, 1], "shards": [list(s) for s in shards], "missing_shards": missing}
    for folder, run in zip(folders, runs):
        rows = unfinished = 0
        for row in store.read_manifest(folder):
            rows += 1
            unfinished += not _take(folder, out, row["id"], run["config"])
        if unfinished:
            k, n = run["shard"]
            warnings.warn(
                f"shard {k}/{n} ({folder}) is not finished: {unfinished} of {rows} image(s) have no result "
                "yet; finish it (re-run its command) and merge again",
                stacklevel=2,
            )
        sanity = _shard_file(folder, store.SANITY_FILE)
        if run["shard"][0] == 1 and sanity.is_file():
            _place(sanity, out / store.SANITY_FILE)
    store.write_manifest(out, _merged_rows(folders))
    store.write_json(out / store.RUN_FILE, merged)
    return build_report(out, workers=workers)


def _check(folders: list[Path], out: Path) -> tuple[list[RunInfo], list[int]]:
    """The shards' ``run.json`` and the numbers K of the shards not given."""
    if not folders:
        raise UsageError("--merge needs the report folders of the shards")
    if any(folder.resolve() == out.resolve() for folder in folders):
        raise UsageError(f"the merged report must go to a new folder, not into {out}")
    runs = [store.read_run(folder, "shard") for folder in folders]
    configs = {run["config"] for run in runs}
    if len(configs) > 1:
        raise UsageError("the folders hold reports of different models, options or inputs; merge shards of one command")
    counts = {run["shard"][1] for run in runs}
    if len(counts) > 1:
        raise UsageError(f"the folders hold shards of different splits ({', '.join(f'/{n}' for n in sorted(counts))})")
    seen: dict[int, Path] = {}
    for folder, run in zip(folders, runs):
        k = run["shard"][0]
        if k in seen:
            raise UsageError(f"{seen[k]} and {folder} are both shard {k}/{run['shard'][1]}")
        seen[k] = folder
    missing = sorted(set(range(1, counts.pop() + 1)) - set(seen))
    if missing:
        warnings.warn(
            f"merging without shard(s) {', '.join(map(str, missing))}: their images are not in the report", stacklevel=3
        )
    return runs, missing


def _check_paths(folder: Path, config: str) -> None:
    """Check every path the shard's manifest and records name, before anything is written.

    Raises:
        UsageError: ``refusing shard …``: a row without an index, an id that is not a plain file
            name, or a record or picture outside the shard (see :func:`_shard_file`).
    """
    _shard_file(folder, store.SANITY_FILE)
    try:
        for row in store.read_manifest(folder):
            if not isinstance(row, dict) or not isinstance(row.get("index"), int) or isinstance(row.get("index"), bool):
                raise UsageError(f"refusing shard {folder}: its {store.MANIFEST_FILE} holds a row without an index")
            item_id = _item_id(folder, row.get("id"))
            _record_file(folder, item_id)
            record = store.read_record(folder, item_id, config)
            for relative in _picture_files(record.pictures if isinstance(record, ImageRecord) else None):
                _picture_path(folder, relative)
    except (ValueError, RecursionError):
        raise UsageError(
            f"refusing shard {folder}: its {store.MANIFEST_FILE} is not one JSON object per line"
        ) from None


def _item_id(folder: Path, value: Any) -> str:
    try:
        return store.safe_name(value, "item id")
    except UsageError as error:
        raise UsageError(f"refusing shard {folder}: {error} (in its {store.MANIFEST_FILE})") from None


def _record_file(folder: Path, item_id: str) -> Path:
    """The shard's record of ``item_id`` (a checked id), which must be inside the shard."""
    return _shard_file(folder, f"{store.ITEMS_DIR}/{item_id}.json")


def _shard_file(folder: Path, relative: str) -> Path:
    """``folder / relative``, which must stay inside the shard (symbolic links followed).

    Raises:
        UsageError: It leads outside.
    """
    try:
        return store.inside(folder, relative, "file")
    except UsageError as error:
        raise UsageError(f"refusing shard {folder}: {error}") from None


def _picture_path(folder: Path, relative: str) -> Path:
    """A record's picture ``relative`` inside the shard: in one of the picture folders, inside it.

    Raises:
        UsageError: Anywhere else.
    """
    parts = PurePosixPath(relative).parts
    if len(parts) < 2 or parts[0] not in store.PICTURE_DIRS:
        raise UsageError(f"refusing shard {folder}: picture {relative!r} of a record is not in its picture folders")
    return _shard_file(folder, relative)


def _merged_rows(folders: list[Path]) -> Iterator[dict[str, Any]]:
    """Every shard's manifest rows in source order (each manifest is in source order already)."""
    return heapq.merge(*(store.read_manifest(folder) for folder in folders), key=lambda row: row["index"])


def _take(folder: Path, out: Path, item_id: str, config: str) -> bool:
    """Bring one image's record and pictures over; ``False`` (nothing done) when the shard has no
    record of it yet."""
    record = store.read_record(folder, _item_id(folder, item_id), config)
    if record is None:
        return False
    for relative in _picture_files(record.pictures if isinstance(record, ImageRecord) else None):
        source = _picture_path(folder, relative)  # checked again: the shard may have changed since
        if source.is_file():
            _place(source, store.inside(out, relative, "picture"))
    _place(_record_file(folder, item_id), store.record_path(out, item_id))
    return True


def _picture_files(pictures: Any) -> Iterator[str]:
    if isinstance(pictures, str):
        yield pictures
    elif isinstance(pictures, dict):
        for value in pictures.values():
            yield from _picture_files(value)


def _place(source: Path, target: Path) -> None:
    """Hard-link (else copy) ``source`` to ``target`` atomically; nothing when they are one file."""
    if target.exists() and os.path.samefile(source, target):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(target)
    try:
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copy2(source, temporary)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
