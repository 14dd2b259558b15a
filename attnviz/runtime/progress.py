"""Progress on stderr: a bar with an ETA (rich) on a terminal; plain lines elsewhere (a job
scheduler's log): ``report: N/M images, ETA mm:ss`` every tenth of the work or every 30 seconds,
whichever comes first, and a line per later phase (sanity check, writing the outputs)."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator

#: Plain progress lines: one each time another tenth of the images is finished, and at least one
#: every LINE_SECONDS while work goes on.
LINE_FRACTION, LINE_SECONDS = 0.1, 30.0


@contextlib.contextmanager
def progress_bar(total: int, done: int, enabled: bool | None, description: str) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; draws a bar of ``total`` steps, ``done`` of them finished already.

    Args:
        total: Steps in all.
        done: Steps finished before this run (a resumed report).
        enabled: ``True``: the bar; ``False``: nothing; ``None``: the bar when stderr is a
            terminal, else plain lines.
        description: Text before the bar (and the lines).
    """
    if enabled is False:
        yield lambda n: None
        return
    if enabled is None and not sys.stderr.isatty():
        lines = ProgressLines(total, done, description)
        yield lines.advance
        lines.finish()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total, completed=done)
        yield lambda n: progress.advance(task, n)


def phase(text: str, enabled: bool | None) -> None:
    """One line on stderr saying what the run does next (unless progress is off)."""
    if enabled is not False:
        print(text, file=sys.stderr, flush=True)


class ProgressLines:
    """Plain progress lines for a log file (no terminal control characters), counting items of
    ``unit`` (``image``: the report's images; ``step``: training batches)."""

    def __init__(
        self, total: int, done: int, description: str, clock: Callable[[], float] = time.monotonic, unit: str = "image"
    ) -> None:
        self.total, self.start_done, self.done, self.description = total, done, done, description
        self.clock, self.unit = clock, unit
        self.started = self.last_time = clock()
        self.step = max(1, math.ceil(total * LINE_FRACTION))
        self.next_count = done + self.step
        earlier = f" ({done} finished earlier)" if done else ""
        self._say(f"{total - done} of {total} {unit}(s) to process{earlier}")

    def advance(self, n: int) -> None:
        self.done += n
        now = self.clock()
        if self.done >= self.total:
            return  # finish() says it
        if self.done >= self.next_count or now - self.last_time >= LINE_SECONDS:
            self.next_count = (self.done // self.step + 1) * self.step
            self.last_time = now
            self._say(f"{self.done}/{self.total} {self.unit}s, ETA {self._eta(now)}")

    def finish(self) -> None:
        if self.done >= self.total:
            self._say(f"{self.done}/{self.total} {self.unit}s, done in {_clock_text(self.clock() - self.started)}")

    def _eta(self, now: float) -> str:
        finished = self.done - self.start_done
        if finished <= 0:
            return "--:--"
        return _clock_text((now - self.started) / finished * (self.total - self.done))

    def _say(self, text: str) -> None:
        print(f"{self.description}: {text}", file=sys.stderr, flush=True)


def _clock_text(seconds: float) -> str:
    """``mm:ss``, or ``h:mm:ss`` from an hour on."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"
