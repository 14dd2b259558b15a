"""attnviz.runtime.workqueue: the ordered render queue shared by ``maps`` and ``report``."""

from __future__ import annotations

import time

import pytest

from attnviz.runtime.workqueue import WorkQueue


def slow_square(value: int, seconds: float) -> int:
    """Module level, so that worker processes can run it."""
    time.sleep(seconds)
    return value * value


def failing(value: int) -> int:
    raise ValueError(f"cannot draw {value}")


def test_in_process_items_are_finished_at_once_with_their_drawings_results():
    finished = []
    with WorkQueue(0, 0, lambda item, outcome: finished.append((item, outcome.result()))) as queue:
        queue.put("a", slow_square, 3, 0.0)
        assert finished == [("a", 9)]
        queue.put("b")  # no drawing: its outcome is None
        assert finished == [("a", 9), ("b", None)]
    assert queue.in_process and queue.waited == 0.0


def test_a_window_keeps_that_many_items_waiting_and_the_exit_finishes_them_in_order():
    finished, waiting = [], []
    with WorkQueue(0, 2, lambda item, outcome: finished.append(outcome.result())) as queue:
        for value in range(5):
            queue.put(value, slow_square, value, 0.0)
            waiting.append(value + 1 - len(finished))
    assert waiting == [1, 2, 2, 2, 2] and finished == [0, 1, 4, 9, 16]


def test_worker_processes_draw_and_ordered_queues_finish_in_input_order():
    finished = []
    delays = [0.6, 0.0, 0.0]  # the first drawing ends last
    with WorkQueue(2, 3, lambda item, outcome: finished.append((item, outcome.result()))) as queue:
        assert not queue.in_process
        for value, seconds in enumerate(delays):
            queue.put(value, slow_square, value, seconds)
    assert finished == [(0, 0), (1, 1), (2, 4)] and queue.waited > 0.0


def test_unordered_queues_finish_items_as_their_drawings_end():
    finished = []
    with WorkQueue(2, 3, lambda item, outcome: finished.append(outcome.result()), ordered=False) as queue:
        queue.put(0, slow_square, 5, 1.5)
        queue.put(1, slow_square, 2, 0.0)
        queue.put(2)  # nothing to draw: ready at once
        queue.drain(1)
        assert sorted(map(str, finished)) == ["4", "None"]  # the slow one, put first, still waits
    assert finished[-1] == 25 and len(finished) == 3


def test_a_drawing_that_fails_raises_from_its_outcome_for_finish_to_handle():
    seen = []

    def finish(item, outcome):
        try:
            seen.append(outcome.result())
        except ValueError as error:
            seen.append(str(error))

    with WorkQueue(0, 0, finish) as queue:
        queue.put("a", failing, 7)
        queue.put("b", slow_square, 2, 0.0)
    assert seen == ["cannot draw 7", 4]


def test_when_finish_fails_the_unfinished_items_are_abandoned_with_the_error():
    abandoned = []

    def finish(item, outcome):
        if item == "b":
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        with WorkQueue(0, 5, finish, abandon=lambda items, error: abandoned.append((items, error))) as queue:
            for item in "abc":
                queue.put(item)
    [(items, error)] = abandoned
    assert items == ["b", "c"] and isinstance(error, OSError)  # a was finished; b failed while finishing


def test_an_interrupt_abandons_what_waits_and_nothing_else_is_finished():
    finished, abandoned = [], []
    with pytest.raises(KeyboardInterrupt):
        with WorkQueue(
            0,
            5,
            lambda item, outcome: finished.append(item),
            abandon=lambda items, error: abandoned.append((items, type(error))),
        ) as queue:
            queue.put("a")
            queue.put("b")
            raise KeyboardInterrupt
    assert finished == [] and abandoned == [(["a", "b"], KeyboardInterrupt)]


def test_run_batches_skips_broken_samples_first_then_emits_each_analysed_one_in_order():
    from attnviz.runtime.pipeline import run_batches

    events, analysed = [], []
    batches = [[1, -2, 3], [-4], [5, 6]]  # negative: could not be decoded

    def analyse(good):
        analysed.append(list(good))
        return [value * 10 for value in good]

    run_batches(
        batches,
        lambda s: "broken" if s < 0 else None,
        lambda s, why: events.append(("skip", s, why)),
        analyse,
        lambda s, result: events.append(("emit", s, result)),
    )
    assert analysed == [[1, 3], [5, 6]]  # an all-broken batch runs no model
    assert events == [
        ("skip", -2, "broken"),
        ("emit", 1, 10),
        ("emit", 3, 30),
        ("skip", -4, "broken"),
        ("emit", 5, 50),
        ("emit", 6, 60),
    ]
    with pytest.raises(ValueError, match="1 result"):
        run_batches([[1, 2]], lambda s: None, lambda s, why: None, lambda good: [0], lambda s, r: None)


def test_an_item_whose_submit_is_interrupted_is_abandoned_too(monkeypatch):
    from attnviz.runtime import pool

    queued = []

    class InterruptedPool:  # the job reaches the pool, then a Ctrl-C stops submit before it returns
        def __init__(self, workers: int) -> None:
            pass

        def submit(self, function, *args):
            queued.append(args)
            raise KeyboardInterrupt

        def close(self, failed: bool = False) -> None:
            pass

    monkeypatch.setattr(pool, "WorkerPool", InterruptedPool)
    abandoned = []
    with pytest.raises(KeyboardInterrupt):
        with WorkQueue(1, 4, lambda item, outcome: None, abandon=lambda items, error: abandoned.append(items)) as queue:
            queue.put("a", slow_square, 2, 0.0)
    assert queued == [(2, 0.0)] and abandoned == [["a"]]  # its drawing may still be made: it is cleaned up


def test_a_ctrl_c_during_submit_waits_until_submit_has_returned(monkeypatch):
    import signal
    import threading

    from attnviz.runtime.pool import WorkerPool

    steps = []
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, args=(5.0,), daemon=True)
    other.start()  # a thread of this process that does not block SIGINT (as torch's threads)

    def submit(function, *args):
        # a Ctrl-C taken by the other thread while the executor starts a worker: Python runs the
        # handler in this thread at its next instruction, which would stop submit here
        signal.pthread_kill(other.ident, signal.SIGINT)
        time.sleep(0.2)
        steps.append("submit returned")
        return "future"

    workers = WorkerPool(1)
    monkeypatch.setattr(workers._executor, "submit", submit)
    try:
        with pytest.raises(KeyboardInterrupt):
            workers.submit(slow_square, 1, 0.0)
    finally:
        workers.close()
        stop.set()
        other.join()
    assert steps == ["submit returned"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back


def test_a_held_back_ctrl_c_is_raised_even_when_the_block_fails():
    import signal

    from attnviz.runtime.pool import _sigint_deferred

    with pytest.raises(KeyboardInterrupt):
        with _sigint_deferred():
            signal.raise_signal(signal.SIGINT)
            raise ValueError("the block fails after the Ctrl-C")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with _sigint_deferred():  # an ignored Ctrl-C stays ignored
            signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
