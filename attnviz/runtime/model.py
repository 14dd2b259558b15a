"""Running a user's model: the one place that knows how.

Every layer above uses these instead of its own copy: where inputs go (the model's device and
floating dtype), eval mode with every submodule's mode restored, a forward pass whose failure is a
one-line :class:`CaptureError`, layer lookup with "did you mean" and device parsing. The one-line
forms of exceptions live in :mod:`attnviz.runtime.errors` (no torch there).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from attnviz.runtime.errors import AttnvizError, CaptureError, UsageError, describe, did_you_mean
from attnviz.runtime.transfer import to_device

__all__ = [
    "eval_mode",
    "find_module",
    "first_tensor",
    "model_device",
    "parse_device",
    "run_forward",
    "shares_memory",
    "to_model",
]


def parse_device(device: str | torch.device | None, *, flag: str = "--device") -> torch.device:
    """The device to run on: ``None`` or ``"auto"`` is CUDA when a GPU is available, else the CPU.

    ``flag`` names the option in messages: a CLI flag (``--device``) or an API argument (``device``).

    Raises:
        UsageError: An unknown device, or one (CUDA, MPS) that this machine does not have.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {str(device)!r}; use auto, cpu, cuda or cuda:N") from None
    use_cpu = f"{flag} cpu" if flag.startswith("-") else f"{flag}='cpu'"  # a CLI flag, or an API argument
    if parsed.type == "cuda" and not torch.cuda.is_available():
        why = "no CUDA GPU is available" if flag.startswith("-") else "CUDA is not available (no CUDA GPU)"
        raise UsageError(f"device {str(device)!r} asked for, but {why}; use {use_cpu}")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device {str(device)!r} asked for, but MPS is not available; use {use_cpu}")
    return parsed


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU for a model with neither)."""
    reference = _reference_tensor(model)
    return reference.device if reference is not None else torch.device("cpu")


def to_model(images: Tensor, model: nn.Module) -> Tensor:
    """``images`` on the model's device, in its floating dtype (unchanged for a model without tensors);
    from the host to a GPU through pinned memory, without making the host wait."""
    reference = _reference_tensor(model)
    if reference is None:
        return images
    dtype = reference.dtype if reference.is_floating_point() else images.dtype
    return to_device(images, reference.device, dtype)


def shares_memory(model_input: Tensor, given: Tensor) -> bool:
    """True when ``model_input`` (what :func:`to_model` made of ``given``) is ``given``'s memory
    itself (nothing had to be converted), so that an in-place change of it would change ``given``."""
    return (
        model_input.device == given.device
        and model_input.untyped_storage().data_ptr() == given.untyped_storage().data_ptr()
    )


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for a ``with`` block; afterwards every submodule's own mode is back (also on error).

    Restoring only the top-level flag would put a frozen (eval) BatchNorm of a training model back in
    training mode, so each module's flag is saved and restored. A model already in eval mode
    throughout is left alone: switching and restoring every module costs milliseconds on large models.
    """
    training = _in_training(model)
    if training:
        model.eval()
    try:
        yield model
    finally:
        if training:
            model.eval()  # also what the block switched
            for module in training:
                module.training = True


def _in_training(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` (as ``model.modules()`` gives them, each once) in training mode.

    A plain walk over the children: ``model.modules()`` builds every module's qualified name, which
    costs twice as long (a quarter of a millisecond for a ResNet-50's 425 modules), before every batch.
    """
    found: list[nn.Module] = []
    seen: set[int] = set()
    stack: list[nn.Module | None] = [model]
    while stack:
        module = stack.pop()
        if module is None or id(module) in seen:
            continue
        seen.add(id(module))
        if module.training:
            found.append(module)
        stack.extend(module._modules.values())
    return found


def run_forward(model: nn.Module, images: Tensor, what: str = "the model's forward pass") -> Any:
    """``model(images)``; a failure inside the user's code becomes a one-line :class:`CaptureError`.

    attnviz's own errors and ``KeyboardInterrupt`` pass through unchanged.
    """
    try:
        return model(images)
    except AttnvizError:
        raise
    except Exception as exc:
        raise CaptureError(f"{what} failed on input {tuple(images.shape)}: {describe(exc)}") from exc


def find_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (as ``named_modules`` names it).

    Raises:
        UsageError: No such module; the message names the closest ones.
    """
    modules = dict(model.named_modules())
    if name in modules:
        return modules[name]
    raise UsageError(f"the model has no layer {name!r}{did_you_mean(name, [n for n in modules if n])}")


def first_tensor(value: object) -> Tensor | None:
    """The first tensor in a module's inputs or outputs (tuples, lists and dict values searched)."""
    if isinstance(value, Tensor):
        return value
    items: Iterable[object] = ()
    if isinstance(value, (tuple, list)):
        items = value
    elif isinstance(value, dict):
        items = value.values()
    for item in items:
        found = first_tensor(item)
        if found is not None:
            return found
    return None


def _reference_tensor(model: nn.Module) -> Tensor | None:
    reference = next(model.parameters(), None)
    return reference if reference is not None else next(model.buffers(), None)
