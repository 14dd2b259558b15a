"""Residual CNN with an SE module in every block (seed 004).

``CustomCNN``: 3x3 ``conv1``/``bn1``/``relu``, ``layer1..layer4`` of two ``ResidualBlock`` each
(64, 128, 256, 512 channels; stride 2 from ``layer2`` on), ``avg_pool``, ``fc``. Each block
applies ``se`` to the second BN's output, then adds ``shortcut(x)`` in place (``out += ...``)
and applies the shared in-place ``relu``. Keys look like ``layer2.0.se.fc.0.weight`` and
``layer2.0.shortcut.0.weight``.
"""

from __future__ import annotations

from torch import Tensor, nn

from attnviz.models.se import SqueezeExcite


class SEModule(SqueezeExcite):
    """Squeeze-and-excitation of seed 004: :class:`SqueezeExcite` under the notebook's names.

    Args:
        in_channels: Channels of the input feature map.
        reduction: Hidden width of ``fc`` is ``in_channels // reduction``.
    """

    def __init__(self, in_channels: int, reduction: int = 16) -> None:
        super().__init__(in_channels, reduction)


class ResidualBlock(nn.Module):
    """Basic residual block with SE before the shortcut addition.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of ``conv1`` and of the projection shortcut.
        reduction: Reduction ratio of ``se`` (the notebook uses the default 16).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, reduction: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.se = SEModule(out_channels, reduction=reduction)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.se(out)
        out += self.shortcut(x)
        return self.relu(out)


class CustomCNN(nn.Module):
    """The notebook's ``CustomCNN``: four stages of two SE residual blocks.

    Args:
        num_classes: Outputs of ``fc``.
        reduction: Reduction ratio of every block's ``se``.
    """

    def __init__(self, num_classes: int = 10, reduction: int = 16) -> None:
        super().__init__()
        self.reduction = reduction
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(64, 64, 2, stride=1)
        self.layer2 = self._make_layer(64, 128, 2, stride=2)
        self.layer3 = self._make_layer(128, 256, 2, stride=2)
        self.layer4 = self._make_layer(256, 512, 2, stride=2)
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def _make_layer(self, in_channels: int, out_channels: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for block_stride in [stride] + [1] * (num_blocks - 1):
            layers.append(ResidualBlock(in_channels, out_channels, block_stride, self.reduction))
            in_channels = out_channels
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = self.layer4(out)
        out = self.avg_pool(out)
        out = out.view(out.size(0), -1)
        return self.fc(out)
