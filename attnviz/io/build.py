"""Building a model for an architecture and loading a state_dict into it, strictly.

Architectures come from attnviz's registry, timm (``timm:NAME``), torchvision
(``torchvision:NAME``) or code the caller names (``path/to/file.py:Class``,
``package.module:Class``). The model is first built on the ``meta`` device (shapes only, no
memory) and compared with the state_dict, so that arguments stored in an untrusted file cannot
allocate more than the file's own tensors; those arguments may only be plain numbers, flags
and short names (:func:`check_stored_kwargs`).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import math
import os
import re
import sys
import sysconfig
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnviz.io.safe_load import TRUST_HINT
from attnviz.models import (
    StateDictDiff,
    build_model,
    compare_state_dict,
    get_spec,
    infer_architecture,
    list_architectures,
    nearest_architectures,
)
from attnviz.models.lookalike import library_lookalike
from attnviz.models.registry import PLAUSIBLE
from attnviz.runtime.errors import ArchitectureError, UnsafeCheckpointError, describe, did_you_mean, first_line

__all__ = [
    "ARCH_FORMS",
    "arch_factory",
    "build_for",
    "call_factory",
    "check_stored_kwargs",
    "classifier_outputs",
    "names_code",
]

ARCH_FORMS = "a registry name, timm:NAME, torchvision:NAME, path/to/file.py:Class or package.module:Class"
_MAX_UNSAVED_ELEMENTS = 1 << 26  # elements of buffers a stored architecture adds beyond the state_dict


@dataclass(frozen=True)
class _Recipe:
    """How to build an architecture: the registry's ``build_model`` or ``factory(**kwargs)``."""

    arch: str
    factory: Callable[..., Any]
    kwargs: dict[str, Any]
    zoo: bool = False

    def build(self) -> nn.Module:
        """The model with random weights; failures as :class:`ArchitectureError`."""
        return build_model(self.arch, **self.kwargs) if self.zoo else call_factory(self.arch, self.factory, self.kwargs)

    def shell(self) -> Any:
        """The model on the ``meta`` device (shapes only, no memory); the factory's own exceptions."""
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            return build_model(self.arch, **self.kwargs) if self.zoo else self.factory(**self.kwargs)


def build_for(
    state_dict: Mapping[str, Any],
    arch: str | None,
    kwargs: dict[str, Any] | None,
    source: str,
    *,
    untrusted: bool = False,
    explicit: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, str, dict[str, Any]]:
    """Build the architecture, check that ``state_dict`` fits exactly, load it strictly.

    ``kwargs`` are stored (or inferred) arguments; ``explicit`` ones, given by the caller, are
    merged over them and win. The shapes are compared on the ``meta`` device first, so that
    arguments stored in the file (``untrusted``) cannot allocate more than the state_dict's own
    tensors; code the caller named (``file.py:Class``) is run once, for real, unless it is built
    from such stored arguments.
    """
    explicit = dict(explicit or {})
    if arch is None:
        recipe, built = _inferred_recipe(state_dict, source, explicit), None
    else:
        recipe, built = _recipe(arch, kwargs, explicit, state_dict, real=names_code(arch) and not untrusted)
    if built is None or _on_meta(built):
        _check_on_meta(recipe, state_dict, source, untrusted, shell=built)
        built = recipe.build()
    diff = compare_state_dict(built, state_dict)
    if not diff.ok:
        raise ArchitectureError(_mismatch_message(source, recipe.arch, diff, state_dict))
    built.load_state_dict(state_dict, strict=True)
    return built, recipe.arch, dict(recipe.kwargs)


def _inferred_recipe(state_dict: Mapping[str, Any], source: str, explicit: dict[str, Any]) -> _Recipe:
    try:
        name, kwargs = infer_architecture(state_dict)
    except ArchitectureError as exc:
        hint = "" if "pass --arch" in str(exc) else f"; name the architecture with --arch ({ARCH_FORMS})"
        raise ArchitectureError(f"{source!r}: {exc}{hint}") from exc
    return _Recipe(name, get_spec(name).factory, {**kwargs, **explicit}, zoo=True)


