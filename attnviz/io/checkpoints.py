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

from __future__ import annotations

import builtins
import codecs
import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import io
import math
import os
import pickle
import pickletools
import re
import sys
import tarfile
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnviz.io.inputs import Preset, get_preset
from attnviz.models import (
    StateDictDiff,
    build_model,
    compare_state_dict,
    get_spec,
    infer_architecture,
    list_architectures,
    nearest_architectures,
)
from attnviz.runtime.errors import (
    ArchitectureError,
    CheckpointError,
    UnsafeCheckpointError,
    UsageError,
)
from attnviz.runtime.files import atomic_file

__all__ = ["FORMAT", "FORMAT_VERSION", "LoadedModel", "load_model", "save_checkpoint"]

FORMAT = "attnviz"
FORMAT_VERSION = 1

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
_STRIPPED_PREFIXES = ("module.", "_orig_mod.")
_ARCH_FORMS = "a registry name, timm:NAME, torchvision:NAME, path/to/file.py:Class or package.module:Class"
_TRUST_HINT = "pass --trust-checkpoint (CLI) / trust=True (API) only if you trust the file's source"
_WHAT_WE_READ = "attnviz reads PyTorch checkpoints: a state_dict, a whole model or TorchScript"
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of a (pre-1.6) torch.save file
_MAX_STORED_SIDE = 4096  # pixels per side of a stored input preset without trust
_MAX_UNSAVED_ELEMENTS = 1 << 26  # elements of buffers a stored architecture adds beyond the state_dict


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
        trust: Allow what runs code from the file: unpickling arbitrary Python objects (whole
            pickled models), loading TorchScript, stored ``arch_kwargs`` beyond plain numbers and
            names. Only for files whose source you trust.
        device: Where to put the model.

    Raises:
        CheckpointError: Missing, empty or unreadable file, or no model in it.
        UnsafeCheckpointError: ``trust`` is False and the file needs arbitrary unpickling, is
            TorchScript, stores arguments that could read files or download, or torch is < 2.6.
        ArchitectureError: The architecture cannot be built or the weights do not fit it.
        UsageError: Unknown or unavailable device.
    """
    source = str(path)
    target = _parse_device(device)
    _check_file(source)
    if _file_kind(source) == "torchscript":
        if not trust:
            raise UnsafeCheckpointError(
                f"{source!r} is a TorchScript archive, and loading one runs code stored in it (which can read "
                f"and write files); {_TRUST_HINT}"
            )
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


def _file_kind(source: str) -> str:
    """``"torchscript"``, ``"zip"``, ``"legacy"`` or ``"tar"``, read from the bytes without deserialising.

    Raises:
        CheckpointError: The file is not a PyTorch checkpoint; the message says what it looks like.
    """
    head = _head(source)
    names = _zip_names(source)
    if names is not None and _has_record(names, "constants.pkl"):
        return "torchscript"  # torch.load itself hands any zip with constants.pkl to torch.jit.load
    if head.startswith(b"PK\x03\x04") and (names is None or _has_record(names, "data.pkl")):
        return "zip"  # a damaged zip is left to torch.load, which says why it cannot read it
    if _starts_with_legacy_magic(head):
        return "legacy"
    if _is_legacy_tar(source):
        return "tar"
    what = _looks_like(head, source, names)
    raise CheckpointError(f"{source!r} is not a PyTorch checkpoint: it {what} ({_WHAT_WE_READ})")


def _head(source: str, size: int = 512) -> bytes:
    try:
        with open(source, "rb") as handle:
            return handle.read(size)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {source!r}: {exc.strerror or exc}") from None


def _zip_names(source: str) -> list[str] | None:
    """The entries of a zip archive (its central directory only), or None if it is not one."""
    try:
        with zipfile.ZipFile(source) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return None


def _has_record(names: Sequence[str], record: str) -> bool:
    """Whether the archive holds ``record`` in its top-level folder, as torch's zip reader names it."""
    return any(name == record or name.split("/", 1)[-1] == record for name in names)


