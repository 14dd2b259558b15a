"""attnviz's exception hierarchy.

Every error a user can cause derives from :class:`AttnvizError` and carries a one-line
message that says what went wrong and what to do. The CLI prints that line and exits with the
error's ``exit_code`` (2: the command could not run with what it was given; see the README's exit
codes); ``--debug`` shows the traceback.
"""

from __future__ import annotations


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
