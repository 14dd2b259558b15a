"""Checkpoint formats and their safety rules.

:func:`load_model` reads, in this order of preference:

* attnviz's own format (a plain dict, see ``docs/ARCHITECTURE.md``);
* a bare ``state_dict`` or one wrapped under ``state_dict`` / ``model_state_dict`` /
  ``model`` / ``net`` (``module.`` and ``_orig_mod.`` prefixes are stripped), whose
  architecture is inferred from its keys and shapes or named by the caller;
* a TorchScript archive;
* a whole pickled model (``torch.save(model)``), only when the caller trusts the file.

Everything except the last is read with ``torch.load(weights_only=True)``, which cannot run
code from the file. A state_dict that does not fit its architecture is never loaded
partially: the error lists the differing keys.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import pickle
import re
import sys
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnviz._files import atomic_file
from attnviz.errors import ArchitectureError, CheckpointError, UnsafeCheckpointError, UsageError
from attnviz.inputs import Preset, get_preset
from attnviz.models import (
    StateDictDiff,
    build_model,
    compare_state_dict,
    get_spec,
    infer_architecture,
    list_architectures,
    nearest_architectures,
)

__all__ = ["FORMAT", "FORMAT_VERSION", "LoadedModel", "load_model", "save_checkpoint"]

FORMAT = "attnviz"
FORMAT_VERSION = 1

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
_STRIPPED_PREFIXES = ("module.", "_orig_mod.")
_ARCH_FORMS = "a registry name, timm:NAME, torchvision:NAME, path/to/file.py:Class or package.module:Class"
_TRUST_HINT = "pass --trust-checkpoint (CLI) / trust=True (API) only if you trust the file's source"


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
    """

    model: nn.Module
    arch: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    preset: Preset | None = None
    class_names: list[str] | None = None
    record: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    format: str = "state_dict"


