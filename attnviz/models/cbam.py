"""CBAM as the course writes it (seeds 001 and 003, identical in both).

``ChannelAttention``: average- and max-pooled descriptors through one shared MLP ``fc``,
summed, then ``self.sigmoid``; returns ``x * attention``. ``SpatialAttention``: channel-wise
mean and max, concatenated, a ``kernel_size`` x ``kernel_size`` ``conv`` (no bias), then
``self.sigmoid``; returns ``x * map``. ``CBAM`` applies ``channel_attn`` then ``spatial_attn``.

State-dict keys of one ``CBAM`` (prefix omitted): ``channel_attn.fc.0.weight``,
``channel_attn.fc.2.weight``, ``spatial_attn.conv.weight``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ChannelAttention(nn.Module):
    """CBAM channel attention: ``x * sigmoid(fc(avg(x)) + fc(max(x)))``.

    Args:
        in_channels: Channels of the input feature map.
        ratio: Reduction ratio of the shared MLP (hidden width ``in_channels // ratio``).
    """

    def __init__(self, in_channels: int, ratio: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(in_channels, in_channels // ratio, bias=False),
            nn.ReLU(),
            nn.Linear(in_channels // ratio, in_channels, bias=False),
        )
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        b, c, _, _ = x.shape
        avg_out = self.fc(self.avg_pool(x).view(b, c))
        max_out = self.fc(self.max_pool(x).view(b, c))
        attention = self.sigmoid(avg_out + max_out).view(b, c, 1, 1)
        return x * attention


class SpatialAttention(nn.Module):
    """CBAM spatial attention: ``x * sigmoid(conv([mean_c(x), max_c(x)]))``.

    Args:
        kernel_size: Side of the square convolution over the two pooled maps.
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        avg_out = torch.mean(x, dim=1, keepdim=True)
        max_out, _ = torch.max(x, dim=1, keepdim=True)
        attention = self.conv(torch.cat([avg_out, max_out], dim=1))
        return x * self.sigmoid(attention)


class CBAM(nn.Module):
    """Channel attention followed by spatial attention.

    Args:
        in_channels: Channels of the input feature map.
        ratio: Reduction ratio of the channel MLP.
        kernel_size: Kernel side of the spatial convolution.
    """

    def __init__(self, in_channels: int, ratio: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel_attn = ChannelAttention(in_channels, ratio)
        self.spatial_attn = SpatialAttention(kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        x = self.channel_attn(x)
        return self.spatial_attn(x)
