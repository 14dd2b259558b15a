"""Grad-CAM and its family: class-discriminative heat maps for a CNN's prediction.

``gradcam(model, images)`` computes Grad-CAM itself, in one forward pass with a forward hook on
the target layer and one ``torch.autograd.grad`` call back to that layer's output. The hook
hands the rest of the model a copy of the activation, so in-place operations that follow the
layer (``ReLU(inplace=True)``, ``out += shortcut``) change the copy, never the activation the
map is built from; the gradient reaches the true activation through the copy. Parameters do
not take part in the backward pass (their ``requires_grad`` is switched off for the call and
restored afterwards), so the part of the network before the target layer runs without a graph.

A TorchScript model runs its forward as compiled code that no hook can enter: Grad-CAM then
explains a feature map the forward returns beside the logits (layer ``"output[i]"``, the i-th
returned tensor), or says that there is none.

Other methods go through pytorch-grad-cam (``gradcam++``, ``xgradcam``, ``layercam``,
``hirescam``, ``eigencam``, ``scorecam``, ``ablationcam``, ``fullgrad``) and captum
(``integrated_gradients``, ``guided_gradcam``, ``occlusion``) behind the same call and are
normalised the same way.
"""

from __future__ import annotations

import contextlib
import io
import numbers
import operator
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnviz.io.inputs import as_image_batch
from attnviz.runtime.errors import AttnvizError, CaptureError, UsageError, describe, did_you_mean
from attnviz.runtime.model import eval_mode, first_tensor, run_forward, to_model
from attnviz.runtime.transfer import to_device

__all__ = ["METHODS", "CamResult", "gradcam", "normalise_maps", "resolve_cam_layer", "upsample"]

#: Methods computed by pytorch-grad-cam, with the name of the class that computes each.
_GRAD_CAM_CLASSES = MappingProxyType(
    {
        "gradcam++": "GradCAMPlusPlus",
        "xgradcam": "XGradCAM",
        "layercam": "LayerCAM",
        "hirescam": "HiResCAM",
        "eigencam": "EigenCAM",
        "scorecam": "ScoreCAM",
        "ablationcam": "AblationCAM",
        "fullgrad": "FullGrad",
    }
)
#: Pixel-level attributions computed with captum.
_CAPTUM_METHODS = ("integrated_gradients", "guided_gradcam", "occlusion")
#: Methods that attribute to the input pixels and use no target layer.
_LAYERLESS = frozenset({"fullgrad", "integrated_gradients", "occlusion"})

#: Every method :func:`gradcam` accepts.
METHODS: tuple[str, ...] = ("gradcam", *_GRAD_CAM_CLASSES, *_CAPTUM_METHODS)

#: A layer named by its place among the forward's returned tensors (for TorchScript models).
_OUTPUT_LAYER = re.compile(r"output\[(\d+)\]")

#: Probe sizes tried by :func:`resolve_cam_layer` when it gets no images.
_PROBE_SIZES = (224, 64, 32)

#: Classes a :class:`CamResult`'s repr lists before "…".
_REPR_TARGETS = 8

Target = int | str | Sequence[int | str] | Tensor | None