def load_model(
    path: str | os.PathLike[str],
    arch: str | None = None,
    trust: bool = False,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Load a checkpoint of any supported format into an eval-mode model.

    Args:
        path: The checkpoint file.
        arch: Architecture of a state_dict: a registry name, ``timm:NAME``,
            ``torchvision:NAME``, ``path/to/file.py:Class`` or ``package.module:Class``.
            ``None`` infers a zoo architecture from the keys and shapes.
        trust: Allow unpickling arbitrary Python objects (whole pickled models). Only for
            files whose source you trust: unpickling can run any code.
        device: Where to put the model.

    Raises:
        CheckpointError: Missing, empty or unreadable file, or no model in it.
        UnsafeCheckpointError: The file needs arbitrary unpickling and ``trust`` is False.
        ArchitectureError: The architecture cannot be built or the weights do not fit it.
        UsageError: Unknown or unavailable device.
    """
    source = str(path)
    target = _parse_device(device)
    _check_file(source)
    if _is_torchscript(source):
        if arch is not None:
            warnings.warn(
                f"{source}: TorchScript archives carry their own code; arch={arch!r} is ignored", stacklevel=2
            )
        loaded = _load_torchscript(source)
    else:
        loaded = _from_object(_read(source, trust), source, arch, trust)
    loaded.model.to(target).eval()
    return loaded


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
        raise UsageError(f"arch must be a non-empty string ({_ARCH_FORMS}), got {arch!r}")
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


# ----------------------------------------------------------------------------- reading


def _check_file(source: str) -> None:
    if not os.path.exists(source):
        raise CheckpointError(f"checkpoint {source!r} does not exist")
    if os.path.isdir(source):
        raise CheckpointError(f"checkpoint {source!r} is a directory, not a file")
    try:
        size = os.path.getsize(source)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {source!r}: {exc.strerror}") from None
    if size == 0:
        raise CheckpointError(f"checkpoint {source!r} is empty (0 bytes)")


def _is_torchscript(source: str) -> bool:
    """TorchScript archives are zips holding ``constants.pkl`` and ``code/``."""
    try:
        with zipfile.ZipFile(source) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in names) and any(
        "/code/" in n or n.startswith("code/") for n in names
    )


def _load_torchscript(source: str) -> LoadedModel:
    try:
        model = torch.jit.load(source, map_location="cpu")
    except (RuntimeError, ValueError, OSError) as exc:
        raise CheckpointError(f"cannot load TorchScript archive {source!r}: {_first_line(exc)}") from exc
    return LoadedModel(model=model, arch="torchscript", source=source, format="torchscript")


def _read(source: str, trust: bool) -> Any:
    """``torch.load`` with ``weights_only=True``; full unpickling only when trusted."""
    try:
        with _numpy_globals():
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise CheckpointError(f"{source!r} is not a readable PyTorch checkpoint: {_first_line(exc)}") from exc
        if not trust:
            raise UnsafeCheckpointError(_unsafe_message(source, exc)) from None
    except Exception as exc:  # noqa: BLE001 - any failure to parse an untrusted file means "unreadable"
        raise CheckpointError(f"{source!r} is not a readable PyTorch checkpoint: {_first_line(exc)}") from exc
    return _read_trusted(source)


def _read_trusted(source: str) -> Any:
    try:
        return torch.load(source, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as exc:
        raise CheckpointError(
            f"{source!r} pickles a class that cannot be imported here ({_first_line(exc)}); make its code "
            "importable, or save model.state_dict() and load it with --arch file.py:Class"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - trusted unpickling runs the file's own code
        raise CheckpointError(f"cannot unpickle {source!r}: {type(exc).__name__}: {_first_line(exc)}") from exc


def _unsafe_message(source: str, exc: Exception) -> str:
    names = _unsafe_globals(source, exc)
    if names:
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        what = f"would import and call {shown} while loading"
    else:
        what = f"needs unrestricted unpickling ({_first_line(exc)})"
    hint = "; or save model.state_dict() instead" if any(".nn." in n or "__main__" in n for n in names) else ""
    return f"{source!r} holds pickled Python objects: it {what}; {_TRUST_HINT}{hint}"


def _unsafe_globals(source: str, exc: Exception) -> list[str]:
    """The globals the pickle would import, read statically (never executed)."""
    try:
        with _numpy_globals():
            names = torch.serialization.get_unsafe_globals_in_checkpoint(source)
    except Exception:  # noqa: BLE001 - legacy (non-zip) files: the error text names the first one
        found = re.findall(r"GLOBAL ([\w.]+)", str(exc))
        names = [n if "." in n or not hasattr(builtins, n) else f"builtins.{n}" for n in found]
    return sorted(set(names), key=lambda n: (n.startswith("torch."), n))  # the file's own classes first


@contextlib.contextmanager
def _numpy_globals() -> Iterator[None]:
    """Allow numpy arrays and scalars (common in training records) for one ``torch.load``.

    They are data, not code: ``torch`` documents allowlisting exactly these for
    ``weights_only`` loads.
    """
    core = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    allowed: list[Any] = [np.ndarray, np.dtype]
    for name in ("_reconstruct", "scalar"):
        func = getattr(core, name)
        allowed += [func, (func, f"numpy.core.multiarray.{name}"), (func, f"numpy._core.multiarray.{name}")]
    allowed += [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"]
    with torch.serialization.safe_globals(allowed):
        yield


# ----------------------------------------------------------------------------- interpreting


def _from_object(obj: Any, source: str, arch: str | None, trust: bool) -> LoadedModel:
    if isinstance(obj, nn.Module):
        return _pickled(obj, source, {})
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        return _from_attnviz(obj, source, arch, trust)
    found, extras = _find_state_dict(obj, source)
    if isinstance(found, nn.Module):
        return _pickled(found, source, extras)
    model, name, kwargs = _build_for(found, arch, None, source)
    preset = _zoo_preset(name)
    return LoadedModel(model, name, kwargs, preset, None, extras, source, "state_dict")


def _from_attnviz(ckpt: Mapping[str, Any], source: str, arch: str | None, trust: bool) -> LoadedModel:
    version = ckpt.get("version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{source!r} is attnviz format version {version!r}; this attnviz reads version {FORMAT_VERSION}"
        )
    stored = ckpt.get("arch")
    state_dict = ckpt.get("state_dict")
    if not isinstance(stored, str) or not _is_state_dict(state_dict):
        raise CheckpointError(f"{source!r} is an incomplete attnviz checkpoint (no arch or no state_dict)")
    kwargs = dict(ckpt.get("arch_kwargs") or {})
    if arch is None:
        if _names_code(stored) and not trust:
            raise UnsafeCheckpointError(
                f"{source!r} names code to import as its architecture ({stored}); pass arch={stored!r} "
                f"(--arch) yourself if you trust that code, or {_TRUST_HINT}"
            )
        arch = stored
    if arch != stored or not kwargs:
        kwargs = None  # the caller's architecture, or none stored: infer the kwargs from the weights
    model, name, kwargs = _build_for(_strip_prefixes(state_dict), arch, kwargs, source)
    preset = _stored_preset(ckpt.get("preset"), source) or _zoo_preset(name)
    names = ckpt.get("class_names")
    record = ckpt.get("record") or {}
    return LoadedModel(model, name, kwargs, preset, list(names) if names else None, _to_python(record), source, FORMAT)


def _pickled(model: nn.Module, source: str, extras: dict[str, Any]) -> LoadedModel:
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


def _is_state_dict(value: Any) -> bool:
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
        if isinstance(key, str) and _is_plain(value) and not isinstance(value, dict):
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


# ----------------------------------------------------------------------------- building


def _build_for(
    state_dict: Mapping[str, Any], arch: str | None, kwargs: dict[str, Any] | None, source: str
) -> tuple[nn.Module, str, dict[str, Any]]:
    """Build the architecture, check that ``state_dict`` fits exactly, load it strictly."""
    if arch is None:
        try:
            name, kwargs = infer_architecture(state_dict)
        except ArchitectureError as exc:
            raise ArchitectureError(f"{source!r}: {exc}; name the architecture with --arch ({_ARCH_FORMS})") from exc
        model = build_model(name, **kwargs)
    else:
        model, name, kwargs = _build_named(arch, kwargs, state_dict, source)
    diff = compare_state_dict(model, state_dict)
    if not diff.ok:
        raise ArchitectureError(_mismatch_message(source, name, diff, state_dict))
    model.load_state_dict(state_dict, strict=True)
    return model, name, dict(kwargs)


def _build_named(
    arch: str, kwargs: dict[str, Any] | None, state_dict: Mapping[str, Any], source: str
) -> tuple[nn.Module, str, dict[str, Any]]:
    prefix, _, rest = arch.partition(":")
    if prefix == "timm" and rest:
        return _build_library(arch, _timm_factory(rest), kwargs, state_dict)
    if prefix == "torchvision" and rest:
        return _build_library(arch, _torchvision_factory(rest), kwargs, state_dict)
    if ":" in arch:
        return _build_library(arch, _user_factory(arch), kwargs, state_dict)
    return _build_zoo(arch, kwargs, state_dict, source)


def _build_zoo(
    name: str, kwargs: dict[str, Any] | None, state_dict: Mapping[str, Any], source: str
) -> tuple[nn.Module, str, dict[str, Any]]:
    if name not in list_architectures():
        raise ArchitectureError(
            f"unknown architecture {name!r}; use {_ARCH_FORMS} (registry: {', '.join(list_architectures())})"
        )
    if kwargs is None:
        spec = get_spec(name)
        kwargs = (spec.infer_kwargs(state_dict) if spec.infer_kwargs else None) or {}
    kwargs = {k: v for k, v in kwargs.items() if k != "weights"}  # the state_dict replaces pretrained weights
    return build_model(name, **kwargs), name, kwargs


def _build_library(
    arch: str, factory: Any, kwargs: dict[str, Any] | None, state_dict: Mapping[str, Any]
) -> tuple[nn.Module, str, dict[str, Any]]:
    """Build with ``factory(**kwargs)``; if kwargs are unknown, fit ``num_classes`` to the weights."""
    if kwargs is not None:
        return _call(arch, factory, kwargs), arch, kwargs
    probe = _probe(factory)
    model = probe if probe is not None else _call(arch, factory, {})
    num_classes = _stored_num_classes(model, state_dict)
    if num_classes is not None and _accepts(factory, "num_classes"):
        kwargs = {"num_classes": num_classes}
        return _call(arch, factory, kwargs), arch, kwargs
    return (model if probe is None else _call(arch, factory, {})), arch, {}


def _probe(factory: Any) -> nn.Module | None:
    """The default model built on the ``meta`` device (shapes only, no memory), if it builds there."""
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = factory()
    except Exception:  # noqa: BLE001 - code that cannot run on meta is built for real instead
        return None
    return model if isinstance(model, nn.Module) else None


def _call(arch: str, factory: Any, kwargs: Mapping[str, Any]) -> nn.Module:
    try:
        model = factory(**kwargs)
    except ArchitectureError:
        raise
    except Exception as exc:  # noqa: BLE001 - the named code's own failure, reported with its reason
        reason = f"{type(exc).__name__}: {_first_line(exc)}"
        raise ArchitectureError(f"cannot build {arch} with {dict(kwargs)}: {reason}") from exc
    if not isinstance(model, nn.Module):
        raise ArchitectureError(f"{arch} built a {type(model).__name__}, not a torch.nn.Module")
    return model


def _stored_num_classes(model: nn.Module, state_dict: Mapping[str, Any]) -> int | None:
    """Outputs of the classifier in ``state_dict`` when they differ from ``model``'s."""
    name, layer = _classifier(model)
    if layer is None:
        return None
    weight = state_dict.get(f"{name}.weight" if name else "weight")
    if not isinstance(weight, torch.Tensor) or weight.dim() < 1 or weight.shape[0] == layer.weight.shape[0]:
        return None
    return int(weight.shape[0])


def _classifier(model: nn.Module) -> tuple[str, nn.Module | None]:
    """The classifier layer: timm's ``get_classifier()``, else the last ``nn.Linear``."""
    getter = getattr(model, "get_classifier", None)
    head = getter() if callable(getter) else None
    found: tuple[str, nn.Module | None] = ("", None)
    for name, module in model.named_modules():
        if head is not None and module is head and isinstance(getattr(module, "weight", None), torch.Tensor):
            return name, module
        if isinstance(module, nn.Linear):
            found = (name, module)
    return found


def _accepts(factory: Any, parameter: str) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == parameter or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _timm_factory(name: str) -> Any:
    try:
        import timm
    except ImportError:
        raise ArchitectureError(f"timm:{name} needs the timm package (pip install timm)") from None
    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:5]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ArchitectureError(f"timm has no model {name!r}{hint}")

    def factory(**kwargs: Any) -> nn.Module:
        return timm.create_model(name, **{**kwargs, "pretrained": False})

    return factory


