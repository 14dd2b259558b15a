"""Checkpoint formats and their safety rules.

:func:`load_model` reads, in this order of preference:

* attnviz's own format (a plain dict, see ``docs/ARCHITECTURE.md``);
* a bare ``state_dict`` or one wrapped under ``state_dict`` / ``model_state_dict`` /
  ``model`` / ``net`` (``module.`` and ``_orig_mod.`` prefixes are stripped), whose
  architecture is inferred from its keys and shapes or named by the caller;
* a TorchScript archive, only when the caller trusts the file;
* a whole pickled model (``torch.save(model)``), only when the caller trusts the file.

What is safe without trust (``trust=False``, no ``--trust-checkpoint``):

* The file's format is recognised from its bytes before anything is deserialised; a file that
  is not a PyTorch checkpoint (text, ONNX, safetensors, a plain pickle, ...) is called what it is.
* State dicts and attnviz's format are read with ``torch.load(weights_only=True)``, which
  cannot run code from the file on torch >= 2.6 (CVE-2025-32434: older torch is refused).
* Loading TorchScript runs code: ``torch.jit.load`` executes the archive's own compiled code
  (``__setstate__``, which can read and write files), so a TorchScript archive needs trust.
  Detection only lists the zip's entries (``constants.pkl``, as ``torch.load`` tests it).
* Architectures are built from attnviz's registry or timm/torchvision by name; code named in a
  file (``file.py:Class``, ``package.module:Class``) is imported only when the caller names it.
* Arguments stored in a file (``arch_kwargs``) may only be plain numbers, flags and short names:
  arguments that download or read files (``weights``, ``weights_backbone``, ``pretrained*``,
  ``checkpoint_path``, paths, URLs, dicts) need trust. The model is first built on the ``meta``
  device (shapes only, no memory) and compared with the state_dict: nothing larger than the
  file's own tensors is allocated, and a stored input size is bounded.

A state_dict that does not fit its architecture is never loaded partially: the error lists the
differing keys.
"""

import os
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import numpy as np
import torch
from torch import nn

from attnviz.io.build import build_for, check_stored_kwargs, classifier_outputs, names_code
from attnviz.io.inputs import CIFAR10_CLASSES, Preset, get_preset
from attnviz.io.safe_load import TRUST_HINT, load_torchscript, read_checkpoint
from attnviz.io.save import FORMAT, FORMAT_VERSION, is_plain
from attnviz.io.sniff import check_file, file_kind
from attnviz.models import get_spec, list_architectures
from attnviz.runtime.errors import CheckpointError, UnsafeCheckpointError, UsageError
from attnviz.runtime.model import parse_device

__all__ = ["LoadedModel", "load_model", "settle_class_names"]

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
_STRIPPED_PREFIXES = ("module.", "_orig_mod.")
_MAX_STORED_SIDE = 4096  # pixels per side of a stored input preset without trust


@dataclass
class LoadedModel:
    """A model ready to run, with what the checkpoint says about it.

    Attributes:
        model: The model, in eval mode, on the requested device.
        arch: Registry name, ``"timm:NAME"``, ``"torchvision:NAME"``, ``"path/file.py:Class"``,
            ``"pkg.mod:Class"``, ``"torchscript"`` or ``"pickled:<module.Class>"``.
        arch_kwargs: Keyword arguments the model was built with.
        preset: Input preset from the checkpoint, else the zoo architecture's, else None.
        class_names: Class names stored in the checkpoint, if any.
        record: Training record (attnviz format) or the plain scalars stored beside a
            wrapped state_dict (``epoch``, ``best_acc``, ...).
        source: The file it was read from.
        format: ``"attnviz"``, ``"state_dict"``, ``"torchscript"`` or ``"pickled-model"``.
        class_names_source: Where ``class_names`` come from: ``"checkpoint"``, ``"given"`` (by the
            caller), ``"assumed: CIFAR-10"`` (none stored; see :func:`settle_class_names`) or
            ``"indices"`` (none: classes are shown by index).
    """

    model: nn.Module
    arch: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    preset: Preset | None = None
    class_names: list[str] | None = None
    record: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    format: str = "state_dict"
    class_names_source: str = ""

    def __post_init__(self) -> None:
        if not self.class_names_source:
            self.class_names_source = "checkpoint" if self.class_names else "indices"

    def __repr__(self) -> str:
        """One line: architecture, file name, format, parameters, device, preset and classes."""
        parameters = list(self.model.parameters())
        device = str(parameters[0].device) if parameters else "no parameters"
        preset = getattr(self.preset, "name", None) or "no preset"
        if self.class_names:
            classes = f"{len(self.class_names)} classes ({self.class_names_source})"
        else:
            classes = "classes by index"
        arch = self.arch if len(self.arch) <= 60 else "..." + self.arch[-57:]  # a long path to the user's code
        return (
            f"LoadedModel({arch!r} from {os.path.basename(self.source) or '?'!r}, {self.format}, "
            f"{sum(p.numel() for p in parameters):,} parameters, {device}, preset {preset}, {classes})"
        )


