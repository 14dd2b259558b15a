"""Numbers that run the model: faithfulness (deletion/insertion) and the parameter-randomisation sanity check.

* Faithfulness to the model: :func:`deletion_insertion` (Petsiuk et al. 2018).
* Sanity: :func:`randomisation_sanity`, cascading model-parameter randomisation (Adebayo et
  al. 2018).

The model runs through :mod:`attnviz.runtime.model`: inputs on its device and dtype, eval mode with
every submodule's mode restored, and a failing forward pass as a one-line :class:`CaptureError`.
``attnviz/METRICS.md`` gives every definition with its formula and source.
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnviz.explain.array_metrics import (
    _NON_FINITE_MAPS,
    _batched,
    _check_map_batch,
    _maps,
    _positive_int,
    _resized,
    _trapezoid,
    spearman,
    top_region_iou,
)
from attnviz.io.inputs import as_image_batch
from attnviz.runtime.errors import CaptureError, UsageError, describe
from attnviz.runtime.model import eval_mode, run_forward, to_model
from attnviz.runtime.transfer import start_to_host, to_device, to_host, wait_for

__all__ = ["BASELINES", "Initializer", "Targets", "deletion_insertion", "randomisation_sanity"]

#: Named baselines of :func:`deletion_insertion` (a tensor is accepted too).
BASELINES: tuple[str, ...] = ("blur", "zero", "mean")

Targets = int | Sequence[int] | Tensor | None
Initializer = Callable[[nn.Module], None]

_log = logging.getLogger(__name__)

#: Perturbed images run in both memory formats before channels-last batches are used, and how far
#: (absolute) their target probabilities may be apart: float rounding is far below it.
_PROBE = 4
_PROBE_TOLERANCE = 1e-4


# --------------------------------------------------------------------------- faithfulness


def deletion_insertion(
    model: nn.Module,
    images: Tensor,
    saliency_maps: Any,
    targets: Targets = None,
    *,
    steps: int = 32,
    baseline: str | Tensor = "blur",
    batch_size: int = 64,
    blur_sigma: float = 5.0,
    channels_last: bool | None = None,
) -> dict[str, np.ndarray]:
    """Deletion and insertion curves and their areas (Petsiuk et al. 2018, RISE).

    Pixels are ranked by decreasing saliency (ties in row-major order; the map is resized
    bilinearly to the image size first). After step ``k`` of ``steps`` the first
    ``n_k = round(k·H·W/steps)`` pixels (all channels of each) are changed:

    * deletion: the image with those pixels replaced by the baseline's pixels;
    * insertion: the baseline with those pixels replaced by the image's pixels.

    Each curve is the softmax probability of the target class after each step, ``k = 0..steps``,
    against the changed fraction ``n_k/(H·W)``; its area is the trapezoidal rule over [0, 1]. A
    faithful map has a low deletion AUC (the probability falls as soon as the salient pixels
    go) and a high insertion AUC.

    The baseline lives in the model's input space (the images as given, usually normalised):
    ``"zero"`` is a tensor of zeros, which for normalised images is the data set's mean
    colour (black for images in [0, 1]); ``"mean"`` is each image's per-channel mean;
    ``"blur"`` is the image under a Gaussian blur of ``blur_sigma`` pixels (replicate padding;
    RISE blurs with σ = 5 for insertion). Blur and mean do not depend on the normalisation;
    a ``[C,H,W]`` or ``[B,C,H,W]`` tensor is used as given.

    The model runs in eval mode under ``torch.no_grad`` on batches of ``batch_size`` perturbed
    images; its train/eval mode is restored afterwards. The ranking, the perturbed images and
    the probabilities stay on the model's device; the curves come to the host once, at the end.
    On the CPU the perturbed batches are channels-last by default when the model gives the same
    probabilities on them (up to float rounding), which is faster (``cbam_cnn``: 1.7× on one
    thread; ``attnviz/METRICS.md``).

    Source: V. Petsiuk, A. Das, K. Saenko. "RISE: Randomized Input Sampling for Explanation of
    Black-box Models." BMVC 2018 (its causal metrics).

    Args:
        model: A classifier returning ``[B,K]`` logits.
        images: ``[B,C,H,W]`` (or ``[C,H,W]``) images as the model takes them.
        saliency_maps: ``[B,h,w]`` (or ``[h,w]``) maps, higher = more important.
        targets: Class per image (one int for all); ``None``: each image's predicted class.
        steps: Number of steps (at most ``H·W``; more are reduced to ``H·W``).
        baseline: ``"blur"``, ``"zero"``, ``"mean"`` or a tensor.
        batch_size: Perturbed images per forward pass.
        blur_sigma: Standard deviation of the blur baseline, in pixels.
        channels_last: Give the model the perturbed batches in ``torch.channels_last`` memory
            format; ``None``: on the CPU only. Four perturbed images run in both formats first:
            when the model fails on channels-last ones (as ``x.view(-1, C*H*W)`` on a feature
            map does) or gives other probabilities (code that reads the memory as contiguous),
            every batch is contiguous; so are the batches after one it fails on.

    Returns:
        ``deletion_auc`` and ``insertion_auc`` ``[B]``, ``deletion_curve`` and
        ``insertion_curve`` ``[B, steps+1]``, ``fractions`` ``[steps+1]`` and ``targets`` ``[B]``.

    Raises:
        UsageError: Bad images, maps, targets, steps, baseline or batch size, or a model that
            does not return ``[B,K]`` logits.
        CaptureError: The model's forward pass failed.
    """
    batch = to_model(as_image_batch(images), model)
    maps, finite = _device_maps(saliency_maps, len(batch), batch.device)
    pixels = batch.shape[-2] * batch.shape[-1]
    counts = _step_counts(pixels, _positive_int(steps, "steps"))
    substrate = _baseline(batch, baseline, blur_sigma)
    ranks = _ranks(_resized(maps, batch.shape[-2:]))
    size = _positive_int(batch_size, "batch_size")
    path = _Path(batch, substrate, ranks, to_device(counts, batch.device))
    layout = _PerturbedLayout(batch.device.type == "cpu" if channels_last is None else bool(channels_last))
    with eval_mode(model), torch.no_grad():
        chosen, top = _targets(model, batch, targets)
        on_device = _curves(model, path, chosen, top, size, layout)
    host = to_host({"deletion": on_device[0], "insertion": on_device[1], "targets": chosen, "finite": finite})
    if not bool(host["finite"]):
        raise UsageError(_NON_FINITE_MAPS)
    fractions = counts.double().numpy() / pixels
    deletion, insertion = host["deletion"].numpy(), host["insertion"].numpy()
    return {
        "deletion_auc": _trapezoid(fractions, deletion),
        "insertion_auc": _trapezoid(fractions, insertion),
        "deletion_curve": deletion,
        "insertion_curve": insertion,
        "fractions": fractions,
        "targets": host["targets"].numpy(),
    }


# --------------------------------------------------------------------------- sanity


def randomisation_sanity(
    model: nn.Module,
    images: Tensor,
    *,
    method: str = "gradcam",
    layer: str | nn.Module | None = None,
    targets: Targets = None,
    order: str = "cascading",
    seed: int = 0,
    depth: int | None = None,
    steps: int | None = None,
    initializer: Initializer | None = None,
    batch_size: int | None = None,
) -> list[dict[str, Any]]:
    """Model-parameter randomisation test (Adebayo et al. 2018).

    On a deep copy of ``model`` in eval mode (the user's model is never touched), the modules
    that own parameters or buffers are re-initialised from the logits downwards, in the reverse
    of the order in which a forward pass finishes them, and the maps of ``method``
    (:func:`attnviz.explain.cam.gradcam`) are recomputed for the same target classes after each step.
    ``order="cascading"`` keeps earlier steps randomised (top layers first, then deeper);
    ``order="independent"`` restores the trained weights before randomising each step's modules.
    A map that explains what the model learned decorrelates from the original as more layers
    are randomised; one that stays similar reflects the input more than the model.

    Re-initialisation is each module's ``reset_parameters()`` (PyTorch's own initialisation:
    random for convolutions and linear layers; weight 1, bias 0 and fresh running statistics
    for batch norm); a module without one gets each parameter drawn from a normal with the
    parameter's own standard deviation (0.02 when it has none). The random draws come from
    ``torch.manual_seed`` derived from ``(seed, step)`` inside ``torch.random.fork_rng``, so the
    caller's random state is unchanged. ``initializer(module)`` replaces that rule (it runs
    inside the same seeded fork). The maps stay on the model's device until one transfer at the
    end (the original's maps and classes come to the host once before the steps).

    Source: J. Adebayo, J. Gilmer, M. Muelly, I. Goodfellow, M. Hardt, B. Kim. "Sanity Checks
    for Saliency Maps." NeurIPS 2018 (the model parameter randomisation test).

    Args:
        model: The classifier (left unchanged).
        images: ``[B,C,H,W]`` images as the model takes them.
        method: Any :data:`attnviz.explain.cam.METHODS` entry.
        layer: Target layer name (``None``: :func:`attnviz.explain.cam.resolve_cam_layer`).
        targets: Classes to explain (``None``: the original model's predictions); the same
            classes are explained at every step.
        order: ``"cascading"`` or ``"independent"``.
        seed: Seed of the re-initialisation.
        depth: Group modules whose names share their first ``depth`` dotted components into one
            step (``1``: top-level blocks); ``None``: one step per module.
        steps: Merge the groups into at most this many contiguous steps of near-equal size.
        initializer: Custom re-initialisation of one module.
        batch_size: Passed to :func:`attnviz.explain.cam.gradcam`.

    Returns:
        One dict per step, step 0 being the original model: ``step``, ``layers`` (modules
        re-initialised at this step), ``randomised`` (all modules re-initialised in the copy
        now), ``spearman`` ``[B]`` (0 where this step's map is constant, e.g. a Grad-CAM that
        the ReLU zeroes everywhere: no rank information about the original is left; ``nan``
        only where the original map itself is constant), ``spearman_mean`` (mean over the
        images with a defined ρ; ``nan`` if none) and ``n`` (their number), ``constant``
        ``[B]`` (this step's map is constant), ``top20_iou`` ``[B]`` and ``top20_iou_mean``,
        ``maps`` ``[B,H,W]`` float32 in [0, 1] and ``targets`` ``[B]``.

    Raises:
        UsageError: Bad order, depth, steps, images, layer, method or targets.
        CaptureError: The model's forward or backward pass failed.
    """
    from attnviz.explain.cam import gradcam, resolve_cam_layer

    if order not in ("cascading", "independent"):
        raise UsageError(f"order must be 'cascading' or 'independent', got {order!r}")
    batch = as_image_batch(images)
    twin = _copy_of(model)
    batch = to_model(batch, twin)
    layer_name = resolve_cam_layer(twin, batch) if layer is None else _layer_name(model, layer)
    original = gradcam(twin, batch, targets, layer_name, method, batch_size=batch_size)
    first = to_host({"maps": original.maps.detach().float(), "targets": original.targets})
    reference, chosen = first["maps"].numpy(), first["targets"].numpy()
    classes = chosen.tolist()
    groups = _groups(_parameterised_in_forward_order(twin, batch[:1])[::-1], depth, steps)
    pristine = {key: value.clone() for key, value in twin.state_dict().items()} if order == "independent" else {}
    randomised, pending = [], []
    done: list[str] = []
    for step, names in enumerate(groups, start=1):
        if order == "independent":
            twin.load_state_dict(pristine)
            done = []
        _reinitialise(twin, names, initializer, seed, step)
        done = [*done, *names]
        maps = gradcam(twin, batch, classes, layer_name, method, batch_size=batch_size).maps
        pending.append(start_to_host(maps.detach().float()))  # no wait: read after wait_for below
        randomised.append((step, names, done))
    wait_for([batch.device])
    stacked = torch.stack(pending).numpy() if pending else np.empty((0, *reference.shape), np.float32)
    records = [_sanity_record(0, [], [], reference, reference, chosen)]
    for (step, names, done), maps in zip(randomised, stacked):
        records.append(_sanity_record(step, names, done, reference, maps, chosen))
    return records


# --------------------------------------------------------------------------- helpers: models


def _logits(model: nn.Module, images: Tensor) -> Tensor:
    """``[B,K]`` logits (the first tensor of a tuple or list output); a failing forward is a :class:`CaptureError`."""
    output = run_forward(model, images)
    while isinstance(output, (tuple, list)) and output:
        output = output[0]
    if not isinstance(output, Tensor) or output.dim() != 2 or output.shape[0] != images.shape[0]:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise UsageError(f"the model must return [B, classes] logits; it returned {shape}")
    return output


def _targets(model: nn.Module, images: Tensor, targets: Targets) -> tuple[Tensor, int]:
    """Class index per image on the images' device (the predicted classes when ``targets`` is None)
    and the largest given class (``-1`` for predictions), which :func:`_probabilities` checks."""
    count = len(images)
    if targets is None:
        return _logits(model, images).argmax(dim=1), -1
    given: Any = targets  # narrowed step by step to a list of class indices
    if isinstance(given, Tensor):
        if given.is_floating_point() or given.is_complex() or given.dim() > 1:
            raise UsageError(f"targets must hold integer class indices, got {given.dtype} {tuple(given.shape)}")
        given = given.item() if given.dim() == 0 else given.tolist()
    if isinstance(given, numbers.Integral) and not isinstance(given, bool):
        given = [int(given)] * count
    if not isinstance(given, Sequence) or len(given) != count:
        raise UsageError(f"targets must be one class index or one per image ({count})")
    if any(isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 0 for t in given):
        raise UsageError(f"targets must be class indices >= 0, got {list(given)!r}")
    classes = [int(t) for t in given]
    return to_device(classes, images.device, torch.long), max(classes)


def _step_counts(pixels: int, steps: int) -> Tensor:
    """Pixels changed after each step: ``round(k·pixels/steps)``, ``k = 0..steps``."""
    steps = min(steps, pixels)
    return torch.round(torch.arange(steps + 1, dtype=torch.float64) * pixels / steps).long()


def _device_maps(saliency: Any, count: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``[B,h,w]`` maps on ``device`` in the ranking dtype and a flag: all of them finite.

    Maps from the host are checked at once; maps already on another device are checked by the
    flag, which comes to the host with the results (no wait before the model runs).
    """
    dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    if isinstance(saliency, Tensor) and saliency.device.type != "cpu":
        values = saliency.detach()
        values = values[None] if values.dim() == 2 else values
        _check_map_batch(values, count)
        values = values.to(device, dtype)
        return values, torch.isfinite(values).all()
    values = _maps(_batched(saliency), count)  # on the CPU: shape and values checked
    return to_device(values, device, dtype), torch.tensor(True)


def _ranks(maps: Tensor) -> Tensor:
    """``[B,H,W]`` rank of every pixel by decreasing saliency (0 = most salient, ties row-major)."""
    flat = maps.flatten(1)
    order = torch.argsort(-flat, dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order).contiguous())
    return ranks.view(maps.shape)


def _baseline(images: Tensor, baseline: str | Tensor, sigma: float) -> Tensor:
    """The ``[B,C,H,W]`` image that removed pixels take their values from."""
    if isinstance(baseline, Tensor):
        value = to_device(baseline.detach(), images.device, images.dtype)
        if value.dim() == 3:
            value = value[None]
        if value.dim() != 4 or value.shape[1:] != images.shape[1:] or value.shape[0] not in (1, len(images)):
            raise UsageError(
                f"a baseline tensor must be [C,H,W] or [B,C,H,W] like the images, got {tuple(value.shape)}"
            )
        return value.expand_as(images)
    if baseline == "zero":
        return torch.zeros_like(images)
    if baseline == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    if baseline == "blur":
        if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not sigma > 0:
            raise UsageError(f"blur_sigma must be a positive number of pixels, got {sigma!r}")
        return _gaussian_blur(images, float(sigma))
    raise UsageError(f"unknown baseline {baseline!r}; use one of {', '.join(BASELINES)} or a tensor")


def _gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur, kernel radius ``ceil(3σ)``, replicate padding."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = to_device(kernel / kernel.sum(), images.device, images.dtype)
    channels = images.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    padded = F.pad(images, (radius, radius, 0, 0), mode="replicate")
    rows = F.conv2d(padded, horizontal, groups=channels)
    padded = F.pad(rows, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(padded, vertical, groups=channels)


class _Path(NamedTuple):
    """What the deletion and insertion paths are made of, on the model's device."""

    images: Tensor  # [B,C,H,W]
    substrate: Tensor  # [B,C,H,W] the baseline
    ranks: Tensor  # [B,H,W] saliency rank of each pixel
    counts: Tensor  # [steps+1] pixels changed after each step


class _PerturbedLayout:
    """The memory format of the perturbed batches: channels-last when asked for and the model gives
    the same probabilities on a probe of the first batch in both formats, until it fails on one."""

    def __init__(self, channels_last: bool) -> None:
        self.channels_last = channels_last
        self._probed = not channels_last

    def probabilities(self, model: nn.Module, images: Tensor, targets: Tensor, top: int) -> Tensor:
        """:func:`_probabilities` of ``images``, given channels-last while the model takes them."""
        if not self._probed:
            self._probed = True
            self.channels_last = self._agrees(model, images[:_PROBE], targets[:_PROBE], top)
        if self.channels_last:
            try:
                return _probabilities(model, images.clone(memory_format=torch.channels_last), targets, top)
            except CaptureError as error:  # the model's own code failed on the format: contiguous from now on
                self._off(error)
        return _probabilities(model, images, targets, top)  # as built: the failed try had a copy

    def _agrees(self, model: nn.Module, images: Tensor, targets: Tensor, top: int) -> bool:
        """Whether ``model`` takes channels-last ``images`` and gives their probabilities as on
        contiguous ones (a model that reads its input's memory as if it were contiguous does not)."""
        expected = _probabilities(model, images, targets, top)  # a failure here is the model's own: raised
        try:
            probed = _probabilities(model, images.clone(memory_format=torch.channels_last), targets, top)
        except CaptureError as error:
            self._off(error)
            return False
        if not torch.allclose(probed, expected, rtol=0.0, atol=_PROBE_TOLERANCE):  # one host sync per call
            _log.debug("deletion/insertion: contiguous batches (the model's probabilities change with the format)")
            return False
        return True

    def _off(self, error: CaptureError) -> None:
        self.channels_last = False
        _log.debug("deletion/insertion: contiguous batches from now on (%s)", error.args[0] if error.args else "")


def _curves(
    model: nn.Module, path: _Path, targets: Tensor, top: int, batch_size: int, layout: _PerturbedLayout
) -> tuple[Tensor, Tensor]:
    """``[B, steps+1]`` target probabilities along the deletion and the insertion path, on the device.

    The two paths share their ends (deletion starts at the image, where insertion ends, and ends at
    the baseline, where insertion starts), so each image is run ``2·steps`` times, not ``2·steps + 2``:
    column 0 is the image, 1 the baseline, then the deletion's inner steps, then the insertion's.
    Both paths go through the model in the same batches."""
    images, counts = path.images, path.counts
    inner = counts[1:-1]
    column_counts = torch.cat([counts[:1], counts[:1], inner, inner])  # pixels changed in each column
    column_inserts = torch.zeros_like(column_counts, dtype=torch.bool)
    column_inserts[1] = True
    column_inserts[2 + len(inner) :] = True
    columns = len(column_counts)
    total = len(images) * columns
    probabilities = []
    for start in range(0, total, batch_size):
        index = torch.arange(start, min(start + batch_size, total), device=images.device)
        which, column = index // columns, index % columns
        changed = path.ranks[which] < column_counts[column][:, None, None]
        from_baseline = (changed != column_inserts[column][:, None, None])[:, None]  # insertion: where unchanged
        perturbed = torch.where(from_baseline, path.substrate[which], images[which])
        probabilities.append(layout.probabilities(model, perturbed, targets[which], top))
    table = torch.cat(probabilities).view(len(images), columns)
    image, baseline = table[:, :1], table[:, 1:2]
    deletion = torch.cat([image, table[:, 2 : 2 + len(inner)], baseline], dim=1)
    insertion = torch.cat([baseline, table[:, 2 + len(inner) :], image], dim=1)
    return deletion, insertion


def _probabilities(model: nn.Module, images: Tensor, targets: Tensor, top: int) -> Tensor:
    """Softmax probability (float64) of each image's target; ``top`` (the largest target) is checked first."""
    logits = _logits(model, images)
    if top >= logits.shape[1]:
        raise UsageError(f"target class {top} is out of range for a model with {logits.shape[1]} classes")
    return logits.double().softmax(dim=1).gather(1, targets[:, None])[:, 0]


def _copy_of(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode."""
    try:
        twin = copy.deepcopy(model)
    except Exception as exc:  # whatever the model's own __deepcopy__ raises
        raise UsageError(f"the sanity check needs a deep copy of the model, which failed: {describe(exc)}") from exc
    return twin.eval()


def _layer_name(model: nn.Module, layer: str | nn.Module) -> str:
    """The name of ``layer`` in ``model`` (names pass through; :func:`gradcam` checks them)."""
    if not isinstance(layer, nn.Module):
        return layer
    for name, module in model.named_modules():
        if module is layer and name:
            return name
    raise UsageError(f"the given {type(layer).__name__} module is not a submodule of the model; pass its name")


def _parameterised_in_forward_order(model: nn.Module, probe: Tensor) -> list[str]:
    """Names of modules that own parameters or buffers, in the order a forward pass finishes them."""
    finished: list[str] = []
    owners = {
        name: module
        for name, module in model.named_modules()
        if any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))
    }

    def record(name: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            if name not in finished:
                finished.append(name)

        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in owners.items()]
    try:
        with torch.no_grad():
            _logits(model, probe)
    finally:
        for handle in handles:
            handle.remove()
    if not finished:
        raise UsageError("the model has no module with parameters to randomise")
    return finished


def _groups(names: list[str], depth: int | None, steps: int | None) -> list[list[str]]:
    """Consecutive modules sharing their first ``depth`` name parts, merged into ``steps`` steps."""
    if depth is None:
        groups = [[name] for name in names]
    else:
        depth = _positive_int(depth, "depth")
        groups = []
        for name in names:
            key = ".".join(name.split(".")[:depth])
            if groups and ".".join(groups[-1][-1].split(".")[:depth]) == key:
                groups[-1].append(name)
            else:
                groups.append([name])
    if steps is None:
        return groups
    count = min(_positive_int(steps, "steps"), len(groups))
    bounds = np.linspace(0, len(groups), count + 1).round().astype(int)
    return [[name for group in groups[a:b] for name in group] for a, b in zip(bounds[:-1], bounds[1:])]


def _reinitialise(model: nn.Module, names: list[str], initializer: Initializer | None, seed: int, step: int) -> None:
    """Re-initialise the named modules under a seeded fork of torch's random state."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    derived = int(np.random.SeedSequence([int(seed), step]).generate_state(1)[0])
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(derived)
        for name in names:
            module = model.get_submodule(name)
            (initializer or _default_reinit)(module)


def _default_reinit(module: nn.Module) -> None:
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        reset()
        return
    for parameter in module.parameters(recurse=False):
        std = parameter.detach().std() if parameter.numel() > 1 else parameter.new_zeros(())
        scale = torch.where(std > 0, std, 0.02)  # on the device: no wait for the host
        parameter.normal_(0.0, 1.0).mul_(scale)


def _sanity_record(
    step: int, names: list[str], done: list[str], reference: np.ndarray, maps: np.ndarray, targets: np.ndarray
) -> dict[str, Any]:
    flat, original = maps.reshape(len(maps), -1), reference.reshape(len(reference), -1)
    constant = (flat == flat[:, :1]).all(axis=1)
    informative = ~(original == original[:, :1]).all(axis=1)
    # A map that randomisation made constant keeps no rank information about the original: ρ = 0.
    rho = np.array(
        [
            (0.0 if flat_constant else spearman(a, b)) if has_ranks else float("nan")
            for a, b, flat_constant, has_ranks in zip(reference, maps, constant, informative)
        ]
    )
    iou = np.array([top_region_iou(a, b, 0.2) for a, b in zip(reference, maps)])
    return {
        "step": step,
        "layers": list(names),
        "randomised": list(done),
        "constant": constant,
        "spearman": rho,
        "spearman_mean": _nanmean(rho),
        "n": int(np.isfinite(rho).sum()),
        "top20_iou": iou,
        "top20_iou_mean": float(iou.mean()),
        "maps": maps.astype(np.float32),
        "targets": targets.copy(),
    }


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")
