"""Recognising attention gates: which calls are gates, what kind they are, who owns them.

An attention gate is the output of a sigmoid-family call that rescales features. Gates are
seen through a :class:`torch.overrides.TorchFunctionMode`, so functional calls
(``torch.sigmoid``, ``Tensor.sigmoid``, ``F.sigmoid``, ``F.hardsigmoid``) are found as
well as modules (``nn.Sigmoid``, ``nn.Hardsigmoid``, timm's ``Sigmoid``), which call those
functions themselves.
"""

from __future__ import annotations

from typing import Literal, TypeGuard

import torch
import torch.nn.functional as F
from torch import nn

GateKind = Literal["channel", "spatial", "other"]

#: Functions whose output is a gate candidate, with the name attnviz reports for each.
GATE_FUNCTIONS: dict[object, str] = {
    torch.sigmoid: "torch.sigmoid",
    torch.sigmoid_: "torch.sigmoid_",
    torch.Tensor.sigmoid: "Tensor.sigmoid",
    torch.Tensor.sigmoid_: "Tensor.sigmoid_",
    torch.special.expit: "torch.special.expit",
    F.sigmoid: "F.sigmoid",
    F.hardsigmoid: "F.hardsigmoid",
}


def gate_kind(shape: tuple[int, ...]) -> GateKind | None:
    """Classify a gate by the shape of the sigmoid's output (batch first).

    Returns ``None`` for shapes that cannot be a gate over a CNN feature map
    (a scalar per image, or an output that is not at least 2-D).
    """
    if len(shape) == 2:
        return "channel" if shape[1] > 1 else None
    if len(shape) == 3:
        # ECA computes its gate as [B,1,C] (or [B,C,1]) before viewing it to [B,C,1,1].
        if shape[1] == 1 and shape[2] > 1:
            return "channel"
        if shape[2] == 1 and shape[1] > 1:
            return "channel"
        return "other" if shape[1] > 1 and shape[2] > 1 else None
    if len(shape) == 4:
        _, channels, height, width = shape
        if height == 1 and width == 1:
            return "channel" if channels > 1 else None
        if channels == 1:
            return "spatial"
        return "other"
    return None


def canonical_values(values: torch.Tensor, kind: GateKind) -> torch.Tensor:
    """Store channel gates as ``[B,C]`` and spatial gates as ``[B,H,W]``; others as computed."""
    if kind == "channel":
        return values.reshape(values.shape[0], -1)
    if kind == "spatial":
        return values.reshape(values.shape[0], values.shape[-2], values.shape[-1])
    return values


def is_sigmoid_leaf(module: nn.Module) -> bool:
    """True for parameter-free leaf modules that only apply a sigmoid-family function."""
    if isinstance(module, (nn.Sigmoid, nn.Hardsigmoid)):
        return True
    if next(module.children(), None) is not None or next(module.parameters(recurse=False), None) is not None:
        return False
    return "sigmoid" in type(module).__name__.lower()


def is_spatial_map(value: object) -> TypeGuard[torch.Tensor]:
    """True for a 4-D tensor with more than one spatial position (a CNN feature map)."""
    return isinstance(value, torch.Tensor) and value.dim() == 4 and value.shape[-1] * value.shape[-2] > 1
