"""One forward pass under hooks: predictions, every attention gate, features before/after gating.

Usage::

    cap = attnviz.capture(model, images, class_names=names)
    cap.gates["cbam1.spatial_attn"].values      # [B,H,W], the true sigmoid output
    cap.inputs["cbam1.spatial_attn"]            # the features it multiplied (before gating)
    cap.outputs["cbam1.spatial_attn"]           # the product (after gating)
    cap.topk(0)                                 # [Prediction(index, label, prob), ...]

Values are copied at the moment the model computes them (on its own device, without waiting
for it), so later in-place operations (``out += shortcut``, ``ReLU(inplace=True)``) cannot
change what is reported; everything moves to the CPU once, after the forward pass. A
:class:`Capturer` finds the gates with one fully hooked pass and captures later batches with
hooks on the attention modules alone (:mod:`attnviz.capturing.passes`). The model is left
exactly as it was: hooks removed and every submodule's train/eval mode restored, also when its
forward raises.

TorchScript modules run their forward as compiled code, which no hook or ``TorchFunctionMode``
can see into: for them only the outputs are captured (with a one-line warning saying so).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from attnviz.capturing.layers import ROOT_NAME, check_layer, compiled_modules, default_feature_layers, hidden_message
from attnviz.capturing.passes import (
    Discovery,
    LayerRecorder,
    LeafRecorder,
    Plan,
    Planned,
    make_gates,
    name_gates,
)
from attnviz.capturing.results import Capture, Gate, Prediction
from attnviz.capturing.tracking import Tracker
from attnviz.io.inputs import as_image_batch
from attnviz.runtime.errors import CaptureError
from attnviz.runtime.model import eval_mode, first_tensor, run_forward, shares_memory, to_model
from attnviz.runtime.transfer import HostCopy, to_host

__all__ = ["Capture", "Capturer", "Gate", "Prediction", "capture", "compiled_modules", "default_feature_layers"]

#: What :meth:`Capture.nothing_found` counts for TorchScript parts.
HIDDEN = "TorchScript part(s) whose gates cannot be seen (compiled code)"

#: Images per batch whose feature maps a :class:`Capturer` records by default.
FEATURE_IMAGES = 8


class Capturer:
    """A reusable capture of one model: finds gates and feature layers once, then records them.

    Args:
        model: any ``nn.Module`` that maps an image batch to class logits.
        layers: feature layers to record: ``None`` for the default (each conv block /
            stage output), ``[]`` for none, or module names.
        modules: record gates (and the features around them) only for attention modules
            whose name equals or starts with one of these; ``None``: all.
        class_names: class names for predictions.
        model_name: shown in summaries.
        feature_images: record feature maps (before/after each gate, feature layers) for the
            first this many images of each batch; ``None``: every image. Gates are recorded for
            every image. The default (8) bounds what a large batch costs; ``attnviz maps``
            records every image.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        layers: Sequence[str] | None = None,
        modules: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
        model_name: str = "",
        feature_images: int | None = FEATURE_IMAGES,
    ) -> None:
        self.model = model
        self.class_names = list(class_names) if class_names is not None else None
        self.model_name = model_name
        self.feature_images = feature_images
        self._names = _module_names(model)
        self._by_name = {name: module for module, name in self._names.items()}
        hidden = compiled_modules(model)
        self._hidden = len(hidden)
        if hidden:
            warnings.warn(hidden_message(hidden, model_name), stacklevel=2)
        self._modules_filter = tuple(modules) if modules is not None else None
        self._layers = None if layers is None else [check_layer(model, name) for name in layers]
        self._plan: Plan | None = None
        #: ``"discovery"``, ``"planned"`` or ``"gates"`` (gates only, from hooks on the sigmoid
        #: modules): how the last batch was captured.
        self.last_pass = ""

    def __call__(self, images: torch.Tensor, originals: Sequence[np.ndarray] | None = None) -> Capture:
        """Run one forward pass on ``images`` (``[B,3,H,W]`` or ``[3,H,W]``) and capture it."""
        batch = as_image_batch(images)
        images = to_model(batch, self.model)
        # the input as given, even if the model changes it in place; on CUDA copied while the model runs
        shared = shares_memory(images, batch)
        given = HostCopy(batch, snapshot=shared)
        if self._layers is None:  # no feature maps are recorded without images to record them for
            self._layers = [] if self.feature_images == 0 else default_feature_layers(self.model, images[:1].clone())
        if self.model.training:
            warnings.warn(
                "the model was in training mode; attnviz captures in eval mode and restores every module's mode afterwards",
                stacklevel=2,
            )
        # a converted input leaves the batch as given: converting it again makes a new copy
        fresh = _inputs(images, lambda: to_model(given.fresh() if shared else batch, self.model))
        with eval_mode(self.model), torch.no_grad():  # each pass tried gets the input as given
            found = None
            if self._plan is not None and self._plan.input_shape == tuple(images.shape[1:]):
                if self.feature_images == 0 and self._plan.leaf_calls is not None:
                    found = self._leaf_pass(next(fresh), self._plan)
                if found is None:
                    found = self._planned_pass(next(fresh), self._plan)
            if found is None:
                found = self._discovery_pass(next(fresh))
        output, gates, inputs, outputs, features, findings = found
        if self._hidden:
            findings[HIDDEN] = self._hidden
        logits = _logits(output)
        given.join(logits.device)  # the one wait below covers it
        host = to_host(
            {
                "logits": logits.detach().float(),
                **{f"gate/{name}": gate.values for name, gate in gates.items()},
                **{f"in/{name}": tensor for name, tensor in inputs.items()},
                **{f"out/{name}": tensor for name, tensor in outputs.items()},
                **{f"feature/{name}": tensor for name, tensor in features.items()},
            }
        )
        for name, gate in gates.items():
            gate.values = host[f"gate/{name}"]
        return Capture(
            images=given.tensor,
            logits=host["logits"],
            gates=gates,
            inputs={name: host[f"in/{name}"] for name in inputs},
            outputs={name: host[f"out/{name}"] for name in outputs},
            features={name: host[f"feature/{name}"] for name in features},
            class_names=self.class_names,
            originals=list(originals) if originals is not None else None,
            model_name=self.model_name,
            findings=findings,
        )

    def _keep(self, owner: str) -> bool:
        if self._modules_filter is None:
            return True
        return any(owner == prefix or owner.startswith(prefix + ".") for prefix in self._modules_filter)

    def _discovery_pass(self, images: torch.Tensor) -> tuple:
        """Every module hooked, calls tracked everywhere; makes the plan for later batches."""
        self.last_pass = "discovery"
        sink = Discovery(self._names, self._keep, want_features=self.feature_images != 0)
        tracker = Tracker(sink, self.feature_images)
        layers = LayerRecorder(set(self._layers or ()), self.feature_images)

        def post_hook(name: str) -> Callable[[nn.Module, tuple, Any], None]:
            def hook(module: nn.Module, args: tuple, output: Any) -> None:
                sink.post_hook(output)
                if name in layers.layers:
                    layers.record(name, output)

            return hook

        hooks = [(module, sink.pre_hook(name), post_hook(name)) for module, name in self._names.items()]
        with _hooked(hooks), tracker:
            output = run_forward(self.model, images)
        findings = sink.findings
        gate_events = name_gates(tracker.events, findings)
        self._plan = sink.plan(tuple(images.shape[1:]), gate_events)
        gates, inputs, outputs = make_gates(gate_events)
        return output, gates, inputs, outputs, layers.features(self._layers or []), dict(findings)

    def _leaf_pass(self, images: torch.Tensor, plan: Plan) -> tuple | None:
        """Gates only, for gates that sigmoid modules compute: forward hooks on those modules and
        nothing else (no function mode); ``None`` when a module ran a different number of times."""
        leaves = LeafRecorder(plan)
        hooks: list[tuple[nn.Module, Any, Any]] = [
            (self._by_name[name], None, leaves.hook(name)) for name in plan.leaf_calls or {}
        ]
        with _hooked(hooks):
            output = run_forward(self.model, images)
        if not leaves.matches():
            return None
        self.last_pass = "gates"
        return output, leaves.gates(), {}, {}, {}, dict(plan.findings)

    def _planned_pass(self, images: torch.Tensor, plan: Plan) -> tuple | None:
        """Hooks on the plan's roots and the feature layers only; ``None`` when the calls seen
        differ from the plan (the caller then runs a discovery pass)."""
        sink = Planned(plan, want_features=self.feature_images != 0)
        tracker = Tracker(sink, self.feature_images)
        layers = LayerRecorder(set(self._layers or ()), self.feature_images)
        depth = [0]

        def enter(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if depth[0] == 0:
                tracker.__enter__()
            depth[0] += 1

        def leave(module: nn.Module, args: tuple, output: Any) -> None:
            depth[0] -= 1
            if depth[0] == 0:
                tracker.__exit__(None, None, None)

        hooks: list[tuple[nn.Module, Any, Any]] = [(self._by_name[root], enter, leave) for root in plan.roots]
        hooks += [(self._by_name[name], None, layers.hook(name)) for name in layers.layers]
        try:
            with _hooked(hooks):
                output = run_forward(self.model, images)
        finally:
            while depth[0] > 0:  # the forward raised inside a root
                depth[0] -= 1
                tracker.__exit__(None, None, None)
        if not sink.matches(tracker.events):
            return None
        self.last_pass = "planned"
        gate_events = [event for event in tracker.events if "name" in event.info]
        gates, inputs, outputs = make_gates(gate_events)
        return output, gates, inputs, outputs, layers.features(self._layers or []), dict(plan.findings)


def capture(
    model: nn.Module,
    images: torch.Tensor,
    *,
    layers: Sequence[str] | None = None,
    modules: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    originals: Sequence[np.ndarray] | None = None,
    feature_images: int | None = FEATURE_IMAGES,
) -> Capture:
    """Capture predictions, every attention gate and chosen feature maps in one forward pass.

    See :class:`Capturer` for the arguments; use a ``Capturer`` directly to capture many
    batches of the same model (later batches cost little more than a forward pass).
    """
    capturer = Capturer(model, layers=layers, modules=modules, class_names=class_names, feature_images=feature_images)
    return capturer(images, originals)


def _module_names(model: nn.Module) -> dict[nn.Module, str]:
    names: dict[nn.Module, str] = {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.jit.ScriptModule):  # hooks cannot see into compiled code
            names.setdefault(module, name or ROOT_NAME)
    return names


@contextlib.contextmanager
def _hooked(hooks: Sequence[tuple[nn.Module, Any, Any]]) -> Iterator[None]:
    """Forward pre-hooks (given the keyword arguments too) and hooks on modules for a ``with`` block;
    all removed afterwards (also on error)."""
    handles = []
    try:
        for module, pre_hook, post_hook in hooks:
            if pre_hook is not None:
                handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            if post_hook is not None:
                handles.append(module.register_forward_hook(post_hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


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


def _inputs(first: torch.Tensor, again: Callable[[], torch.Tensor]) -> Iterator[torch.Tensor]:
    """The model's input for each forward pass one capture tries: ``first``, then a new copy as given
    (an abandoned pass may have run a model that changes its input in place)."""
    yield first
    while True:
        yield again()
