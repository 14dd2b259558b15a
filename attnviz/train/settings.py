"""How training runs on its device: memory format, mixed precision, loss scaling, host-to-device copies.

:class:`TrainSettings` is what a caller asks for; ``None`` (``"auto"`` for the autocast dtype) picks
from the device. On CUDA that is everything on: channels-last tensors, float16 autocast with a
``GradScaler``, pinned DataLoader memory and non-blocking copies; on any other device everything
is off. Each one can be switched on or off explicitly on any device (the CPU runs channels-last
tensors, bfloat16 or float16 autocast, a ``GradScaler`` and non-blocking copies), so that every
path CUDA takes is also tested on the CPU. :class:`Runtime` is the resolved, concrete choice.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from attnviz.runtime.errors import UsageError
from attnviz.runtime.model import parse_device

AutocastDtype = torch.dtype | None | Literal["auto"]


@dataclass(frozen=True)
class Runtime:
    """Where and how the model trains, every choice explicit.

    Attributes:
        device: The device the model and batches live on.
        channels_last: Model and image batches in ``torch.channels_last`` memory format.
        autocast_dtype: ``torch.autocast`` dtype of forward passes; ``None``: full precision.
        grad_scaler: Scale the loss (``torch.amp.GradScaler``) so float16 gradients do not underflow.
        pin_memory: DataLoaders put batches in pinned (page-locked) host memory.
        non_blocking: Host-to-device copies of batches are asynchronous.
    """

    device: torch.device
    channels_last: bool = False
    autocast_dtype: torch.dtype | None = None
    grad_scaler: bool = False
    pin_memory: bool = False
    non_blocking: bool = False

    @classmethod
    def for_device(cls, device: str | torch.device | None, settings: TrainSettings | None = None) -> Runtime:
        """``settings`` (default: all automatic) resolved for ``device`` (default: CUDA when available).

        Raises:
            UsageError: An unknown device, or one (CUDA, MPS) this machine does not have.
        """
        return (settings or TrainSettings()).resolve(parse_device(device))

    @property
    def amp(self) -> bool:
        """Whether forward passes run under autocast (mixed precision)."""
        return self.autocast_dtype is not None

    def replace(self, **changes: object) -> Runtime:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device, in channels-last memory format when that is on."""
        model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        """Move an image batch to the device in the runtime's memory format."""
        images = images.to(self.device, non_blocking=self.non_blocking)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def labels(self, targets: torch.Tensor) -> torch.Tensor:
        """Move a batch of targets to the device."""
        return targets.to(self.device, non_blocking=self.non_blocking)

    def autocast(self) -> torch.autocast:
        """``torch.autocast`` with the runtime's dtype; disabled when it has none."""
        dtype = self.autocast_dtype or torch.float32
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.amp)

    def scaler(self) -> torch.amp.GradScaler:
        """A ``GradScaler`` for the device, enabled only when loss scaling is on."""
        return torch.amp.GradScaler(self.device.type, enabled=self.grad_scaler)

    def loader(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        num_workers: int = 0,
    ) -> DataLoader:
        """A DataLoader over ``dataset`` that pins memory when the runtime says so."""
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=num_workers,
            pin_memory=self.pin_memory,
        )

    def describe(self) -> dict[str, object]:
        """The choices as plain values for a training record."""
        return {
            "device": str(self.device),
            "amp": self.amp,
            "autocast": None if self.autocast_dtype is None else str(self.autocast_dtype).removeprefix("torch."),
            "grad_scaler": self.grad_scaler,
            "channels_last": self.channels_last,
            "pin_memory": self.pin_memory,
            "non_blocking": self.non_blocking,
        }


@dataclass(frozen=True)
class TrainSettings:
    """What a caller asks of the runtime; ``None`` and ``"auto"`` choose from the device.

    Attributes:
        channels_last: Channels-last memory format (auto: on CUDA).
        autocast_dtype: Autocast dtype, ``None`` for none (auto: float16 on CUDA, none elsewhere).
        grad_scaler: Loss scaling (auto: when autocasting to float16).
        pin_memory: Pinned DataLoader memory (auto: on CUDA).
        non_blocking: Asynchronous host-to-device copies (auto: on CUDA).
    """

    channels_last: bool | None = None
    autocast_dtype: AutocastDtype = "auto"
    grad_scaler: bool | None = None
    pin_memory: bool | None = None
    non_blocking: bool | None = None

    def resolve(self, device: torch.device) -> Runtime:
        """The concrete :class:`Runtime` of these settings on ``device``."""
        on_cuda = device.type == "cuda"
        dtype = self._autocast_dtype(on_cuda)
        return Runtime(
            device=device,
            channels_last=on_cuda if self.channels_last is None else self.channels_last,
            autocast_dtype=dtype,
            grad_scaler=dtype == torch.float16 if self.grad_scaler is None else self.grad_scaler,
            pin_memory=on_cuda if self.pin_memory is None else self.pin_memory,
            non_blocking=on_cuda if self.non_blocking is None else self.non_blocking,
        )

    def _autocast_dtype(self, on_cuda: bool) -> torch.dtype | None:
        value = self.autocast_dtype
        if isinstance(value, str) and value == "auto":
            return torch.float16 if on_cuda else None
        if value is not None and not isinstance(value, torch.dtype):
            raise UsageError(f"autocast_dtype must be a torch dtype, None or 'auto', got {value!r}")
        return value
