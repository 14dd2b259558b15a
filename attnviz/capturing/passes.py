"""How one forward pass is recorded: a discovery pass, then planned passes.

The **discovery pass** hooks every module, so that each attention call knows the module that
owns it, and tracks torch calls everywhere. From what it saw it makes a :class:`Plan`: the few
modules ("roots") inside which every kept gate is computed and applied, and the sequence of
attention calls made inside them. A **planned pass** hooks only those roots (and the requested
feature layers), tracks calls only while a root runs, and names what it sees from the plan: the
Python work per forward shrinks from every module and every call to a handful. When a planned
pass does not see exactly the planned calls (another input size, data-dependent control flow),
the capture falls back to a discovery pass, so the result never depends on the plan.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from attnviz.capturing.gates import (
    HARD_SIGMOID,
    Consumer,
    GateKind,
    canonical_values,
    is_gate,
    is_sigmoid_leaf,
    is_spatial_map,
    sigmoid_kind,
    softmax_kind,
)
from attnviz.capturing.results import Gate
from attnviz.capturing.tracking import CallEvent
from attnviz.runtime.model import first_tensor

SIGMOID_ACTIVATIONS = "sigmoid(s) treated as activations (they multiply their own input, like SiLU, or nothing)"
SCALAR_SIGMOIDS = "sigmoid(s) giving one value per image"
OTHER_SOFTMAX = "softmax call(s) that weight neither the positions of a feature map nor branches"

Signature = tuple[str, tuple[int, ...], int | None]


def _signature(event: CallEvent) -> Signature:
    return (event.call, event.shape[1:], event.dim)


@dataclass
class _Frame:
    name: str
    module: nn.Module
    positions: tuple[int, int] | None  # (H, W) of its input when that is a feature map
    leaf_events: list[tuple[CallEvent, torch.Tensor]] = field(default_factory=list)


@dataclass
class PlanEntry:
    """One attention call a planned pass expects, and what discovery made of it."""

    signature: Signature
    accepted: bool
    info: dict[str, Any]
    consumer: Consumer


@dataclass
class Plan:
    """What a planned pass hooks and expects (made by :meth:`Discovery.plan`)."""

    input_shape: tuple[int, ...]
    roots: list[str]
    entries: list[PlanEntry]
    findings: dict[str, int]
    #: For gates-only capture: how often each sigmoid module runs per forward, and which of its calls
    #: are kept gates (with their details); ``None`` when a kept gate comes from no sigmoid module.
    leaf_calls: dict[str, int] | None = None
    leaf_gates: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)


class _Copies:
    """What to copy of an accepted event, shared by both passes."""

    want_features: bool

    def copy_values(self, event: CallEvent) -> Literal["now", "when consumed", "never"]:
        if not event.info["keep"]:
            return "never"
        large = event.call == "sigmoid" and event.info["kind"] in ("full", "other")
        return "when consumed" if large else "now"  # large ones are often activations: copy only gates

    def copy_features(self, event: CallEvent) -> bool:
        return self.want_features and event.info["keep"]

    def on_consumed(self, event: CallEvent) -> None:
        pass


class Discovery(_Copies):
    """Event sink of the discovery pass: a running-module stack from hooks on every module."""

    def __init__(self, names: dict[nn.Module, str], keep: Callable[[str], bool], want_features: bool) -> None:
        self.names = names
        self.keep = keep
        self.want_features = want_features
        self.stack: list[_Frame] = []
        self.calls: list[tuple[Signature, tuple[str, ...], CallEvent | None]] = []
        self.findings: Counter[str] = Counter()
        self.leaf_calls: Counter[str] = Counter()

    def pre_hook(self, name: str) -> Callable[[nn.Module, tuple, dict], None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            tensor = first_tensor(args) if args else first_tensor(kwargs)
            positions = (int(tensor.shape[-2]), int(tensor.shape[-1])) if is_spatial_map(tensor) else None
            self.stack.append(_Frame(name, module, positions))
            if is_sigmoid_leaf(module):
                self.leaf_calls[name] += 1

        return hook

    def post_hook(self, output: Any) -> None:
        frame = self.stack.pop()
        for event, sigmoid_output in frame.leaf_events:
            # a sigmoid module's calls can stand for its gates only if it returns the sigmoid's output
            if output is not sigmoid_output:
                event.info.pop("leaf", None)

    def on_call(self, event: CallEvent, output: torch.Tensor) -> bool:
        path = tuple(frame.name for frame in self.stack)
        self.calls.append((_signature(event), path, None))
        if not self.stack:
            return False
        owner = self._owner()
        if event.call == "sigmoid":
            kind = sigmoid_kind(event.shape)
        else:
            kind = softmax_kind(event.shape, event.dim or 0, owner.positions)
        if kind is None:
            self.findings[SCALAR_SIGMOIDS if event.call == "sigmoid" else OTHER_SOFTMAX] += 1
            return False
        function = event.function
        innermost = self.stack[-1].module
        if event.call == "sigmoid" and function != HARD_SIGMOID and is_sigmoid_leaf(innermost):
            function = _qualified_type(innermost)
            leaf = self.stack[-1].name
            event.info["leaf"] = (leaf, self.leaf_calls[leaf] - 1)
            self.stack[-1].leaf_events.append((event, output))
        event.info.update(owner=owner.name, kind=kind, positions=owner.positions, path=path, keep=self.keep(owner.name))
        event.info["function"] = function
        self.calls[-1] = (self.calls[-1][0], path, event)
        return True

    def on_consumed(self, event: CallEvent) -> None:
        event.info["consumer_path"] = tuple(frame.name for frame in self.stack)

    def _owner(self) -> _Frame:
        """The innermost running module that owns an attention call: sigmoid leaves are skipped
        (a gate is named after its attention module), and so are modules whose input is not a
        feature map (the inner MLP of an SE block)."""
        candidates = [frame for frame in self.stack if not is_sigmoid_leaf(frame.module)] or self.stack
        for frame in reversed(candidates):
            if frame.positions is not None:
                return frame
        return candidates[-1]

    def plan(self, input_shape: tuple[int, ...], gates: list[CallEvent]) -> Plan:
        """The roots that hold every kept gate's call and multiplication, and the calls made in them."""
        roots: list[str] = []
        for event in gates:
            if not event.info["keep"]:
                continue
            path = event.info["path"]
            depth = path.index(event.info["owner"])
            consumer_path = event.info.get("consumer_path")
            if consumer_path is not None:
                common = 0
                while common < min(len(path), len(consumer_path)) and path[common] == consumer_path[common]:
                    common += 1
                depth = min(depth, max(common - 1, 0))
            if path[depth] not in roots:
                roots.append(path[depth])
        roots = _outermost(roots, [event.info["path"] for event in gates])
        entries = []
        for signature, path, recorded in self.calls:
            if not any(root in path for root in roots):
                continue
            if recorded is None:
                entries.append(PlanEntry(signature, False, {}, None))
                continue
            seen_at = recorded.info.get("consumer_path")
            visible = seen_at is not None and any(root in seen_at for root in roots)
            entries.append(PlanEntry(signature, True, dict(recorded.info), recorded.consumer if visible else None))
        plan = Plan(input_shape, roots, entries, dict(self.findings))
        kept = [event for event in gates if event.info["keep"]]
        if all("leaf" in event.info for event in kept):
            plan.leaf_calls = {leaf: self.leaf_calls[leaf] for leaf, _ in (event.info["leaf"] for event in kept)}
            plan.leaf_gates = {
                event.info["leaf"]: {**event.info, "shape": event.shape[1:], "order": order}
                for order, event in enumerate(kept)
            }
        return plan