@dataclass(frozen=True)
class CamResult:
    """Heat maps for a batch, with the prediction they explain.

    Attributes:
        maps: ``[B,H,W]`` float32 in [0, 1] at the input's size (bilinear upsampling), each map
            min-max normalised on its own (an all-zero map stays zero, a constant positive one
            becomes all ones).
        raw: ``[B,h,w]`` the un-normalised map (after ReLU) at the target layer's resolution;
            at input resolution for pixel-level methods.
        targets: ``[B]`` class indices explained.
        scores: ``[B]`` softmax probability of each target class.
        logits: ``[B,K]`` the model's output.
        layer: The target layer's name (``""`` for methods that use none).
        method: The method's name.
    """

    maps: Tensor
    raw: Tensor
    targets: Tensor
    scores: Tensor
    logits: Tensor
    layer: str
    method: str

    def save(self, path: str) -> None:
        """Write every tensor to a compressed ``.npz`` (``maps``, ``raw``, ``targets``, ``scores``,
        ``logits``) with the layer and method names."""
        np.savez_compressed(
            path,
            maps=self.maps.detach().float().cpu().numpy(),
            raw=self.raw.detach().float().cpu().numpy(),
            targets=self.targets.detach().cpu().numpy(),
            scores=self.scores.detach().float().cpu().numpy(),
            logits=self.logits.detach().float().cpu().numpy(),
            layer=np.array(self.layer),
            method=np.array(self.method),
        )

    def __repr__(self) -> str:
        """One line: method, layer, batch, map sizes and the classes explained (never the tensors)."""
        height, width = self.maps.shape[-2:]
        raw = "×".join(str(side) for side in self.raw.shape[1:])
        classes = self.targets[:_REPR_TARGETS].tolist()
        more = ", …" if len(self.targets) > _REPR_TARGETS else ""
        images = f"{len(self.maps)} image{'s' if len(self.maps) != 1 else ''}"
        return (
            f"CamResult({self.method} at {self.layer!r}, {images}, maps {height}×{width} (raw {raw}), "
            f"targets [{', '.join(map(str, classes))}{more}], device {self.maps.device})"
        )

    def _repr_html_(self) -> str:
        """The maps as small heat-map images with target and P, for notebooks."""
        import base64
        import html

        from PIL import Image

        from attnviz.render import apply_colormap

        shown = min(len(self.maps), 16)
        maps = self.maps[:shown].detach().float().cpu().numpy()
        targets, scores = self.targets[:shown].tolist(), self.scores[:shown].float().tolist()
        cells = []
        for index in range(shown):
            rgb = apply_colormap(maps[index], 0.0, 1.0, "jet")
            buffer = io.BytesIO()
            Image.fromarray(rgb).resize((128, 128), Image.Resampling.NEAREST).save(buffer, format="PNG")
            encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
            caption = f"class {targets[index]}, P = {scores[index]:.3f}"
            cells.append(
                f'<figure style="display:inline-block;margin:4px"><img src="data:image/png;base64,{encoded}"/>'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        title = html.escape(f"{self.method} at '{self.layer}' ({len(self.maps)} image(s))")
        return f"<div><b>{title}</b><br>{''.join(cells)}</div>"


def gradcam(
    model: nn.Module,
    images: Tensor,
    target: Target = None,
    layer: str | nn.Module | None = None,
    method: str = "gradcam",
    *,
    class_names: Sequence[str] | None = None,
    batch_size: int | None = None,
) -> CamResult:
    """Explain the model's score for a class on each image as a heat map.

    Args:
        model: A classifier returning ``[B,K]`` logits. Run in eval mode for the call (with a
            warning when it arrives in train mode); its mode, hooks, ``requires_grad`` flags and
            gradients are as before afterwards.
        images: ``[B,C,H,W]`` (or one ``[C,H,W]``) preprocessed images; moved to the model's
            device.
        target: ``None`` for each image's predicted class, a class index, a class name (needs
            ``class_names``) or one index or name per image.
        layer: Target layer name as in ``model.named_modules()`` (or the module itself);
            ``None`` picks it with :func:`resolve_cam_layer`.
        method: One of :data:`METHODS`.
        class_names: Class names in logit order, for targets given by name.
        batch_size: Process the images in chunks of this many (``None``: all at once).

    Returns:
        A :class:`CamResult` whose tensors are on the model's device.

    Raises:
        UsageError: Unknown method, layer or class name, targets that do not fit the batch or
            the number of classes, images that are not a float ``[B,C,H,W]`` tensor, or a layer
            whose output is not a feature map the logits depend on.
        CaptureError: The model's forward pass (or the attribution library) failed.
    """
    method_key = _check_method(method)
    batch = _image_batch(images)
    targets = _parse_targets(target, len(batch), class_names)
    _check_batch_size(batch_size)
    batch = to_model(batch, model)
    if model.training:
        warnings.warn(
            "the model was in train mode; Grad-CAM runs it in eval mode and restores train mode afterwards",
            stacklevel=2,
        )
    layer_name, module = _target_layer(model, layer, method_key, batch)
    # Own Grad-CAM needs no parameter flags switched (see _fast_gradcam); the libraries and the
    # returned-output path run with parameters that take no gradient.
    fast = method_key == "gradcam" and module is not None
    with eval_mode(model) if fast else _prepared(model), torch.enable_grad():
        parts = [
            _explain(model, module, layer_name, method_key, chunk, chunk_targets, batch_size)
            for chunk, chunk_targets in _chunks(batch, targets, batch_size)
        ]
    raw = _joined([part.raw for part in parts])
    size = cast("tuple[int, int]", tuple(batch.shape[-2:]))  # images are (N, C, H, W)
    maps = normalise_maps(raw if raw.shape[-2:] == size else upsample(raw, size))
    logits = torch.cat([part.logits for part in parts])  # a copy: a model may return a tensor it reuses
    chosen = _joined([part.targets for part in parts])
    scores = logits.float().softmax(dim=1).gather(1, chosen[:, None])[:, 0]
    return CamResult(maps, raw, chosen, scores, logits, layer_name, method_key)


def resolve_cam_layer(model: nn.Module, images: Tensor | None = None) -> str:
    """Name the layer Grad-CAM should explain for ``model``.

    A model of attnviz's zoo gets its spec's ``cam_layer``. Any other model is run once on one
    image under forward hooks: the answer is the last feature map (4-D, more than one spatial
    position, not an adaptive pooling output) computed in forward order, named by the outermost
    module that ends with exactly that tensor, skipping containers that start at the image (a
    ``features`` trunk); so torchvision's resnet gives ``layer4`` rather than ``layer4.1.relu``
    and efficientnet gives ``features.8``.

    Args:
        model: The classifier.
        images: Images of the size the model expects (only the first is used); without them
            the probe tries 224, 64 and 32 pixel squares of zeros.

    Raises:
        UsageError: The model computes no 4-D feature map, or no probe size fits it.
        CaptureError: The probe forward pass failed on the given images.
    """
    zoo = _zoo_cam_layer(model)
    if zoo is not None:
        return zoo
    find = _returned_map if isinstance(model, torch.jit.ScriptModule) else _traced_layer
    if images is not None:
        return find(model, to_model(as_image_batch(images)[:1], model))
    channels = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), 3)
    for size in _PROBE_SIZES:
        probe = to_model(torch.zeros(1, channels, size, size), model)
        try:
            return find(model, probe)
        except CaptureError:
            continue
    sizes = ", ".join(str(size) for size in _PROBE_SIZES)
    raise UsageError(
        f"cannot find the Grad-CAM layer without images (the model failed on {sizes} px probes); pass images or layer="
    )


