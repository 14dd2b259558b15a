"""The report's numbers about maps, one call into :mod:`attnviz.explain.metrics` each.

Saliency maps (Grad-CAM at the model's input size, spatial gates at their own resolution) are
scored against masks at the mask's size (the metrics upsample them bilinearly), which is right
because the model's input is the whole image resized, with no crop.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from attnviz.explain import metrics


def to_size(saliency: Any, size: tuple[int, int]) -> torch.Tensor:
    """``[h,w]`` map resized bilinearly (``align_corners=False``) to ``size``; as is when it fits."""
    values = torch.as_tensor(np.asarray(saliency, dtype=np.float32) if not torch.is_tensor(saliency) else saliency)
    values = values.detach().float().cpu()
    if tuple(values.shape) == tuple(size):
        return values
    return F.interpolate(values[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]


def localisation(saliency: Any, mask: np.ndarray) -> dict[str, Any]:
    """Pointing game (hit or miss) and energy pointing game of one map against one mask
    (the metrics resize the map to the mask bilinearly); nothing for an empty mask."""
    if not mask.any():
        return {}
    values = saliency.detach().float().cpu().numpy() if torch.is_tensor(saliency) else np.asarray(saliency)
    return {
        "pointing_game": bool(metrics.pointing_game(values, mask)),
        "energy_pointing_game": float(metrics.energy_pointing_game(values, mask)),
    }


#: Version of ``sanity.json``'s numbers (2: a map made constant by the randomisation counts as ρ = 0).
SANITY_FORMAT = 2


def sanity(model: torch.nn.Module, images: torch.Tensor, *, method: str, layer: str | None) -> list[dict[str, Any]]:
    """The randomisation sanity check's steps without their maps: ``step``, ``layers``,
    ``spearman_mean`` and ``n`` (the images it is the mean of), ``constant`` (how many of this
    step's maps are constant; their ρ is 0), ``top20_iou_mean`` and the per-image ``spearman``
    and ``top20_iou``."""
    steps = metrics.randomisation_sanity(model, images, method=method, layer=layer)
    keys = ("step", "layers", "spearman_mean", "n", "constant", "top20_iou_mean", "spearman", "top20_iou")
    result = []
    for step in steps:
        row = {key: step[key] for key in keys if key in step}
        row["constant"] = int(np.asarray(step["constant"]).sum())
        result.append(row)
    return result


def agreement(first: Any, second: Any) -> dict[str, float]:
    """Top-20% IoU and Spearman correlation of two maps (the smaller one resized to the larger)."""
    a, b = torch.as_tensor(first).float(), torch.as_tensor(second).float()
    if a.shape != b.shape:
        height, width = max(a.shape, b.shape, key=lambda s: s[0] * s[1])
        a, b = to_size(a, (height, width)), to_size(b, (height, width))
    result = metrics.map_agreement(a.numpy(), b.numpy())
    return {"top20_iou": float(result["top20_iou"]), "spearman": float(result["spearman"])}


def faithfulness(
    model: torch.nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: list[int],
    *,
    steps: int,
    baseline: str,
    batch_size: int,
) -> list[dict[str, float]]:
    """Deletion and insertion AUC of each image's map for its target class."""
    result = metrics.deletion_insertion(
        model, images, maps, targets, steps=steps, baseline=baseline, batch_size=batch_size
    )
    deletion = np.asarray(result["deletion_auc"], dtype=np.float64).reshape(-1)
    insertion = np.asarray(result["insertion_auc"], dtype=np.float64).reshape(-1)
    return [{"deletion_auc": float(d), "insertion_auc": float(i)} for d, i in zip(deletion, insertion)]
