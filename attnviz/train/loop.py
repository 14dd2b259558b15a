"""One epoch of training and one evaluation pass, as the course notebooks run them.

CrossEntropyLoss, ``zero_grad`` / forward / backward / step per batch. How batches reach the device
and the forward pass runs (channels-last, autocast, loss scaling, non-blocking copies) is the
:class:`~attnviz.train.settings.Runtime`'s explicit choice, on CUDA all of it by default. Losses
are averaged over samples and accuracies are percentages, as the notebooks print them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from attnviz.runtime.errors import UsageError
from attnviz.runtime.model import eval_mode
from attnviz.train.settings import Runtime

__all__ = ["EpochStats", "Runtime", "evaluate", "train_epoch"]


@dataclass(frozen=True)
class EpochStats:
    """Mean loss and accuracy (percent) over the samples of one pass."""

    loss: float
    acc: float
    samples: int


BatchCallback = Callable[[int, float], None]


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    runtime: Runtime,
    scaler: torch.amp.GradScaler,
    *,
    on_batch: BatchCallback | None = None,
) -> EpochStats:
    """Train ``model`` for one pass over ``loader``.

    Args:
        on_batch: Called after every batch with ``(batch_index, batch_loss)``.
    """
    criterion = nn.CrossEntropyLoss()
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for index, (images, targets) in enumerate(loader):
        images, targets = runtime.batch(images), runtime.labels(targets)
        optimizer.zero_grad(set_to_none=True)
        with runtime.autocast():
            logits = model(images)
            loss = criterion(logits, targets)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        batch_loss = loss.item()
        total_loss += batch_loss * targets.size(0)
        correct += int((logits.argmax(1) == targets).sum())
        seen += targets.size(0)
        if on_batch is not None:
            on_batch(index, batch_loss)
    return _stats(total_loss, correct, seen)


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, runtime: Runtime, *, on_batch: BatchCallback | None = None
) -> EpochStats:
    """Mean loss and accuracy of ``model`` (in eval mode) over ``loader``."""
    criterion = nn.CrossEntropyLoss(reduction="sum")
    with eval_mode(model):
        total_loss, correct, seen = 0.0, 0, 0
        for index, (images, targets) in enumerate(loader):
            images, targets = runtime.batch(images), runtime.labels(targets)
            with runtime.autocast():
                logits = model(images)
            batch_loss = criterion(logits.float(), targets).item()
            total_loss += batch_loss
            correct += int((logits.argmax(1) == targets).sum())
            seen += targets.size(0)
            if on_batch is not None:
                on_batch(index, batch_loss / targets.size(0))
    return _stats(total_loss, correct, seen)


def _stats(total_loss: float, correct: int, seen: int) -> EpochStats:
    if seen == 0:
        raise UsageError("the data loader yielded no samples; check the data set and its size")
    return EpochStats(loss=total_loss / seen, acc=100.0 * correct / seen, samples=seen)
