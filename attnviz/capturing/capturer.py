"""One forward pass under hooks: predictions, every attention gate, features before/after gating.

Usage::

    cap = attnviz.capture(model, images, class_names=names)
    cap.gates["cbam1.spatial_attn"].values      # [B,H,W], the true sigmoid output
    cap.inputs["cbam1"], cap.outputs["cbam1"]    # features before and after the gates
    cap.topk(0)                                  # [Prediction(index, label, prob), ...]

Values are copied to the CPU at the moment the model computes them, so later in-place
operations (``out += shortcut``, ``ReLU(inplace=True)``) cannot change what is reported.
The model is left exactly as it was: hooks removed and train/eval mode restored, also when
its forward raises.

TorchScript modules run their forward as compiled code, which no hook or ``TorchFunctionMode``
can see into: for them only the outputs are captured (with a one-line warning saying so).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from attnviz.capturing.gates import (
    GATE_FUNCTIONS,
    GateKind,
    canonical_values,
    gate_kind,
    is_sigmoid_leaf,
    is_spatial_map,
)
from attnviz.io.inputs import as_image_batch
from attnviz.runtime.errors import CaptureError, UsageError, did_you_mean
from attnviz.runtime.model import eval_mode, first_tensor, run_forward, to_model

ROOT_NAME = "model"


@dataclass(frozen=True)
class Prediction:
    """One class of a top-k prediction."""

    index: int
    label: str
    prob: float


@dataclass
class Gate:
    """One attention gate as the model computed it.

    Attributes:
        name: unique name: the owning module's name, with ``#k`` appended when that module
            computed more than one gate in the forward pass.
        module: name of the attention module that computed the gate.
        kind: ``"channel"``, ``"spatial"`` or ``"other"``.
        values: channel gates ``[B,C]``, spatial gates ``[B,H,W]``, others as computed (CPU).
        shape: the shape of the sigmoid's output as the model computed it (batch first).
        function: the sigmoid-family call that produced it (e.g. ``nn.Sigmoid``, ``torch.sigmoid``).
        gated_module: the module whose input and output are the features before and after
            gating (``Capture.inputs``/``outputs`` keys), or ``None`` when none was found.
    """

    name: str
    module: str
    kind: GateKind
    values: torch.Tensor
    shape: tuple[int, ...]
    function: str
    gated_module: str | None = None

    def stats(self, index: int | None = None) -> dict[str, float]:
        """Mean, min and max of the gate over one image (or the whole batch)."""
        values = self.values if index is None else self.values[index]
        values = values.float()
        return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}

    def __repr__(self) -> str:
        return f"Gate({self.name!r}, kind={self.kind!r}, shape={list(self.shape)}, function={self.function!r})"


@dataclass
class Capture:
    """Everything one forward pass of the model showed: predictions, gates and features.

    All tensors are on the CPU and have the batch dimension first.
    """

    images: torch.Tensor
    logits: torch.Tensor
    gates: dict[str, Gate]
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    features: dict[str, torch.Tensor]
    class_names: list[str] | None = None
    originals: list[np.ndarray] | None = None
    model_name: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.logits.shape[0])

    @property
    def probs(self) -> torch.Tensor:
        """Softmax probabilities ``[B,K]``."""
        return torch.softmax(self.logits.float(), dim=1)

    @property
    def predicted(self) -> torch.Tensor:
        """Index of the top class per image ``[B]``."""
        return self.logits.argmax(dim=1)

    def label(self, index: int) -> str:
        """Class name of a class index (the index itself when no names are known)."""
        if self.class_names is not None and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return str(index)

    def topk(self, image: int = 0, k: int = 5) -> list[Prediction]:
        """The ``k`` most probable classes of one image, most probable first."""
        probs = self.probs[image]
        values, indices = probs.topk(min(k, probs.numel()))
        return [Prediction(int(i), self.label(int(i)), float(p)) for p, i in zip(values, indices)]

    def gates_of_kind(self, kind: GateKind) -> dict[str, Gate]:
        """The gates of one kind (``"channel"``, ``"spatial"`` or ``"other"``), in forward order."""
        return {name: gate for name, gate in self.gates.items() if gate.kind == kind}

    def gate_table(self, image: int = 0) -> list[dict[str, Any]]:
        """One row per gate (name, module, kind, shape, mean, min, max) for one image."""
        rows = []
        for gate in self.gates.values():
            row: dict[str, Any] = {
                "name": gate.name,
                "module": gate.module,
                "kind": gate.kind,
                "shape": list(gate.values.shape[1:]),
            }
            row.update(gate.stats(image))
            rows.append(row)
        return rows

    def arrays(self, image: int | None = None) -> dict[str, np.ndarray]:
        """Every captured array keyed ``gate/<name>``, ``in/<module>``, ``out/<module>``,
        ``feature/<layer>``; the batch dimension is dropped when ``image`` is given."""
        groups = [
            ("gate", {name: gate.values for name, gate in self.gates.items()}),
            ("in", self.inputs),
            ("out", self.outputs),
            ("feature", self.features),
        ]
        arrays: dict[str, np.ndarray] = {}
        for prefix, tensors in groups:
            for name, tensor in tensors.items():
                selected = tensor if image is None else tensor[image]
                arrays[f"{prefix}/{name}"] = selected.float().numpy()
        return arrays

    def save(self, path: str, image: int | None = None) -> None:
        """Write :meth:`arrays` to a compressed ``.npz`` file."""
        arrays: dict[str, Any] = self.arrays(image)  # numpy's stub types **kwds as if one could be allow_pickle
        np.savez_compressed(path, **arrays)

    def __getitem__(self, image: int) -> Capture:
        """The capture of one image of the batch (batch dimension kept, size 1)."""
        if not -self.batch_size <= image < self.batch_size:
            raise IndexError(f"image {image} out of range for a batch of {self.batch_size}")
        span = slice(image, image + 1 if image != -1 else None)
        return Capture(
            images=self.images[span],
            logits=self.logits[span],
            gates={
                name: Gate(g.name, g.module, g.kind, g.values[span], g.shape, g.function, g.gated_module)
                for name, g in self.gates.items()
            },
            inputs={k: v[span] for k, v in self.inputs.items()},
            outputs={k: v[span] for k, v in self.outputs.items()},
            features={k: v[span] for k, v in self.features.items()},
            class_names=self.class_names,
            originals=None if self.originals is None else self.originals[span],
            model_name=self.model_name,
            metadata=dict(self.metadata),
        )

    def __repr__(self) -> str:
        kinds = {k: len(self.gates_of_kind(k)) for k in ("channel", "spatial", "other")}
        return (
            f"Capture({self.model_name or 'model'}: {self.batch_size} image(s), "
            f"{len(self.gates)} gates ({kinds['channel']} channel, {kinds['spatial']} spatial, "
            f"{kinds['other']} other), {len(self.features)} feature maps)"
        )

    def _repr_html_(self) -> str:
        from html import escape

        top = self.topk(0, 3)
        pred = ", ".join(f"{escape(p.label)} {p.prob:.3f}" for p in top)
        rows = "".join(
            f"<tr><td>{escape(r['name'])}</td><td>{r['kind']}</td><td>{r['shape']}</td>"
            f"<td>{r['mean']:.3f}</td><td>{r['min']:.3f}</td><td>{r['max']:.3f}</td></tr>"
            for r in self.gate_table(0)
        )
        return (
            f"<div><b>{escape(repr(self))}</b><br>image 0: {pred}"
            "<table><tr><th>gate</th><th>kind</th><th>shape</th><th>mean</th><th>min</th><th>max</th></tr>"
            f"{rows}</table></div>"
        )


class Capturer:
    """A reusable capture of one model: finds gates and feature layers, then records them.

    Args:
        model: any ``nn.Module`` that maps an image batch to class logits.
        layers: feature layers to record: ``None`` for the default (each conv block /
            stage output), ``[]`` for none, or module names.
        modules: record gates (and the features around them) only for attention modules
            whose name equals or starts with one of these (bounds memory); ``None``: all.
        class_names: class names for predictions.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        layers: Sequence[str] | None = None,
        modules: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
        model_name: str = "",
    ) -> None:
        self.model = model
        self.class_names = list(class_names) if class_names is not None else None
        self.model_name = model_name
        self._names = _module_names(model)
        hidden = compiled_modules(model)
        if hidden:
            warnings.warn(_hidden_message(hidden, model_name), stacklevel=2)
        self._modules_filter = tuple(modules) if modules is not None else None
        self._layers = None if layers is None else [_check_layer(model, name) for name in layers]

    def __call__(self, images: torch.Tensor, originals: Sequence[np.ndarray] | None = None) -> Capture:
        """Run one forward pass on ``images`` (``[B,3,H,W]`` or ``[3,H,W]``) and capture it."""
        images = to_model(as_image_batch(images), self.model)
        if self._layers is None:
            self._layers = default_feature_layers(self.model, images[:1])
        recorder = _Recorder(self._names, set(self._layers), self._modules_filter)
        if self.model.training:
            warnings.warn(
                "the model was in training mode; attnviz captures in eval mode and restores training mode afterwards",
                stacklevel=2,
            )
        hooks = [(module, recorder.pre_hook(name), recorder.post_hook(name)) for module, name in self._names.items()]
        with eval_mode(self.model), _hooked(hooks), torch.no_grad(), _GateMode(recorder):
            output = run_forward(self.model, images)
        logits = _logits(output)
        return Capture(
            images=images.detach().cpu(),
            logits=logits.detach().float().cpu(),
            gates=recorder.gates(),
            inputs=recorder.inputs,
            outputs=recorder.outputs,
            features={name: recorder.features[name] for name in self._layers if name in recorder.features},
            class_names=self.class_names,
            originals=list(originals) if originals is not None else None,
            model_name=self.model_name,
        )


