"""Atomic file writes: a temporary sibling, then ``os.replace``, so no half-written file is ever left.

Light on purpose (no torch): picture workers import it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from attnviz.runtime.errors import AttnvizError

#: The name of every temporary file attnviz writes: ``.<name>.<12 hex digits>.tmp`` beside ``<name>``.
TEMPORARY_NAME = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{12}\.tmp")


def temporary_sibling(path: Path) -> Path:
    """A fresh temporary name beside ``path`` (see :data:`TEMPORARY_NAME`)."""
    return path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"


def remove_temporaries(folder: Path) -> int:
    """Remove the temporary files attnviz left in ``folder`` itself (not below it): regular files
    named as :data:`TEMPORARY_NAME` says, nothing else. Returns how many were removed."""
    removed = 0
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(folder):
            if TEMPORARY_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
    return removed


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path``
    (``os.replace``), on any error it is removed and ``path`` is left as it was. The file gets
    the permissions of any new file (0o666 less the umask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    ours = True
    try:  # the open inside: a Ctrl-C raised just after it (not before the try) still removes the file
        try:
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            ours = False  # a file of that name that this call did not make: left alone
            raise
        text: dict[str, Any] = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
        with os.fdopen(handle, mode, **text) as file:
            yield file
        os.replace(temporary, path)
    except BaseException:
        if ours:
            with contextlib.suppress(OSError):  # the error that brought us here says more
                temporary.unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, creating parent folders."""
    with atomic_file(path) as file:
        file.write(data)
    return path


def require_file(path: str, noun: str, error: type[AttnvizError]) -> None:
    """Refuse, as ``error``, a ``path`` that does not exist, is a folder, cannot be read or is empty;
    ``noun`` names what it should be (``"image file"``, ``"checkpoint"``)."""
    if not os.path.exists(path):
        raise error(f"{noun} {path!r} does not exist")
    if os.path.isdir(path):
        raise error(f"{noun} {path!r} is a directory, not a file")
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise error(f"cannot read {noun} {path!r}: {exc.strerror}") from None
    if size == 0:
        raise error(f"{noun} {path!r} is empty (0 bytes)")
