"""Following attention through the calls of a forward pass.

:class:`Tracker` is a :class:`torch.overrides.TorchFunctionMode`: it sees every torch call made
while it is active, functional ones (``torch.sigmoid``, ``x * g``) included. It reports each
sigmoid-family output (and each hand-written ``relu6(x + 3) / 6``) and each softmax as a
:class:`CallEvent`, follows the gate through reshapes and ``1 + g``, and finds the
multiplication that consumes it: the other operand is the feature map before gating, the product
the feature map after. A multiplication with the sigmoid's own input marks it as an activation
(SiLU). What is copied, and when, is up to the :class:`EventSink` (the capture): copies stay on
the model's device, so tracking adds no host synchronisation.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from attnviz.capturing.gates import HARD_SIGMOID, SIGMOID_FUNCTIONS, SOFTMAX_FUNCTIONS, Consumer

CallType = Literal["sigmoid", "softmax"]

_MULTIPLY = {torch.mul, torch.multiply, torch.Tensor.mul, torch.Tensor.multiply}
_MULTIPLY_IN_PLACE = {torch.Tensor.mul_, torch.Tensor.multiply_}
_ADDCMUL = {torch.addcmul, torch.Tensor.addcmul, torch.Tensor.addcmul_}
_ADD = {torch.add, torch.Tensor.add, torch.Tensor.add_}
_DIVIDE = {torch.div, torch.true_divide, torch.Tensor.div, torch.Tensor.div_, torch.Tensor.true_divide}
_CLAMP = {torch.clamp, torch.clip, torch.Tensor.clamp, torch.Tensor.clip, torch.Tensor.clamp_, torch.Tensor.clip_}
#: Calls whose output holds the same values as their first argument, rearranged (or shifted by
#: a number, ``1 + g``): a gate stays a gate through them.
_CARRIES = {
    torch.Tensor.view,
    torch.Tensor.view_as,
    torch.Tensor.reshape,
    torch.Tensor.reshape_as,
    torch.reshape,
    torch.Tensor.expand,
    torch.Tensor.expand_as,
    torch.Tensor.unsqueeze,
    torch.unsqueeze,
    torch.Tensor.squeeze,
    torch.squeeze,
    torch.Tensor.flatten,
    torch.flatten,
    torch.Tensor.permute,
    torch.permute,
    torch.Tensor.transpose,
    torch.transpose,
    torch.Tensor.contiguous,
    torch.Tensor.to,
    torch.Tensor.float,
    torch.Tensor.type_as,
    torch.Tensor.__getitem__,
    torch.Tensor.repeat,
}


@dataclass(eq=False)
class CallEvent:
    """One sigmoid-family or softmax call seen in the forward pass, in call order.

    ``values`` is a copy of the output on the model's device (``None`` when the sink did not
    want it); ``consumer`` says what multiplied it: ``"gating"`` (other features: ``before``
    and ``after`` are copies of the operand and the product when wanted), ``"self"`` (its own
    input: an activation) or ``None`` (not seen).
    """

    index: int
    call: CallType
    function: str
    shape: tuple[int, ...]
    dim: int | None = None
    values: torch.Tensor | None = None
    consumer: Consumer = None
    before: torch.Tensor | None = None
    after: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)  # the sink's own notes (owner, path...)
    _sources: tuple[weakref.ref[torch.Tensor], ...] = ()
    _pending: torch.Tensor | None = None  # output kept by reference until consumed (large gates)


class EventSink(Protocol):
    """What the capture decides for each call event."""

    def on_call(self, event: CallEvent, output: torch.Tensor) -> bool:
        """Note the event; return True to follow it to its multiplication."""

    def copy_values(self, event: CallEvent) -> Literal["now", "when consumed", "never"]:
        """When to copy the event's output."""

    def copy_features(self, event: CallEvent) -> bool:
        """Whether to copy the features before and after the event's gating multiplication."""

    def on_consumed(self, event: CallEvent) -> None:
        """Note where the event was consumed (called after ``consumer`` is set)."""


