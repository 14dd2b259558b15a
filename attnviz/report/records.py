"""The files a report folder is made of, written atomically and read back.

``DIR/run.json``        what ran: models, options, source, shard, the configuration fingerprint
``DIR/manifest.jsonl``  the items of this run (one JSON object per line, in source order)
``DIR/items/<id>.json`` one record per image: every number the report shows for it
``DIR/sanity.json``     the randomisation sanity check (shard 1 only)

A record is written after the image's pictures, so its presence means the image is finished;
a re-run with the same configuration skips it, unless the image's file (or its mask) has another
size or modification time than when the record was made (``files``). Every write goes through a temporary sibling and
``os.replace``, so an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from attnviz._files import write_bytes
from attnviz.errors import UsageError

FORMAT = "attnviz-report"
VERSION = 1
RUN_FILE = "run.json"
MANIFEST_FILE = "manifest.jsonl"
SANITY_FILE = "sanity.json"
ITEMS_DIR = "items"


def write_json(path: Path, value: Any) -> Path:
    """Write ``value`` as UTF-8 JSON atomically (NaN and infinities become ``null``)."""
    text = json.dumps(plain(value), ensure_ascii=False, indent=1, allow_nan=False)
    return write_bytes(path, text.encode("utf-8"))


def read_json(path: Path) -> Any | None:
    """The JSON value in ``path``, or ``None`` when the file is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def plain(value: Any) -> Any:
    """``value`` with non-finite floats replaced by ``None`` and numpy/torch values made Python ones."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def record_path(out: Path, item_id: str) -> Path:
    return out / ITEMS_DIR / f"{item_id}.json"


def write_record(out: Path, record: dict[str, Any]) -> Path:
    """Write one image's record."""
    return write_json(record_path(out, record["id"]), record)


def read_record(out: Path, item_id: str, config: str | None = None) -> dict[str, Any] | None:
    """One image's record, or ``None`` when it is missing, broken or of another configuration."""
    record = read_json(record_path(out, item_id))
    if not isinstance(record, dict) or record.get("id") != item_id:
        return None
    if config is not None and record.get("config") != config:
        return None
    return record


def is_finished(out: Path, item_id: str, config: str, stamp: Any = None) -> bool:
    """True when the image has a successful record of this configuration, made from files of
    this ``stamp`` (see :func:`file_stamp`; ``None`` for generated images)."""
    record = read_record(out, item_id, config)
    return record is not None and record.get("status") == "ok" and record.get("files") == plain(stamp)


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


def read_run(out: Path) -> dict[str, Any]:
    """``run.json`` of a report folder.

    Raises:
        UsageError: Missing or not a report's.
    """
    run = read_json(out / RUN_FILE)
    if not isinstance(run, dict) or run.get("format") != FORMAT:
        raise UsageError(f"{out} is not a report folder (no valid {RUN_FILE}); run attnviz report first")
    return run


def fingerprint(value: Any) -> str:
    """A short hash of a JSON-able value (the configuration that every record depends on)."""
    text = json.dumps(plain(value), sort_keys=True, ensure_ascii=False)
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


def clean_dir(path: Path) -> None:
    """Remove temporary files left by an interrupted write (``.<name>.*.tmp``)."""
    if not path.is_dir():
        return
    for entry in os.scandir(path):
        if entry.is_file() and entry.name.startswith(".") and entry.name.endswith(".tmp"):
            Path(entry.path).unlink(missing_ok=True)