def _on_meta(model: nn.Module) -> bool:
    first = next(iter([*model.parameters(), *model.buffers()]), None)
    return first is not None and first.is_meta


def _check_on_meta(
    recipe: _Recipe, state_dict: Mapping[str, Any], source: str, untrusted: bool, shell: nn.Module | None = None
) -> None:
    """Compare the architecture's shapes with ``state_dict`` before anything is allocated."""
    try:
        shell = recipe.shell() if shell is None else shell
    except ArchitectureError:
        raise
    except Exception as exc:  # code that cannot run on meta
        if untrusted:
            raise UnsafeCheckpointError(
                f"{source!r}: {recipe.arch} with its stored arch_kwargs {recipe.kwargs} cannot be checked against "
                f"the weights before it is allocated ({describe(exc)}); {TRUST_HINT}"
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
            f"elements of buffers that are not in the file; {TRUST_HINT}"
        )


_FETCHING_WORDS = frozenset(
    {
        "weights",
        "pretrained",
        "checkpoint",
        "file",
        "files",
        "path",
        "url",
        "dir",
        "hub",
        "hf",
        "cache",
        "download",
        "root",
        "home",
    }
)
_SHORT_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]{0,63}|")


def check_stored_kwargs(kwargs: Mapping[str, Any], arch: str, source: str) -> None:
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
            f"file's plain numbers, flags and short names only; {TRUST_HINT}"
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


def _recipe(
    arch: str, kwargs: dict[str, Any] | None, explicit: dict[str, Any], state_dict: Mapping[str, Any], *, real: bool
) -> tuple[_Recipe, nn.Module | None]:
    """The recipe, and the model already built while fitting ``num_classes`` (real or on ``meta``), if any."""
    prefix, _, rest = arch.partition(":")
    if prefix == "timm" and rest:
        return _library_recipe(arch, _timm_factory(rest), kwargs, explicit, state_dict, real=real)
    if prefix == "torchvision" and rest:
        return _library_recipe(arch, _torchvision_factory(rest), kwargs, explicit, state_dict, real=real)
    if ":" in arch:
        return _library_recipe(arch, _user_factory(arch), kwargs, explicit, state_dict, real=real)
    return _zoo_recipe(arch, kwargs, explicit, state_dict), None


def _zoo_recipe(
    name: str, kwargs: dict[str, Any] | None, explicit: dict[str, Any], state_dict: Mapping[str, Any]
) -> _Recipe:
    if name not in list_architectures():
        raise ArchitectureError(
            f"unknown architecture {name!r}{did_you_mean(name, list_architectures())}; use {ARCH_FORMS} "
            f"(registry: {', '.join(list_architectures())})"
        )
    spec = get_spec(name)
    if kwargs is None:
        kwargs = (spec.infer_kwargs(state_dict) if spec.infer_kwargs else None) or {}
    merged = {**kwargs, **explicit}
    merged = {k: v for k, v in merged.items() if k != "weights"}  # the state_dict replaces pretrained weights
    return _Recipe(name, spec.factory, merged, zoo=True)


def _library_recipe(
    arch: str,
    factory: Any,
    kwargs: dict[str, Any] | None,
    explicit: dict[str, Any],
    state_dict: Mapping[str, Any],
    *,
    real: bool,
) -> tuple[_Recipe, nn.Module | None]:
    """``factory(**kwargs, **explicit)``; with no stored kwargs, fit ``num_classes`` to the weights.

    The model built to read its classifier is returned with the recipe when it is the one to
    load (built for real when ``real``, else on ``meta`` where the code allows), so that the
    factory is not run again for nothing.
    """
    if kwargs is not None:
        return _Recipe(arch, factory, {**kwargs, **explicit}), None
    recipe = _Recipe(arch, factory, dict(explicit))
    model = None if real else _probe(factory, explicit)
    if model is None:
        model = call_factory(arch, factory, explicit)
    num_classes = _stored_num_classes(model, state_dict)
    if num_classes is not None and "num_classes" not in explicit and _accepts(factory, "num_classes"):
        return _Recipe(arch, factory, {**explicit, "num_classes": num_classes}), None
    return recipe, model


