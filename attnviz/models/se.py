"""Squeeze-and-excitation, written once (Hu et al., 2018): ``x * sigmoid(fc(avg_pool(x)))``.

The course writes the same block three times under three names: ``ChannelAttention`` (seed 000,
``cifar_cnn``), ``SE_Block`` (seed 002, ``densenet_se``) and ``SEModule`` (seed 004,
``resnet_se``). Like timm, attnviz keeps one implementation, :class:`SqueezeExcite`, and gives the
course's names as thin subclasses in their own modules: they only rename the constructor's
arguments as each notebook spells them, and keep the class name that captured gates, the layer
table and pickled whole-model checkpoints show. Parameter names (``fc.0.weight``,
``fc.2.weight``) and numerics are the notebooks'.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["SqueezeExcite"]


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: ``x * sigmoid(fc(avg_pool(x)))``.

    Args:
        channels: Channels of the input feature map.
        reduction: Hidden width of ``fc`` is ``channels // reduction``.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, _, _ = x.size()
        pooled = self.avg_pool(x).view(batch, channels)
        return x * self.fc(pooled).view(batch, channels, 1, 1)
