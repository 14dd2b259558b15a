"""The back half of a batch pipeline: each item's drawing done here or in worker processes, and the
item finished (its record written) at most ``window`` items behind, in input order or as drawings end.

``attnviz maps`` and ``attnviz report`` both hand their per-image pictures to a :class:`WorkQueue`:
the command supplies the drawing function and what finishing an item means; the queue owns the
worker pool (:class:`attnviz.runtime.pool.WorkerPool`, whose workers leave Ctrl-C to this process),
the back-pressure window and the way out after a failure or a Ctrl-C: the workers are stopped
(busy ones after a grace time) and the items that were not finished are handed to ``abandon``.

Light on purpose (no torch): nothing here knows what an item or a picture is.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any, Generic, Protocol, TypeVar

Item = TypeVar("Item")


class Outcome(Protocol):
    """An item's drawing: ``result()`` returns what the drawing function returned, or raises what it raised."""

    def result(self) -> Any: ...


class _Here:
    """A drawing done in this process, when its item is finished (``None``: no drawing, result ``None``)."""

    def __init__(self, function: Callable[..., Any] | None, args: tuple[Any, ...]) -> None:
        self.function, self.args = function, args

    def result(self) -> Any:
        return None if self.function is None else self.function(*self.args)


class WorkQueue(Generic[Item]):
    """Items with an optional drawing each, finished one by one by ``finish(item, outcome)``.

    Args:
        workers: Worker processes that draw (0: draw in this process, when the item is finished).
        window: How many items may wait unfinished after a :meth:`put` (0: each is finished at once).
        finish: Called once per item with its :class:`Outcome`; the item still counts as unfinished
            while it runs, so an exception from it (a full disk) abandons it with the others.
        abandon: Called on the way out of a failed or interrupted run, after the workers are
            stopped, with the unfinished items (oldest first) and the exception.
        ordered: Finish items in the order they were put (else in the order their drawings end).

    Attributes:
        waited: Seconds spent waiting for worker processes.
    """

    def __init__(
        self,
        workers: int,
        window: int,
        finish: Callable[[Item, Outcome], None],
        *,
        abandon: Callable[[list[Item], BaseException], None] | None = None,
        ordered: bool = True,
    ) -> None:
        self.window = window
        self.waited = 0.0
        self._finish, self._abandon, self._ordered = finish, abandon, ordered
        self._pending: deque[tuple[Item, Outcome]] = deque()
        self._pool = None
        if workers > 0:
            from attnviz.runtime.pool import WorkerPool

            self._pool = WorkerPool(workers)  # workers ignore Ctrl-C: the main process stops them

    @property
    def in_process(self) -> bool:
        """True when the drawings run in this process."""
        return self._pool is None

    def __enter__(self) -> WorkQueue[Item]:
        return self

    def put(self, item: Item, draw: Callable[..., Any] | None = None, *args: Any) -> None:
        """Queue ``item`` with its drawing ``draw(*args)`` (none: ``None``), then finish items until
        at most ``window`` wait."""
        if draw is None or self._pool is None:
            self._pending.append((item, _Here(draw, args)))
        else:
            # pending before the submit: a Ctrl-C raised in it or just after it may leave the drawing
            # queued in the pool, and only pending items are abandoned once the workers are stopped
            self._pending.append((item, _Here(None, ())))
            self._pending[-1] = (item, self._pool.submit(draw, *args))
        self.drain(self.window)

    def drain(self, keep: int = 0) -> None:
        """Finish items until at most ``keep`` wait."""
        while len(self._pending) > keep:
            entry = self._pending[0] if self._ordered else self._first_done()
            item, outcome = entry
            if isinstance(outcome, Future) and not outcome.done():
                start = time.perf_counter()
                wait([outcome])
                self.waited += time.perf_counter() - start
            self._finish(item, outcome)  # stays pending (see __exit__) until finished
            self._forget(entry)

    def _forget(self, entry: tuple[Item, Outcome]) -> None:
        """Remove ``entry`` from the pending items (by identity: items need not compare)."""
        for position, pending in enumerate(self._pending):
            if pending is entry:
                del self._pending[position]
                return

    def _first_done(self) -> tuple[Item, Outcome]:
        """The first pending item whose drawing has ended (waiting for one if none has)."""
        oldest = self._pending[0]
        if not isinstance(oldest[1], Future) or oldest[1].done():
            return oldest  # the usual case (workers take items in order): no scan of the whole window
        futures = [outcome for _, outcome in self._pending if isinstance(outcome, Future)]
        if len(futures) == len(self._pending) and not any(future.done() for future in futures):
            start = time.perf_counter()
            wait(futures, return_when=FIRST_COMPLETED)
            self.waited += time.perf_counter() - start
        return next(entry for entry in self._pending if not isinstance(entry[1], Future) or entry[1].done())

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        failed = kind is not None
        try:
            if not failed:
                self.drain(0)
        except BaseException as raised:
            failed, error = True, raised
            raise
        finally:
            try:
                if self._pool is not None:
                    self._pool.close(failed=failed)  # after a Ctrl-C: queued drawings dropped, busy ones stopped
            finally:
                if failed and self._abandon is not None:
                    self._abandon([item for item, _ in self._pending], error)
