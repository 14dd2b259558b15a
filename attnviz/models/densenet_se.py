"""DenseNet-BC with an SE block in every dense layer (seed 002).

The seed's code is the memory-efficient DenseNet (``small_inputs``, bottleneck ``bn_size``,
``compression``) with ``self.add_module('SE_Block', SE_Block(growth_rate, reduction=16))`` in
``_DenseLayer``, applied to each layer's new features. Keys follow the seed, for example
``features.denseblock1.denselayer1.SE_Block.fc.0.weight``, ``features.transition1.conv.weight``,
``features.norm_final.weight``, ``classifier.weight``.

Choices the seed leaves open:

* With ``small_inputs=True`` the stem is the 3x3 ``conv0`` alone; ``norm0/relu0/pool0`` belong to
  the ``small_inputs=False`` stem (7x7 stride-2 ``conv0``), as in the code the seed copies
  (indentation is lost in the seed's text).
* The seed's constructor has no defaults for ``growth_rate``/``block_config``; attnviz uses 32 and
  ``(6, 12, 24, 16)`` (DenseNet-121's layout), because ``SE_Block(growth_rate, 16)`` has an
  empty hidden layer for growth rates under 16.
* The seed shows ``# self.features.add_module('SE_Block%d' ...)`` after each transition as a
  comment; ``se_after_transition=True`` builds it (keys ``features.SE_Block{i}.fc.*``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import Tensor, nn

from attnviz.models.se import SqueezeExcite
from attnviz.runtime.errors import ArchitectureError


class SE_Block(SqueezeExcite):  # noqa: N801 - the notebook's class name
    """Squeeze-and-excitation of seed 002: :class:`SqueezeExcite` under the notebook's names.

    Args:
        ch_in: Channels of the input feature map.
        reduction: Hidden width of ``fc`` is ``ch_in // reduction``.
    """

    def __init__(self, ch_in: int, reduction: int = 16) -> None:
        super().__init__(ch_in, reduction)


def _bn_function_factory(norm: nn.Module, relu: nn.Module, conv: nn.Module) -> Callable[..., Tensor]:
    def bn_function(*inputs: Tensor) -> Tensor:
        return conv(relu(norm(torch.cat(inputs, 1))))

    return bn_function


class _DenseLayer(nn.Module):
    # Registered with add_module below; declared here for type checkers only.
    norm1: nn.BatchNorm2d
    relu1: nn.ReLU
    conv1: nn.Conv2d
    norm2: nn.BatchNorm2d
    relu2: nn.ReLU
    conv2: nn.Conv2d
    SE_Block: SE_Block

    def __init__(
        self,
        num_input_features: int,
        growth_rate: int,
        bn_size: int,
        drop_rate: float,
        efficient: bool = False,
        reduction: int = 16,
    ) -> None:
        super().__init__()
        self.add_module("norm1", nn.BatchNorm2d(num_input_features))
        self.add_module("relu1", nn.ReLU(inplace=True))
        self.add_module(
            "conv1",
            nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False),
        )
        self.add_module("norm2", nn.BatchNorm2d(bn_size * growth_rate))
        self.add_module("relu2", nn.ReLU(inplace=True))
        self.add_module(
            "conv2",
            nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False),
        )
        self.add_module("SE_Block", SE_Block(growth_rate, reduction=reduction))
        self.drop_rate = drop_rate
        self.efficient = efficient

    def forward(self, *prev_features: Tensor) -> Tensor:
        bn_function = _bn_function_factory(self.norm1, self.relu1, self.conv1)
        if self.efficient and any(f.requires_grad for f in prev_features):
            bottleneck_output = cp.checkpoint(bn_function, *prev_features, use_reentrant=False)
        else:
            bottleneck_output = bn_function(*prev_features)
        new_features = self.SE_Block(self.conv2(self.relu2(self.norm2(bottleneck_output))))
        if self.drop_rate > 0:
            new_features = F.dropout(new_features, p=self.drop_rate, training=self.training)
        return new_features


class _Transition(nn.Sequential):
    def __init__(self, num_input_features: int, num_output_features: int) -> None:
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(num_input_features))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module(
            "conv",
            nn.Conv2d(num_input_features, num_output_features, kernel_size=1, stride=1, bias=False),
        )
        self.add_module("pool", nn.AvgPool2d(kernel_size=2, stride=2))


class _DenseBlock(nn.Module):
    def __init__(
        self,
        num_layers: int,
        num_input_features: int,
        bn_size: int,
        growth_rate: int,
        drop_rate: float,
        efficient: bool = False,
        reduction: int = 16,
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(
                num_input_features + i * growth_rate,
                growth_rate=growth_rate,
                bn_size=bn_size,
                drop_rate=drop_rate,
                efficient=efficient,
                reduction=reduction,
            )
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, init_features: Tensor) -> Tensor:
        features = [init_features]
        for _, layer in self.named_children():
            features.append(layer(*features))
        return torch.cat(features, 1)


class DenseNet(nn.Module):
    """DenseNet-BC with ``SE_Block`` in each dense layer, as in seed 002.

    Args:
        growth_rate: Channels each dense layer adds (``k``).
        block_config: Number of dense layers in each dense block.
        num_init_features: Channels of ``conv0``.
        compression: Channel factor of each transition, in (0, 1].
        bn_size: Bottleneck width is ``bn_size * growth_rate``.
        drop_rate: Dropout after each dense layer.
        num_classes: Outputs of ``classifier``.
        small_inputs: 3x3 stem for 32x32 inputs; otherwise 7x7/2 conv, BN, ReLU, max-pool.
        efficient: Recompute the bottleneck in backward (``torch.utils.checkpoint``).
        reduction: Reduction ratio of every ``SE_Block``.
        se_after_transition: Also add ``SE_Block{i}`` after each transition.

    Raises:
        ArchitectureError: ``compression`` outside (0, 1] or an empty ``block_config``.
    """

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_init_features: int = 24,
        compression: float = 0.5,
        bn_size: int = 4,
        drop_rate: float = 0.0,
        num_classes: int = 10,
        small_inputs: bool = True,
        efficient: bool = False,
        reduction: int = 16,
        se_after_transition: bool = False,
    ) -> None:
        super().__init__()
        if not 0 < compression <= 1:
            raise ArchitectureError(f"densenet_se: compression must be in (0, 1], got {compression}")
        if len(block_config) == 0:
            raise ArchitectureError("densenet_se: block_config must name at least one dense block")
        self.features = _stem(num_init_features, small_inputs)
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = _DenseBlock(
                num_layers=num_layers,
                num_input_features=num_features,
                bn_size=bn_size,
                growth_rate=growth_rate,
                drop_rate=drop_rate,
                efficient=efficient,
                reduction=reduction,
            )
            self.features.add_module(f"denseblock{i + 1}", block)
            num_features = num_features + num_layers * growth_rate
            if i != len(block_config) - 1:
                out_features = int(num_features * compression)
                trans = _Transition(num_features, out_features)
                self.features.add_module(f"transition{i + 1}", trans)
                num_features = out_features
                if se_after_transition:
                    self.features.add_module(f"SE_Block{i + 1}", SE_Block(num_features, reduction=reduction))
        self.features.add_module("norm_final", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        features = self.features(x)
        out = F.relu(features, inplace=True)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        out = torch.flatten(out, 1)
        return self.classifier(out)


def _stem(num_init_features: int, small_inputs: bool) -> nn.Sequential:
    if small_inputs:
        conv0 = nn.Conv2d(3, num_init_features, kernel_size=3, stride=1, padding=1, bias=False)
        return nn.Sequential(OrderedDict([("conv0", conv0)]))
    conv0 = nn.Conv2d(3, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)
    return nn.Sequential(
        OrderedDict(
            [
                ("conv0", conv0),
                ("norm0", nn.BatchNorm2d(num_init_features)),
                ("relu0", nn.ReLU(inplace=True)),
                ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=False)),
            ]
        )
    )
