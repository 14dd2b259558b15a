"""Writing a model in attnviz's checkpoint format, atomically, readable with ``weights_only=True``."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnviz.io.build import ARCH_FORMS
from attnviz.io.inputs import Preset, get_preset
from attnviz.runtime.errors import UsageError
from attnviz.runtime.files import atomic_file

__all__ = ["FORMAT", "FORMAT_VERSION", "is_plain", "save_checkpoint"]

FORMAT = "attnviz"
FORMAT_VERSION = 1


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    arch: str,
    *,
    arch_kwargs: Mapping[str, Any] | None = None,
    preset: str | Preset | None = "cifar10",
    class_names: Sequence[str] | None = None,
    record: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write ``model`` in attnviz's format, atomically (temp file + ``os.replace``).

    The file is readable with ``torch.load(weights_only=True)``: tensors are moved to the
    CPU and ``arch_kwargs``/``record`` may hold only None, bool, int, float, str and
    lists, tuples and str-keyed dicts of those.

    Args:
        path: Destination; missing parent folders are created.
        model: The model (``DataParallel`` and ``torch.compile`` wrappers are unwrapped).
        arch: How to rebuild it (see :func:`load_model`'s ``arch``).
        arch_kwargs: Keyword arguments that rebuild it.
        preset: Input preset the model expects, or None.
        class_names: One name per output.
        record: Training record (hyper-parameters, metrics, history).
        extra: More top-level entries, stored as they are (e.g. an optimizer's state to resume
            from); tensors and plain containers only, so the file stays weights_only-readable.

    Raises:
        UsageError: A non-plain value in ``arch_kwargs``/``record``, bad ``class_names``, or
            the file cannot be written.
    """
    if not isinstance(arch, str) or not arch.strip():
        raise UsageError(f"arch must be a non-empty string ({ARCH_FORMS}), got {arch!r}")
    checkpoint = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "arch": arch,
        "arch_kwargs": dict(_plain(dict(arch_kwargs or {}), "arch_kwargs")),
        "state_dict": _cpu_state_dict(model),
        "preset": None if preset is None else get_preset(preset).to_dict(),
        "class_names": _check_class_names(class_names),
        "record": dict(_plain(dict(record or {}), "record")),
    }
    clashes = sorted(set(extra or {}) & set(checkpoint))
    if clashes:
        raise UsageError(f"extra entries may not replace the checkpoint's own: {', '.join(clashes)}")
    checkpoint.update({key: _plain(value, f"extra[{key!r}]", tensors=True) for key, value in (extra or {}).items()})
    _atomic_save(checkpoint, Path(path))


def _cpu_state_dict(model: nn.Module) -> OrderedDict[str, Any]:
    if not isinstance(model, nn.Module):
        raise UsageError(f"save_checkpoint needs a torch.nn.Module, got {type(model).__name__}")
    inner = getattr(model, "_orig_mod", model)
    if isinstance(inner, nn.DataParallel | nn.parallel.DistributedDataParallel):
        inner = inner.module
    out: OrderedDict[str, Any] = OrderedDict()
    for key, value in inner.state_dict().items():
        if isinstance(value, torch.Tensor):
            out[key] = value.detach().cpu().clone()
        else:
            out[key] = _plain(value, f"state_dict[{key!r}]")
    return out


def _check_class_names(names: Sequence[str] | None) -> list[str] | None:
    if names is None:
        return None
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise UsageError("class_names must be a list of strings")
    return list(names)


_SCALARS = (bool, int, float, str)


def is_plain(value: Any) -> bool:
    """Exactly the types ``torch.load(weights_only=True)`` reads back (no subclasses)."""
    if value is None or type(value) in _SCALARS:
        return True
    if type(value) in (list, tuple):
        return all(is_plain(v) for v in value)
    if type(value) in (dict, OrderedDict):
        return all(type(k) is str and is_plain(v) for k, v in value.items())
    return False


def _plain(value: Any, where: str, *, tensors: bool = False) -> Any:
    """Return ``value`` if it holds only plain types (and tensors, int keys when ``tensors``), which
    ``torch.load(weights_only=True)`` reads back; otherwise name the first offender."""
    if value is None or type(value) in _SCALARS or (tensors and isinstance(value, torch.Tensor)):
        return value
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            _plain(item, f"{where}[{i}]", tensors=tensors)
        return value
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) is not str and not (tensors and type(key) is int):
                raise UsageError(f"{where} has a key {key!r} of type {type(key).__name__}; use str keys")
            _plain(item, f"{where}[{key!r}]", tensors=tensors)
        return value
    allowed = "tensors, None, bool, int, float, str" if tensors else "None, bool, int, float, str"
    raise UsageError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}; checkpoints store only {allowed} "
        "and lists/tuples/dicts of those (convert with float(), int() or .tolist())"
    )


def _atomic_save(checkpoint: dict[str, Any], path: Path) -> None:
    try:
        with atomic_file(path) as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise UsageError(f"cannot write checkpoint {str(path)!r}: {exc.strerror or exc}") from exc
