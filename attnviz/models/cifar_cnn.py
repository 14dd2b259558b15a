"""The course's 3-block CIFAR-10 CNN and its SE and CBAM variants (seeds 000 and 001).

* ``CNN`` (seed 000): three blocks ``conv{i}/bn{i}/relu{i}/pool{i}`` (32, 64, 128 channels),
  then ``fc1`` (2048 -> 512), ``relu3`` reused, ``dropout`` (p=0.5), ``fc2``.
* ``SE_CNN``: the notebook of seed 000 also calls this class ``CNN``; its definition is cut off
  in the seed, so the attribute names follow the course's published SE-CNN: ``ca1..ca3``
  (:class:`ChannelAttention`), applied after ``relu{i}`` and before ``pool{i}``.
  ``attention_after_pool=True`` moves each gate after ``pool{i}``, where ``CBAM_CNN`` puts its
  CBAM; parameter names are the same either way.
* ``CBAM_CNN`` (seed 001): ``CBAM`` after each pooled block (``cbam1..cbam3``), 1,150,896
  parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnviz.models.cbam import CBAM
from attnviz.models.se import SqueezeExcite


class ChannelAttention(SqueezeExcite):
    """SE channel attention of seed 000: :class:`SqueezeExcite` under the notebook's names.

    Args:
        in_channels: Channels of the input feature map.
        reduction_ratio: Hidden width of ``fc`` is ``in_channels // reduction_ratio``.
    """

    def __init__(self, in_channels: int, reduction_ratio: int = 16) -> None:
        super().__init__(in_channels, reduction_ratio)


class CNN(nn.Module):
    """Baseline 3-block CNN of seed 000.

    Args:
        num_classes: Outputs of ``fc2`` (10 in the notebook).
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(kernel_size=2)
        self.conv3 = nn.Conv2d(64, 128, kernel_size=3, padding=1)
        self.bn3 = nn.BatchNorm2d(128)
        self.relu3 = nn.ReLU()
        self.pool3 = nn.MaxPool2d(kernel_size=2)
        self.fc1 = nn.Linear(128 * 4 * 4, 512)
        self.dropout = nn.Dropout(p=0.5)
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        x = self.pool3(self.relu3(self.bn3(self.conv3(x))))
        x = torch.flatten(x, 1)  # the notebooks' x.view(-1, 128 * 4 * 4), which fails on channels-last
        x = self.relu3(self.fc1(x))  # the notebook reuses relu3 here
        x = self.dropout(x)
        return self.fc2(x)


class SE_CNN(nn.Module):  # noqa: N801 - named like the course's CBAM_CNN
    """The baseline CNN with an SE :class:`ChannelAttention` in every block.

    Args:
        num_classes: Outputs of ``fc2``.
        reduction_ratio: Reduction ratio of every ``ca{i}``.
        attention_after_pool: Apply ``ca{i}`` after ``pool{i}`` instead of before it.
    """

    def __init__(self, num_classes: int = 10, reduction_ratio: int = 16, attention_after_pool: bool = False) -> None:
        super().__init__()
        self.attention_after_pool = attention_after_pool
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu1 = nn.ReLU()
        self.ca1 = ChannelAttention(in_channels=32, reduction_ratio=reduction_ratio)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu2 = nn.ReLU()
        self.ca2 = ChannelAttention(in_channels=64, reduction_ratio=reduction_ratio)
        self.pool2 = nn.MaxPool2d(kernel_size=2)
        self.conv3 = nn.Conv2d(64, 128, kernel_size=3, padding=1)
        self.bn3 = nn.BatchNorm2d(128)
        self.relu3 = nn.ReLU()
        self.ca3 = ChannelAttention(in_channels=128, reduction_ratio=reduction_ratio)
        self.pool3 = nn.MaxPool2d(kernel_size=2)
        self.fc1 = nn.Linear(128 * 4 * 4, 512)
        self.dropout = nn.Dropout(p=0.5)
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self._gate_and_pool(self.ca1, self.pool1, self.relu1(self.bn1(self.conv1(x))))
        x = self._gate_and_pool(self.ca2, self.pool2, self.relu2(self.bn2(self.conv2(x))))
        x = self._gate_and_pool(self.ca3, self.pool3, self.relu3(self.bn3(self.conv3(x))))
        x = torch.flatten(x, 1)  # the notebooks' x.view(-1, 128 * 4 * 4), which fails on channels-last
        x = self.relu3(self.fc1(x))
        x = self.dropout(x)
        return self.fc2(x)

    def _gate_and_pool(self, gate: nn.Module, pool: nn.Module, x: Tensor) -> Tensor:
        if self.attention_after_pool:
            return gate(pool(x))
        return pool(gate(x))


class CBAM_CNN(nn.Module):  # noqa: N801 - the notebook's class name
    """The baseline CNN with a :class:`~attnviz.models.cbam.CBAM` after every pooled block.

    Args:
        num_classes: Outputs of ``fc2``.
        ratio: Reduction ratio of every CBAM's channel MLP.
        kernel_size: Kernel side of every CBAM's spatial convolution.
    """

    def __init__(self, num_classes: int = 10, ratio: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(kernel_size=2)
        self.cbam1 = CBAM(in_channels=32, ratio=ratio, kernel_size=kernel_size)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(kernel_size=2)
        self.cbam2 = CBAM(in_channels=64, ratio=ratio, kernel_size=kernel_size)
        self.conv3 = nn.Conv2d(64, 128, kernel_size=3, padding=1)
        self.bn3 = nn.BatchNorm2d(128)
        self.relu3 = nn.ReLU()
        self.pool3 = nn.MaxPool2d(kernel_size=2)
        self.cbam3 = CBAM(in_channels=128, ratio=ratio, kernel_size=kernel_size)
        self.fc1 = nn.Linear(128 * 4 * 4, 512)
        self.dropout = nn.Dropout(p=0.5)
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.cbam1(self.pool1(self.relu1(self.bn1(self.conv1(x)))))
        x = self.cbam2(self.pool2(self.relu2(self.bn2(self.conv2(x)))))
        x = self.cbam3(self.pool3(self.relu3(self.bn3(self.conv3(x)))))
        x = torch.flatten(x, 1)  # the notebooks' x.view(-1, 128 * 4 * 4), which fails on channels-last
        x = self.relu3(self.fc1(x))
        x = self.dropout(x)
        return self.fc2(x)