def load_model(
    path: str | os.PathLike[str],
    arch: str | None = None,
    trust: bool = False,
    device: str | torch.device = "cpu",
    arch_args: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """Load a checkpoint of any supported format into an eval-mode model.

    Args:
        path: The checkpoint file.
        arch: Architecture of a state_dict: a registry name, ``timm:NAME``,
            ``torchvision:NAME``, ``path/to/file.py:Class`` or ``package.module:Class``.
            ``None`` infers a zoo architecture from the keys and shapes.
        trust: Allow what runs code from the file: unpickling arbitrary Python objects (whole
            pickled models), loading TorchScript, stored ``arch_kwargs`` beyond plain numbers and
            names. Only for files whose source you trust.
        device: Where to put the model.
        arch_args: Keyword arguments for the architecture's constructor or factory (for example
            ``{"network_type": "ImageNet", "depth": 18, "num_classes": 1000, "att_type": "CBAM"}``),
            merged over the ones stored in the checkpoint; yours win. They are yours, so they are
            not held to the rules for stored arguments.

    Raises:
        CheckpointError: Missing, empty or unreadable file, or no model in it.
        UnsafeCheckpointError: ``trust`` is False and the file needs arbitrary unpickling, is
            TorchScript, stores arguments that could read files or download, or torch is < 2.6.
        ArchitectureError: The architecture cannot be built or the weights do not fit it.
        UsageError: Unknown or unavailable device.
    """
    source = str(path)
    explicit = _explicit_arguments(arch_args)
    target = parse_device(device, flag="device")
    check_file(source)
    if file_kind(source) == "torchscript":
        if not trust:
            raise UnsafeCheckpointError(
                f"{source!r} is a TorchScript archive, and loading one runs code stored in it (which can read "
                f"and write files); {TRUST_HINT}"
            )
        if explicit:
            warnings.warn(f"{source}: TorchScript archives carry their own code; arch_args are ignored", stacklevel=2)
        if arch is not None:
            warnings.warn(
                f"{source}: TorchScript archives carry their own code; arch={arch!r} is ignored", stacklevel=2
            )
        loaded = _load_torchscript(source)
    else:
        loaded = _from_object(read_checkpoint(source, trust), source, arch, trust, explicit)
    loaded.model.to(target).eval()
    return loaded


def settle_class_names(
    loaded: LoadedModel, given: Sequence[str] | None = None, preset: str | None = None
) -> list[str] | None:
    """The class names to show for ``loaded``'s outputs, recorded in ``loaded.class_names`` and
    ``loaded.class_names_source``: ``given`` ones, else the checkpoint's, else CIFAR-10's when the
    model takes CIFAR-10 input (``preset``, default the checkpoint's) and has 10 outputs (with a
    warning that says so), else none (classes shown by index)."""
    if given is not None:
        loaded.class_names, loaded.class_names_source = list(given), "given"
    elif loaded.class_names:
        loaded.class_names_source = "checkpoint"
    elif (preset or getattr(loaded.preset, "name", None)) == "cifar10" and _outputs(loaded) == len(CIFAR10_CLASSES):
        warnings.warn(
            f"no class names stored in {loaded.source or 'the model'}; using CIFAR-10's "
            f"({', '.join(CIFAR10_CLASSES[:4])}, ...); pass --classes FILE (class_names= in Python) to name them",
            stacklevel=2,
        )
        loaded.class_names, loaded.class_names_source = list(CIFAR10_CLASSES), "assumed: CIFAR-10"
    else:
        loaded.class_names_source = "indices"
    return list(loaded.class_names) if loaded.class_names else None


def _outputs(loaded: LoadedModel) -> int | None:
    stored = loaded.arch_kwargs.get("num_classes")
    return stored if isinstance(stored, int) else classifier_outputs(loaded.model)


def _explicit_arguments(arch_args: Mapping[str, Any] | None) -> dict[str, Any]:
    if arch_args is None:
        return {}
    if not isinstance(arch_args, Mapping):
        raise UsageError(f"arch_args must be a dict of keyword arguments, got a {type(arch_args).__name__}")
    bad = [repr(key) for key in arch_args if not isinstance(key, str) or not key.isidentifier()]
    if bad:
        raise UsageError(f"arch_args must name keyword arguments; {', '.join(bad)} cannot be one")
    return dict(arch_args)


def _load_torchscript(source: str) -> LoadedModel:
    return LoadedModel(model=load_torchscript(source), arch="torchscript", source=source, format="torchscript")


# ----------------------------------------------------------------------------- interpreting


def _from_object(obj: Any, source: str, arch: str | None, trust: bool, explicit: dict[str, Any]) -> LoadedModel:
    if isinstance(obj, nn.Module):
        return _pickled(obj, source, {}, explicit)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        return _from_attnviz(obj, source, arch, trust, explicit)
    found, extras = _find_state_dict(obj, source)
    if isinstance(found, nn.Module):
        return _pickled(found, source, extras, explicit)
    model, name, kwargs = build_for(found, arch, None, source, explicit=explicit)
    preset = _zoo_preset(name)
    return LoadedModel(model, name, kwargs, preset, None, extras, source, "state_dict")


def _from_attnviz(
    ckpt: Mapping[str, Any], source: str, arch: str | None, trust: bool, explicit: dict[str, Any]
) -> LoadedModel:
    version = ckpt.get("version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{source!r} is attnviz format version {version!r}; this attnviz reads version {FORMAT_VERSION}"
        )
    stored = ckpt.get("arch")
    state_dict = ckpt.get("state_dict")
    if not isinstance(stored, str) or not _is_state_dict(state_dict):
        raise CheckpointError(f"{source!r} is an incomplete attnviz checkpoint (no arch or no state_dict)")
    stored_kwargs = ckpt.get("arch_kwargs") or {}
    if not isinstance(stored_kwargs, Mapping):
        raise CheckpointError(f"{source!r} has arch_kwargs of type {type(stored_kwargs).__name__}; expected a dict")
    kwargs: dict[str, Any] | None = dict(stored_kwargs)
    if arch is None:
        if names_code(stored) and not trust:
            raise UnsafeCheckpointError(
                f"{source!r} names code to import as its architecture ({stored}); pass arch={stored!r} "
                f"(--arch) yourself if you trust that code, or {TRUST_HINT}"
            )
        arch = stored
    if arch != stored or not kwargs:
        kwargs = None  # the caller's architecture, or none stored: infer the kwargs from the weights
    untrusted = kwargs is not None and not trust
    if untrusted and kwargs is not None:  # the caller's own arguments replace stored ones unchecked
        check_stored_kwargs({k: v for k, v in kwargs.items() if k not in explicit}, arch, source)
    model, name, kwargs = build_for(
        _strip_prefixes(state_dict), arch, kwargs, source, untrusted=untrusted, explicit=explicit
    )
    preset = _stored_preset(ckpt.get("preset"), source, trust) or _zoo_preset(name)
    names = ckpt.get("class_names")
    if names is not None and (not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names)):
        raise CheckpointError(f"{source!r} has class_names that are not a list of strings")
    record = ckpt.get("record") or {}
    return LoadedModel(model, name, kwargs, preset, list(names) if names else None, _to_python(record), source, FORMAT)


