"""Worker processes that leave Ctrl-C to the main process.

A terminal's Ctrl-C sends SIGINT to every process of the foreground group: without care each
worker would die with its own ``KeyboardInterrupt`` traceback while the main process is still
shutting down cleanly. Workers of :class:`WorkerPool` ignore SIGINT (the main process stops them),
and SIGINT is blocked in the main thread while a submit may start a worker, so that a worker
that is starting up does not get it either. On the way out after a Ctrl-C, queued jobs are
dropped and a job still running after a short grace time (or at a second Ctrl-C) is stopped, so
that the command ends promptly.

A worker also exits when the main process dies without stopping it (kill -9, an OOM killer):
:func:`exit_with_parent` asks Linux for SIGKILL at the parent's death (``PR_SET_PDEATHSIG``) and,
on every platform, watches its parent from a daemon thread. ``report``'s decoding workers use it too.

Light on purpose (no torch): the spawned workers import this module.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing.connection import wait
from typing import Any

#: After a Ctrl-C, how long busy workers may finish their current job before they are terminated.
GRACE_SECONDS = 3.0
#: How often a worker's watcher thread checks that its parent is still there.
PARENT_POLL_SECONDS = 1.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the platform tells it, else the machine's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def exit_with_parent(parent: int | None = None) -> None:
    """Make this (worker) process exit when its parent process dies.

    On Linux the kernel sends SIGKILL when the parent ends (strictly: when the parent's thread that
    started this process ends; attnviz starts workers from the thread that then waits for them).
    Everywhere, a daemon thread checks every PARENT_POLL_SECONDS that the parent is unchanged.

    Args:
        parent: The expected parent's pid (None: the current parent). If it is already gone, exit now.
    """
    parent = os.getppid() if parent is None else parent
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError, TypeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # died before the death signal was set up
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="attnviz-parent-watch", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)


def _init_worker(parent: int) -> None:
    """Pool initializer: ignore Ctrl-C, and exit with the main process."""
    ignore_interrupts()
    exit_with_parent(parent)


def ignore_interrupts() -> None:
    """Pool initializer: ignore SIGINT in this worker (and unblock it, see :func:`_sigint_blocked`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT in the calling (main) thread; a child started meanwhile inherits the block."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """In the main thread, hold back a Ctrl-C until the block ends, then raise it again for the
    handler that was in place (Python's default raises KeyboardInterrupt), also when the block failed.

    Blocking SIGINT in this thread is not enough: another thread (torch's) may take the signal, and
    this thread would then raise KeyboardInterrupt at any point of the block.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield  # elsewhere, or a handler not set from Python (it could not be put back): as it is
        return
    caught: list[int] = []
    signal.signal(signal.SIGINT, lambda number, frame: caught.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)  # runs the recorder first for a signal still pending
        if caught and previous is not signal.SIG_IGN:
            signal.raise_signal(signal.SIGINT)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT in the main thread for the duration (elsewhere: do nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class WorkerPool:
    """A spawn-context ``ProcessPoolExecutor`` whose workers ignore Ctrl-C and exit with this process."""

    def __init__(self, workers: int) -> None:
        import multiprocessing

        self._executor = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(os.getpid(),),
        )

    def submit(self, function: Callable[..., Any], *args: Any) -> Future:
        # the executor starts workers on demand, inside submit: SIGINT blocked, so that a new worker
        # starts with it blocked, and deferred, so that a Ctrl-C does not stop the executor mid-way (a
        # worker half started). Raised after it, the job is queued but its future lost: WorkQueue.put
        # makes the item pending first, so that it is cleaned up with the others.
        with _sigint_deferred(), _sigint_blocked():
            return self._executor.submit(function, *args)

    def close(self, failed: bool = False) -> None:
        """Stop the workers once their jobs are done. After a failure or a Ctrl-C (``failed``),
        jobs that have not started are dropped, and workers still busy after GRACE_SECONDS are
        terminated (a picture they were writing is left as a temporary ``.*.tmp`` file)."""
        if not failed:
            self._executor.shutdown(wait=True)
            return
        processes = list((getattr(self._executor, "_processes", None) or {}).values())
        self._executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + GRACE_SECONDS
        waiting = {process.sentinel: process for process in processes}
        try:
            while waiting and time.monotonic() < deadline:
                for sentinel in wait(list(waiting), timeout=max(0.0, deadline - time.monotonic())):
                    waiting.pop(sentinel)
        except KeyboardInterrupt:
            pass  # another Ctrl-C: stop the busy workers now
        with _sigint_ignored():  # stopping takes a moment; a further Ctrl-C must not cut it short
            for process in waiting.values():
                with contextlib.suppress(OSError, ValueError):
                    process.terminate()  # SIGTERM: no traceback
            for process in waiting.values():
                with contextlib.suppress(OSError, ValueError, AssertionError):
                    process.join(1.0)
                    if process.is_alive():
                        process.kill()
                        process.join(1.0)
            self._executor.shutdown(wait=True)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        self.close(failed=kind is not None)
