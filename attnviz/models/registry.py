"""The course's architectures by name, and inference of the architecture from a state_dict.

``feature_layers`` are the stage outputs as the next stage (or the classifier head) receives
them, i.e. after the stage's attention gate where the gate sits between stages. ``cam_layer`` is
the last of them: the feature map the head pools or flattens. Baselines and their attention
variants thus share the semantic place "input of the classifier head".
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from attnviz.models import infer as shapes
from attnviz.models.catalog import CATALOG, catalog_entry
from attnviz.models.cifar_cnn import CBAM_CNN, CNN, SE_CNN
from attnviz.models.densenet_se import DenseNet
from attnviz.models.lookalike import library_lookalike
from attnviz.models.resnet18_cbam import ResNet18_CBAM
from attnviz.models.resnet_se import CustomCNN
from attnviz.models.statedict import (
    Shape,
    StateDictDiff,
    compare_state_dict,
    expected_shapes,
    tensor_shape,
)
from attnviz.runtime.errors import ArchitectureError, first_line

__all__ = [
    "PLAUSIBLE",
    "ArchSpec",
    "StateDictDiff",
    "build_model",
    "compare_state_dict",
    "get_spec",
    "infer_architecture",
    "list_architectures",
    "nearest_architectures",
]

_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")
PLAUSIBLE = 0.5  # a nearest-architecture score worth naming: half the keys and shapes shared

KwargsReader = Callable[[Mapping[str, Any]], "dict[str, Any] | None"]


@dataclass(frozen=True)
class ArchSpec:
    """One architecture of the zoo.

    Attributes:
        name: Registry name.
        factory: Builds the model from keyword arguments.
        default_kwargs: The factory's defaults (the notebook's values).
        preset: Name of the preprocessing preset the notebook trains with.
        feature_layers: Stage outputs captured by default (for ``default_kwargs``).
        cam_layer: Grad-CAM target: the feature map the classifier head consumes.
        description: Where the architecture comes from, one line.
        infer_kwargs: Reads the factory's kwargs from a state_dict's shapes (``None``: no match).
        feature_layer_pattern: Regular expression for ``feature_layers`` when their number
            depends on the kwargs (DenseNet's ``block_config``).
    """

    name: str
    factory: Callable[..., nn.Module]
    default_kwargs: Mapping[str, Any]
    preset: str
    feature_layers: tuple[str, ...]
    cam_layer: str
    description: str
    infer_kwargs: KwargsReader | None = None
    feature_layer_pattern: str | None = None

    def feature_layers_in(self, model: nn.Module) -> tuple[str, ...]:
        """The feature layers this particular ``model`` has, in forward order."""
        names = [name for name, _ in model.named_modules()]
        if self.feature_layer_pattern is not None:
            pattern = re.compile(self.feature_layer_pattern)
            return tuple(name for name in names if pattern.fullmatch(name))
        present = set(names)
        return tuple(name for name in self.feature_layers if name in present)


def _defaults(factory: Callable[..., nn.Module]) -> Mapping[str, Any]:
    params = inspect.signature(factory).parameters.values()
    return MappingProxyType({p.name: p.default for p in params if p.default is not inspect.Parameter.empty})


def _spec(name: str, factory: Callable[..., nn.Module], **fields: Any) -> ArchSpec:
    entry = CATALOG[name]
    return ArchSpec(
        name=name,
        factory=factory,
        default_kwargs=_defaults(factory),
        preset=entry.preset,
        description=entry.description,
        **fields,
    )


_SPECS: Mapping[str, ArchSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            _spec(
                "cnn",
                CNN,
                feature_layers=("pool1", "pool2", "pool3"),
                cam_layer="pool3",
                infer_kwargs=shapes.cnn_kwargs,
            ),
            _spec(
                "se_cnn",
                SE_CNN,
                feature_layers=("pool1", "pool2", "pool3"),
                cam_layer="pool3",
                infer_kwargs=shapes.se_cnn_kwargs,
            ),
            _spec(
                "cbam_cnn",
                CBAM_CNN,
                feature_layers=("cbam1", "cbam2", "cbam3"),
                cam_layer="cbam3",
                infer_kwargs=shapes.cbam_cnn_kwargs,
            ),
            _spec(
                "densenet_se",
                DenseNet,
                feature_layers=tuple(f"features.denseblock{i}" for i in (1, 2, 3, 4)),
                cam_layer="features.norm_final",
                infer_kwargs=shapes.densenet_se_kwargs,
                feature_layer_pattern=r"features\.denseblock\d+",
            ),
            _spec(
                "resnet18_cbam",
                ResNet18_CBAM,
                feature_layers=tuple(f"cbam_layer{i}" for i in (1, 2, 3, 4)),
                cam_layer="cbam_layer4",
                infer_kwargs=shapes.resnet18_cbam_kwargs,
            ),
            _spec(
                "resnet_se",
                CustomCNN,
                feature_layers=("layer1", "layer2", "layer3", "layer4"),
                cam_layer="layer4",
                infer_kwargs=shapes.resnet_se_kwargs,
            ),
        )
    }
)


def list_architectures() -> list[str]:
    """Registry names, in the order of the course."""
    return list(_SPECS)


def get_spec(name: str) -> ArchSpec:
    """The spec registered as ``name``.

    Raises:
        ArchitectureError: Unknown name; the message lists the known ones and close matches.
    """
    return _SPECS[catalog_entry(name).name]


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build architecture ``name`` with its defaults overridden by ``kwargs`` (random weights).

    Raises:
        ArchitectureError: Unknown name, unknown keyword, or values the factory rejects.
    """
    spec = get_spec(name)
    unknown = sorted(set(kwargs) - set(inspect.signature(spec.factory).parameters))
    if unknown:
        accepted = ", ".join(inspect.signature(spec.factory).parameters)
        raise ArchitectureError(f"{name} does not take {', '.join(unknown)}; it accepts: {accepted}")
    num_classes = kwargs.get("num_classes", 1)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ArchitectureError(f"{name}: num_classes must be a positive integer, got {num_classes!r}")
    try:
        return spec.factory(**{**spec.default_kwargs, **kwargs})
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError) as exc:
        raise ArchitectureError(f"cannot build {name} with {kwargs}: {first_line(exc)}") from exc


