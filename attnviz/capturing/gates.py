"""What counts as attention: which calls make a gate, what kind it is, and when it is an activation.

A **gate** is the output of a sigmoid-family call (``torch.sigmoid``, ``Tensor.sigmoid``,
``F.sigmoid``, ``F.hardsigmoid``, ``nn.Sigmoid``, or a hand-written hard sigmoid
``relu6(x + 3) / 6``) that multiplies *other* features. A sigmoid whose output multiplies its
own input (``x * sigmoid(x)``, SiLU/Swish) is an activation. **Softmax attention** is a softmax
over the positions of a feature map (global-context blocks) or over parallel branches
(selective-kernel blocks). Everything here looks only at shapes and call names: the tracking of
calls lives in :mod:`attnviz.capturing.tracking`.
"""

from __future__ import annotations

import math
from typing import Literal, TypeGuard

import torch
import torch.nn.functional as F
from torch import nn

GateKind = Literal["channel", "spatial", "full", "axis", "branch", "other"]

#: Every kind, in the order summaries list them.
GATE_KINDS: tuple[GateKind, ...] = ("channel", "spatial", "full", "axis", "branch", "other")

#: How each kind's values are stored (batch first), for docs and messages.
KIND_SHAPES: dict[GateKind, str] = {
    "channel": "[B,C]",
    "spatial": "[B,H,W]",
    "full": "[B,C,H,W]",
    "axis": "[B,C,H,1] or [B,C,1,W]",
    "branch": "[B,M,C]",
    "other": "as computed",
}

#: Sigmoid-family functions whose output is a gate candidate, with the name attnviz reports.
SIGMOID_FUNCTIONS: dict[object, str] = {
    torch.sigmoid: "torch.sigmoid",
    torch.sigmoid_: "torch.sigmoid_",
    torch.Tensor.sigmoid: "Tensor.sigmoid",
    torch.Tensor.sigmoid_: "Tensor.sigmoid_",
    torch.special.expit: "torch.special.expit",
    F.sigmoid: "F.sigmoid",
    F.hardsigmoid: "F.hardsigmoid",
}

#: Softmax functions (``nn.Softmax`` calls ``F.softmax``).
SOFTMAX_FUNCTIONS: dict[object, str] = {
    torch.softmax: "torch.softmax",
    torch.Tensor.softmax: "Tensor.softmax",
    F.softmax: "F.softmax",
    torch.special.softmax: "torch.special.softmax",
}

#: Label of a gate computed as ``relu6(x + 3) / 6`` (mobilenetv3.pytorch's ``h_sigmoid``).
HARD_SIGMOID = "hard sigmoid: relu6(x + 3) / 6"

Consumer = Literal["gating", "self"] | None

#: Most branches a softmax over dim 1 may weigh to count as branch attention (SK uses 2-3, ResNeSt 2-4).
MAX_BRANCHES = 8


def sigmoid_kind(shape: tuple[int, ...]) -> GateKind | None:
    """The kind of a sigmoid's output by its shape (batch first); ``None`` when it cannot gate a
    CNN feature map (one value per image, or fewer than two dimensions)."""
    if len(shape) == 2:
        return "channel" if shape[1] > 1 else None
    if len(shape) == 3:
        # ECA computes its gate as [B,1,C] (or [B,C,1]) before viewing it to [B,C,1,1].
        if min(shape[1], shape[2]) == 1:
            return "channel" if max(shape[1], shape[2]) > 1 else None
        return "other"
    if len(shape) == 4:
        _, channels, height, width = shape
        if height == 1 and width == 1:
            return "channel" if channels > 1 else None
        if channels == 1:
            return "spatial"
        if height == 1 or width == 1:
            return "axis"
        return "full"
    return "other" if len(shape) > 4 and math.prod(shape[1:]) > 1 else None


def softmax_kind(shape: tuple[int, ...], dim: int, positions: tuple[int, int] | None) -> GateKind | None:
    """The kind of attention a softmax's output is, or ``None`` when it is not attention.

    ``spatial``: one distribution per image over the ``H*W`` positions of the feature map
    entering the module (``positions`` = ``(H, W)``), as global-context blocks compute it.
    ``branch``: weights over ``M`` (2 to :data:`MAX_BRANCHES`) branches per channel, softmax over
    dim 1 of ``[B,M,C(,1,1)]`` (selective-kernel blocks) or ``[B,M,groups,C/groups]`` (ResNeSt's
    split attention); not over the channels of a feature map.
    """
    ndim = len(shape)
    dim = dim % ndim if ndim else 0
    if ndim < 2 or dim == 0:
        return None
    others = math.prod(size for axis, size in enumerate(shape[1:], 1) if axis != dim)
    if positions is not None and shape[dim] == positions[0] * positions[1] > 1 and others == 1:
        return "spatial"
    spatial = ndim >= 4 and shape[-1] > 1 and shape[-2] > 1
    if ndim >= 3 and dim == 1 and 2 <= shape[1] <= MAX_BRANCHES and math.prod(shape[2:]) > 1 and not spatial:
        return "branch"
    return None


def is_gate(kind: GateKind, consumer: Consumer) -> bool:
    """Whether a sigmoid output of ``kind`` is a gate, given what consumed it.

    Multiplying its own input makes it an activation (SiLU); channel and spatial shapes are
    gates even when the multiplication is not seen (a module returning its map to code outside
    the model); other shapes are gates only when seen multiplying other features.
    """
    if consumer == "self":
        return False
    return consumer == "gating" or kind in ("channel", "spatial")


def canonical_values(values: torch.Tensor, kind: GateKind, positions: tuple[int, int] | None = None) -> torch.Tensor:
    """Store channel gates as ``[B,C]``, spatial ones as ``[B,H,W]``, branch weights as
    ``[B,M,C]``; the others as computed."""
    batch = values.shape[0]
    if kind == "channel":
        return values.reshape(batch, -1)
    if kind == "spatial":
        height, width = positions if positions is not None else values.shape[-2:]
        return values.reshape(batch, height, width)
    if kind == "branch":
        return values.reshape(batch, values.shape[1], -1)
    return values


def is_sigmoid_leaf(module: nn.Module) -> bool:
    """True for parameter-free leaf modules that only apply a sigmoid-family function."""
    if isinstance(module, (nn.Sigmoid, nn.Hardsigmoid)):
        return True
    if next(module.children(), None) is not None or next(module.parameters(recurse=False), None) is not None:
        return False
    name = type(module).__name__.lower()
    # Sigmoid, HardSigmoid, timm's HardSigmoidJit/HardSigmoidMe, h_sigmoid; not SigmoidAttention
    return name.endswith(("sigmoid", "sigmoidjit", "sigmoidme")) or name in ("h_sigmoid", "hsigmoid")


def is_spatial_map(value: object) -> TypeGuard[torch.Tensor]:
    """True for a 4-D tensor with more than one spatial position (a CNN feature map)."""
    return isinstance(value, torch.Tensor) and value.dim() == 4 and value.shape[-1] * value.shape[-2] > 1
