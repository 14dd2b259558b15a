"""Reading a checkpoint's objects safely: the one wrapped ``torch.load``.

:func:`read_checkpoint` uses ``torch.load(weights_only=True)`` (numpy scalars and arrays
allowed), which cannot run code from the file on torch >= 2.6; a file that would import
globals is refused with their names (read statically, never executed), unless the caller
trusts it. :func:`load_torchscript` runs the archive's own code, so only ever for a trusted file.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import os
import pickle
import pickletools
import re
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from attnviz.runtime.errors import CheckpointError, UnsafeCheckpointError, describe, first_line

__all__ = ["TRUST_HINT", "load_torchscript", "read_checkpoint"]

TRUST_HINT = "pass --trust-checkpoint (CLI) / trust=True (API) only if you trust the file's source"


def load_torchscript(source: str) -> Any:
    """``torch.jit.load`` on the CPU: runs the archive's code, so only ever called for a trusted file.

    Raises:
        CheckpointError: The archive cannot be loaded (its own code failed, or it is damaged).
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated")  # any category
            model = torch.jit.load(source, map_location="cpu")
    except Exception as exc:  # the archive's own code failed; say why in one line
        raise CheckpointError(f"cannot load TorchScript archive {source!r}: {first_line(exc)}") from exc
    return model


def read_checkpoint(source: str | os.PathLike[str], trust: bool = False) -> Any:
    """The objects in a ``torch.save`` file, on the CPU.

    ``torch.load(weights_only=True)`` first; full unpickling only when ``trust`` is True.

    Raises:
        CheckpointError: The file cannot be parsed.
        UnsafeCheckpointError: ``trust`` is False and the file would import globals, or torch is < 2.6.
    """
    source = str(source)
    if not trust:
        _require_safe_torch(source)
    try:
        with _numpy_globals():
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise CheckpointError(f"{source!r} is not a readable PyTorch checkpoint: {first_line(exc)}") from exc
        if not trust:
            names = _unsafe_globals(source, exc)
            if not names:  # no class or function to import: the pickle itself is broken
                raise CheckpointError(
                    f"{source!r} is not a readable PyTorch checkpoint: {_weights_only_reason(exc)}"
                ) from None
            raise UnsafeCheckpointError(_unsafe_message(source, names)) from None
    except Exception as exc:  # any failure to parse an untrusted file means "unreadable"
        raise CheckpointError(f"{source!r} is not a readable PyTorch checkpoint: {first_line(exc)}") from exc
    return _read_trusted(source)


def _require_safe_torch(source: str) -> None:
    """torch < 2.6 can run code from a crafted file even with ``weights_only=True``."""
    from torch.torch_version import TorchVersion

    version = str(torch.__version__)
    try:
        old = TorchVersion(version) < (2, 6)  # type: ignore[operator]  # TorchVersion compares with tuples
    except Exception:  # noqa: BLE001 - an unparsable version string: assume a development build
        old = False
    if old:
        raise UnsafeCheckpointError(
            f"cannot read {source!r} safely with torch {version}: its weights_only loader can run code from a "
            f"crafted file (CVE-2025-32434); install torch>=2.6, or {TRUST_HINT}"
        )


def _read_trusted(source: str) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*TorchScript archive", category=UserWarning)
            return torch.load(source, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as exc:
        raise CheckpointError(
            f"{source!r} pickles a class that cannot be imported here ({first_line(exc)}); make its code "
            "importable, or save model.state_dict() and load it with --arch file.py:Class"
        ) from exc
    except Exception as exc:  # trusted unpickling runs the file's own code
        raise CheckpointError(f"cannot unpickle {source!r}: {describe(exc)}") from exc


def _weights_only_reason(exc: Exception) -> str:
    """The unpickler's own complaint inside torch's long weights_only message."""
    found = re.search(r"WeightsUnpickler error:\s*(.*)", str(exc), re.S)
    lines = [line.strip() for line in (found.group(1) if found else "").splitlines() if line.strip()]
    return lines[0] if lines else first_line(exc)


def _unsafe_message(source: str, names: Sequence[str]) -> str:
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    hint = "; or save model.state_dict() instead" if any(".nn." in n or "__main__" in n for n in names) else ""
    what = f"it would import and call {shown} while loading"
    return f"{source!r} holds pickled Python objects: {what}; {TRUST_HINT}{hint}"


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
    core = importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray")
    allowed: list[Any] = [np.ndarray, np.dtype]
    for name in ("_reconstruct", "scalar"):
        func = getattr(core, name)
        allowed += [func, (func, f"numpy.core.multiarray.{name}"), (func, f"numpy._core.multiarray.{name}")]
    allowed += [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"]
    with torch.serialization.safe_globals(allowed):
        yield