def _probe(factory: Any, kwargs: Mapping[str, Any]) -> nn.Module | None:
    """The model built on the ``meta`` device (shapes only, no memory), if it builds there."""
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = factory(**kwargs)
    except Exception:  # noqa: BLE001 - code that cannot run on meta is built for real instead
        return None
    return model if isinstance(model, nn.Module) else None


def call_factory(arch: str, factory: Any, kwargs: Mapping[str, Any]) -> nn.Module:
    """``factory(**kwargs)`` as an ``nn.Module``; the named code's failure, or anything else than a
    module, is one :class:`ArchitectureError` line naming ``arch``."""
    try:
        model = factory(**kwargs)
    except ArchitectureError:
        raise
    except Exception as exc:  # the named code's own failure, reported with its reason
        raise ArchitectureError(f"cannot build {arch} with {dict(kwargs)}: {describe(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise ArchitectureError(f"{arch} built a {type(model).__name__}, not a torch.nn.Module")
    return model


def _stored_num_classes(model: nn.Module, state_dict: Mapping[str, Any]) -> int | None:
    """Outputs of the classifier in ``state_dict`` when they differ from ``model``'s."""
    name, layer = _classifier(model)
    if layer is None:
        return None
    weight = state_dict.get(f"{name}.weight" if name else "weight")
    current = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor) or not isinstance(current, torch.Tensor):
        return None
    if weight.dim() < 1 or weight.shape[0] == current.shape[0]:
        return None
    return int(weight.shape[0])


def classifier_outputs(model: nn.Module) -> int | None:
    """Outputs of the model's classifier (timm's ``get_classifier()``, else the last ``nn.Linear``), if found."""
    layer = _classifier(model)[1]
    weight = getattr(layer, "weight", None)
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.dim() >= 1 else None


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
        raise ArchitectureError(
            f"torchvision has no model {name!r}{did_you_mean(name, torchvision.models.list_models())}"
        )

    def factory(**kwargs: Any) -> nn.Module:
        return torchvision.models.get_model(name, **{**kwargs, "weights": None})

    return factory


def _user_factory(arch: str) -> Any:
    """``path/to/file.py:Class`` or ``package.module:Class``: code the caller named."""
    target, _, attr = arch.rpartition(":")
    if not target or not attr.isidentifier():
        raise ArchitectureError(f"cannot parse architecture {arch!r}; use {ARCH_FORMS}")
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
    """Import a file: as part of its package when it is in one (``__init__.py`` files above it, or
    relative imports or imports of a folder above it by name), else on its own with its folder on
    ``sys.path`` for its sibling modules."""
    path = Path(file).expanduser().resolve()
    if not path.is_file():
        raise ArchitectureError(f"architecture file {file!r} does not exist")
    package = _package_of(path)
    if package is not None:
        return _import_in_package(file, *package)
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
        except (Exception, SystemExit) as exc:  # the user's file failed; say why
            sys.modules.pop(module_name, None)
            raise ArchitectureError(f"importing {file!r} failed: {describe(exc)}{_import_hint(exc)}") from exc
    return module


def _package_of(path: Path) -> tuple[Path, str] | None:
    """``(folder to put on sys.path, dotted module name)`` when ``path`` is a module of a package."""
    parents = list(path.parents)[:-1]  # not the file system's root
    depth = 0
    while depth < len(parents) and (parents[depth] / "__init__.py").is_file():
        depth += 1
    level, tops = _imports_of(path)
    depth = max(depth, min(level, len(parents)))
    names = [folder.name for folder in parents]
    for top in tops:
        if top in names[: max(depth, 4)]:  # `from senet.se_module import ...` inside senet/
            depth = max(depth, names.index(top) + 1)
    packages = [folder.name for folder in reversed(parents[:depth])]
    if depth == 0 or depth >= len(parents) or not all(name.isidentifier() for name in packages):
        return None
    return parents[depth], ".".join([*packages, path.stem])


def _imports_of(path: Path) -> tuple[int, set[str]]:
    """The deepest relative import's level and the top-level names of absolute imports in ``path``."""
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError):
        return 0, set()  # importing it says what is wrong
    level, tops = 0, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            level = max(level, node.level)
            if node.level == 0 and node.module:
                tops.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            tops.update(alias.name.split(".")[0] for alias in node.names)
    return level, tops


