"""Model facts: a layer table with output shapes and parameter counts, and the attention found."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attnviz.capturing.capturer import Capture, capture
from attnviz.runtime.model import first_tensor, model_device


@dataclass(frozen=True)
class LayerRow:
    """One row of the layer table."""

    name: str
    type: str
    depth: int
    output_shape: tuple[int, ...] | None
    params: int
    trainable: int


@dataclass
class ModelSummary:
    """The layer table, parameter totals and the attention gates of one model; ``nothing_found``:
    one line saying what was seen instead, when the model computed no gate."""

    layers: list[LayerRow]
    total_params: int
    trainable_params: int
    input_shape: tuple[int, ...]
    gates: list[dict[str, Any]]
    nothing_found: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape),
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "layers": [
                {
                    "name": row.name,
                    "type": row.type,
                    "depth": row.depth,
                    "output_shape": None if row.output_shape is None else list(row.output_shape),
                    "params": row.params,
                }
                for row in self.layers
            ],
            "gates": self.gates,
            "nothing_found": self.nothing_found,
        }


def summarize(model: nn.Module, input_size: tuple[int, int], *, depth: int = 2, channels: int = 3) -> ModelSummary:
    """Describe ``model`` on one ``channels x H x W`` input: layers up to ``depth``, parameters, gates.

    The model is run once, in eval mode, on a batch of one zero-mean random image; its state
    is restored afterwards. Layers inside TorchScript code have no output shape (no hook can
    enter compiled code).
    """
    probe = torch.randn(1, channels, *input_size, generator=torch.Generator().manual_seed(0)).to(model_device(model))
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    selected = [(name, module) for name, module in model.named_modules() if name and name.count(".") < depth]

    def record(name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            tensor = first_tensor(output)
            if tensor is not None and name not in shapes:
                shapes[name] = tuple(tensor.shape)

        return hook

    try:
        for name, module in selected:
            if not isinstance(module, torch.jit.ScriptModule):
                handles.append(module.register_forward_hook(record(name)))
        cap: Capture = capture(model, probe, layers=[], feature_images=0)
    finally:
        for handle in handles:
            handle.remove()
    rows = [
        LayerRow(
            name=name,
            type=getattr(module, "original_name", None) or type(module).__name__,
            depth=name.count("."),
            output_shape=shapes.get(name),
            params=sum(p.numel() for p in module.parameters()),
            trainable=sum(p.numel() for p in module.parameters() if p.requires_grad),
        )
        for name, module in selected
    ]
    gates = [
        {
            "name": g.name,
            "module": g.module,
            "kind": g.kind,
            "shape": list(g.shape[1:]),
            "function": g.function,
            "constant": g.is_constant(),
            **g.stats(),
        }
        for g in cap.gates.values()
    ]
    return ModelSummary(
        layers=rows,
        total_params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        input_shape=tuple(probe.shape),
        gates=gates,
        nothing_found=cap.nothing_found(),
    )
