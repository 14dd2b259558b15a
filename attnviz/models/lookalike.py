"""What a state_dict that fits none of the course's architectures looks like, read from its keys.

timm's and torchvision's models name their layers in recognisable ways (a ResNet's ``conv1`` with a
7x7 kernel, ``layer1`` .. ``layer4`` and ``fc``; timm's ``conv_stem``/``blocks``/``stages``;
torchvision's ``features``/``classifier`` and ``trunk_output``). Such a state_dict is better answered
with the ``--arch`` that builds it than with the course's models that share a few of its names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

__all__ = ["library_lookalike"]

_RESNET_DEPTHS: dict[tuple[bool, tuple[int, ...]], int] = {
    (False, (2, 2, 2, 2)): 18,
    (False, (3, 4, 6, 3)): 34,
    (True, (3, 4, 6, 3)): 50,
    (True, (3, 4, 23, 3)): 101,
    (True, (3, 8, 36, 3)): 152,
}
_DENSENET_DEPTHS: dict[tuple[int, ...], int] = {
    (6, 12, 24, 16): 121,
    (6, 12, 32, 32): 169,
    (6, 12, 48, 32): 201,
    (6, 12, 36, 24): 161,
}
_TIMM_TOPS = frozenset({"conv_stem", "patch_embed", "stages", "stem", "blocks", "conv_head", "s1"})


def library_lookalike(state_dict: Mapping[str, Any]) -> str | None:
    """``"a ResNet-18 as torchvision and timm write it ...; pass --arch torchvision:resnet18 or ..."``,
    or ``None`` when the keys look like no timm or torchvision model attnviz recognises."""
    return _resnet(state_dict) or _densenet(state_dict) or _torchvision(state_dict) or _timm(state_dict)


def _resnet(sd: Mapping[str, Any]) -> str | None:
    if "layer1.0.conv1.weight" not in sd:
        return None
    blocks = tuple(_count(sd, f"layer{i}.{{}}.conv1.weight") for i in (1, 2, 3, 4))
    if "layer0.conv1.weight" in sd and "last_linear.weight" in sd:
        return (
            f"an SE-ResNet/SENet as timm's legacy models write it (layer0, layer1-layer4 with "
            f"{'-'.join(map(str, blocks))} blocks, last_linear); pass --arch timm:NAME (e.g. legacy_seresnet18)"
        )
    if "conv1.0.weight" in sd and "fc.weight" in sd:
        return (
            f"a ResNet with a deep stem as timm writes it (conv1.0, layer1-layer4 with {'-'.join(map(str, blocks))} "
            "blocks, fc); pass --arch timm:NAME (e.g. resnet18d, resnet50d, ecaresnet26t)"
        )
    stem = _shape(sd, "conv1.weight")
    if stem is None or len(stem) != 4 or stem[2] != 7 or "fc.weight" not in sd:
        return None  # the course's ResNets start with a 3x3 conv: those are theirs, not a library's
    bottleneck = "layer1.0.conv3.weight" in sd
    depth = _RESNET_DEPTHS.get((bottleneck, blocks))
    se = "layer1.0.se.fc1.weight" in sd
    what = f"a {'SE-' if se else ''}ResNet{'-' + str(depth) if depth else ''} as {'timm' if se else 'torchvision and timm'}"
    what += f" write{'s' if se else ''} it (7x7 conv1, layer1-layer4 with {'-'.join(map(str, blocks))} blocks, fc)"
    name = _resnet_name(sd, depth, bottleneck, se)
    if name is None:
        return f"{what}; pass --arch timm:NAME or torchvision:NAME of that model"
    if se:
        return f"{what}; pass --arch timm:{name}"
    return f"{what}; pass --arch torchvision:{name} or --arch timm:{name}"


def _resnet_name(sd: Mapping[str, Any], depth: int | None, bottleneck: bool, se: bool) -> str | None:
    """``resnet50``, ``seresnet18``, ``wide_resnet50_2``; ``None`` for widths and groups not read here."""
    if depth is None:
        return None
    width = (_shape(sd, "layer1.0.conv1.weight") or (0,))[0]
    conv2 = _shape(sd, "layer1.0.conv2.weight") or (0, 0)
    if bottleneck and conv2[1] != conv2[0]:
        return None  # grouped 3x3 convs (ResNeXt)
    if width == 64:
        return f"{'se' if se else ''}resnet{depth}"
    if bottleneck and width == 128 and not se:
        return f"wide_resnet{depth}_2"
    return None


def _densenet(sd: Mapping[str, Any]) -> str | None:
    if "features.denseblock1.denselayer1.conv1.weight" not in sd or any("SE_Block" in k for k in sd):
        return None  # with SE blocks it is the course's densenet_se
    blocks = tuple(_count(sd, f"features.denseblock{b}.denselayer{{}}.conv1.weight", start=1) for b in (1, 2, 3, 4))
    depth = _DENSENET_DEPTHS.get(blocks)
    what = f"a DenseNet{'-' + str(depth) if depth else ''} as torchvision writes it (no SE blocks)"
    return f"{what}; pass --arch torchvision:densenet{depth}" if depth else f"{what}; pass --arch torchvision:NAME"


def _torchvision(sd: Mapping[str, Any]) -> str | None:
    tops = _tops(sd)
    if "trunk_output" in tops:
        return "a RegNet as torchvision writes it (stem, trunk_output, fc); pass --arch torchvision:NAME (e.g. regnet_y_400mf)"
    if {"features", "classifier"} <= tops and "features.0.0.weight" in sd:
        return (
            "a torchvision model with features.N.M blocks and a classifier (EfficientNet, MobileNet, ConvNeXt, ...); "
            "pass --arch torchvision:NAME (e.g. efficientnet_b0, mobilenet_v3_small)"
        )
    if {"features", "classifier"} <= tops and "features.0.weight" in sd and "classifier.6.weight" in sd:
        return "a VGG as torchvision writes it (features, classifier.6); pass --arch torchvision:NAME (e.g. vgg11)"
    return None


def _timm(sd: Mapping[str, Any]) -> str | None:
    seen = sorted(_tops(sd) & _TIMM_TOPS)
    if not seen or seen == ["blocks"] or seen == ["stem"]:
        return None  # one generic name alone says little
    return f"a timm model (top-level modules {', '.join(seen)}); pass --arch timm:NAME (timm.list_models() lists them)"


def _tops(sd: Mapping[str, Any]) -> set[str]:
    return {str(key).split(".", 1)[0] for key in sd}


def _count(sd: Mapping[str, Any], pattern: str, start: int = 0) -> int:
    n = start
    while pattern.format(n) in sd:
        n += 1
    return n - start


def _shape(sd: Mapping[str, Any], key: str) -> tuple[int, ...] | None:
    value = sd.get(key)
    return tuple(value.shape) if isinstance(value, Tensor) else None
