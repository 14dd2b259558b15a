"""TensorBoard logging of a training run: the notebooks' scalars plus the attention itself.

Scalar tags follow seed 001 (``Train/Epoch Loss``, ``Train/Epoch Accuracy``, ``Test/Epoch Loss``,
``Test/Epoch Accuracy``, ``Train/Iteration Loss``) plus ``Train/Learning Rate`` (and
``Train/Learning Rate/<group>`` per parameter group when there are several). Every epoch the
gates of a few fixed test images are captured with :func:`attnviz.capture` and logged as they
were computed (sigmoid outputs, already in [0, 1]):

* spatial gates ``[N, H, W]`` as images ``Attention/<gate>`` (one grey image per test image);
* channel gates ``[N, C]`` as a histogram ``Channels/<gate>`` and as one grey image
  ``Channels/<gate>`` with a row per test image and a column per channel.

The test images themselves are logged once as ``Attention/inputs``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from attnviz.capturing.capturer import capture
from attnviz.io.inputs import PRESETS
from attnviz.runtime.model import eval_mode

SCALAR_TAGS = {
    "train_loss": "Train/Epoch Loss",
    "train_acc": "Train/Epoch Accuracy",
    "test_loss": "Test/Epoch Loss",
    "test_acc": "Test/Epoch Accuracy",
}
ITERATION_TAG = "Train/Iteration Loss"
LR_TAG = "Train/Learning Rate"


class TensorBoardLog:
    """A ``SummaryWriter`` for one run, with the attention of fixed images logged per epoch.

    Args:
        log_dir: TensorBoard log folder.
        images: Normalised test images ``[N, 3, H, W]`` whose attention is logged every epoch.
        preset: Normalisation of ``images`` (to show them as pictures).
    """

    def __init__(self, log_dir: str | os.PathLike[str], images: torch.Tensor, preset: str = "cifar10") -> None:
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.images = images
        self.preset = PRESETS[preset]

    def log_inputs(self, step: int) -> None:
        """Log the fixed images, de-normalised to [0, 1]."""
        mean = torch.tensor(self.preset.mean)[:, None, None]
        std = torch.tensor(self.preset.std)[:, None, None]
        self.writer.add_images("Attention/inputs", (self.images * std + mean).clamp(0, 1), step)

    def log_iteration(self, step: int, loss: float) -> None:
        self.writer.add_scalar(ITERATION_TAG, loss, step)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float], lrs: Mapping[str, float]) -> None:
        """Log the epoch's losses, accuracies and learning rate(s)."""
        for key, tag in SCALAR_TAGS.items():
            self.writer.add_scalar(tag, metrics[key], epoch)
        self.writer.add_scalar(LR_TAG, max(lrs.values()), epoch)
        if len(lrs) > 1:
            for group, lr in lrs.items():
                self.writer.add_scalar(f"{LR_TAG}/{group}", lr, epoch)

    def log_attention(self, model: nn.Module, epoch: int, class_names: Sequence[str] | None = None) -> list[str]:
        """Capture the gates of the fixed images and log them; returns the tags written."""
        with eval_mode(model):
            gates = capture(model, self.images, layers=[], class_names=class_names, feature_images=0).gates
        tags: list[str] = []
        for name, gate in gates.items():
            values = gate.values.float()
            if gate.kind == "spatial":
                tag = f"Attention/{name}"
                self.writer.add_images(tag, values[:, None], epoch)
            elif gate.kind == "channel":
                tag = f"Channels/{name}"
                self.writer.add_histogram(tag, values, epoch)
                self.writer.add_image(tag, values[None], epoch)
            else:
                continue
            tags.append(tag)
        return tags

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
