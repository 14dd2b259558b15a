"""One epoch of training and one evaluation pass, as the course notebooks run them.

CrossEntropyLoss, ``zero_grad`` / forward / backward / step per batch; on CUDA the forward pass
runs under ``torch.autocast`` (float16) with a ``GradScaler`` and channels-last tensors. Losses
are averaged over samples and accuracies are percentages, as the notebooks print them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from attnviz.runtime.errors import UsageError
from attnviz.runtime.model import eval_mode, parse_device


@dataclass(frozen=True)
class EpochStats:
    """Mean loss and accuracy (percent) over the samples of one pass."""

    loss: float
    acc: float
    samples: int


@dataclass(frozen=True)
class Runtime:
    """Where and how the model runs: the device, mixed precision and memory format."""

    device: torch.device
    amp: bool
    channels_last: bool

    @classmethod
    def for_device(cls, device: str | torch.device | None) -> Runtime:
        """CUDA with mixed precision and channels-last when available, else the CPU.

        Raises:
            UsageError: An unknown device, or one (CUDA, MPS) this machine does not have.
        """
        parsed = parse_device(device)
        on_cuda = parsed.type == "cuda"
        return cls(parsed, amp=on_cuda, channels_last=on_cuda)

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        """Move an image batch to the device in the runtime's memory format."""
        images = images.to(self.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def autocast(self) -> torch.autocast:
        """Mixed precision on CUDA; a no-op elsewhere."""
        return torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp)


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
        images, targets = runtime.batch(images), targets.to(runtime.device, non_blocking=True)
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
            images, targets = runtime.batch(images), targets.to(runtime.device, non_blocking=True)
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