def _import_in_package(file: str, root: Path, dotted: str) -> Any:
    top = dotted.split(".")[0]
    _forget_other_package(top, root, file)
    importlib.invalidate_caches()
    with _on_sys_path(str(root)):
        try:
            return importlib.import_module(dotted)
        except (Exception, SystemExit) as exc:  # the user's package failed; say why
            raise ArchitectureError(
                f"importing {file!r} as {dotted} (from {root}) failed: {describe(exc)}{_import_hint(exc)}"
            ) from exc


def _forget_other_package(top: str, root: Path, file: str) -> None:
    """Let ``root/top`` be imported when a different package of that name was imported before
    (another checkout of the same repository); an installed package of that name is not replaced."""
    existing = sys.modules.get(top)
    if existing is None:
        return
    locations = [*list(getattr(existing, "__path__", None) or []), getattr(existing, "__file__", None)]
    places = [Path(place).resolve() for place in locations if place]
    if any(place.is_relative_to(root / top) for place in places):
        return
    installed = {
        Path(p).resolve() for key, p in sysconfig.get_paths().items() if key in ("stdlib", "purelib", "platlib")
    }
    if not places or any(place.is_relative_to(base) for place in places for base in installed):
        raise ArchitectureError(
            f"{file!r} belongs to a package named {top!r}, and the installed module {top!r} is already imported; "
            f"rename the folder, or run attnviz from {root} and name the architecture as package.module:Class"
        )
    for name in [n for n in sys.modules if n == top or n.startswith(f"{top}.")]:
        del sys.modules[name]


def _import_hint(exc: BaseException) -> str:
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return ""
    return (
        f"; if {exc.name.split('.')[0]!r} is a folder of your repository, run attnviz from the repository root and "
        "name the architecture as package.module:Class"
    )


def _import_module(name: str) -> Any:
    with _on_sys_path(os.getcwd()):
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            raise ArchitectureError(f"cannot import module {name!r}: {first_line(exc)}") from exc
        except (Exception, SystemExit) as exc:  # the named module failed; say why
            raise ArchitectureError(f"importing {name!r} failed: {describe(exc)}") from exc


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


def arch_factory(arch: str) -> Callable[..., Any]:
    """What builds ``arch`` (one of :data:`ARCH_FORMS`) from keyword arguments, with random weights:
    the registry's :func:`build_model`, timm's or torchvision's factory (never pretrained), or the
    class or function the caller named, imported now (the caller named that code).

    Raises:
        ArchitectureError: Unknown name, missing file or module, or no such class in it.
    """
    prefix, _, rest = arch.partition(":")
    if prefix == "timm" and rest:
        return _timm_factory(rest)
    if prefix == "torchvision" and rest:
        return _torchvision_factory(rest)
    if ":" in arch:
        return _user_factory(arch)
    _zoo_recipe(arch, {}, {}, {})  # an unknown name raises here, naming the other forms
    return functools.partial(build_model, arch)


def names_code(arch: str) -> bool:
    """Whether ``arch`` names code to import (a file or module), not the registry, timm or torchvision."""
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
        ranked = nearest_architectures(state_dict, k=3, min_score=PLAUSIBLE)
    except ArchitectureError:
        ranked = []
    lookalike = library_lookalike(state_dict)
    nearest = ", ".join(f"{n} ({score:.2f})" for n, score in ranked) or "none close"
    best = ranked[0] if ranked else None
    message = f"{source!r} does not fit {arch}: {'; '.join(parts)}; "
    exact = bool(ranked) and ranked[0][1] == 1.0
    message += f"the file looks like {lookalike}" if lookalike and not exact else f"nearest architectures: {nearest}"
    if best is not None and best[1] == 1.0 and best[0] != arch:
        message += f" ({best[0]} matches exactly: pass --arch {best[0]} or leave --arch out)"
    return message


def _shape(shape: Sequence[int] | None) -> str:
    return "not a tensor" if shape is None else "[" + ", ".join(map(str, shape)) + "]"