def _torchvision_factory(name: str) -> Any:
    import torchvision

    if name not in torchvision.models.list_models():
        raise ArchitectureError(f"torchvision has no model {name!r}")

    def factory(**kwargs: Any) -> nn.Module:
        return torchvision.models.get_model(name, **{**kwargs, "weights": None})

    return factory


def _user_factory(arch: str) -> Any:
    """``path/to/file.py:Class`` or ``package.module:Class``: code the caller named."""
    target, _, attr = arch.rpartition(":")
    if not target or not attr.isidentifier():
        raise ArchitectureError(f"cannot parse architecture {arch!r}; use {_ARCH_FORMS}")
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    module = _import_file(target) if is_file else _import_module(target)
    try:
        return getattr(module, attr)
    except AttributeError:
        found = sorted(
            n
            for n, v in vars(module).items()
            if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == module.__name__
        )
        raise ArchitectureError(
            f"{target} has no {attr!r}; nn.Module classes there: {', '.join(found) or 'none'}"
        ) from None


def _import_file(file: str) -> Any:
    path = Path(file).expanduser().resolve()
    if not path.is_file():
        raise ArchitectureError(f"architecture file {file!r} does not exist")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", path.stem)
    module_name = f"attnviz_user_{stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ArchitectureError(f"cannot import {file!r} as Python code")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # so dataclasses, pickling and inspect find it
    with _on_sys_path(str(path.parent)):
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's file failed; say why
            sys.modules.pop(module_name, None)
            raise ArchitectureError(f"importing {file!r} failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    return module


def _import_module(name: str) -> Any:
    with _on_sys_path(os.getcwd()):
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            raise ArchitectureError(f"cannot import module {name!r}: {_first_line(exc)}") from exc
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the named module failed; say why
            raise ArchitectureError(f"importing {name!r} failed: {type(exc).__name__}: {_first_line(exc)}") from exc


@contextlib.contextmanager
def _on_sys_path(folder: str) -> Iterator[None]:
    """Let the named code import its sibling modules, for the duration of the import only."""
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)