def capture(
    model: nn.Module,
    images: torch.Tensor,
    *,
    layers: Sequence[str] | None = None,
    modules: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    originals: Sequence[np.ndarray] | None = None,
) -> Capture:
    """Capture predictions, every attention gate and chosen feature maps in one forward pass.

    See :class:`Capturer` for the arguments; use a ``Capturer`` directly to capture many
    batches of the same model without finding its layers again.
    """
    return Capturer(model, layers=layers, modules=modules, class_names=class_names)(images, originals)


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


def _hidden_message(hidden: Sequence[str], model_name: str) -> str:
    what = "the model" if hidden == [ROOT_NAME] else "TorchScript module(s) " + ", ".join(f"'{n}'" for n in hidden[:3])
    owner = f" ({model_name})" if model_name else ""
    return (
        f"{what}{owner} runs as compiled TorchScript: attention gates and feature maps inside it are not visible; "
        "attnviz shows its predictions, and Grad-CAM only on a feature map its forward returns"
    )


class _GateMode(TorchFunctionMode):
    """Sees every sigmoid-family call made while active and reports its output."""

    def __init__(self, recorder: _Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        label = GATE_FUNCTIONS.get(func)
        if label is not None and isinstance(output, torch.Tensor):
            self.recorder.on_sigmoid(output, label)
        return output


@dataclass
class _Frame:
    name: str
    module: nn.Module
    input: torch.Tensor | None
    input_version: int
    first_gate: int


@dataclass
class _GateEvent:
    owner: str
    kind: GateKind
    values: torch.Tensor
    shape: tuple[int, ...]
    function: str
    owner_depth: int
    gated_module: str | None = None


class _Recorder:
    """Per-call state: the running-module stack and everything recorded so far."""

    def __init__(self, names: dict[nn.Module, str], layers: set[str], modules_filter: tuple[str, ...] | None) -> None:
        self.names = names
        self.layers = layers
        self.modules_filter = modules_filter
        self.stack: list[_Frame] = []
        self.events: list[_GateEvent] = []
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.features: dict[str, torch.Tensor] = {}

    def pre_hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            tensor = first_tensor(args)
            version = tensor._version if tensor is not None else 0
            self.stack.append(_Frame(name, module, tensor, version, len(self.events)))

        return hook

    def post_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            frame = self.stack.pop()
            out = first_tensor(output)
            if name in self.layers and isinstance(out, torch.Tensor):
                self.features[name] = _copy(out)
            depth = len(self.stack)  # this frame's position in the stack
            pending = [
                event
                for event in self.events[frame.first_gate :]
                if event.gated_module is None and event.owner_depth >= depth
            ]
            if pending and isinstance(out, torch.Tensor) and _is_gating(frame.input, out):
                for event in pending:
                    event.gated_module = name
                if frame.input._version == frame.input_version:
                    self.inputs[name] = _copy(frame.input)
                else:
                    warnings.warn(
                        f"module '{name}' modified its input in place; its features before gating are not available",
                        stacklevel=2,
                    )
                self.outputs[name] = _copy(out)

        return hook

    def on_sigmoid(self, output: torch.Tensor, function: str) -> None:
        shape = tuple(output.shape)
        kind = gate_kind(shape)
        if kind is None or not self.stack:
            return
        depth, owner = self._owner()
        if owner.input is not None and tuple(owner.input.shape) == shape and kind == "other":
            return  # a sigmoid over the whole feature map is an activation (SiLU-like), not a gate
        if not self._keep(owner.name):
            return
        innermost = self.stack[-1].module
        if is_sigmoid_leaf(innermost):
            function = f"{_qualified_type(innermost)}"
        values = canonical_values(_copy(output), kind)
        self.events.append(_GateEvent(owner.name, kind, values, shape, function, depth))

    def _owner(self) -> tuple[int, _Frame]:
        """The innermost running module that owns a gate, with its depth in the stack.

        Sigmoid leaves are skipped (a gate is named after its attention module, not the
        activation inside it), and so are modules whose input is not a spatial feature map
        (the inner MLP of an SE block).
        """
        candidates = [(depth, frame) for depth, frame in enumerate(self.stack) if not is_sigmoid_leaf(frame.module)]
        for depth, frame in reversed(candidates):
            if is_spatial_map(frame.input):
                return depth, frame
        return candidates[-1] if candidates else (len(self.stack) - 1, self.stack[-1])

    def _keep(self, owner: str) -> bool:
        if self.modules_filter is None:
            return True
        return any(owner == prefix or owner.startswith(prefix + ".") for prefix in self.modules_filter)

    def gates(self) -> dict[str, Gate]:
        counts: dict[str, int] = {}
        for event in self.events:
            counts[event.owner] = counts.get(event.owner, 0) + 1
        seen: dict[str, int] = {}
        gates: dict[str, Gate] = {}
        for event in self.events:
            name = event.owner
            if counts[event.owner] > 1:
                name = f"{event.owner}#{seen.get(event.owner, 0)}"
                seen[event.owner] = seen.get(event.owner, 0) + 1
            gates[name] = Gate(
                name, event.owner, event.kind, event.values, event.shape, event.function, event.gated_module
            )
        return gates


def _is_gating(before: torch.Tensor | None, after: torch.Tensor | None) -> TypeGuard[torch.Tensor]:
    """A gating module maps a feature map to a feature map of the same shape."""
    return is_spatial_map(before) and isinstance(after, torch.Tensor) and after.shape == before.shape


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to(device="cpu", copy=True)


def _qualified_type(module: nn.Module) -> str:
    cls = type(module)
    if cls.__module__.startswith("torch.nn"):
        return f"nn.{cls.__name__}"
    return f"{cls.__module__.split('.')[0]}.{cls.__name__}"


def _module_names(model: nn.Module) -> dict[nn.Module, str]:
    names: dict[nn.Module, str] = {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.jit.ScriptModule):  # hooks cannot see into compiled code
            names.setdefault(module, name or ROOT_NAME)
    return names


@contextlib.contextmanager
def _hooked(hooks: Sequence[tuple[nn.Module, Any, Any]]) -> Iterator[None]:
    """Forward pre-hooks and hooks on modules for a ``with`` block; all removed afterwards (also on error)."""
    handles = []
    try:
        for module, pre_hook, post_hook in hooks:
            handles.append(module.register_forward_pre_hook(pre_hook))
            handles.append(module.register_forward_hook(post_hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _check_layer(model: nn.Module, name: str) -> str:
    known = [n for n, _ in model.named_modules() if n]
    if name not in known:
        hint = did_you_mean(name, known, cutoff=0.6, quote=False)
        raise UsageError(f"the model has no layer named '{name}'{hint}")
    if isinstance(model.get_submodule(name), torch.jit.ScriptModule):
        raise UsageError(f"layer '{name}' is TorchScript code, whose outputs cannot be recorded; choose another layer")
    return name


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, dict):
        for key in ("logits", "out", "output"):
            if isinstance(output.get(key), torch.Tensor):
                return output[key]
    tensor = first_tensor(output)
    if tensor is None or tensor.dim() != 2:
        shape = None if tensor is None else list(tensor.shape)
        raise CaptureError(f"the model must return class logits of shape [B, classes]; it returned {shape}")
    return tensor


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
