"""Numbers about maps: agreement, localisation, faithfulness, sanity, gate statistics.

* Agreement of two maps: :func:`top_fraction_mask`, :func:`top_region_iou`, :func:`spearman`,
  :func:`map_agreement`.
* Localisation against a ground-truth mask: :func:`pointing_game` (Zhang et al. 2016) and
  :func:`energy_pointing_game` (Wang et al. 2020), each with a batched twin.
* Faithfulness to the model: :func:`deletion_insertion` (Petsiuk et al. 2018).
* Sanity: :func:`randomisation_sanity`, cascading model-parameter randomisation (Adebayo et
  al. 2018).
* Attention gates over a set of images: :func:`gate_statistics`, :func:`channel_selectivity`,
  :func:`class_selectivity` (motivated by the excitation analysis of Hu et al.'s SE networks).

Maps and masks may be numpy arrays or torch tensors; results are floats or numpy arrays.
``attnviz/METRICS.md`` (shipped with the package) gives every definition with its formula and source.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnviz.io.inputs import as_image_batch
from attnviz.runtime.errors import AttnvizError, CaptureError, UsageError

__all__ = [
    "BASELINES",
    "channel_selectivity",
    "class_selectivity",
    "deletion_insertion",
    "energy_pointing_game",
    "energy_pointing_game_batch",
    "gate_statistics",
    "map_agreement",
    "pointing_game",
    "pointing_game_batch",
    "randomisation_sanity",
    "spearman",
    "top_fraction_mask",
    "top_region_iou",
]

#: Named baselines of :func:`deletion_insertion` (a tensor is accepted too).
BASELINES: tuple[str, ...] = ("blur", "zero", "mean")

Targets = int | Sequence[int] | Tensor | None
Initializer = Callable[[nn.Module], None]


# --------------------------------------------------------------------------- agreement


def top_fraction_mask(saliency: Any, fraction: float = 0.2) -> np.ndarray:
    """Boolean mask of the ``fraction`` of pixels with the highest values.

    Exactly ``ceil(fraction * H * W)`` pixels are chosen; ties at the boundary go to the
    pixel that comes first in row-major order, so the mask's size never depends on ties.
    """
    values = _as_numpy(saliency).ravel()
    count = max(1, int(np.ceil(fraction * values.size)))
    chosen = np.argsort(-values, kind="stable")[:count]
    mask = np.zeros(values.size, dtype=bool)
    mask[chosen] = True
    return mask.reshape(np.shape(_as_numpy(saliency)))


def top_region_iou(first: Any, second: Any, fraction: float = 0.2) -> float:
    """Intersection over union of the top-``fraction`` regions of two maps of the same shape."""
    a, b = top_fraction_mask(first, fraction), top_fraction_mask(second, fraction)
    if a.shape != b.shape:
        raise UsageError(f"maps must have the same shape, got {a.shape} and {b.shape}")
    return float((a & b).sum() / (a | b).sum())


def spearman(first: Any, second: Any) -> float:
    """Spearman rank correlation of two maps' pixels (ties get their average rank).

    Returns ``nan`` when either map is constant (its ranks have no spread).
    """
    x, y = _average_ranks(_as_numpy(first).ravel()), _average_ranks(_as_numpy(second).ravel())
    if x.shape != y.shape:
        raise UsageError(f"maps must have the same number of pixels, got {x.size} and {y.size}")
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else float("nan")


def map_agreement(first: Any, second: Any) -> dict[str, float]:
    """How much two maps of the same shape agree: ``top20_iou`` and ``spearman``.

    ``top20_iou`` is :func:`top_region_iou` of the top-20% regions, ``spearman`` is
    :func:`spearman` (``nan`` when a map is constant); the two numbers
    :mod:`attnviz.jobs.compare` reports against the baseline.

    Raises:
        UsageError: The maps' shapes differ.
    """
    a, b = _as_numpy(first), _as_numpy(second)
    if a.shape != b.shape:
        raise UsageError(f"maps must have the same shape to compare them, got {a.shape} and {b.shape}")
    return {"top20_iou": top_region_iou(a, b, 0.2), "spearman": spearman(a, b)}


# --------------------------------------------------------------------------- localisation


def pointing_game(saliency: Any, mask: Any, *, tolerance: float = 0) -> bool:
    """Pointing game (Zhang et al. 2016): does the map's maximum fall on the object?

    A hit when the map's maximum lies within ``tolerance`` pixels (Euclidean distance between
    pixel centres, at the mask's resolution) of a mask pixel; ``tolerance=0`` asks for the
    maximum to lie inside the mask. The map is first resized bilinearly
    (``align_corners=False``, as :func:`attnviz.explain.cam.upsample`) to the mask's size when the sizes
    differ. Ties: when several pixels share the maximum value, it is a hit only if every one of
    them is within the tolerance, so a constant map never scores on a mask that leaves pixels
    out. (Bilinear upsampling turns a single peak cell into a 2×2 block of equal maxima around
    the cell's centre.)

    Source: J. Zhang, Z. Lin, J. Brandt, X. Shen, S. Sclaroff. "Top-down Neural Attention by
    Excitation Backprop." ECCV 2016 (their evaluation uses a 15-pixel tolerance at 224 px).

    Args:
        saliency: ``[h,w]`` map (any real values).
        mask: ``[H,W]`` ground truth; nonzero (``True``) pixels are the object.
        tolerance: Radius in pixels at the mask's resolution, >= 0.

    Raises:
        UsageError: Shapes that are not 2-D, an empty mask, a non-finite map or a negative
            tolerance.
    """
    maps, masks = _single(saliency, "saliency"), _single(mask, "mask")
    return bool(pointing_game_batch(maps, masks, tolerance=tolerance)[0])


def pointing_game_batch(maps: Any, masks: Any, *, tolerance: float = 0) -> np.ndarray:
    """:func:`pointing_game` of ``[B,h,w]`` maps against ``[B,H,W]`` masks: ``[B]`` bool hits."""
    tolerance = _check_tolerance(tolerance)
    inside = _masks(masks)
    values = _resized(_maps(maps, len(inside)), inside.shape[-2:])
    peaks = values == values.amax(dim=(1, 2), keepdim=True)
    if tolerance == 0:
        near = inside
    else:
        near = torch.from_numpy(np.stack([_squared_distance(m) <= tolerance**2 + 1e-9 for m in inside.numpy()]))
    return (near | ~peaks).all(dim=2).all(dim=1).numpy()


def energy_pointing_game(saliency: Any, mask: Any) -> float:
    """Energy-based pointing game (Wang et al. 2020): the share of the map's energy on the object.

    ``sum(S⁺ · M) / sum(S⁺)`` with ``S⁺ = max(S, 0)`` the map's non-negative part after
    bilinear resizing to the mask's size (as in :func:`pointing_game`) and ``M`` the 0/1
    mask. In [0, 1]: 1 when all of the map's mass lies on the object; a map spread evenly
    scores the mask's area fraction. An all-zero (or all-negative) map has no energy and
    scores 0.

    Source: H. Wang, Z. Wang, M. Du, F. Yang, Z. Zhang, S. Ding, P. Mardziel, X. Hu.
    "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural Networks."
    CVPR Workshops 2020 (its localisation evaluation).

    Raises:
        UsageError: Shapes that are not 2-D, an empty mask or a non-finite map.
    """
    maps, masks = _single(saliency, "saliency"), _single(mask, "mask")
    return float(energy_pointing_game_batch(maps, masks)[0])


def energy_pointing_game_batch(maps: Any, masks: Any) -> np.ndarray:
    """:func:`energy_pointing_game` of ``[B,h,w]`` maps against ``[B,H,W]`` masks: ``[B]`` floats."""
    inside = _masks(masks)
    energy = _resized(_maps(maps, len(inside)), inside.shape[-2:]).clamp(min=0)
    total = energy.sum(dim=(1, 2))
    on_object = (energy * inside).sum(dim=(1, 2))
    share = torch.where(total > 0, on_object / torch.where(total > 0, total, torch.ones_like(total)), 0.0)
    return share.numpy()


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
    images; its train/eval mode is restored afterwards.

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

    Returns:
        ``deletion_auc`` and ``insertion_auc`` ``[B]``, ``deletion_curve`` and
        ``insertion_curve`` ``[B, steps+1]``, ``fractions`` ``[steps+1]`` and ``targets`` ``[B]``.

    Raises:
        UsageError: Bad images, maps, targets, steps, baseline or batch size, or a model that
            does not return ``[B,K]`` logits.
        CaptureError: The model's forward pass failed.
    """
    batch = _to_model(as_image_batch(images), model)
    maps = _resized(_maps(_batched(saliency_maps), len(batch)), batch.shape[-2:])
    pixels = batch.shape[-2] * batch.shape[-1]
    counts = _step_counts(pixels, _positive_int(steps, "steps"))
    substrate = _baseline(batch, baseline, blur_sigma)
    ranks = _ranks(maps).to(batch.device)
    size = _positive_int(batch_size, "batch_size")
    with _eval_mode(model), torch.no_grad():
        chosen = _targets(model, batch, targets)
        deletion = _curve(model, batch, substrate, ranks, counts.to(batch.device), chosen, False, size)
        insertion = _curve(model, batch, substrate, ranks, counts.to(batch.device), chosen, True, size)
    fractions = counts.double().numpy() / pixels
    return {
        "deletion_auc": _trapezoid(fractions, deletion),
        "insertion_auc": _trapezoid(fractions, insertion),
        "deletion_curve": deletion,
        "insertion_curve": insertion,
        "fractions": fractions,
        "targets": chosen.cpu().numpy(),
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
    inside the same seeded fork).

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
    batch = _to_model(batch, twin)
    layer_name = resolve_cam_layer(twin, batch) if layer is None else _layer_name(model, layer)
    original = gradcam(twin, batch, targets, layer_name, method, batch_size=batch_size)
    reference = original.maps.detach().float().cpu().numpy()
    chosen = original.targets.detach().cpu()
    groups = _groups(_parameterised_in_forward_order(twin, batch[:1])[::-1], depth, steps)
    pristine = {key: value.clone() for key, value in twin.state_dict().items()} if order == "independent" else {}
    records = [_sanity_record(0, [], [], reference, reference, chosen)]
    done: list[str] = []
    for step, names in enumerate(groups, start=1):
        if order == "independent":
            twin.load_state_dict(pristine)
            done = []
        _reinitialise(twin, names, initializer, seed, step)
        done = [*done, *names]
        maps = gradcam(twin, batch, chosen, layer_name, method, batch_size=batch_size).maps
        records.append(_sanity_record(step, names, done, reference, maps.detach().float().cpu().numpy(), chosen))
    return records


# --------------------------------------------------------------------------- gates


def gate_statistics(values: Any, *, open_threshold: float = 0.5) -> dict[str, Any]:
    """How open and how selective a channel gate is over a set of images.

    With ``g[n,c]`` the gate of channel ``c`` on image ``n`` and ``m_c`` its mean over images:

    * ``mean``: overall mean of ``g``; ``channel_mean`` ``[C]``: ``m_c``; ``channel_std`` ``[C]``:
      standard deviation over images per channel (how much the gate depends on the image);
    * ``spread``: standard deviation of ``m_c`` across channels (0: every channel gets the
      same average weight);
    * ``within_image_spread``: mean over images of the standard deviation across channels of
      one image's gate (how unequal the weights are inside one forward pass);
    * ``entropy``: normalised entropy ``-Σ p_c log p_c / log C`` of ``p_c = m_c / Σ m_c``: 1 for
      equal average weights, towards 0 when a few channels take all of it (``nan`` when the
      means are all zero; needs non-negative gates, as sigmoids give);
    * ``fraction_open``: fraction of channels with ``m_c > open_threshold``.

    Standard deviations are population ones (``ddof=0``). Spatial gates ``[N,H,W]`` can be
    passed as ``values.reshape(N, -1)`` (positions act as channels).

    Raises:
        UsageError: ``values`` is not a finite ``[N,C]`` array, or holds negative values.
    """
    g = _gate_values(values)
    means = g.mean(axis=0)
    if (g < 0).any():
        raise UsageError("gate values must be >= 0 (sigmoid outputs); got negative values")
    total = means.sum()
    if total > 0 and g.shape[1] > 1:
        p = means / total
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        entropy = float(-terms.sum() / np.log(g.shape[1]))
    else:
        entropy = float("nan") if total <= 0 else 1.0
    return {
        "images": int(g.shape[0]),
        "channels": int(g.shape[1]),
        "mean": float(g.mean()),
        "channel_mean": means,
        "channel_std": g.std(axis=0),
        "spread": float(means.std()),
        "within_image_spread": float(g.std(axis=1).mean()),
        "entropy": entropy,
        "fraction_open": float((means > open_threshold).mean()),
    }


def channel_selectivity(values: Any, labels: Any) -> np.ndarray:
    """Per channel, the share of the gate's variance over images explained by the class.

    The correlation ratio η² of one-way ANOVA: with ``g[n,c]`` the gate, ``y[n]`` the class,
    ``m_c`` the channel's mean and ``m_{k,c}`` its mean over the ``n_k`` images of class ``k``,
    ``η²_c = Σ_k n_k (m_{k,c} − m_c)² / Σ_n (g[n,c] − m_c)²``, the variance of the class means
    (weighted by class size) over the total variance. In [0, 1]: 0 when every class has the
    same mean gate (class-agnostic), 1 when the gate is constant within each class and
    differs between classes. A channel whose gate never changes carries no class information
    and gets 0. On random, class-independent gates it is about ``(K−1)/(N−1)``, not 0.

    Raises:
        UsageError: Values not a finite ``[N,C]`` array, labels not ``[N]``, or fewer than two
            classes.
    """
    g = _gate_values(values)
    y = _labels(labels, len(g))
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    if len(classes) < 2:
        raise UsageError("class selectivity needs images of at least two classes")
    overall = g.mean(axis=0)
    class_means = np.zeros((len(classes), g.shape[1]))
    np.add.at(class_means, inverse, g)
    class_means /= counts[:, None]
    between = (counts[:, None] * (class_means - overall) ** 2).sum(axis=0)
    total = ((g - overall) ** 2).sum(axis=0)
    scale = np.abs(g).max(axis=0) + 1.0
    varies = total > (1e-12 * scale) ** 2 * len(g)
    return np.where(varies, between / np.where(varies, total, 1.0), 0.0).clip(0.0, 1.0)


def class_selectivity(values: Any, labels: Any) -> float:
    """How class-specific a channel gate is: the mean over channels of :func:`channel_selectivity`.

    Motivation: the analysis of the role of excitation in SE networks (Hu et al.), where the
    average excitations of different classes coincide in early blocks (class-agnostic) and
    separate in later ones (class-specific); this turns that picture into one number in [0, 1].

    Source: J. Hu, L. Shen, S. Albanie, G. Sun, E. Wu. "Squeeze-and-Excitation Networks."
    IEEE TPAMI 42(8), 2020 (CVPR 2018).
    """
    return float(channel_selectivity(values, labels).mean())


# --------------------------------------------------------------------------- helpers: arrays


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    averages = ends - (counts - 1) / 2.0
    return averages[inverse].astype(np.float64)


def _as_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array, dtype=np.float64)


