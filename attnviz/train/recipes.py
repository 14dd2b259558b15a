"""The course's training recipes: optimisers, the LR scheduler and seed 003's staged fine-tuning.

Two recipes:

* ``plateau`` (seeds 000/001, every architecture but ``resnet18_cbam``): Adam over all
  parameters at ``lr``, ``ReduceLROnPlateau(mode="min", patience=3, factor=0.5)`` stepped on
  the test loss after every epoch.
* ``staged`` (seed 003, ``resnet18_cbam``): three stages, each starting a fresh Adam over the
  parameters it trains, all at that stage's rate; no scheduler.

  ========  ===============  ==========================================  =============
  stage     epochs           trained (substring of the parameter name)   learning rate
  ========  ===============  ==========================================  =============
  1         1 .. a           ``cbam``, ``backbone.fc``                   ``lr``
  2         a+1 .. b         + ``backbone.layer3``, ``backbone.layer4``  ``lr / 10``
  3         b+1 ..           everything                                  ``lr / 100``
  ========  ===============  ==========================================  =============

  with ``(a, b) = stage_epochs``, ``(5, 20)`` and ``lr = 1e-3`` in the notebook. Parameters
  outside the stage are frozen (``requires_grad=False``); BatchNorm layers stay in training
  mode, as in the notebook.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn, optim

from attnviz.runtime.errors import UsageError

#: Architectures trained with the staged recipe.
STAGED_ARCHS: frozenset[str] = frozenset({"resnet18_cbam"})

#: Parameter groups of the staged recipe: name -> substrings that select a parameter (seed 003
#: matches with ``part in name``). ``None`` selects every parameter no other group took.
STAGE_GROUPS: dict[str, tuple[str, ...] | None] = {
    "attention+head": ("cbam", "backbone.fc"),
    "layer3+layer4": ("backbone.layer3", "backbone.layer4"),
    "stem+layer1+layer2": None,
}

#: Per stage: the groups it trains and each group's learning rate as a multiple of ``lr``.
STAGE_LR_FACTORS: dict[int, dict[str, float]] = {
    1: {"attention+head": 1.0},
    2: {"attention+head": 0.1, "layer3+layer4": 0.1},
    3: {"attention+head": 0.01, "layer3+layer4": 0.01, "stem+layer1+layer2": 0.01},
}

PLATEAU_PATIENCE = 3
PLATEAU_FACTOR = 0.5


def recipe_for(arch: str) -> str:
    """``"staged"`` for the architectures of :data:`STAGED_ARCHS`, else ``"plateau"``."""
    return "staged" if arch in STAGED_ARCHS else "plateau"


def check_stage_epochs(stage_epochs: Sequence[int]) -> tuple[int, int]:
    """Validate ``(last epoch of stage 1, last epoch of stage 2)``.

    Raises:
        UsageError: Not two integers with ``0 <= a <= b``.
    """
    values = tuple(stage_epochs)
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise UsageError(f"stage_epochs must be two integers such as 5,20; got {stage_epochs!r}")
    first, second = values
    if not 0 <= first <= second:
        raise UsageError(f"stage_epochs must satisfy 0 <= first <= second; got {first},{second}")
    return first, second


def stage_for_epoch(epoch: int, stage_epochs: Sequence[int] = (5, 20)) -> int:
    """The stage (1, 2 or 3) that 1-based ``epoch`` belongs to."""
    first, second = check_stage_epochs(stage_epochs)
    if epoch < 1:
        raise UsageError(f"epochs are counted from 1, got {epoch}")
    if epoch <= first:
        return 1
    return 2 if epoch <= second else 3


def group_of(name: str) -> str:
    """The :data:`STAGE_GROUPS` group a parameter name falls in."""
    for group, parts in STAGE_GROUPS.items():
        if parts is not None and any(part in name for part in parts):
            return group
    return next(group for group, parts in STAGE_GROUPS.items() if parts is None)


def stage_param_groups(
    model: nn.Module, epoch: int, stage_epochs: Sequence[int] = (5, 20), lr: float = 1e-3
) -> list[dict[str, Any]]:
    """Optimizer parameter groups of the staged recipe at 1-based ``epoch``; changes nothing.

    Returns:
        One dict per trained group, in :data:`STAGE_GROUPS` order:
        ``{"name": group, "lr": float, "params": [Parameter, ...]}``. Parameters of the other
        groups are the ones to freeze.
    """
    factors = STAGE_LR_FACTORS[stage_for_epoch(epoch, stage_epochs)]
    members: dict[str, list[nn.Parameter]] = {group: [] for group in STAGE_GROUPS}
    for name, param in model.named_parameters():
        members[group_of(name)].append(param)
    return [
        {"name": group, "lr": lr * factors[group], "params": members[group]}
        for group in STAGE_GROUPS
        if group in factors and members[group]
    ]


def set_trainable(model: nn.Module, groups: Sequence[dict[str, Any]]) -> None:
    """Make exactly the parameters in ``groups`` trainable and freeze all others."""
    trained = {id(p) for group in groups for p in group["params"]}
    for param in model.parameters():
        param.requires_grad_(id(param) in trained)


def make_optimizer(
    model: nn.Module, recipe: str, epoch: int, lr: float, stage_epochs: Sequence[int] = (5, 20)
) -> optim.Adam:
    """The Adam optimizer of ``recipe`` for 1-based ``epoch`` (sets ``requires_grad`` for ``staged``)."""
    if recipe == "staged":
        groups = stage_param_groups(model, epoch, stage_epochs, lr)
        set_trainable(model, groups)
        return optim.Adam(groups, lr=lr)
    for param in model.parameters():
        param.requires_grad_(True)
    return optim.Adam([{"name": "all", "params": list(model.parameters())}], lr=lr)


def make_scheduler(recipe: str, optimizer: optim.Optimizer) -> optim.lr_scheduler.ReduceLROnPlateau | None:
    """``ReduceLROnPlateau`` for the ``plateau`` recipe, ``None`` for ``staged``."""
    if recipe == "staged":
        return None
    return optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", patience=PLATEAU_PATIENCE, factor=PLATEAU_FACTOR)


def stage_starts(epoch: int, recipe: str, stage_epochs: Sequence[int]) -> bool:
    """Whether 1-based ``epoch`` starts a new stage (a fresh optimizer) in ``recipe``."""
    if recipe != "staged":
        return epoch == 1
    return epoch == 1 or stage_for_epoch(epoch, stage_epochs) != stage_for_epoch(epoch - 1, stage_epochs)
