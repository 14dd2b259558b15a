"""attnviz's exception hierarchy.

Every error a user can cause derives from :class:`AttnvizError` and carries a one-line
message that says what went wrong and what to do. The CLI prints that line and exits with the
error's ``exit_code`` (2: the command could not run with what it was given; see the README's exit
codes); ``--debug`` shows the traceback. The helpers at the end write those lines: an exception's
first line, a wrapped library failure, and "did you mean" for a mistyped name.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AttnvizError(Exception):
    """Base class for every error attnviz raises on purpose."""

    exit_code: int = 2


class UsageError(AttnvizError):
    """A call's arguments do not fit together (wrong layer name, bad target, ...)."""

    exit_code = 2


class InputImageError(AttnvizError):
    """An image file is missing, unreadable, truncated or not an image."""


class CheckpointError(AttnvizError):
    """A checkpoint file is missing, empty, corrupt or of an unknown format."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint holds pickled code and loading it needs an explicit trust flag."""


class ArchitectureError(CheckpointError):
    """No architecture matches a state_dict, or a named architecture cannot be built."""


class CaptureError(AttnvizError):
    """The model's forward pass failed or produced nothing attnviz can capture."""


class OutputError(AttnvizError):
    """An output cannot be written: a full disk, an output path below a regular file, no permission.

    ``exit_code`` is 2 when nothing was written, 1 when the command stopped midway and kept what it had
    finished (the message says what)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe(exc: BaseException) -> str:
    """``Type: first line of the message``, for one-line errors that wrap a library's failure."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def did_you_mean(name: str, choices: Iterable[str], *, n: int = 3, cutoff: float = 0.5, quote: bool = True) -> str:
    """``"; did you mean 'a' or 'b'?"`` for the choices closest to ``name``, or ``""`` when none is close.

    ``quote=False`` writes the choices bare (``did you mean a or b?``).
    """
    close = difflib.get_close_matches(str(name), list(choices), n=n, cutoff=cutoff)
    shown = [repr(c) if quote else str(c) for c in close]
    return f"; did you mean {' or '.join(shown)}?" if close else ""
