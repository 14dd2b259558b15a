"""The architecture :func:`attnviz.train.fit` trains: a registry name or a user's own model.

Any form :func:`attnviz.load_model` reads is accepted (``timm:NAME``, ``torchvision:NAME``,
``path/to/file.py:Class``, ``package.module:Class``), built by the same code
(:func:`attnviz.io.build.arch_factory`). Code named here is the caller's own, so it is imported
at once. The model gets the data's ``num_classes`` when its factory takes that argument; a model
whose factory does not is checked on one batch: its output width must be the number of classes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attnviz.io.build import arch_factory, call_factory, names_code
from attnviz.models import get_spec, list_architectures
from attnviz.runtime.errors import ArchitectureError, describe


@dataclass(frozen=True)
class Architecture:
    """An architecture to train, as named, and what builds it.

    Attributes:
        name: As the caller wrote it; stored in the checkpoints as ``arch``.
        factory: Builds the model from keyword arguments (random weights).
        parameters: The keyword arguments the factory names; ``None``: any (``**kwargs``).
    """

    name: str
    factory: Callable[..., Any]
    parameters: frozenset[str] | None

    @classmethod
    def named(cls, arch: str) -> Architecture:
        """The architecture ``arch``; named code is imported now.

        Raises:
            ArchitectureError: Unknown name, missing file or module, or no such class.
        """
        if not isinstance(arch, str) or not arch.strip():
            raise ArchitectureError(f"arch must name an architecture, got {arch!r}")
        factory = arch_factory(arch)
        signed = get_spec(arch).factory if arch in list_architectures() else factory
        return cls(arch, factory, _parameters(signed))

    @property
    def registry(self) -> bool:
        """Whether it is one of attnviz's own architectures."""
        return self.name in list_architectures()

    @property
    def label(self) -> str:
        """Short name for messages: the class of named code, else the name."""
        return self.name.rpartition(":")[2] if names_code(self.name) else self.name

    def takes(self, argument: str) -> bool:
        """Whether the factory accepts the keyword ``argument``."""
        return self.parameters is None or argument in self.parameters

    def kwargs(self, arch_args: Mapping[str, Any] | None, num_classes: int) -> dict[str, Any]:
        """The arguments that build (and rebuild) it: ``arch_args``, and the data's ``num_classes``
        when the factory takes it."""
        kwargs = dict(arch_args or {})
        if self.takes("num_classes"):
            kwargs["num_classes"] = num_classes
        return kwargs

    def build(self, kwargs: Mapping[str, Any]) -> nn.Module:
        """A new model built with ``kwargs``.

        Raises:
            ArchitectureError: The factory fails or builds something else than an ``nn.Module``.
        """
        return call_factory(self.name, self.factory, kwargs)

    def check_outputs(self, model: nn.Module, images: torch.Tensor, class_names: Sequence[str], data: str) -> None:
        """Run ``model`` on ``images`` (eval mode, no gradients) and require logits ``[batch, classes]``.

        Raises:
            ArchitectureError: The forward pass fails, or returns another shape.
        """
        width = _output_width(model, images, self.label, data)
        if width == len(class_names):
            return
        if self.takes("num_classes"):
            hint = f"it was built with num_classes={len(class_names)}; check its --arch-args (arch_args=)"
        else:
            hint = f"{self.label} takes no num_classes argument: set its width with --arch-args (arch_args=)"
        raise ArchitectureError(
            f"{self.label} gives {width} outputs, but {data} has {len(class_names)} classes "
            f"({', '.join(class_names[:4])}{', ...' if len(class_names) > 4 else ''}); {hint}"
        )


def _output_width(model: nn.Module, images: torch.Tensor, label: str, data: str) -> int:
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(images)
    except Exception as exc:  # the model's own failure on the data's images
        raise ArchitectureError(
            f"{label} cannot run on {data}'s images (a batch of shape {list(images.shape)}): {describe(exc)}"
        ) from exc
    finally:
        model.train(training)
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        shape = list(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ArchitectureError(f"{label} returns {shape}, not logits of shape [batch, classes] to train on")
    return int(output.shape[1])


def _parameters(factory: Callable[..., Any]) -> frozenset[str] | None:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params)
