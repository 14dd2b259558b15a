"""torchvision ResNet-18 adapted to 32x32 inputs with CBAM after every stage (seed 003).

The notebook wraps the torchvision model as ``self.backbone``: its ``conv1`` becomes a 3x3
stride-1 convolution, ``maxpool`` an ``nn.Identity`` and ``fc`` a new ``Linear(512,
num_classes)``. ``cbam_layer1..cbam_layer4`` (:class:`~attnviz.models.cbam.CBAM`) follow
``backbone.layer1..layer4``. Keys look like ``backbone.layer3.1.conv2.weight`` and
``cbam_layer3.spatial_attn.conv.weight``.

The notebook downloads ImageNet weights (``pretrained=True``); attnviz never downloads: pass
``weights=`` the path of a local torchvision ``resnet18`` state_dict instead.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import Tensor, nn

from attnviz.models.cbam import CBAM
from attnviz.models.statedict import compare_state_dict
from attnviz.runtime.errors import ArchitectureError, CheckpointError, first_line


class ResNet18_CBAM(nn.Module):  # noqa: N801 - the notebook's class name
    """ResNet-18 backbone for 32x32 inputs with a CBAM after each residual stage.

    Args:
        num_classes: Outputs of ``backbone.fc``.
        weights: Path of an ImageNet ``resnet18`` state_dict loaded into the backbone before
            ``conv1`` and ``fc`` are replaced (the notebook's ``pretrained=True``); ``None`` for
            random initialisation.
        cbam_ratio: Reduction ratio of every CBAM's channel MLP.
        cbam_kernel: Kernel side of every CBAM's spatial convolution.

    Raises:
        CheckpointError: ``weights`` is missing or unreadable.
        ArchitectureError: ``weights`` is not a torchvision resnet18 state_dict.
    """

    def __init__(
        self,
        num_classes: int = 10,
        weights: str | Path | None = None,
        cbam_ratio: int = 16,
        cbam_kernel: int = 7,
    ) -> None:
        super().__init__()
        from torchvision import models  # here, not at the top: importing torchvision costs a second or more

        self.backbone = models.resnet18(weights=None)
        if weights is not None:
            _load_imagenet_weights(self.backbone, Path(weights))
        self.backbone.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.backbone.maxpool = nn.Identity()
        self.cbam_layer1 = CBAM(in_channels=64, ratio=cbam_ratio, kernel_size=cbam_kernel)
        self.cbam_layer2 = CBAM(in_channels=128, ratio=cbam_ratio, kernel_size=cbam_kernel)
        self.cbam_layer3 = CBAM(in_channels=256, ratio=cbam_ratio, kernel_size=cbam_kernel)
        self.cbam_layer4 = CBAM(in_channels=512, ratio=cbam_ratio, kernel_size=cbam_kernel)
        self.backbone.fc = nn.Linear(in_features=512, out_features=num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.backbone.relu(self.backbone.bn1(self.backbone.conv1(x)))
        x = self.cbam_layer1(self.backbone.layer1(x))
        x = self.cbam_layer2(self.backbone.layer2(x))
        x = self.cbam_layer3(self.backbone.layer3(x))
        x = self.cbam_layer4(self.backbone.layer4(x))
        x = self.backbone.avgpool(x)
        x = torch.flatten(x, 1)
        return self.backbone.fc(x)


def _load_imagenet_weights(backbone: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"ImageNet weights file not found: {path}")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read ImageNet weights {path}: {first_line(exc)}") from exc
    if not isinstance(state_dict, dict):
        kind = type(state_dict).__name__
        raise ArchitectureError(f"{path} does not hold a state_dict (got {kind})")
    diff = compare_state_dict(backbone, state_dict)
    if not diff.ok:
        first = "; ".join(diff.problems()[:3])
        raise ArchitectureError(f"{path} is not a torchvision resnet18 state_dict: {first}")
    backbone.load_state_dict(state_dict)