def _names_code(arch: str) -> bool:
    prefix = arch.partition(":")[0]
    return ":" in arch and prefix not in ("timm", "torchvision")


def _mismatch_message(source: str, arch: str, diff: StateDictDiff, state_dict: Mapping[str, Any]) -> str:
    parts = []
    for label, items in (
        ("missing", diff.missing),
        ("unexpected", diff.unexpected),
        ("wrong shape", [f"{k} (model {_shape(want)}, file {_shape(got)})" for k, want, got in diff.wrong_shape]),
    ):
        if items:
            shown = ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")
            parts.append(f"{len(items)} {label}: {shown}")
    try:
        ranked = nearest_architectures(state_dict, k=3)
    except ArchitectureError:
        ranked = []
    nearest = ", ".join(f"{n} ({score:.2f})" for n, score in ranked) or "none"
    best = ranked[0] if ranked else None
    message = f"{source!r} does not fit {arch}: {'; '.join(parts)}; nearest architectures: {nearest}"
    if best is not None and best[1] == 1.0 and best[0] != arch:
        message += f" ({best[0]} matches exactly: pass --arch {best[0]} or leave --arch out)"
    return message


def _shape(shape: Sequence[int] | None) -> str:
    return "not a tensor" if shape is None else "[" + ", ".join(map(str, shape)) + "]"


def _zoo_preset(name: str) -> Preset | None:
    if name not in list_architectures():
        return None
    return get_preset(get_spec(name).preset)


def _stored_preset(data: Any, source: str) -> Preset | None:
    if data is None:
        return None
    try:
        return Preset.from_dict(data)
    except UsageError as exc:
        raise CheckpointError(f"{source!r} has an invalid preset: {exc}") from exc


# ----------------------------------------------------------------------------- writing


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


def _is_plain(value: Any) -> bool:
    """Exactly the types ``torch.load(weights_only=True)`` reads back (no subclasses)."""
    if value is None or type(value) in _SCALARS:
        return True
    if type(value) in (list, tuple):
        return all(_is_plain(v) for v in value)
    if type(value) in (dict, OrderedDict):
        return all(type(k) is str and _is_plain(v) for k, v in value.items())
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


# ----------------------------------------------------------------------------- misc


def _parse_device(device: str | torch.device) -> torch.device:
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"unknown device {device!r}: {_first_line(exc)}") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    if target.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device {device!r} requested but MPS is not available; use device='cpu'")
    return target


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