class Tracker(TorchFunctionMode):
    """Reports attention calls to ``sink`` while active (``with Tracker(sink): model(x)``)."""

    def __init__(self, sink: EventSink, feature_rows: int | None) -> None:
        super().__init__()
        self.sink = sink
        self.rows = feature_rows
        self.events: list[CallEvent] = []
        self._follow: dict[int, tuple[weakref.ref[torch.Tensor], tuple[CallEvent, ...]]] = {}
        self._scalar_of: dict[int, tuple[weakref.ref[torch.Tensor], weakref.ref[torch.Tensor] | None, str]] = {}
        self._handlers: dict[object, Callable[..., None]] = {
            **dict.fromkeys(SIGMOID_FUNCTIONS, self._sigmoid),
            **dict.fromkeys(SOFTMAX_FUNCTIONS, self._softmax),
            **dict.fromkeys(_MULTIPLY, self._multiply),
            **dict.fromkeys(_MULTIPLY_IN_PLACE, self._multiply),
            **dict.fromkeys(_ADDCMUL, self._addcmul),
            **dict.fromkeys(_ADD, self._add),
            **dict.fromkeys(_DIVIDE, self._divide),
            **dict.fromkeys(_CLAMP, self._clamp),
            F.relu6: self._relu6,
            F.hardtanh: self._hardtanh,
            **dict.fromkeys(_CARRIES, self._carry),
        }

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        snapshot = self._before_in_place(args) if func in _MULTIPLY_IN_PLACE else None
        output = func(*args, **kwargs)
        handler = self._handlers.get(func)
        if handler is not None and isinstance(output, torch.Tensor):
            handler(func, args, kwargs, output, snapshot)
        return output

    # --- what a call makes -----------------------------------------------------------------

    def _sigmoid(self, func, args, kwargs, output, snapshot) -> None:
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        self._new_event("sigmoid", SIGMOID_FUNCTIONS[func], output, source, None)

    def _softmax(self, func, args, kwargs, output, snapshot) -> None:
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        if isinstance(dim, int):
            self._new_event("softmax", SOFTMAX_FUNCTIONS[func], output, None, dim)

    def _new_event(
        self, call: CallType, function: str, output: torch.Tensor, source: torch.Tensor | None, dim: int | None
    ) -> None:
        event = CallEvent(len(self.events), call, function, tuple(output.shape), dim)
        event._sources = tuple(weakref.ref(root) for root in self._roots(source))
        if not self.sink.on_call(event, output):
            return
        self.events.append(event)
        when = self.sink.copy_values(event)
        if when == "now":
            event.values = output.detach().clone()
        elif when == "when consumed":
            event._pending = output
            event.info["version"] = output._version
        if call == "sigmoid":
            self._follow[id(output)] = (weakref.ref(output), (event,))

    # --- a hand-written hard sigmoid: relu6(x + 3) / 6 -------------------------------------

    def _add(self, func, args, kwargs, output, snapshot) -> None:
        tensor, number = _tensor_and_number(args)
        if tensor is None or number is None or kwargs.get("alpha", 1) != 1:
            return
        followed = self._followed(tensor)
        if followed is not None:  # 1 + g: still the gate g, shifted
            self._follow[id(output)] = (weakref.ref(output), followed)
            return
        self._note_scalar(output, tensor, "plus3" if number == 3 else "scaled")

    def _relu6(self, func, args, kwargs, output, snapshot) -> None:
        self._after_plus3(args[0] if args else None, output)

    def _hardtanh(self, func, args, kwargs, output, snapshot) -> None:
        low = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
        high = kwargs.get("max_val", args[2] if len(args) > 2 else 1.0)
        if low == 0 and high == 6:
            self._after_plus3(args[0] if args else None, output)

    def _clamp(self, func, args, kwargs, output, snapshot) -> None:
        low = kwargs.get("min", args[1] if len(args) > 1 else None)
        high = kwargs.get("max", args[2] if len(args) > 2 else None)
        if low == 0 and high == 6:
            self._after_plus3(args[0] if args else None, output)

    def _after_plus3(self, tensor: Any, output: torch.Tensor) -> None:
        note = self._scalar_note(tensor)
        if note is not None and note[2] == "plus3":
            self._mark(output, note[1], "relu6")

    def _divide(self, func, args, kwargs, output, snapshot) -> None:
        if len(args) < 2 or not isinstance(args[0], torch.Tensor) or not _is_number(args[1]):
            return
        if kwargs.get("rounding_mode") is not None:
            return
        if args[1] == 6:
            self._hard_sigmoid(args[0], output)
        else:
            self._note_scalar(output, args[0], "scaled")

    def _hard_sigmoid(self, tensor: torch.Tensor, output: torch.Tensor) -> bool:
        note = self._scalar_note(tensor)
        if note is None or note[2] != "relu6":
            return False
        self._new_event("sigmoid", HARD_SIGMOID, output, note[1], None)
        return True

    # --- where a gate is used --------------------------------------------------------------

    def _carry(self, func, args, kwargs, output, snapshot) -> None:
        if not args or not isinstance(args[0], torch.Tensor):
            return
        followed = self._followed(args[0])
        if followed is not None:
            self._follow[id(output)] = (weakref.ref(output), followed)
        note = self._scalar_note(args[0])
        if note is not None and func is not torch.Tensor.__getitem__:
            self._mark(output, note[1], note[2])

    def _multiply(self, func, args, kwargs, output, snapshot) -> None:
        left, right = (args[0], args[1]) if len(args) >= 2 else (args[0] if args else None, kwargs.get("other"))
        if isinstance(left, torch.Tensor) and _is_number(right):
            if abs(float(right) - 1 / 6) < 1e-6:
                self._hard_sigmoid(left, output)
            else:
                self._note_scalar(output, left, "scaled")
            return
        if isinstance(right, torch.Tensor) and _is_number(left):
            self._note_scalar(output, right, "scaled")
            return
        for factor, tensor in ((left, right), (right, left)):  # a one-element tensor (Swish's learnable beta)
            if isinstance(factor, torch.Tensor) and isinstance(tensor, torch.Tensor):
                if _is_scalar_tensor(factor) and not _is_scalar_tensor(tensor) and self._followed(factor) is None:
                    self._note_scalar(output, tensor, "scaled")
                    return
        if not isinstance(left, torch.Tensor) or not isinstance(right, torch.Tensor):
            return
        self._consume(left, right, output, snapshot)

    def _addcmul(self, func, args, kwargs, output, snapshot) -> None:
        tensors = [a for a in args[1:3] if isinstance(a, torch.Tensor)]
        if len(tensors) == 2:
            self._consume(tensors[0], tensors[1], output, None)

    def _consume(self, left: torch.Tensor, right: torch.Tensor, product: torch.Tensor, snapshot: Any) -> None:
        left_events, right_events = self._followed(left), self._followed(right)
        if left_events is not None and right_events is not None:
            # gates multiplied together (x * (a_h * a_w)): the product carries both
            self._follow[id(product)] = (weakref.ref(product), left_events + right_events)
            return
        if left_events is None and right_events is None:
            return
        events, features = (left_events, right) if left_events is not None else (right_events, left)
        assert events is not None
        for event in events:
            self._apply(event, features, left, product, snapshot)

    def _apply(
        self, event: CallEvent, features: torch.Tensor, left: torch.Tensor, product: torch.Tensor, snapshot: Any
    ) -> None:
        """Note that ``event``'s gate multiplies ``features`` (giving ``product``)."""
        if event.consumer is not None:
            return  # the first multiplication that uses a gate is the one that applies it
        if any(ref() is root for root in self._roots(features) for ref in event._sources):
            event.consumer = "self"
            event._pending = None
            self.sink.on_consumed(event)
            return
        event.consumer = "gating"
        if event._pending is not None:
            if event._pending._version == event.info.get("version"):
                event.values = event._pending.detach().clone()
            event._pending = None
        if self.sink.copy_features(event) and features.dim() == 4:
            rows = slice(None, self.rows)
            before = snapshot if isinstance(snapshot, torch.Tensor) and features is left else features[rows]
            event.before = before.detach().clone() if before is not snapshot else before
            event.after = product[rows].detach().clone()
        self.sink.on_consumed(event)

    def _before_in_place(self, args: tuple) -> torch.Tensor | None:
        """A copy of the features an in-place gating multiplication is about to overwrite."""
        if len(args) < 2 or not isinstance(args[0], torch.Tensor) or not isinstance(args[1], torch.Tensor):
            return None
        events = self._followed(args[1])
        if events is None or self._followed(args[0]) is not None:
            return None
        waiting = [event for event in events if event.consumer is None and self.sink.copy_features(event)]
        if not waiting or args[0].dim() != 4:
            return None
        return args[0][: self.rows].detach().clone()

    # --- bookkeeping -----------------------------------------------------------------------

    def _followed(self, tensor: torch.Tensor) -> tuple[CallEvent, ...] | None:
        entry = self._follow.get(id(tensor))
        if entry is None or entry[0]() is not tensor:
            return None
        return entry[1]

    def _note_scalar(self, output: torch.Tensor, source: torch.Tensor | None, what: str) -> None:
        """Note that ``output`` was computed from ``source`` by numbers alone (``what``: ``plus3``,
        ``relu6``, ``scaled``); in place (``x.add_(3)``), from what ``source`` came from, if known."""
        if source is None:
            return
        origin: torch.Tensor | None = source
        if output is source:
            note = self._scalar_note(source)
            origin = note[1] if note is not None else None
        self._mark(output, origin, what)

    def _mark(self, output: torch.Tensor, origin: torch.Tensor | None, what: str) -> None:
        self._scalar_of[id(output)] = (weakref.ref(output), None if origin is None else weakref.ref(origin), what)

    def _scalar_note(self, tensor: Any) -> tuple[torch.Tensor, torch.Tensor | None, str] | None:
        """``(tensor, source, what)`` when ``tensor`` was computed from ``source`` by numbers alone."""
        if not isinstance(tensor, torch.Tensor):
            return None
        entry = self._scalar_of.get(id(tensor))
        if entry is None or entry[0]() is not tensor:
            return None
        return tensor, None if entry[1] is None else entry[1](), entry[2]

    def _roots(self, tensor: torch.Tensor | None) -> list[torch.Tensor]:
        """A tensor and what it was computed from by numbers alone (``1.702 * x`` has root
        ``x``): a sigmoid of a root that multiplies the root is SiLU-like."""
        roots: list[torch.Tensor] = []
        while isinstance(tensor, torch.Tensor) and len(roots) < 8:
            roots.append(tensor)
            note = self._scalar_note(tensor)
            if note is None or note[1] is None or note[1] is tensor:
                break
            tensor = note[1]
        return roots


def _is_scalar_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.numel() == 1


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _tensor_and_number(args: tuple) -> tuple[torch.Tensor | None, float | None]:
    if len(args) < 2:
        return None, None
    first, second = args[0], args[1]
    if isinstance(first, torch.Tensor) and _is_number(second):
        return first, float(second)
    if isinstance(second, torch.Tensor) and _is_number(first):
        return second, float(first)
    return None, None