def _as_tensor(array: Any, what: str) -> Tensor:
    """A float64 CPU tensor of an array-like."""
    try:
        if isinstance(array, Tensor):
            return array.detach().to("cpu", torch.float64)
        return torch.as_tensor(np.asarray(array, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{what} must be a numeric array, got {type(array).__name__}") from exc


def _batched(array: Any) -> Tensor:
    """``[B,h,w]`` maps as a float64 tensor; one ``[h,w]`` map becomes a batch of one."""
    tensor = _as_tensor(array, "saliency maps")
    return tensor[None] if tensor.dim() == 2 else tensor


def _single(array: Any, what: str) -> Tensor:
    tensor = _as_tensor(array, what)
    if tensor.dim() != 2:
        raise UsageError(f"{what} must be one [H,W] array, got shape {tuple(tensor.shape)}")
    return tensor[None]


def _maps(maps: Any, count: int) -> Tensor:
    """``[B,h,w]`` finite float64 maps, ``B == count``."""
    values = _as_tensor(maps, "maps")
    if values.dim() != 3 or values.shape[0] != count or values.shape[1] == 0 or values.shape[2] == 0:
        raise UsageError(f"expected {count} saliency map(s) [B,h,w], got shape {tuple(values.shape)}")
    if not torch.isfinite(values).all():
        raise UsageError("saliency maps hold NaN or infinite values")
    return values


def _masks(masks: Any) -> Tensor:
    """``[B,H,W]`` bool masks, none empty."""
    inside = _as_tensor(masks, "masks") != 0
    if inside.dim() == 2:
        inside = inside[None]
    if inside.dim() != 3 or inside.shape[0] == 0:
        raise UsageError(f"masks must be [B,H,W] (or one [H,W]), got shape {tuple(inside.shape)}")
    empty = (~inside.flatten(1).any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise UsageError(f"mask {empty[0]} is empty; the pointing game needs an object in every mask")
    return inside


def _resized(maps: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize (``align_corners=False``) of ``[B,h,w]`` float64 maps to ``size``."""
    size = (int(size[0]), int(size[1]))
    if tuple(maps.shape[-2:]) == size:
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _squared_distance(mask: np.ndarray) -> np.ndarray:
    """Exact squared Euclidean distance of every pixel to the nearest mask pixel."""
    distance = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.rint(distance.astype(np.float64) ** 2)


def _check_tolerance(tolerance: float) -> float:
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not tolerance >= 0:
        raise UsageError(f"tolerance must be a number of pixels >= 0, got {tolerance!r}")
    return float(tolerance)


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise UsageError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _gate_values(values: Any) -> np.ndarray:
    g = _as_numpy(values)
    if g.ndim != 2 or g.shape[0] == 0 or g.shape[1] == 0:
        raise UsageError(f"gate values must be [N,C] (images × channels), got shape {g.shape}")
    if not np.isfinite(g).all():
        raise UsageError("gate values hold NaN or infinite values")
    return g


def _labels(labels: Any, count: int) -> np.ndarray:
    y = np.asarray(labels.detach().cpu().numpy() if hasattr(labels, "detach") else labels)
    if y.shape != (count,):
        raise UsageError(f"labels must be [N] with N = {count} (one per image), got shape {y.shape}")
    return y


def _trapezoid(x: np.ndarray, curves: np.ndarray) -> np.ndarray:
    """Trapezoidal area under each row of ``curves`` over the points ``x``."""
    return ((curves[:, 1:] + curves[:, :-1]) / 2 * np.diff(x)).sum(axis=1)


# --------------------------------------------------------------------------- helpers: models


def _to_model(images: Tensor, model: nn.Module) -> Tensor:
    reference = next(model.parameters(), None)
    if reference is None:
        reference = next(model.buffers(), None)
    if reference is None or not reference.is_floating_point():
        return images
    return images.to(device=reference.device, dtype=reference.dtype)


class _eval_mode:
    """Eval mode for the duration of a ``with`` block; every module's mode restored after."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        for module, training in self.modes:
            module.training = training


def _logits(model: nn.Module, images: Tensor) -> Tensor:
    try:
        output = model(images)
    except AttnvizError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure inside the user's model
        lines = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
        raise CaptureError(f"the model's forward pass failed on input {tuple(images.shape)}: {detail}") from exc
    while isinstance(output, (tuple, list)) and output:
        output = output[0]
    if not isinstance(output, Tensor) or output.dim() != 2 or output.shape[0] != images.shape[0]:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise UsageError(f"the model must return [B, classes] logits; it returned {shape}")
    return output


def _targets(model: nn.Module, images: Tensor, targets: Targets) -> Tensor:
    """Class index per image (validated), or the predicted classes when ``targets`` is None."""
    count = len(images)
    if targets is None:
        return _logits(model, images).argmax(dim=1)
    if isinstance(targets, Tensor):
        if targets.is_floating_point() or targets.is_complex() or targets.dim() > 1:
            raise UsageError(f"targets must hold integer class indices, got {targets.dtype} {tuple(targets.shape)}")
        targets = targets.item() if targets.dim() == 0 else targets.tolist()
    if isinstance(targets, numbers.Integral) and not isinstance(targets, bool):
        targets = [int(targets)] * count
    if not isinstance(targets, Sequence) or len(targets) != count:
        raise UsageError(f"targets must be one class index or one per image ({count})")
    if any(isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 0 for t in targets):
        raise UsageError(f"targets must be class indices >= 0, got {list(targets)!r}")
    chosen = torch.tensor([int(t) for t in targets], dtype=torch.long, device=images.device)
    classes = _logits(model, images[:1]).shape[1]
    if int(chosen.max()) >= classes:
        raise UsageError(f"target class {int(chosen.max())} is out of range for a model with {classes} classes")
    return chosen


def _step_counts(pixels: int, steps: int) -> Tensor:
    """Pixels changed after each step: ``round(k·pixels/steps)``, ``k = 0..steps``."""
    steps = min(steps, pixels)
    return torch.round(torch.arange(steps + 1, dtype=torch.float64) * pixels / steps).long()


def _ranks(maps: Tensor) -> Tensor:
    """``[B,H,W]`` rank of every pixel by decreasing saliency (0 = most salient, ties row-major)."""
    flat = maps.flatten(1)
    order = torch.argsort(-flat, dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order).contiguous())
    return ranks.view(maps.shape)


def _baseline(images: Tensor, baseline: str | Tensor, sigma: float) -> Tensor:
    """The ``[B,C,H,W]`` image that removed pixels take their values from."""
    if isinstance(baseline, Tensor):
        value = baseline.detach().to(images.device, images.dtype)
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
    kernel = (kernel / kernel.sum()).to(images.device, images.dtype)
    channels = images.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    padded = F.pad(images, (radius, radius, 0, 0), mode="replicate")
    rows = F.conv2d(padded, horizontal, groups=channels)
    padded = F.pad(rows, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(padded, vertical, groups=channels)


def _curve(
    model: nn.Module,
    images: Tensor,
    substrate: Tensor,
    ranks: Tensor,
    counts: Tensor,
    targets: Tensor,
    insert: bool,
    batch_size: int,
) -> np.ndarray:
    """``[B, steps+1]`` target probabilities along the deletion (or insertion) path."""
    points = len(counts)
    total = len(images) * points
    probabilities = []
    for start in range(0, total, batch_size):
        index = torch.arange(start, min(start + batch_size, total), device=images.device)
        which, step = index // points, index % points
        changed = (ranks[which] < counts[step][:, None, None])[:, None]
        if insert:
            perturbed = torch.where(changed, images[which], substrate[which])
        else:
            perturbed = torch.where(changed, substrate[which], images[which])
        logits = _logits(model, perturbed).double()
        probabilities.append(logits.softmax(dim=1).gather(1, targets[which][:, None])[:, 0].cpu())
    return torch.cat(probabilities).view(len(images), points).numpy()


def _copy_of(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode."""
    try:
        twin = copy.deepcopy(model)
    except Exception as exc:  # noqa: BLE001 - whatever the model's own __deepcopy__ raises
        detail = (str(exc).strip().splitlines() or [""])[0]
        raise UsageError(
            f"the sanity check needs a deep copy of the model, which failed: {type(exc).__name__}: {detail}"
        ) from exc
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
        std = float(parameter.std()) if parameter.numel() > 1 else 0.0
        parameter.normal_(0.0, std if std > 0 else 0.02)


def _sanity_record(
    step: int, names: list[str], done: list[str], reference: np.ndarray, maps: np.ndarray, targets: Tensor
) -> dict[str, Any]:
    flat, original = maps.reshape(len(maps), -1), reference.reshape(len(reference), -1)
    constant = (flat == flat[:, :1]).all(axis=1)
    informative = ~(original == original[:, :1]).all(axis=1)
    # A map that randomisation made constant keeps no rank information about the original: ρ = 0.
    rho = np.array([
        (0.0 if flat_constant else spearman(a, b)) if has_ranks else float("nan")
        for a, b, flat_constant, has_ranks in zip(reference, maps, constant, informative)
    ])
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
        "targets": targets.numpy(),
    }


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")