def _starts_with_legacy_magic(head: bytes) -> bool:
    """Whether the first pickle is torch's magic number (read with ``pickletools``, never executed)."""
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(head)):
            if opcode.name in ("PROTO", "FRAME"):
                continue
            return isinstance(arg, int) and not isinstance(arg, bool) and arg == _LEGACY_MAGIC
    except (ValueError, EOFError, IndexError, UnicodeDecodeError):
        return False
    return False


def _is_legacy_tar(source: str) -> bool:
    """torch's oldest format: an uncompressed tar holding ``pickle``, ``tensors`` and ``storages``."""
    try:
        with tarfile.open(source, mode="r:") as archive:
            return "pickle" in archive.getnames()
    except (tarfile.TarError, OSError, ValueError, EOFError):
        return False


def _looks_like(head: bytes, source: str, zip_names: Sequence[str] | None) -> str:
    """What a file that is not a PyTorch checkpoint seems to be, as the end of "it ..."."""
    text = _as_text(head)
    onnx_binary = head[:1] + head[2:3] == b"\x08\x12"  # field 1 (ir_version), then field 2 (producer_name)
    if source.lower().endswith(".onnx") or (text or "").lstrip().startswith("ir_version") or onnx_binary:
        return "looks like an ONNX model"
    if zip_names is not None:
        shown = ", ".join(zip_names[:3]) + (", ..." if len(zip_names) > 3 else "")
        return f"is a zip archive without PyTorch's data.pkl (it holds {shown or 'nothing'})"
    if len(head) > 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "looks like a safetensors file (load it with safetensors and torch.save its state_dict)"
    signatures = {
        b"\x89HDF\r\n\x1a\n": "looks like an HDF5 file (Keras?)",
        b"\x93NUMPY": "looks like a NumPy array file",
        b"\x1f\x8b": "is gzip-compressed (decompress it first)",
    }
    for signature, what in signatures.items():
        if head.startswith(signature):
            return what
    if head[4:8] == b"PTMF":
        return "looks like a PyTorch Mobile (lite interpreter) model, which attnviz cannot read"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= pickle.HIGHEST_PROTOCOL:
        return "is a Python pickle not written by torch.save"
    if text is not None:
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        return f"is a text file (it starts with {first!r})"
    return f"is binary data of an unknown format (it starts with {head[:8].hex(' ')})"


def _as_text(head: bytes) -> str | None:
    """The file's first bytes as text, or None if they are not printable UTF-8."""
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a cut last character is fine
    except UnicodeDecodeError:
        return None
    return text if all(c.isprintable() or c in "\t\r\n" for c in text) else None