def _pickled(model: nn.Module, source: str, extras: dict[str, Any], explicit: dict[str, Any]) -> LoadedModel:
    if explicit:
        warnings.warn(f"{source}: a whole pickled model is already built; arch_args are ignored", stacklevel=4)
    cls = type(model)
    arch = f"pickled:{cls.__module__}.{cls.__qualname__}"
    return LoadedModel(model, arch, {}, None, None, extras, source, "pickled-model")


def _find_state_dict(obj: Any, source: str) -> tuple[Any, dict[str, Any]]:
    """The state_dict (or a trusted pickled module) in ``obj`` and the plain extras beside it."""
    if _is_state_dict(obj):
        return _strip_prefixes(obj), {}
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            value = obj.get(key)
            if _is_state_dict(value) or isinstance(value, nn.Module):
                extras = _plain_extras({k: v for k, v in obj.items() if k != key})
                return (value if isinstance(value, nn.Module) else _strip_prefixes(value)), extras
        keys = ", ".join(map(str, list(obj)[:8])) + (", ..." if len(obj) > 8 else "")
        raise CheckpointError(
            f"{source!r} holds no state_dict: top-level keys are {keys or '(none)'}; expected tensors "
            f"or one of {', '.join(_WRAPPER_KEYS)}"
        )
    raise CheckpointError(f"{source!r} holds a {type(obj).__name__}, not a state_dict or model")