def _outermost(roots: list[str], paths: list[tuple[str, ...]]) -> list[str]:
    """Drop roots that run inside another root (the tracking is already active there)."""
    inside: set[str] = set()
    for path in paths:
        for position, name in enumerate(path):
            if name in roots and any(outer in roots for outer in path[:position]):
                inside.add(name)
    return [root for root in roots if root not in inside]


class Planned(_Copies):
    """Event sink of a planned pass: takes each call's owner and kind from the plan."""

    def __init__(self, plan: Plan, want_features: bool) -> None:
        self.plan = plan
        self.want_features = want_features
        self.position = 0
        self.mismatch = False

    def on_call(self, event: CallEvent, output: torch.Tensor) -> bool:
        position = self.position
        self.position += 1
        entries = self.plan.entries
        if position >= len(entries) or entries[position].signature != _signature(event):
            self.mismatch = True
            return False
        entry = entries[position]
        if not entry.accepted:
            return False
        event.info.update(entry.info)
        event.info["entry"] = position
        return True

    def matches(self, events: list[CallEvent]) -> bool:
        """Whether the pass saw exactly the planned calls, consumed as planned."""
        if self.mismatch or self.position != len(self.plan.entries):
            return False
        return all(event.consumer == self.plan.entries[event.info["entry"]].consumer for event in events)