def upsample(raw: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling (``align_corners=False``) of ``[B,h,w]`` maps to ``size``."""
    return F.interpolate(raw[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def normalise_maps(maps: Tensor) -> Tensor:
    """Per-map min-max normalisation of ``[B,H,W]`` to [0, 1].

    A map with no spread becomes zeros if it is zero and ones if it is positive.
    """
    maps = maps.float()
    low, high = torch.aminmax(maps.flatten(1), dim=1)
    low, high = low[:, None, None], high[:, None, None]
    span = high - low
    spread = span > 0
    scaled = (maps - low) / torch.where(spread, span, 1.0)  # finite gradients for constant maps too
    return torch.where(spread, scaled, maps > 0).clamp_(0.0, 1.0)


# --------------------------------------------------------------------------- validation


def _check_method(method: str) -> str:
    key = method.strip().lower() if isinstance(method, str) else method
    if key not in METHODS:
        hint = did_you_mean(str(method).lower(), METHODS, n=2, cutoff=0.6)
        raise UsageError(f"unknown CAM method {method!r}; known: {', '.join(METHODS)}{hint}")
    return key


def _check_batch_size(batch_size: int | None) -> None:
    if batch_size is None:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise UsageError(f"batch_size must be a positive integer or None, got {batch_size!r}")


def _parse_targets(target: Target, batch: int, class_names: Sequence[str] | None) -> list[int] | None:
    """Per-image class indices, or ``None`` for the predicted classes."""
    if target is None:
        return None
    if isinstance(target, Tensor):
        if target.dim() > 1 or target.is_floating_point() or target.is_complex():
            raise UsageError(
                f"a target tensor must hold integer class indices, got {target.dtype} {tuple(target.shape)}"
            )
        # integer dtype (checked above): a Python int, or a list of them
        target = cast(Target, target.item() if target.dim() == 0 else target.tolist())
    if isinstance(target, (str, numbers.Integral)):
        return [_class_index(target, class_names)] * batch
    if isinstance(target, Sequence):
        if len(target) != batch:
            raise UsageError(f"per-sample targets must match the batch size (got {len(target)} for {batch} images)")
        return [_class_index(item, class_names) for item in target]
    raise UsageError(f"target must be None, a class index or name, or one per image; got {type(target).__name__}")


def _class_index(item: Any, class_names: Sequence[str] | None) -> int:
    if isinstance(item, str):
        if class_names is None:
            raise UsageError(f"target {item!r} is a class name; pass class_names= to use names")
        names = list(class_names)
        if item not in names:
            raise UsageError(f"unknown class name {item!r}{did_you_mean(item, names)}")
        return names.index(item)
    if isinstance(item, bool) or not isinstance(item, numbers.Integral):
        raise UsageError(f"a target must be a class index or name, got {item!r}")
    index = operator.index(item)
    if index < 0:
        raise UsageError(f"target class index must be >= 0, got {index}")
    return index


def _check_range(targets: list[int], num_classes: int) -> None:
    if targets and max(targets) >= num_classes:
        raise UsageError(f"target class {max(targets)} is out of range for a model with {num_classes} classes")


def _image_batch(images: Any) -> Tensor:
    """:func:`as_image_batch`, keeping a channels-last batch channels-last (what such a model runs fastest on)."""
    batch = as_image_batch(images)
    if isinstance(images, Tensor) and images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last):
        return images.detach()
    return batch


def _target_layer(
    model: nn.Module, layer: str | nn.Module | None, method: str, images: Tensor
) -> tuple[str, nn.Module | None]:
    """The target layer's name and module (``None`` for a returned output or a layerless method)."""
    if method in _LAYERLESS:
        return "", None
    name = _layer_name(model, layer, images)
    if _OUTPUT_LAYER.fullmatch(name):
        if method != "gradcam":
            raise UsageError(
                f"{method} needs a layer inside the model, and {name!r} is a tensor its forward "
                "returns; use method='gradcam' or a pixel-level method (integrated_gradients, occlusion)"
            )
        return name, None
    return name, model.get_submodule(name)


def _layer_name(model: nn.Module, layer: str | nn.Module | None, images: Tensor) -> str:
    if layer is None:
        return resolve_cam_layer(model, images)
    if isinstance(layer, str) and _OUTPUT_LAYER.fullmatch(layer):
        return layer
    if isinstance(layer, str) and layer:
        with contextlib.suppress(AttributeError):  # the usual case, without listing every module
            if not isinstance(model.get_submodule(layer), torch.jit.ScriptModule):
                return layer
    modules = dict(model.named_modules())
    if isinstance(modules.get(layer) if isinstance(layer, str) else layer, torch.jit.ScriptModule):
        raise UsageError(
            f"layer {layer if isinstance(layer, str) else type(layer).__name__!r} is TorchScript code, which no hook "
            "can enter; use a feature map the forward returns (layer='output[i]') or a pixel-level method"
        )
    if isinstance(layer, nn.Module):
        for name, module in modules.items():
            if module is layer and name:
                return name
        raise UsageError(f"the given {type(layer).__name__} module is not a submodule of the model; pass its name")
    if not isinstance(layer, str) or layer not in modules or not layer:
        names = [name for name in modules if name]
        raise UsageError(f"the model has no layer {layer!r}{did_you_mean(str(layer), names)}")
    return layer


# --------------------------------------------------------------------------- running


class _Part(NamedTuple):
    raw: Tensor
    logits: Tensor
    targets: Tensor


def _explain(
    model: nn.Module,
    module: nn.Module | None,
    layer: str,
    method: str,
    images: Tensor,
    targets: list[int] | None,
    batch_size: int | None,
) -> _Part:
    """One chunk of images through one method (model prepared by the caller, grad enabled)."""
    if method == "gradcam":
        if module is None:
            return _returned_gradcam(model, layer, images, targets)
        return _fast_gradcam(model, module, layer, images, targets)
    logits = _forward(model, images, grad=False)
    chosen = _choose(logits, targets, images.device)
    try:
        if method in _GRAD_CAM_CLASSES:
            raw = _grad_cam_library(model, module, method, images, chosen, batch_size)
        else:
            raw = _captum(model, module, layer, method, images, chosen, batch_size)
    except AttnvizError:
        raise
    except Exception as exc:  # any library failure becomes one line for the user
        raise CaptureError(f"{method} failed: {describe(exc)}") from exc
    return _Part(raw.to(images.device), logits, chosen)


def _fast_gradcam(model: nn.Module, module: nn.Module, layer: str, images: Tensor, targets: list[int] | None) -> _Part:
    """Grad-CAM from one forward pass and one ``autograd.grad`` back to the layer's output.

    The hook detaches the layer's output into a leaf that requires grad (the true activation)
    and hands the model a clone of it, so later in-place operations act on the clone. A layer
    that runs several times per forward pass is explained at its last call. The forward starts
    without autograd and the hook switches it on, so the network before the layer records no
    graph and the parameters' ``requires_grad`` flags need not be touched; ``autograd.grad`` to
    the activation computes no parameter gradient.
    """
    found: dict[str, Any] = {}

    def keep(_module: nn.Module, _inputs: Any, output: Any) -> Tensor:
        _check_feature_map(output, layer)
        activation = output.detach().requires_grad_(True)
        found["activation"], found["version"] = activation, activation._version
        torch.set_grad_enabled(True)  # for the rest of this forward; _forward's block restores the mode
        return activation.clone()

    handle = module.register_forward_hook(keep)
    try:
        logits = _forward(model, images, grad=False)
    finally:
        handle.remove()
    activation = found.get("activation")
    if activation is None:
        raise UsageError(f"layer {layer!r} did not run in the forward pass; choose a layer the model uses")
    if activation._version != found["version"]:
        raise CaptureError(
            f"the model changes the output of {layer!r} in place through another reference; choose another layer"
        )
    chosen = _choose(logits, targets, images.device)
    score = logits.gather(1, chosen[:, None]).sum()
    if not score.requires_grad:
        raise UsageError(
            f"the logits do not depend on layer {layer!r} (or the model disables gradients); choose another layer"
        )
    raw = _weighted_activation(score, activation, layer, f"the logits do not depend on layer {layer!r}")
    return _Part(raw, logits.detach(), chosen)


def _returned_gradcam(model: nn.Module, layer: str, images: Tensor, targets: list[int] | None) -> _Part:
    """Grad-CAM on a feature map the forward returns beside the logits (``layer = "output[i]"``).

    The parameters take no gradient (see :func:`_prepared`), so the images do: that records the
    graph from the input to the logits through the returned feature map.
    """
    match = _OUTPUT_LAYER.fullmatch(layer)
    if match is None:
        raise UsageError(f"{layer!r} is not a returned output; name one as 'output[i]'")
    index = int(match.group(1))
    output = run_forward(model, images.detach().requires_grad_(True))
    returned = _returned_tensors(output)
    logits = first_tensor(output)
    if index >= len(returned):
        raise UsageError(f"the model's forward returns {len(returned)} tensor(s); there is no {layer!r}")
    activation = returned[index]
    _check_feature_map(activation, layer)
    if logits is None or logits.dim() != 2 or logits.shape[0] != images.shape[0]:
        shape = _shape_of(logits)
        raise UsageError(f"the model must return [B, classes] logits first for Grad-CAM; it returned {shape}")
    chosen = _choose(logits, targets, images.device)
    score = logits.gather(1, chosen[:, None]).sum()
    raw = _weighted_activation(
        score, activation, layer, f"the logits do not depend on {layer!r} in a way autograd can follow"
    )
    return _Part(raw, logits.detach(), chosen)


def _weighted_activation(score: Tensor, activation: Tensor, layer: str, unused: str) -> Tensor:
    """Grad-CAM's equation: ReLU of the activation's channels weighted by the spatial mean of the score's
    gradient. ``unused`` says (without "; choose another layer") why the score may not reach the layer."""
    try:
        (grads,) = torch.autograd.grad(score, activation, allow_unused=True)
    except RuntimeError as exc:  # the model's (or compiled) graph cannot be differentiated back to the layer
        raise CaptureError(f"the backward pass to {layer!r} failed: {describe(exc)}") from exc
    if grads is None:
        raise UsageError(f"{unused}; choose another layer")
    weights = grads.float().mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * activation.detach().float()).sum(dim=1))


