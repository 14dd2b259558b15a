"""One batch pipeline for ``attnviz maps`` and ``attnviz report``: decode → models → arrays → pictures → records.

The command supplies each stage; :func:`run_batches` runs them in the same order for both:
every decoded batch's broken inputs are skipped first (``skip``, in input order), the rest go
through the models together (``analyse``) and each image's result is handed on (``emit``), which
writes its arrays and puts its pictures and record into a :class:`attnviz.runtime.workqueue.WorkQueue`.

Light on purpose (no torch): nothing here knows what an image, a model or a record is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

Sample = TypeVar("Sample")
Result = TypeVar("Result")


def run_batches(
    batches: Iterable[Iterable[Sample]],
    error: Callable[[Sample], str | None],
    skip: Callable[[Sample, str], None],
    analyse: Callable[[list[Sample]], Sequence[Result]],
    emit: Callable[[Sample, Result], None],
) -> None:
    """Run every batch of decoded samples through the command's stages.

    Args:
        batches: Decoded samples, batch by batch (decoding may run ahead, in worker processes).
        error: Why a sample could not be decoded (``None``: it was).
        skip: Called with each sample that could not be decoded and the reason, before its batch is analysed.
        analyse: Runs the models on a batch's decoded samples; one result per sample, in order.
        emit: Called with each decoded sample and its result, in batch order.

    Raises:
        ValueError: ``analyse`` returned a different number of results than it was given samples.
    """
    for batch in batches:
        good = []
        for sample in batch:
            reason = error(sample)
            if reason is None:
                good.append(sample)
            else:
                skip(sample, reason)
        if not good:
            continue
        results = analyse(good)
        if len(results) != len(good):
            raise ValueError(f"analyse gave {len(results)} result(s) for {len(good)} sample(s)")
        for sample, result in zip(good, results):
            emit(sample, result)