def _load_torchscript(source: str) -> LoadedModel:
    """``torch.jit.load``: runs the archive's code, so only ever called for a trusted file."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated")  # any category
            model = torch.jit.load(source, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - the archive's own code failed; say why in one line
        raise CheckpointError(f"cannot load TorchScript archive {source!r}: {_first_line(exc)}") from exc
    return LoadedModel(model=model, arch="torchscript", source=source, format="torchscript")


def _read(source: str, trust: bool) -> Any:
    """``torch.load`` with ``weights_only=True``; full unpickling only when trusted."""
    if not trust:
        _require_safe_torch(source)
    try:
        with _numpy_globals():
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise CheckpointError(f"{source!r} is not a readable PyTorch checkpoint: {_first_line(exc)}") from exc
        if not trust:
            names = _unsafe_globals(source, exc)
            if not names:  # no class or function to import: the pickle itself is broken
                raise CheckpointError(
                    f"{source!r} is not a readable PyTorch checkpoint: {_weights_only_reason(exc)}"
                ) from None
            raise UnsafeCheckpointError(_unsafe_message(source, names)) from None
    except Exception as exc:  # noqa: BLE001 - any failure to parse an untrusted file means "unreadable"
        raise CheckpointError(f"{source!r} is not a readable PyTorch checkpoint: {_first_line(exc)}") from exc
    return _read_trusted(source)


def _require_safe_torch(source: str) -> None:
    """torch < 2.6 can run code from a crafted file even with ``weights_only=True``."""
    from torch.torch_version import TorchVersion

    version = str(torch.__version__)
    try:
        old = TorchVersion(version) < (2, 6)
    except Exception:  # noqa: BLE001 - an unparsable version string: assume a development build
        old = False
    if old:
        raise UnsafeCheckpointError(
            f"cannot read {source!r} safely with torch {version}: its weights_only loader can run code from a "
            f"crafted file (CVE-2025-32434); install torch>=2.6, or {_TRUST_HINT}"
        )


def _read_trusted(source: str) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*TorchScript archive", category=UserWarning)
            return torch.load(source, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as exc:
        raise CheckpointError(
            f"{source!r} pickles a class that cannot be imported here ({_first_line(exc)}); make its code "
            "importable, or save model.state_dict() and load it with --arch file.py:Class"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - trusted unpickling runs the file's own code
        raise CheckpointError(f"cannot unpickle {source!r}: {type(exc).__name__}: {_first_line(exc)}") from exc


def _weights_only_reason(exc: Exception) -> str:
    """The unpickler's own complaint inside torch's long weights_only message."""
    found = re.search(r"WeightsUnpickler error:\s*(.*)", str(exc), re.S)
    lines = [line.strip() for line in (found.group(1) if found else "").splitlines() if line.strip()]
    return lines[0] if lines else _first_line(exc)


def _unsafe_message(source: str, names: Sequence[str]) -> str:
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    hint = "; or save model.state_dict() instead" if any(".nn." in n or "__main__" in n for n in names) else ""
    what = f"it would import and call {shown} while loading"
    return f"{source!r} holds pickled Python objects: {what}; {_TRUST_HINT}{hint}"


def _unsafe_globals(source: str, exc: Exception) -> list[str]:
    """The globals the pickle would import, read statically (never executed)."""
    try:
        with _numpy_globals():
            names = torch.serialization.get_unsafe_globals_in_checkpoint(source)
    except Exception:  # noqa: BLE001 - legacy (non-zip) files: the error text names the first one
        found = re.findall(r"GLOBAL ([\w.]+)", str(exc)) + _legacy_globals(source)
        names = [n if "." in n or not hasattr(builtins, n) else f"builtins.{n}" for n in found]
    return sorted(set(names), key=lambda n: (n.startswith("torch."), n))  # the file's own classes first


def _legacy_globals(source: str) -> list[str]:
    """The globals a legacy file's pickles name (``GLOBAL``, or ``STACK_GLOBAL`` after two strings),
    read with ``pickletools``, never executed; as far as the pickles can be parsed."""
    names: list[str] = []
    try:
        with open(source, "rb") as handle:
            for _ in range(4):  # magic number, protocol version, system info, the saved object
                names += _pickle_globals(pickletools.genops(handle))
    except Exception:  # noqa: BLE001 - a damaged pickle: what was read so far
        pass
    return names


def _pickle_globals(ops: Iterator[tuple[Any, Any, Any]]) -> list[str]:
    names: list[str] = []
    pushed: list[Any] = []  # what each op pushed (strings only; memo lookups resolved)
    memo: dict[int, Any] = {}
    for opcode, arg, _ in ops:
        name = opcode.name
        if name == "GLOBAL" and isinstance(arg, str):
            names.append(arg.replace(" ", "."))
        elif name == "STACK_GLOBAL" and len(pushed) >= 2 and all(isinstance(v, str) for v in pushed[-2:]):
            names.append(f"{pushed[-2]}.{pushed[-1]}")
        if name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = pushed[-1] if pushed else None
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(int(arg)))
        elif name not in ("PROTO", "FRAME", "STOP"):
            pushed.append(arg if isinstance(arg, str) else None)
    return names


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
    stored_kwargs = ckpt.get("arch_kwargs") or {}
    if not isinstance(stored_kwargs, Mapping):
        raise CheckpointError(f"{source!r} has arch_kwargs of type {type(stored_kwargs).__name__}; expected a dict")
    kwargs: dict[str, Any] | None = dict(stored_kwargs)
    if arch is None:
        if _names_code(stored) and not trust:
            raise UnsafeCheckpointError(
                f"{source!r} names code to import as its architecture ({stored}); pass arch={stored!r} "
                f"(--arch) yourself if you trust that code, or {_TRUST_HINT}"
            )
        arch = stored
    if arch != stored or not kwargs:
        kwargs = None  # the caller's architecture, or none stored: infer the kwargs from the weights
    untrusted = kwargs is not None and not trust
    if untrusted:
        _check_stored_kwargs(kwargs, arch, source)
    model, name, kwargs = _build_for(_strip_prefixes(state_dict), arch, kwargs, source, untrusted=untrusted)
    preset = _stored_preset(ckpt.get("preset"), source, trust) or _zoo_preset(name)
    names = ckpt.get("class_names")
    if names is not None and (not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names)):
        raise CheckpointError(f"{source!r} has class_names that are not a list of strings")
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


@dataclass(frozen=True)
class _Recipe:
    """How to build an architecture: the registry's ``build_model`` or ``factory(**kwargs)``."""

    arch: str
    factory: Callable[..., Any]
    kwargs: dict[str, Any]
    zoo: bool = False

    def build(self) -> nn.Module:
        """The model with random weights; failures as :class:`ArchitectureError`."""
        return build_model(self.arch, **self.kwargs) if self.zoo else _call(self.arch, self.factory, self.kwargs)

    def shell(self) -> Any:
        """The model on the ``meta`` device (shapes only, no memory); the factory's own exceptions."""
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            return build_model(self.arch, **self.kwargs) if self.zoo else self.factory(**self.kwargs)


