"""The files a report folder is made of, written atomically and read back.

``DIR/run.json``        what ran: models, options, source, shard, the configuration fingerprint
``DIR/manifest.jsonl``  the items of this run (one JSON object per line, in source order)
``DIR/items/<id>.json`` one record per image: every number the report shows for it
``DIR/sanity.json``     the randomisation sanity check (shard 1 only)

A record is written after the image's pictures, so its presence means the image is finished;
a re-run with the same configuration skips it, unless the image's file (or its mask) has another
size or modification time than when the record was made (``files``). Every write goes through a temporary sibling and
``os.replace``, so an interrupted run never leaves a half-written file behind.

Every path a report derives from what it reads (an item's id, a model's slug, a record's pictures) is
checked to be a plain relative path inside the folder (:func:`safe_name`, :func:`inside`), so a
crafted folder cannot make attnviz read or write elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, cast

from attnviz.report.schema import ImageRecord, Record, RunInfo, record_from_json
from attnviz.runtime.errors import UsageError
from attnviz.runtime.files import remove_temporaries, write_bytes
from attnviz.runtime.text import finite, strict_json

FORMAT = "attnviz-report"
VERSION = 1
RUN_FILE = "run.json"
MANIFEST_FILE = "manifest.jsonl"
SANITY_FILE = "sanity.json"
ITEMS_DIR = "items"
#: Everything a report writes at the top of its folder (``pictures.py`` and ``build.py`` name the
#: pictures' and figures' folders; a test checks this list against a report with pictures).
REPORT_NAMES = frozenset(
    {
        RUN_FILE,
        MANIFEST_FILE,
        SANITY_FILE,
        ITEMS_DIR,
        "images",
        "arrays",
        "cam",
        "gates",
        "bars",
        "figures",
        "index.html",
        "results.csv",
        "results.json",
        "summary.csv",
        "METRICS.md",
        "metrics.html",
    }
)
#: Folders of the report that hold one sub-folder per model (named by its slug).
MODEL_DIRS = ("cam", "gates", "bars")
#: The folders that a record's pictures are in.
PICTURE_DIRS = ("images", "arrays", *MODEL_DIRS)
_SAFE_NAME = re.compile(r"[\w-][\w.-]*")


def write_json(path: Path, value: Any, *, compact: bool = False) -> Path:
    """Write ``value`` as UTF-8 JSON atomically (NaN and infinities become ``null``); ``compact``:
    on one line (what each image's record is: a third of the time and size of the indented text)."""
    text = strict_json(value, separators=(",", ":")) if compact else strict_json(value, indent=1)
    return write_bytes(path, text.encode("utf-8"))


#: Deeper than any file a report writes: a deeper one is crafted, and would exhaust the stack of
#: every function that walks it (``finite``, ``json.dumps``).
MAX_DEPTH = 32


def read_json(path: Path) -> Any | None:
    """The JSON value in ``path``, or ``None`` when the file is missing, unreadable or nested
    deeper than :data:`MAX_DEPTH`."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # RecursionError: nested too deeply to be ours
        return None
    return None if _deeper_than(value, MAX_DEPTH) else value


def _deeper_than(value: Any, limit: int) -> bool:
    """True when lists and dicts are nested in ``value`` (as :func:`json.loads` gives it) more than
    ``limit`` levels deep (no recursion)."""
    stack = [(value, 0)] if type(value) in _CONTAINERS else []
    while stack:
        item, depth = stack.pop()
        if depth >= limit:
            return True
        children = item.values() if type(item) is dict else item
        if not _CONTAINERS.isdisjoint(map(type, children)):  # a list of numbers is looked at in C only
            stack.extend((child, depth + 1) for child in children if type(child) in _CONTAINERS)
    return False


_CONTAINERS = frozenset({dict, list})


def safe_name(value: Any, what: str) -> str:
    """``value`` if it is a plain file name (letters, digits, ``_ . -``, not starting with a dot).

    Raises:
        UsageError: Anything else (``..``, a path, an empty or non-string value).
    """
    if not isinstance(value, str) or not _SAFE_NAME.fullmatch(value):
        raise UsageError(f"{what} {value!r} is not a plain file name")
    return value


def inside(folder: Path, relative: Any, what: str) -> Path:
    """``folder / relative`` when ``relative`` is a relative POSIX path that stays inside
    ``folder``, also once symbolic links are followed.

    Raises:
        UsageError: An absolute path, a ``..`` or backslash in it, or a link out of ``folder``.
    """
    if not isinstance(relative, str) or not relative or "\\" in relative or "\0" in relative:
        raise UsageError(f"{what} {relative!r} is not a relative path")
    parts = PurePosixPath(relative).parts
    if PurePosixPath(relative).is_absolute() or any(part in ("..", ".") for part in parts) or ":" in parts[0]:
        raise UsageError(f"{what} {relative!r} is outside its folder")
    path = folder.joinpath(*parts)
    try:
        root, resolved = folder.resolve(), path.resolve()
    except (OSError, RuntimeError):  # a loop of symbolic links
        raise UsageError(f"{what} {relative!r} cannot be resolved (a loop of symbolic links)") from None
    if not resolved.is_relative_to(root) or resolved == root:
        raise UsageError(f"{what} {relative!r} leads outside its folder (a symbolic link)")
    return path


def record_path(out: Path, item_id: str) -> Path:
    """Where the record of ``item_id`` is.

    Raises:
        UsageError: ``item_id`` is not a plain file name.
    """
    return out / ITEMS_DIR / f"{safe_name(item_id, 'item id')}.json"


#: The note added to an exception raised while writing a record, so that whoever catches it (in
#: another process too: notes are pickled with the exception) can say that the record failed.
WRITING_RECORD = "while writing the image's record"


def write_record(out: Path, record: Record) -> Path:
    """Write one image's record (its :meth:`~attnviz.report.schema.ImageRecord.to_json`).

    Raises:
        Exception: What writing raised, with the note :data:`WRITING_RECORD`.
    """
    try:
        return write_json(record_path(out, record.id), record.to_json(), compact=True)
    except Exception as error:
        error.add_note(WRITING_RECORD)
        raise


def read_record(out: Path, item_id: str, config: str | None = None) -> Record | None:
    """One image's record, or ``None`` when it is missing, broken (not a record as attnviz writes
    them) or of another configuration."""
    data = read_json(record_path(out, item_id))
    if not isinstance(data, dict) or data.get("id") != item_id:
        return None
    if config is not None and data.get("config") != config:
        return None
    try:
        return record_from_json(data)
    except ValueError:
        return None


def is_finished(out: Path, item_id: str, config: str, stamp: Any = None) -> bool:
    """True when the image has a successful record of this configuration, made from files of
    this ``stamp`` (see :func:`file_stamp`; ``None`` for generated images)."""
    record = read_record(out, item_id, config)
    return isinstance(record, ImageRecord) and record.files == finite(stamp)


def file_stamp(*paths: str | os.PathLike[str] | None) -> list[list[int] | None] | None:
    """``[size, mtime in ns]`` of each file (``None`` for a missing one or no file); ``None`` when
    no path is given. Stored in each record, so that a resumed run redoes an image whose image or
    mask file changed since."""
    if all(path is None for path in paths):
        return None
    stamps: list[list[int] | None] = []
    for path in paths:
        try:
            status = os.stat(path) if path is not None else None
        except OSError:
            status = None
        stamps.append([status.st_size, status.st_mtime_ns] if status is not None else None)
    return stamps


def write_manifest(out: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write the manifest: one JSON object per line."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return write_bytes(out / MANIFEST_FILE, text.encode("utf-8"))


def read_manifest(out: Path) -> Iterator[dict[str, Any]]:
    """The manifest's rows, one at a time.

    Raises:
        UsageError: The folder holds no report manifest.
    """
    path = out / MANIFEST_FILE
    if not path.is_file():
        raise UsageError(f"{out} is not a report folder (no {MANIFEST_FILE}); run attnviz report first")
    with open(path, encoding="utf-8") as file:
        for line in file:
            if line.strip():
                yield json.loads(line)


def read_run(out: Path, role: str = "report folder") -> RunInfo:
    """``run.json`` of a report folder (``role`` names it in errors: ``"shard"``...).

    Raises:
        UsageError: Missing, not a report's, or naming a model slug that is not a plain file name.
    """
    run = read_json(out / RUN_FILE)
    if not isinstance(run, dict) or run.get("format") != FORMAT:
        raise UsageError(f"{out} is not a report folder (no valid {RUN_FILE}); run attnviz report first")
    models = run.get("models")
    if not isinstance(models, list) or not models or not all(isinstance(m, dict) for m in models):
        raise UsageError(f"refusing {role} {out}: its {RUN_FILE} lists no models")
    for model in models:
        try:
            safe_name(model.get("slug"), "model slug")
        except UsageError as error:
            raise UsageError(f"refusing {role} {out}: {error} (in its {RUN_FILE})") from None
    return cast(RunInfo, run)


def fingerprint(value: Any) -> str:
    """A short hash of a JSON-able value (the configuration that every record depends on)."""
    text = strict_json(value, sort_keys=True)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def parameters_hash(model: Any) -> str:
    """SHA-1 of a model's parameters and buffers (names, dtypes, shapes and bytes)."""
    import torch

    digest = hashlib.sha1()
    for name, tensor in list(model.state_dict().items()):
        digest.update(name.encode("utf-8"))
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        data = tensor.detach().to("cpu").contiguous()
        digest.update(data.view(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()[:16]


def clean_report(out: Path) -> None:
    """Remove the temporary files that interrupted writes left in the report folder ``out``: only
    attnviz's own names (``.<name>.<12 hex>.tmp``), only in the folders a report makes."""
    folders = [out, *(out / name for name in REPORT_NAMES if "." not in name)]
    for name in MODEL_DIRS:
        with os.scandir(out / name) if (out / name).is_dir() else contextlib.nullcontext(()) as entries:
            folders.extend(Path(e.path) for e in entries if e.is_dir(follow_symlinks=False))
    for folder in folders:
        if folder.is_dir() and not folder.is_symlink():
            remove_temporaries(folder)