def name_gates(events: list[CallEvent], findings: Counter[str]) -> list[CallEvent]:
    """The events that are gates, each given its unique name (``info["name"]``): its owner's
    name, with ``#k`` when the owner computed more than one gate. Activations are counted."""
    gates = []
    for event in events:
        if event.call == "sigmoid" and not is_gate(event.info["kind"], event.consumer):
            findings[SIGMOID_ACTIVATIONS] += 1
            continue
        gates.append(event)
    counts = Counter(event.info["owner"] for event in gates)
    seen: Counter[str] = Counter()
    for event in gates:
        owner = event.info["owner"]
        event.info["name"] = owner if counts[owner] == 1 else f"{owner}#{seen[owner]}"
        seen[owner] += 1
    return gates


def make_gates(
    events: list[CallEvent],
) -> tuple[dict[str, Gate], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Gates (values still on the model's device) and the features before/after each, for the
    kept gate events of a pass (each with ``info["name"]``)."""
    gates: dict[str, Gate] = {}
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    for event in events:
        info = event.info
        if not info["keep"] or "name" not in info:
            continue
        name = info["name"]
        if event.values is None:
            warnings.warn(
                f"gate '{name}' was modified in place before it was applied; it is not reported", stacklevel=3
            )
            continue
        kind: GateKind = info["kind"]
        values = canonical_values(event.values, kind, info["positions"] if event.call == "softmax" else None)
        gated = None
        if event.consumer == "gating" and event.before is not None and event.after is not None:
            inputs[name], outputs[name], gated = event.before, event.after, name
        gates[name] = Gate(name, info["owner"], kind, values, event.shape, info["function"], gated)
    return gates, inputs, outputs


@dataclass
class LayerRecorder:
    """Outputs of the requested feature layers; a layer called more than once is recorded per
    call as ``name#k``, keeping the calls that return a feature map."""

    layers: set[str]
    rows: int | None
    calls: dict[str, list[torch.Tensor | None]] = field(default_factory=dict)

    def record(self, name: str, output: Any) -> None:
        if self.rows == 0:
            return  # features of no image
        tensor = first_tensor(output)
        copy = tensor[: self.rows].detach().clone() if isinstance(tensor, torch.Tensor) else None
        self.calls.setdefault(name, []).append(copy)

    def hook(self, name: str) -> Callable[[nn.Module, tuple, Any], None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            self.record(name, output)

        return hook

    def features(self, order: list[str]) -> dict[str, torch.Tensor]:
        features: dict[str, torch.Tensor] = {}
        for name in order:
            calls = self.calls.get(name, [])
            if len(calls) == 1 and calls[0] is not None:
                features[name] = calls[0]
            elif len(calls) > 1:
                features.update({f"{name}#{k}": t for k, t in enumerate(calls) if is_spatial_map(t)})
        return features


def _qualified_type(module: nn.Module) -> str:
    cls = type(module)
    if cls.__module__.startswith("torch.nn"):
        return f"nn.{cls.__name__}"
    return f"{cls.__module__.split('.')[0]}.{cls.__name__}"


class LeafRecorder:
    """Gates-only capture from forward hooks on the sigmoid modules a plan names: no function mode.

    Each module's calls are counted; the calls the plan marks as kept gates are copied (on the
    device). :meth:`matches` says whether every module ran as often as in the discovery pass.
    """

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.counts: Counter[str] = Counter()
        self.values: dict[tuple[str, int], torch.Tensor] = {}

    def hook(self, name: str) -> Callable[[nn.Module, tuple, Any], None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            call = (name, self.counts[name])
            self.counts[name] += 1
            if call in self.plan.leaf_gates and isinstance(output, torch.Tensor):
                self.values[call] = output.detach().clone()

        return hook

    def matches(self) -> bool:
        return dict(self.counts) == self.plan.leaf_calls and len(self.values) == len(self.plan.leaf_gates)

    def gates(self) -> dict[str, Gate]:
        gates: dict[str, Gate] = {}
        for call, info in sorted(self.plan.leaf_gates.items(), key=lambda item: item[1]["order"]):
            values = self.values[call]
            kind: GateKind = info["kind"]
            canonical = canonical_values(values, kind)  # sigmoid modules: spatial gates as computed
            shape = (values.shape[0], *info["shape"])
            gates[info["name"]] = Gate(info["name"], info["owner"], kind, canonical, shape, info["function"], None)
        return gates