def _build_for(
    state_dict: Mapping[str, Any],
    arch: str | None,
    kwargs: dict[str, Any] | None,
    source: str,
    *,
    untrusted: bool = False,
) -> tuple[nn.Module, str, dict[str, Any]]:
    """Build the architecture, check that ``state_dict`` fits exactly, load it strictly.

    The shapes are compared on the ``meta`` device first, so that arguments stored in the file
    (``untrusted``) cannot allocate more than the state_dict's own tensors.
    """
    if arch is None:
        try:
            name, kwargs = infer_architecture(state_dict)
        except ArchitectureError as exc:
            raise ArchitectureError(f"{source!r}: {exc}; name the architecture with --arch ({_ARCH_FORMS})") from exc
        recipe = _Recipe(name, get_spec(name).factory, dict(kwargs), zoo=True)
    else:
        recipe = _recipe(arch, kwargs, state_dict)
    _check_on_meta(recipe, state_dict, source, untrusted)
    model = recipe.build()
    diff = compare_state_dict(model, state_dict)
    if not diff.ok:
        raise ArchitectureError(_mismatch_message(source, recipe.arch, diff, state_dict))
    model.load_state_dict(state_dict, strict=True)
    return model, recipe.arch, dict(recipe.kwargs)


def _check_on_meta(recipe: _Recipe, state_dict: Mapping[str, Any], source: str, untrusted: bool) -> None:
    """Compare the architecture's shapes with ``state_dict`` before anything is allocated."""
    try:
        shell = recipe.shell()
    except ArchitectureError:
        raise
    except Exception as exc:  # noqa: BLE001 - code that cannot run on meta
        if untrusted:
            raise UnsafeCheckpointError(
                f"{source!r}: {recipe.arch} with its stored arch_kwargs {recipe.kwargs} cannot be checked against "
                f"the weights before it is allocated ({type(exc).__name__}: {_first_line(exc)}); {_TRUST_HINT}"
            ) from exc
        return  # trusted or inferred arguments: built for real, then compared
    if not isinstance(shell, nn.Module):
        return  # the real build says what it built instead
    diff = compare_state_dict(shell, state_dict)
    if not diff.ok:
        raise ArchitectureError(_mismatch_message(source, recipe.arch, diff, state_dict))
    saved = set(shell.state_dict())
    unsaved = sum(buffer.numel() for name, buffer in shell.named_buffers() if name not in saved)
    if untrusted and unsaved > _MAX_UNSAVED_ELEMENTS:
        raise UnsafeCheckpointError(
            f"{source!r}: {recipe.arch} with its stored arch_kwargs {recipe.kwargs} would allocate {unsaved:,} "
            f"elements of buffers that are not in the file; {_TRUST_HINT}"
        )


