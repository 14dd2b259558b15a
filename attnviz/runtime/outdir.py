"""Output folders that attnviz owns: a marker says whose a folder is, a lock keeps it to one run.

``claim_output_folder(out, kind)`` is held for the whole of a run of ``attnviz report`` or ``maps``:

- **Ownership.** A folder attnviz makes (or finds empty) gets a marker, ``.attnviz.json``
  (``{"format": "attnviz-output", "kind": "report" | "maps", "version": 1}``). Only a folder with
  the marker of the same kind, or an earlier attnviz's output of that kind (recognised by its
  files, then marked), is written into; any other non-empty folder is refused (``UsageError``,
  exit 2) before anything is written. ``force=True`` (``report --force``) writes beside other
  files, but never when one of them bears a name the run writes: a file attnviz did not write is
  never replaced or removed.
- **Lock.** ``.attnviz.lock`` holds the holder's pid, host, boot id and start time; it is made
  atomically (a hard link of a finished file, else ``O_CREAT | O_EXCL``), so only one run at a
  time holds a folder. A lock whose process is gone (same host, pid not running or another boot)
  is taken over with a one-line warning; any other lock refuses the run with one line naming the
  holder. The lock is removed when the run ends, on an error or Ctrl-C too (not after a kill -9:
  the next run then takes it over).

Light on purpose (no torch): ``attnviz maps`` and ``report`` import it before anything heavy.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import secrets
import socket
import warnings
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from attnviz.runtime.errors import UsageError
from attnviz.runtime.files import TEMPORARY_NAME, temporary_sibling, write_bytes

MARKER = ".attnviz.json"
LOCK = ".attnviz.lock"
FORMAT = "attnviz-output"
VERSION = 1
KINDS = ("report", "maps")


@contextlib.contextmanager
def claim_output_folder(
    out: str | os.PathLike[str], kind: str, *, names: Collection[str] = (), force: bool = False
) -> Iterator[Path]:
    """Make or check ``out`` as attnviz's ``kind`` output folder and hold its lock while the
    ``with`` block runs. A folder this call made and nothing else was written into is removed again.

    Args:
        out: The output folder.
        kind: ``"report"`` or ``"maps"``.
        names: The entries a run writes at the top of the folder (a report's files and
            sub-folders); with ``force``, none of them may exist in a folder attnviz does not own.
        force: Write into a non-empty folder without attnviz's marker (beside its files).

    Raises:
        UsageError: ``out`` is a file, cannot be made, holds files attnviz did not write, holds
            another kind of attnviz output, or is in use by another run.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    out = Path(out)
    _check_owner(out, kind, names, force)
    made = _make(out)
    try:
        token = _acquire(out, kind)
        try:
            _check_owner(out, kind, names, force)  # again, now that no other run can change it
            if _marker(out) is None:
                write_bytes(out / MARKER, json.dumps({"format": FORMAT, "kind": kind, "version": VERSION}).encode())
            yield out
        finally:
            _release(out, token)
    finally:
        _unmake(made)


# --------------------------------------------------------------------------- ownership


def _check_owner(out: Path, kind: str, names: Collection[str], force: bool) -> None:
    """Raise unless ``out`` is missing, empty, or attnviz's ``kind`` output (or ``force`` and no clash)."""
    if not out.exists():
        if out.is_symlink():
            raise UsageError(f"--out {out} is a broken symbolic link; give a folder")
        return
    if not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; give a folder")
    marker = _marker(out)
    if marker is not None:
        if marker != kind:
            raise UsageError(f"{out} holds the output of attnviz {marker}, not of {kind}; give another --out")
        return
    entries = _entries(out)
    if not entries or _earlier_output(out, kind, entries, names):
        return
    shown = _shown(entries)
    if not force:
        hint = ", or --force to write beside them (it never replaces them)" if names else ""
        raise UsageError(f"{out} holds files that attnviz did not write ({shown}); give a new or empty folder{hint}")
    clash = sorted(set(entries) & set(names))
    if clash:
        raise UsageError(
            f"{out} holds files that attnviz did not write under the names it writes ({_shown(clash)}); "
            "--force never replaces them: give another --out"
        )


def _marker(out: Path) -> str | None:
    """The kind named by ``out``'s marker, ``None`` without one.

    Raises:
        UsageError: A marker that is not attnviz's.
    """
    path = out / MARKER
    if not path.is_file() and not path.is_symlink():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8")) if not path.is_symlink() else None
    except (OSError, ValueError):
        value = None
    if not isinstance(value, dict) or value.get("format") != FORMAT or value.get("kind") not in KINDS:
        raise UsageError(f"{path} is not attnviz's folder marker; give another --out")
    return str(value["kind"])


def _entries(out: Path) -> list[str]:
    """The names in ``out`` that are not attnviz's bookkeeping (its lock and the lock's temporary)."""
    try:
        names = sorted(os.listdir(out))
    except OSError as error:
        raise UsageError(f"cannot read the output folder {out}: {error.strerror or error}") from None
    found = []
    for name in names:
        match = TEMPORARY_NAME.fullmatch(name)
        if name in (MARKER, LOCK) or (match and match["name"] in (MARKER, LOCK)):
            continue
        found.append(name)
    return found


