"""Which layers a capture records: the default stage outputs, names checked, compiled parts found."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from attnviz.capturing.gates import is_spatial_map
from attnviz.runtime.errors import UsageError, did_you_mean
from attnviz.runtime.model import eval_mode, first_tensor, run_forward

ROOT_NAME = "model"


def default_feature_layers(model: nn.Module, probe: torch.Tensor) -> list[str]:
    """The layers whose outputs are captured by default.

    For the course's architectures: each conv block's output, as the registry lists them.
    Elsewhere: each stage's output, i.e. the last top-level block at each spatial resolution
    (found with one forward pass of ``probe``, a single image).
    """
    spec = _zoo_spec(model)
    if spec is not None:
        return list(spec.feature_layers_in(model))
    if isinstance(model, torch.jit.ScriptModule):
        return []  # nothing inside compiled code can be recorded
    return _stage_outputs(model, probe)


def compiled_modules(model: nn.Module) -> list[str]:
    """The outermost TorchScript modules of ``model`` (``"model"`` for a TorchScript model):
    their forward runs as compiled code, so no gate or feature map inside them can be seen."""
    found: list[str] = []
    for name, module in model.named_modules():
        inside = any(name.startswith(outer + ".") for outer in found) or (found == [ROOT_NAME])
        if isinstance(module, torch.jit.ScriptModule) and not inside:
            found.append(name or ROOT_NAME)
    return found


def hidden_message(hidden: Sequence[str], model_name: str) -> str:
    what = "the model" if hidden == [ROOT_NAME] else "TorchScript module(s) " + ", ".join(f"'{n}'" for n in hidden[:3])
    owner = f" ({model_name})" if model_name else ""
    return (
        f"{what}{owner} runs as compiled TorchScript: attention gates and feature maps inside it are not visible; "
        "attnviz shows its predictions, and Grad-CAM only on a feature map its forward returns"
    )


def check_layer(model: nn.Module, name: str) -> str:
    known = [n for n, _ in model.named_modules() if n]
    if name not in known:
        hint = did_you_mean(name, known, cutoff=0.6, quote=False)
        raise UsageError(f"the model has no layer named '{name}'{hint}")
    if isinstance(model.get_submodule(name), torch.jit.ScriptModule):
        raise UsageError(f"layer '{name}' is TorchScript code, whose outputs cannot be recorded; choose another layer")
    return name


def _zoo_spec(model: nn.Module):
    """The registry entry of a model built from attnviz's zoo, or ``None``."""
    from attnviz import models

    for name in models.list_architectures():
        spec = models.get_spec(name)
        factory = spec.factory
        if isinstance(factory, type) and type(model) is factory:
            return spec
    return None


def _stage_outputs(model: nn.Module, probe: torch.Tensor) -> list[str]:
    """The last top-level block at each spatial resolution, in forward order."""
    blocks = [(n, block) for n, block in _top_level_blocks(model) if not isinstance(block, torch.jit.ScriptModule)]
    shapes: list[tuple[str, tuple[int, ...]]] = []
    handles = []

    def record(name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            out = first_tensor(output)
            if is_spatial_map(out):
                shapes.append((name, tuple(out.shape[-2:])))

        return hook

    try:
        for name, module in blocks:
            handles.append(module.register_forward_hook(record(name)))
        with eval_mode(model), torch.no_grad():
            run_forward(model, probe)
    finally:
        for handle in handles:
            handle.remove()
    stages = []
    for position, (name, size) in enumerate(shapes):
        following = shapes[position + 1][1] if position + 1 < len(shapes) else None
        if following != size and name not in stages:
            stages.append(name)
    return stages


_STAGE_CONTAINERS = ("features", "stages", "layers", "blocks", "trunk_output", "body")


def _top_level_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Direct children, with well-known stage containers (``features``, ``stages``...) opened."""
    blocks: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        grandchildren = list(child.named_children())
        if name in _STAGE_CONTAINERS and isinstance(child, (nn.Sequential, nn.ModuleList)) and len(grandchildren) >= 3:
            blocks.extend((f"{name}.{sub}", module) for sub, module in grandchildren)
        else:
            blocks.append((name, child))
    return blocks