def infer_architecture(state_dict: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Find the architecture and kwargs whose model loads ``state_dict`` with ``strict=True``.

    Keys are taken as given (strip ``module.``/``_orig_mod.`` prefixes beforehand).

    Returns:
        ``(name, kwargs)`` such that ``build_model(name, **kwargs)`` loads it strictly.

    Raises:
        ArchitectureError: Not a state_dict, or no architecture matches; the message names the
            nearest architectures and the first differences from the closest one.
    """
    got = _shapes_of(state_dict)
    for spec in _SPECS.values():
        kwargs = _read_kwargs(spec, state_dict)
        if kwargs is None:
            continue
        reference = _reference_shapes(spec, kwargs)
        if reference is not None and compare_state_dict(reference, state_dict).ok:
            return spec.name, kwargs
    raise ArchitectureError(_no_match_message(state_dict, got))


def nearest_architectures(state_dict: Mapping[str, Any], k: int = 3, min_score: float = 0.0) -> list[tuple[str, float]]:
    """The ``k`` architectures whose keys and shapes overlap ``state_dict`` most, of those scoring
    at least ``min_score`` (:data:`PLAUSIBLE`: the ones worth naming as "nearest").

    The score is ``(same key and shape + 0.5 * same key, other shape) / keys of either``, in
    [0, 1]; 1 means a strict load succeeds.
    """
    got = _shapes_of(state_dict)
    scored = [(name, _score(reference, got)) for name, reference in _references(state_dict)]
    scored.sort(key=lambda item: item[1], reverse=True)
    return [item for item in scored if item[1] >= min_score][: max(k, 0)]


def _shapes_of(state_dict: Mapping[str, Any]) -> dict[str, Shape | None]:
    if not isinstance(state_dict, Mapping):
        raise ArchitectureError(
            f"expected a state_dict (a mapping of names to tensors), got {type(state_dict).__name__}"
        )
    if not state_dict:
        raise ArchitectureError("the state_dict is empty")
    return {key: tensor_shape(value) for key, value in state_dict.items()}


def _read_kwargs(spec: ArchSpec, state_dict: Mapping[str, Any]) -> dict[str, Any] | None:
    if spec.infer_kwargs is None:
        return None
    try:
        return spec.infer_kwargs(state_dict)
    except (ArithmeticError, IndexError, TypeError, ValueError):  # shapes no notebook produces
        return None


def _reference_shapes(spec: ArchSpec, kwargs: Mapping[str, Any]) -> dict[str, Shape] | None:
    """Keys and shapes of the model ``kwargs`` builds, built on the meta device (no memory)."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            with torch.device("meta"):
                model = spec.factory(**{**spec.default_kwargs, **kwargs})
    except Exception:  # noqa: BLE001 - any kwargs the factory rejects mean "no reference"
        return None
    return expected_shapes(model)


def _references(state_dict: Mapping[str, Any]) -> list[tuple[str, dict[str, Shape]]]:
    references = []
    for spec in _SPECS.values():
        kwargs = _read_kwargs(spec, state_dict)
        reference = _reference_shapes(spec, kwargs) if kwargs is not None else None
        if reference is None:
            reference = _reference_shapes(spec, {})
        if reference is not None:
            references.append((spec.name, reference))
    return references


def _score(reference: Mapping[str, Shape], got: Mapping[str, Shape | None]) -> float:
    union = len(set(reference) | set(got))
    same = sum(1 for key, shape in reference.items() if key in got and got[key] == shape)
    shared = sum(1 for key in reference if key in got)
    return (same + 0.5 * (shared - same)) / union if union else 0.0


def _no_match_message(state_dict: Mapping[str, Any], got: Mapping[str, Shape | None]) -> str:
    lookalike = library_lookalike(state_dict)
    if lookalike is not None:  # a library's model: its --arch, not the course's models sharing a few names
        return f"no course architecture matches this state_dict, which looks like {lookalike}"
    references = dict(_references(state_dict))
    ranked = sorted(references, key=lambda n: _score(references[n], got), reverse=True)[:3]
    ranked = [name for name in ranked if _score(references[name], got) >= PLAUSIBLE]
    if ranked:
        nearest = ", ".join(f"{n} ({_score(references[n], got):.2f})" for n in ranked)
        diff = compare_state_dict(references[ranked[0]], state_dict)
        first = "; ".join(_first_problems(diff))
        message = f"no known architecture matches this state_dict; nearest: {nearest}"
        message += f"; differences from {ranked[0]}: {first}"
    else:
        message = "no known architecture matches this state_dict, and none of the course's is close"
    prefix = _common_prefix(got)
    if prefix:
        message += f"; every key starts with {prefix!r} (strip it first)"
    return message


def _first_problems(diff: StateDictDiff, per_kind: int = 2) -> list[str]:
    """A few differences of each kind, so a renamed layer shows both of its names."""
    picked = StateDictDiff(
        missing=diff.missing[:per_kind],
        unexpected=diff.unexpected[:per_kind],
        wrong_shape=diff.wrong_shape[:per_kind],
    )
    return picked.problems()


def _common_prefix(got: Mapping[str, Any]) -> str | None:
    for prefix in _WRAPPER_PREFIXES:
        if all(str(key).startswith(prefix) for key in got):
            return prefix
    return None