def _earlier_output(out: Path, kind: str, entries: list[str], names: Collection[str]) -> bool:
    """True when ``out`` holds nothing but what an earlier attnviz (before the marker) wrote:
    a report's files with its ``run.json``, or one folder per image holding ``attention.npz``."""
    if kind == "report":
        try:
            run = json.loads((out / "run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        ours = set(names) | {"run.json"}
        return (
            isinstance(run, dict)
            and run.get("format") == "attnviz-report"
            and all(e in ours or TEMPORARY_NAME.fullmatch(e) for e in entries)
        )
    return all(
        (out / e).is_dir() and not (out / e).is_symlink() and (out / e / "attention.npz").is_file() for e in entries
    )


def _shown(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f", … ({len(names)} in all)" if len(names) > limit else "")


# --------------------------------------------------------------------------- making and unmaking


def _make(out: Path) -> list[Path]:
    """Make ``out`` and its missing parents; the folders made, innermost first.

    Raises:
        UsageError: A folder cannot be made (a file in the way, no permission...).
    """
    missing = []
    folder = out
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            if not folder.is_dir():
                raise UsageError(f"cannot create the output folder {out}: {folder} is a file") from None
        except OSError as error:
            raise UsageError(f"cannot create the output folder {out}: {error.strerror or error}") from None
    return missing


def _unmake(made: list[Path]) -> None:
    """Remove the folders :func:`_make` made when nothing but the marker is in them."""
    if not made:
        return
    with contextlib.suppress(OSError):
        if os.listdir(made[0]) == [MARKER]:
            (made[0] / MARKER).unlink()
    for folder in made:
        try:
            folder.rmdir()  # only when empty
        except OSError:
            return


# --------------------------------------------------------------------------- the lock


def _acquire(out: Path, kind: str) -> str:
    """Take ``out``'s lock (a stale one too, with a warning); the token that says it is ours.

    Raises:
        UsageError: Another run holds it.
    """
    token = secrets.token_hex(8)
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "boot": _boot_id(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "kind": kind,
        "token": token,
    }
    path = out / LOCK
    for _ in range(5):
        text, other = _read_lock(path)  # looked at first, so that a refused run writes nothing
        if text is not None:
            if not _stale(other):
                raise UsageError(_in_use(out, other))
            if _take_over(path, text):
                warnings.warn(
                    f"took over the lock of {out}: the attnviz run that held it ({_who(other)}) is gone", stacklevel=4
                )
        elif _create(path, json.dumps(holder).encode()):
            return token
    raise UsageError(f"{out} is in use by other attnviz runs (its lock keeps changing); try again")


def _create(path: Path, data: bytes) -> bool:
    """Create ``path`` holding ``data`` if it does not exist, atomically; False when it does."""
    temporary = temporary_sibling(path)
    try:
        temporary.write_bytes(data)
        try:
            os.link(temporary, path)
            return True
        except FileExistsError:
            return False
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
        try:  # a file system without hard links
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        return True
    finally:
        temporary.unlink(missing_ok=True)


def _read_lock(path: Path) -> tuple[str | None, dict[str, Any]]:
    """The lock's text (``None`` when there is none) and its fields (empty when unreadable)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, {}
    except (OSError, ValueError):
        return "", {}
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    return text, value if isinstance(value, dict) else {}


def _stale(holder: dict[str, Any]) -> bool:
    """True when the lock's process is known to be gone: same host, and another boot or no such pid."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or holder.get("host") != socket.gethostname():
        return False
    boot = _boot_id()
    if boot is not None and holder.get("boot") not in (None, boot):
        return True
    return not _running(pid)


def _running(pid: int) -> bool:
    if os.name != "posix":
        return True  # no safe check (os.kill would end the process): keep the lock
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process
    try:  # Linux: a killed process that its parent has not reaped yet (a zombie) is gone too
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _take_over(path: Path, text: str) -> bool:
    """Remove the stale lock whose text is ``text``, unless another run has replaced it meanwhile."""
    aside = temporary_sibling(path)
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    try:
        if aside.read_text(encoding="utf-8") != text:  # another run took it over first: give it back
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
            return False
        return True
    finally:
        aside.unlink(missing_ok=True)


def _release(out: Path, token: str) -> None:
    """Remove ``out``'s lock if it is still the one this run took."""
    path = out / LOCK
    _, holder = _read_lock(path)
    if holder.get("token") == token:
        path.unlink(missing_ok=True)


def _in_use(out: Path, holder: dict[str, Any]) -> str:
    if not holder:
        return f"{out} is in use by another attnviz run (its lock {out / LOCK} is unreadable); if no run is using it, remove that file"
    elsewhere = holder.get("host") != socket.gethostname()
    hint = (
        f"; if that run is gone, remove {out / LOCK}" if elsewhere else "; wait for it to finish or give another --out"
    )
    return f"{out} is in use by another attnviz run ({_who(holder)}){hint}"


def _who(holder: dict[str, Any]) -> str:
    return f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started')}"


def _boot_id() -> str | None:
    """This boot's id (Linux), so that a lock from before a reboot is stale whatever its pid."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None