def _grad_cam_library(
    model: nn.Module,
    module: nn.Module | None,
    method: str,
    images: Tensor,
    targets: Tensor,
    batch_size: int | None,
) -> Tensor:
    """A pytorch-grad-cam method's map before its normalisation and resizing."""
    import pytorch_grad_cam
    from pytorch_grad_cam.ablation_layer import AblationLayer
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    base = getattr(pytorch_grad_cam, _GRAD_CAM_CLASSES[method])
    recorder = _recording_class(base)
    if method == "fullgrad":
        cam = recorder(model=model, target_layers=[])
    elif method == "ablationcam":
        cam = recorder(model=model, target_layers=[module], ablation_layer=AblationLayer(), batch_size=batch_size or 32)
    else:
        cam = recorder(model=model, target_layers=[module])
    if method == "scorecam":
        cam.batch_size = batch_size or 16  # the library reads this attribute
    copy_downstream = module.register_forward_hook(_hand_on_copy) if module is not None else None
    parent, child = _parent_of(model, module)
    x = images.detach().clone().requires_grad_(bool(cam.uses_gradients))
    try:
        with _quiet_progress():
            cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    finally:
        cam.activations_and_grads.release()
        if copy_downstream is not None:
            copy_downstream.remove()
        if parent is not None and parent._modules[child] is not module:  # AblationCAM swaps the layer
            parent._modules[child] = module
    return torch.as_tensor(np.maximum(cam.raw_maps[0], 0), dtype=torch.float32)


