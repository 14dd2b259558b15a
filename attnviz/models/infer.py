"""Read each architecture's hyper-parameters from the shapes in a state_dict.

Every ``*_kwargs`` function returns the keyword arguments that rebuild the architecture whose
parameters the state_dict holds, or ``None`` when the state_dict lacks that architecture's
tell-tale keys. They only read shapes; the registry checks the result against a model built on
the ``meta`` device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

Kwargs = dict[str, Any]


def cnn_kwargs(sd: Mapping[str, Any]) -> Kwargs | None:
    """``CNN``: ``num_classes`` from ``fc2.weight``."""
    num_classes = _dim(sd, "fc2.weight", 0)
    return None if num_classes is None else {"num_classes": num_classes}


def se_cnn_kwargs(sd: Mapping[str, Any]) -> Kwargs | None:
    """``SE_CNN``: ``num_classes`` and ``reduction_ratio`` of ``ca1..ca3``."""
    num_classes = _dim(sd, "fc2.weight", 0)
    ratio = _reduction(sd, [f"ca{i}.fc.0.weight" for i in (1, 2, 3)], default=16)
    if num_classes is None or ratio is None:
        return None
    return {"num_classes": num_classes, "reduction_ratio": ratio}


def cbam_cnn_kwargs(sd: Mapping[str, Any]) -> Kwargs | None:
    """``CBAM_CNN``: ``num_classes``, CBAM ``ratio`` and ``kernel_size``."""
    num_classes = _dim(sd, "fc2.weight", 0)
    ratio = _reduction(sd, [f"cbam{i}.channel_attn.fc.0.weight" for i in (1, 2, 3)], default=16)
    kernel = _dim(sd, "cbam1.spatial_attn.conv.weight", 2)
    if num_classes is None or ratio is None or kernel is None:
        return None
    return {"num_classes": num_classes, "ratio": ratio, "kernel_size": kernel}


def resnet18_cbam_kwargs(sd: Mapping[str, Any]) -> Kwargs | None:
    """``ResNet18_CBAM``: ``num_classes``, ``cbam_ratio`` and ``cbam_kernel``."""
    num_classes = _dim(sd, "backbone.fc.weight", 0)
    keys = [f"cbam_layer{i}.channel_attn.fc.0.weight" for i in (1, 2, 3, 4)]
    ratio = _reduction(sd, keys, default=16)
    kernel = _dim(sd, "cbam_layer1.spatial_attn.conv.weight", 2)
    if num_classes is None or ratio is None or kernel is None:
        return None
    return {"num_classes": num_classes, "cbam_ratio": ratio, "cbam_kernel": kernel}


def resnet_se_kwargs(sd: Mapping[str, Any]) -> Kwargs | None:
    """``CustomCNN``: ``num_classes`` and the SE ``reduction``."""
    num_classes = _dim(sd, "fc.weight", 0)
    keys = [f"layer{i}.{j}.se.fc.0.weight" for i in (1, 2, 3, 4) for j in (0, 1)]
    ratio = _reduction(sd, keys, default=16)
    if num_classes is None or ratio is None:
        return None
    return {"num_classes": num_classes, "reduction": ratio}


def densenet_se_kwargs(sd: Mapping[str, Any]) -> Kwargs | None:
    """``DenseNet``: every shape-determined hyper-parameter (not ``drop_rate``/``efficient``)."""
    conv0 = _shape(sd, "features.conv0.weight")
    growth = _dim(sd, "features.denseblock1.denselayer1.conv2.weight", 0)
    bottleneck = _dim(sd, "features.denseblock1.denselayer1.conv1.weight", 0)
    num_classes = _dim(sd, "classifier.weight", 0)
    if conv0 is None or len(conv0) != 4 or not growth or bottleneck is None or num_classes is None:
        return None
    block_config = _dense_block_config(sd)
    transitions = [
        (shape[1], shape[0])
        for i in range(1, len(block_config))
        if (shape := _shape(sd, f"features.transition{i}.conv.weight")) is not None
    ]
    compression = _compression([(c_in, c_out) for c_in, c_out in transitions])
    se_after_transition = "features.SE_Block1.fc.0.weight" in sd
    se_keys = [
        f"features.denseblock{b}.denselayer{n}.SE_Block.fc.0.weight"
        for b, layers in enumerate(block_config, start=1)
        for n in range(1, layers + 1)
    ]
    if se_after_transition:
        se_keys += [f"features.SE_Block{i}.fc.0.weight" for i in range(1, len(block_config))]
    reduction = _reduction(sd, se_keys, default=16)
    if compression is None or reduction is None:
        return None
    return {
        "growth_rate": growth,
        "block_config": block_config,
        "num_init_features": conv0[0],
        "compression": compression,
        "bn_size": bottleneck // growth,
        "num_classes": num_classes,
        "small_inputs": conv0[2] == 3,
        "reduction": reduction,
        "se_after_transition": se_after_transition,
    }


def _dense_block_config(sd: Mapping[str, Any]) -> tuple[int, ...]:
    config = []
    block = 1
    while f"features.denseblock{block}.denselayer1.conv1.weight" in sd:
        layers = 1
        while f"features.denseblock{block}.denselayer{layers + 1}.conv1.weight" in sd:
            layers += 1
        config.append(layers)
        block += 1
    return tuple(config)


def _compression(transitions: Sequence[tuple[int, int]], default: float = 0.5) -> float | None:
    """A factor ``c`` with ``int(c_in * c) == c_out`` for every transition."""
    if not transitions:
        return default
    c_in, c_out = transitions[0]
    exact = c_out / c_in
    rounded = [round(exact, digits) for digits in (1, 2, 3)]
    candidates = (default, *rounded, exact, (c_out + 0.5) / c_in)
    for candidate in candidates:
        if 0 < candidate <= 1 and all(int(i * candidate) == o for i, o in transitions):
            return candidate
    return None


def _reduction(sd: Mapping[str, Any], keys: Sequence[str], default: int) -> int | None:
    """A ratio ``r`` with ``in // r == hidden`` for every first Linear ``[hidden, in]``."""
    pairs = []
    for key in keys:
        shape = _shape(sd, key)
        if shape is None or len(shape) != 2:
            return None
        pairs.append((shape[1], shape[0]))
    if all(c // default == h for c, h in pairs):
        return default
    widest = max(c for c, _ in pairs)
    return next((r for r in range(1, widest + 2) if all(c // r == h for c, h in pairs)), None)


def _shape(sd: Mapping[str, Any], key: str) -> tuple[int, ...] | None:
    value = sd.get(key)
    return tuple(value.shape) if isinstance(value, Tensor) else None


def _dim(sd: Mapping[str, Any], key: str, axis: int) -> int | None:
    shape = _shape(sd, key)
    return shape[axis] if shape is not None and len(shape) > axis else None
