"""Numbers computed from arrays alone: agreement of two maps, localisation against a mask, gate statistics.

* Agreement of two maps: :func:`top_fraction_mask`, :func:`top_region_iou`, :func:`spearman`,
  :func:`map_agreement`.
* Localisation against a ground-truth mask: :func:`pointing_game` (Zhang et al. 2016) and
  :func:`energy_pointing_game` (Wang et al. 2020), each with a batched twin, and
  :func:`localisation_batch` for both at once.
* Attention gates over a set of images: :func:`gate_statistics`, :func:`channel_selectivity`,
  :func:`class_selectivity` (motivated by the excitation analysis of Hu et al.'s SE networks).

Nothing here runs a model. Maps and masks may be numpy arrays or torch tensors; results are floats
or numpy arrays. ``attnviz/METRICS.md`` gives every definition with its formula and source.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from attnviz.runtime.errors import UsageError

__all__ = [
    "channel_selectivity",
    "class_selectivity",
    "energy_pointing_game",
    "energy_pointing_game_batch",
    "gate_statistics",
    "localisation_batch",
    "map_agreement",
    "pointing_game",
    "pointing_game_batch",
    "spearman",
    "top_fraction_mask",
    "top_region_iou",
]


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
    if tolerance == 0:
        near = inside
    else:
        near = torch.from_numpy(np.stack([_squared_distance(m) <= tolerance**2 + 1e-9 for m in inside.numpy()]))
    return _hits(values, near)


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
    return _shares(_resized(_maps(maps, len(inside)), inside.shape[-2:]), inside)


def localisation_batch(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pointing_game_batch` (no tolerance) and :func:`energy_pointing_game_batch` of the same
    ``[B,h,w]`` maps and ``[B,H,W]`` masks at once, the masks checked and the maps resized once:
    ``([B] bool hits, [B] float shares)``."""
    inside = _masks(masks)
    values = _resized(_maps(maps, len(inside)), inside.shape[-2:])
    return _hits(values, inside), _shares(values, inside)


def _hits(values: Tensor, near: Tensor) -> np.ndarray:
    """Whether every maximum of each resized map lies where ``near`` is true."""
    peaks = values == values.amax(dim=(1, 2), keepdim=True)
    return (near | ~peaks).all(dim=2).all(dim=1).numpy()


def _shares(values: Tensor, inside: Tensor) -> np.ndarray:
    """The share of each resized map's non-negative part that lies on its mask (0 without energy)."""
    energy = values.clamp(min=0)
    total = energy.sum(dim=(1, 2))
    on_object = (energy * inside).sum(dim=(1, 2))
    share = torch.where(total > 0, on_object / torch.where(total > 0, total, torch.ones_like(total)), 0.0)
    return share.numpy()


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


#: The error for maps with NaN or infinite values.
_NON_FINITE_MAPS = "saliency maps hold NaN or infinite values"


def _maps(maps: Any, count: int) -> Tensor:
    """``[B,h,w]`` finite float64 maps, ``B == count``."""
    values = _as_tensor(maps, "maps")
    _check_map_batch(values, count)
    if not torch.isfinite(values).all():
        raise UsageError(_NON_FINITE_MAPS)
    return values


def _check_map_batch(values: Tensor, count: int) -> None:
    """``values`` is ``[count,h,w]`` with ``h, w > 0`` (its values are not read)."""
    if values.dim() != 3 or values.shape[0] != count or values.shape[1] == 0 or values.shape[2] == 0:
        raise UsageError(f"expected {count} saliency map(s) [B,h,w], got shape {tuple(values.shape)}")


def _masks(masks: Any) -> Tensor:
    """``[B,H,W]`` bool masks, none empty."""
    usable = isinstance(masks, np.ndarray) and masks.dtype == np.bool_ and masks.flags.writeable
    if usable and min(masks.strides, default=0) >= 0:  # torch takes no negative strides
        inside = torch.from_numpy(masks)  # already what the comparison below gives (and not written)
    else:
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