def _recording_class(base: type) -> type:
    """``base`` with its map kept before the library normalises and resizes it."""

    class Recording(base):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.raw_maps: list[np.ndarray] = []

        def get_cam_image(self, *args: Any, **kwargs: Any) -> np.ndarray:
            cam = super().get_cam_image(*args, **kwargs)
            self.raw_maps.append(cam)
            return cam

        def aggregate_multi_layers(self, cam_per_target_layer: np.ndarray) -> np.ndarray:
            if base.__name__ == "FullGrad":  # FullGrad sums its layers without get_cam_image
                self.raw_maps.append(np.sum(cam_per_target_layer, axis=1))
            return super().aggregate_multi_layers(cam_per_target_layer)

    return Recording


def _captum(
    model: nn.Module,
    module: nn.Module | None,
    layer: str,
    method: str,
    images: Tensor,
    targets: Tensor,
    batch_size: int | None,
) -> Tensor:
    """|channel sum| of a captum pixel attribution, at input resolution."""
    from captum.attr import GuidedBackprop, IntegratedGradients, Occlusion

    x = images.detach().clone()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\.")
        if method == "integrated_gradients":
            steps_per_pass = max(1, (batch_size or 8 * len(x)) // len(x))
            attribution = IntegratedGradients(model).attribute(
                x, target=targets, internal_batch_size=steps_per_pass * len(x)
            )
        elif method == "occlusion":
            side = max(1, round(min(x.shape[-2:]) / 8))
            stride = max(1, side // 2)
            attribution = Occlusion(model).attribute(
                x,
                target=targets,
                sliding_window_shapes=(x.shape[1], side, side),
                strides=(x.shape[1], stride, stride),
                baselines=0.0,
                perturbations_per_eval=max(1, (batch_size or 64) // len(x)),
            )
        else:  # guided_gradcam: guided backprop times the true Grad-CAM, upsampled bilinearly
            if module is None:
                raise CaptureError(f"{method} needs a layer that runs as a module; {layer!r} is a returned output")
            cam = _fast_gradcam(model, module, layer, x, targets.tolist()).raw
            guided = GuidedBackprop(model).attribute(x, target=targets)
            attribution = guided * upsample(cam, cast("tuple[int, int]", tuple(x.shape[-2:])))[:, None]
    return attribution.detach().float().sum(dim=1).abs()


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _prepared(model: nn.Module) -> Iterator[None]:
    """Eval mode and parameters without ``requires_grad`` for the call; everything restored."""
    params = list(model.parameters())
    state = [(p, p.requires_grad, p.grad) for p in params]
    with eval_mode(model):
        try:
            for p in params:
                p.requires_grad_(False)
            yield
        finally:
            for p, requires_grad, grad in state:
                p.requires_grad_(requires_grad)
                p.grad = grad


def _forward(model: nn.Module, images: Tensor, *, grad: bool) -> Tensor:
    """Run the model and return its ``[B,K]`` logits."""
    with torch.set_grad_enabled(grad):
        logits = first_tensor(run_forward(model, images))
    if logits is None or logits.dim() != 2 or logits.shape[0] != images.shape[0]:
        shape = None if logits is None else tuple(logits.shape)
        raise UsageError(f"the model must return [B, classes] logits for Grad-CAM; it returned {shape}")
    return logits


def _choose(logits: Tensor, targets: list[int] | None, device: torch.device) -> Tensor:
    """The classes to explain on ``device``: the predicted ones, or ``targets`` checked on the host."""
    if targets is None:
        return logits.detach().argmax(dim=1)
    _check_range(targets, logits.shape[1])
    return to_device(targets, device, torch.long)


def _check_feature_map(output: Any, layer: str) -> None:
    if not isinstance(output, Tensor) or output.dim() != 4:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise UsageError(f"layer {layer!r} outputs {shape}; Grad-CAM needs a layer that outputs [B,C,H,W]")


def _hand_on_copy(_module: nn.Module, _inputs: Any, output: Any) -> Any:
    """Forward hook: later in-place operations of the model change a copy, not the output."""
    return output.clone() if isinstance(output, Tensor) else None


def _parent_of(model: nn.Module, module: nn.Module | None) -> tuple[nn.Module | None, str]:
    if module is None:
        return None, ""
    for parent in model.modules():
        for child, candidate in parent._modules.items():
            if candidate is module:
                return parent, child
    return None, ""


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Hide the libraries' progress bars (stderr) while keeping their warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    for item in caught:
        warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)


def _chunks(
    images: Tensor, targets: list[int] | None, batch_size: int | None
) -> Iterator[tuple[Tensor, list[int] | None]]:
    step = batch_size or len(images)
    for start in range(0, len(images), step):
        yield images[start : start + step], None if targets is None else targets[start : start + step]


def _joined(tensors: list[Tensor]) -> Tensor:
    """The chunks' tensors as one (no copy when there is one chunk)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _returned_tensors(value: Any) -> list[Tensor]:
    """The tensors a forward returns, in order (a tensor, a tuple or list, or a dict's values)."""
    if isinstance(value, Tensor):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (tuple, list)) else []
    return [item for item in items if isinstance(item, Tensor)]


def _shape_of(value: Any) -> Any:
    return tuple(value.shape) if isinstance(value, Tensor) else None


# --------------------------------------------------------------------------- automatic layer


class _Event(NamedTuple):
    name: str
    key: tuple[Any, ...] | None  # identity of a feature-map output at the moment it was produced
    from_image: bool
    pooling: bool
    output: Tensor | None  # kept alive so no later tensor reuses its memory during the probe


def _zoo_cam_layer(model: nn.Module) -> str | None:
    """The registry's ``cam_layer`` when ``model`` is one of attnviz's architectures."""
    from attnviz import models

    names = {name for name, _ in model.named_modules()}
    for arch in models.list_architectures():
        spec = models.get_spec(arch)
        factory = spec.factory
        same_class = type(model) is factory or (isinstance(factory, type) and type(model).__name__ == factory.__name__)
        if same_class and spec.cam_layer in names:
            return spec.cam_layer
    return None


def _traced_layer(model: nn.Module, probe: Tensor) -> str:
    return _pick_layer(_trace_outputs(model, probe), model)


def _returned_map(model: nn.Module, probe: Tensor) -> str:
    """A TorchScript model's Grad-CAM layer: the last feature map its forward returns (``"output[i]"``)."""
    with _prepared(model), torch.no_grad():
        returned = _returned_tensors(run_forward(model, probe))
    found = [i for i, t in enumerate(returned) if t.dim() == 4 and t.shape[-2:].numel() > 1]
    if not found:
        shapes = ", ".join(str(list(t.shape)) for t in returned) or "no tensor"
        raise UsageError(
            f"Grad-CAM needs a feature map, and this TorchScript model returns only {shapes}: layers inside "
            "TorchScript code are not visible; return the feature map from forward (logits, features) or use "
            "a pixel-level method (integrated_gradients, occlusion)"
        )
    return f"output[{found[-1]}]"


def _trace_outputs(model: nn.Module, probe: Tensor) -> list[_Event]:
    """Every submodule call of one no-grad forward pass, in the order the calls end."""
    events: list[_Event] = []

    def record(name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not (isinstance(output, Tensor) and output.dim() == 4 and output.shape[-2:].numel() > 1):
                events.append(_Event(name, None, False, False, None))
                return
            key = (output.data_ptr(), tuple(output.shape), output.stride(), output._version)
            pooling = isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))
            events.append(_Event(name, key, first_tensor(inputs) is probe, pooling, output))

        return hook

    handles = [
        m.register_forward_hook(record(n))
        for n, m in model.named_modules()
        if n and not isinstance(m, torch.jit.ScriptModule)  # no hook enters compiled code
    ]
    try:
        with _prepared(model), torch.no_grad():
            run_forward(model, probe)
    finally:
        for handle in handles:
            handle.remove()
    return events


def _pick_layer(events: list[_Event], model: nn.Module) -> str:
    maps = [e for e in events if e.key is not None and not e.pooling]
    if not maps:
        raise UsageError(
            f"{type(model).__name__} computes no 4-D feature map with more than one position; pass layer= explicitly"
        )
    last = maps[-1]
    same = [(order, e) for order, e in enumerate(maps) if e.key == last.key]
    inner = [(order, e) for order, e in same if not e.from_image] or same
    return min(inner, key=lambda item: (item[1].name.count("."), -item[0]))[1].name
