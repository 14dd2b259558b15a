"""Key-by-key comparison of a state_dict with what a model expects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

Shape = tuple[int, ...]


@dataclass(frozen=True)
class StateDictDiff:
    """How a state_dict differs from a model's own (what a strict load would reject).

    Attributes:
        missing: Keys the model expects that the state_dict lacks.
        unexpected: Keys of the state_dict the model does not have.
        wrong_shape: ``(key, expected_shape, got_shape)``; ``got_shape`` is ``None`` when the
            value is not a tensor.
    """

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    wrong_shape: tuple[tuple[str, Shape, Shape | None], ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when ``load_state_dict(strict=True)`` accepts the state_dict."""
        return not (self.missing or self.unexpected or self.wrong_shape)

    def problems(self) -> list[str]:
        """All differences, one short line each: wrong shapes, missing, then unexpected keys."""
        lines = [f"wrong shape {key}: expected {_fmt(want)}, got {_fmt(got)}" for key, want, got in self.wrong_shape]
        lines += [f"missing {key}" for key in self.missing]
        lines += [f"unexpected {key}" for key in self.unexpected]
        return lines

    def describe(self, limit: int = 10) -> str:
        """One line per problem, at most ``limit`` lines plus a count of the rest."""
        lines = self.problems()
        if not lines:
            return "state_dict matches"
        shown = lines[: max(limit, 0)]
        if len(lines) > len(shown):
            shown.append(f"... and {len(lines) - len(shown)} more")
        return "\n".join(shown)


def compare_state_dict(model: nn.Module | Mapping[str, Any], state_dict: Mapping[str, Any]) -> StateDictDiff:
    """Compare ``state_dict`` with the keys and shapes ``model`` expects.

    Args:
        model: The model, or a mapping of its expected keys to tensors or shapes.
        state_dict: The state_dict to check; values that are not tensors count as wrong shapes
            when their key is expected.

    Returns:
        The differences; ``.ok`` is True when a strict load would accept it.
    """
    expected = expected_shapes(model)
    got = {key: tensor_shape(value) for key, value in state_dict.items()}
    missing = tuple(key for key in expected if key not in got)
    unexpected = tuple(str(key) for key in got if key not in expected)
    wrong = tuple((key, shape, got[key]) for key, shape in expected.items() if key in got and got[key] != shape)
    return StateDictDiff(missing=missing, unexpected=unexpected, wrong_shape=wrong)


def expected_shapes(model: nn.Module | Mapping[str, Any]) -> dict[str, Shape]:
    """Map each key of ``model.state_dict()`` (or of a mapping) to its shape."""
    source = model.state_dict() if isinstance(model, nn.Module) else model
    shapes = {key: _shape_of(value) for key, value in source.items()}
    return {key: shape for key, shape in shapes.items() if shape is not None}


def tensor_shape(value: Any) -> Shape | None:
    """The shape of a tensor, ``None`` for anything else."""
    return tuple(value.shape) if isinstance(value, Tensor) else None


def _shape_of(value: Any) -> Shape | None:
    if isinstance(value, tuple) and all(isinstance(v, int) for v in value):
        return tuple(value)
    return tensor_shape(value)


def _fmt(shape: Shape | None) -> str:
    return "not a tensor" if shape is None else "[" + ", ".join(map(str, shape)) + "]"