_FETCHING_WORDS = frozenset(
    {"weights", "pretrained", "checkpoint", "file", "files", "path", "url", "dir", "hub", "hf", "cache", "download",
     "root", "home"}
)
_SHORT_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]{0,63}|")


def _check_stored_kwargs(kwargs: Mapping[str, Any], arch: str, source: str) -> None:
    """Stored arguments of an untrusted file: plain numbers, flags and short names only.

    Arguments named like weights, paths, URLs, caches or checkpoints (``weights_backbone``,
    ``pretrained_cfg_overlay``, ``checkpoint_path``, ...) could download or read files while the model
    is built, and dicts or path-like strings could smuggle them in.
    """
    for key, value in kwargs.items():
        if key == "weights" and arch in list_architectures():
            continue  # the registry's models ignore it: the state_dict replaces pretrained weights
        words = str(key).lower().split("_")
        if not isinstance(key, str) or not key.isidentifier():
            reason = "which is not a keyword argument"
        elif words[0] in _FETCHING_WORDS or words[-1] in _FETCHING_WORDS:
            reason = "which could download or read files while the model is built"
        elif not _plain_hyperparameter(value):
            reason = "which is not a plain number, flag or short name"
        else:
            continue
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise UnsafeCheckpointError(
            f"{source!r} stores arch_kwargs {key}={shown}, {reason}; attnviz builds a model from an untrusted "
            f"file's plain numbers, flags and short names only; {_TRUST_HINT}"
        )


def _plain_hyperparameter(value: Any, depth: int = 0) -> bool:
    if value is None or isinstance(value, bool | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return _SHORT_NAME.fullmatch(value) is not None and ".." not in value
    if isinstance(value, list | tuple) and depth < 2 and len(value) <= 64:
        return all(_plain_hyperparameter(item, depth + 1) for item in value)
    return False


def _recipe(arch: str, kwargs: dict[str, Any] | None, state_dict: Mapping[str, Any]) -> _Recipe:
    prefix, _, rest = arch.partition(":")
    if prefix == "timm" and rest:
        return _library_recipe(arch, _timm_factory(rest), kwargs, state_dict)
    if prefix == "torchvision" and rest:
        return _library_recipe(arch, _torchvision_factory(rest), kwargs, state_dict)
    if ":" in arch:
        return _library_recipe(arch, _user_factory(arch), kwargs, state_dict)
    return _zoo_recipe(arch, kwargs, state_dict)


def _zoo_recipe(name: str, kwargs: dict[str, Any] | None, state_dict: Mapping[str, Any]) -> _Recipe:
    if name not in list_architectures():
        raise ArchitectureError(
            f"unknown architecture {name!r}; use {_ARCH_FORMS} (registry: {', '.join(list_architectures())})"
        )
    spec = get_spec(name)
    if kwargs is None:
        kwargs = (spec.infer_kwargs(state_dict) if spec.infer_kwargs else None) or {}
    kwargs = {k: v for k, v in kwargs.items() if k != "weights"}  # the state_dict replaces pretrained weights
    return _Recipe(name, spec.factory, kwargs, zoo=True)


def _library_recipe(
    arch: str, factory: Any, kwargs: dict[str, Any] | None, state_dict: Mapping[str, Any]
) -> _Recipe:
    """``factory(**kwargs)``; if kwargs are unknown, fit ``num_classes`` to the weights."""
    if kwargs is not None:
        return _Recipe(arch, factory, dict(kwargs))
    probe = _probe(factory)
    model = probe if probe is not None else _call(arch, factory, {})
    num_classes = _stored_num_classes(model, state_dict)
    if num_classes is not None and _accepts(factory, "num_classes"):
        return _Recipe(arch, factory, {"num_classes": num_classes})
    return _Recipe(arch, factory, {})


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
            f"({gigabytes:,.0f} GB per image as float32); {_TRUST_HINT}"
        )
    return preset


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