def _is_state_dict(value: Any) -> TypeGuard[Mapping[str, Any]]:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) for k in value)
        and all(isinstance(v, torch.Tensor) or k.endswith("_extra_state") for k, v in value.items())
    )


def _strip_prefixes(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    """Remove ``module.`` (DataParallel) and ``_orig_mod.`` (torch.compile) shared by every key."""
    result = state_dict
    changed = True
    while changed:
        changed = False
        for prefix in _STRIPPED_PREFIXES:
            if all(k.startswith(prefix) for k in result):
                result = _renamed(result, prefix)
                changed = True
    return result


def _renamed(state_dict: Mapping[str, Any], prefix: str) -> OrderedDict[str, Any]:
    out: OrderedDict[str, Any] = OrderedDict((k[len(prefix) :], v) for k, v in state_dict.items())
    meta = getattr(state_dict, "_metadata", None)
    if isinstance(meta, Mapping):
        owner = prefix[:-1]
        out._metadata = {  # type: ignore[attr-defined]
            ("" if k == owner else k[len(prefix) :]): v for k, v in meta.items() if k == owner or k.startswith(prefix)
        }
    return out


def _plain_extras(items: Mapping[Any, Any]) -> dict[str, Any]:
    """Scalars and short numeric lists stored beside a state_dict (epoch, accuracy, ...)."""
    extras: dict[str, Any] = {}
    for key, value in items.items():
        value = _to_python(value)
        if isinstance(key, str) and is_plain(value) and not isinstance(value, dict):
            extras[key] = value
    return extras


def _to_python(value: Any) -> Any:
    """Tensors of one element and numpy scalars/arrays as Python numbers and lists."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _to_python(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_python(v) for v in value)
    return value


def _zoo_preset(name: str) -> Preset | None:
    if name not in list_architectures():
        return None
    return get_preset(get_spec(name).preset)


def _stored_preset(data: Any, source: str, trust: bool) -> Preset | None:
    if data is None:
        return None
    try:
        preset = Preset.from_dict(data)
    except UsageError as exc:
        raise CheckpointError(f"{source!r} has an invalid preset: {exc}") from exc
    height, width = preset.size
    if not trust and max(height, width) > _MAX_STORED_SIDE:
        gigabytes = 3 * 4 * height * width / 1e9
        raise UnsafeCheckpointError(
            f"{source!r} stores an input size of {height}x{width} pixels, more than {_MAX_STORED_SIDE} per side "
            f"({gigabytes:,.0f} GB per image as float32); {TRUST_HINT}"
        )
    return preset
