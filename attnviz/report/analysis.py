"""Per batch: every model's prediction, gates and Grad-CAM, and the numbers about them.

Each model captures its gates in one forward pass (:class:`~attnviz.capturing.capturer.Capturer`, no
feature layers) and explains one target class per image with Grad-CAM: the true class when the
image has one, else the class most models predict (ties: the higher mean probability), so all
models answer the same question and their maps can be compared. Only per-image numbers and the
small arrays the pictures need leave this module; the captures are dropped batch by batch.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from attnviz.capturing.capturer import Capturer
from attnviz.io.checkpoints import LoadedModel
from attnviz.io.inputs import Preset, get_preset
from attnviz.report import measures
from attnviz.report.schema import Agreement, CamResult, ChannelGate, Localisation, ModelOutcome, SpatialGate, replace
from attnviz.report.sources import Decoded, preset_key, stack_rows
from attnviz.runtime.model import shares_memory, to_model
from attnviz.runtime.transfer import to_host


@dataclass
class ModelRun:
    """One model of the report, ready to run batches.

    Attributes:
        name: Name shown in the report (unique).
        slug: File-name-safe form of the name (unique).
        loaded: The model and its checkpoint's facts.
        preset: Its input preprocessing.
        key: The preset's key in :attr:`Decoded.tensors`.
        capturer: Reused for every batch.
        cam_layer: The Grad-CAM layer (``""`` for layer-less methods).
        gates: Gate name -> ``{"kind", "shape"}`` (shape without the batch dimension).
        num_classes: Number of the model's outputs.
    """

    name: str
    slug: str
    loaded: LoadedModel
    preset: Preset
    key: str
    capturer: Capturer
    cam_layer: str
    gates: dict[str, dict[str, Any]] = field(default_factory=dict)
    num_classes: int = 0

    def describe(self) -> dict[str, Any]:
        """Plain description for ``run.json``."""
        return {
            "name": self.name,
            "slug": self.slug,
            "arch": self.loaded.arch,
            "source": self.loaded.source,
            "format": self.loaded.format,
            "preset": self.preset.to_dict(),
            "cam_layer": self.cam_layer,
            "gates": self.gates,
            "num_classes": self.num_classes,
        }


#: Pixels per forward pass of the deletion/insertion curves, and the fewest images per pass. On a CPU
#: 64 images of 32×32 (8 of 224×224): a batch whose activations stay in the caches, which ran the
#: sample CNNs 1.8–2.1× faster per image than 256 did (docs/BENCHMARKS.md, "Report"). On a GPU, where
#: a forward pass of a small batch is mostly launch overhead, 2,048 of 32×32 (64 of 224×224: under
#: 0.6 GB of input).
CPU_PERTURBED_PIXELS, CPU_MIN_BATCH = 64 * 32 * 32, 8
GPU_PERTURBED_PIXELS, GPU_MIN_BATCH = 2048 * 32 * 32, 64


@dataclass(frozen=True)
class AnalysisOptions:
    """What the per-batch analysis computes."""

    method: str = "gradcam"
    steps: int = 10
    deletion_baseline: str = "blur"


def perturbed_batch(preset: Preset, device: torch.device | str = "cpu") -> int:
    """Perturbed images per forward pass of the deletion/insertion curves for inputs of ``preset``'s size
    on ``device`` (see :data:`CPU_PERTURBED_PIXELS`)."""
    pixels = preset.size[0] * preset.size[1]
    if torch.device(device).type == "cuda":
        return max(GPU_MIN_BATCH, GPU_PERTURBED_PIXELS // pixels)
    return max(CPU_MIN_BATCH, CPU_PERTURBED_PIXELS // pixels)


def prepare_models(
    models: Mapping[str, LoadedModel], class_names: Sequence[str] | None, method: str = "gradcam"
) -> list[ModelRun]:
    """Wrap each model with its capturer, Grad-CAM layer and gate layout (one probe image each)."""
    from attnviz.explain.cam import METHODS, resolve_cam_layer
    from attnviz.runtime.errors import UsageError

    if method not in METHODS:
        raise UsageError(f"unknown CAM method {method!r}; known: {', '.join(METHODS)}")
    runs, slugs = [], set[str]()
    for name, loaded in models.items():
        preset = get_preset(loaded.preset or "imagenet")
        capturer = Capturer(loaded.model, layers=[], class_names=class_names, model_name=name, feature_images=0)
        probe = torch.zeros(1, 3, *preset.size)
        cap = capturer(probe)
        gates = {g.name: {"kind": g.kind, "shape": list(g.values.shape[1:])} for g in cap.gates.values()}
        layerless = method in ("fullgrad", "integrated_gradients", "occlusion")  # the pixel-level methods
        layer = "" if layerless else resolve_cam_layer(loaded.model, probe)
        slug = _unique(re.sub(r"[^\w.-]+", "_", name).strip("._") or "model", slugs)
        runs.append(
            ModelRun(name, slug, loaded, preset, preset_key(preset), capturer, layer, gates, cap.logits.shape[1])
        )
    return runs


def analyse_batch(
    runs: Sequence[ModelRun],
    samples: Sequence[Decoded],
    truths: Sequence[int | None],
    options: AnalysisOptions,
    timings: dict[str, float],
) -> list[tuple[dict[str, ModelOutcome], dict[str, Any]]]:
    """Run every model on a batch of decoded images.

    Returns:
        Per image: the ``models`` part of its record and the arrays its pictures need
        (``cams``: model -> ``[H,W]``, ``spatial``: model -> gate -> ``[h,w]``, ``channel``:
        model -> gate -> ``[C]``).
    """
    from attnviz.explain.cam import gradcam

    outputs = [_forward(run, samples, timings) for run in runs]
    targets = choose_targets(truths, [out["logits"] for out in outputs])
    entries: list[dict[str, ModelOutcome]] = [{} for _ in samples]
    arrays: list[dict[str, Any]] = [{"cams": {}, "spatial": {}, "channel": {}} for _ in samples]
    maps: dict[str, torch.Tensor] = {}  # on the host
    device_maps: dict[str, torch.Tensor] = {}  # the same on the model's device, for the agreements
    masks = [sample.mask for sample in samples]
    for run, out in zip(runs, outputs):
        start = time.perf_counter()
        cam = gradcam(
            run.loaded.model, out["images"], target=targets, layer=run.cam_layer or None, method=options.method
        )
        scores = cam.scores.detach().float()
        device_maps[run.name] = _undefined_where(cam.maps.detach().float(), ~torch.isfinite(scores))
        host = to_host({"maps": device_maps[run.name], "scores": scores})
        maps[run.name], scores = host["maps"], host["scores"]
        timings["cam"] = timings.get("cam", 0.0) + time.perf_counter() - start
        start = time.perf_counter()
        faithful = measures.faithfulness(
            run.loaded.model,
            out["images"],
            cam.maps.detach(),
            targets,
            steps=options.steps,
            baseline=options.deletion_baseline,
            batch_size=perturbed_batch(run.preset, out["images"].device),
        )
        baseline = device_maps[runs[0].name]
        agreements = _agreements(baseline, device_maps[run.name]) if run is not runs[0] else [None] * len(samples)
        outcomes = _outcomes(run, out, targets, truths, scores, faithful, maps[run.name], masks, options.method)
        cams = maps[run.name].numpy()
        for i, (outcome, agreement) in enumerate(zip(outcomes, agreements)):
            entries[i][run.name] = outcome if agreement is None else replace(outcome, agreement=agreement)
            arrays[i]["cams"][run.name] = cams[i]
            arrays[i]["spatial"][run.name] = {n: v[i] for n, v in out["spatial"].items()}
            arrays[i]["channel"][run.name] = {n: v[i] for n, v in out["channel"].items()}
        timings["metrics"] = timings.get("metrics", 0.0) + time.perf_counter() - start
    return list(zip(entries, arrays))


def choose_targets(truths: Sequence[int | None], logits: Sequence[torch.Tensor]) -> list[int]:
    """The class each image is explained for: its truth, else the models' majority vote
    (ties go to the class with the higher mean probability)."""
    if all(truth is not None for truth in truths):
        return [int(truth) for truth in truths if truth is not None]
    probs = [values.float().softmax(dim=1) for values in logits]
    predicted = [p.argmax(dim=1).tolist() for p in probs]
    summed = probs[0]
    for p in probs[1:]:
        summed = summed + p  # the models' probabilities added in order, as float32
    totals = summed.tolist()  # one transfer, not one per image and class
    targets = []
    for i, truth in enumerate(truths):
        if truth is not None:
            targets.append(int(truth))
            continue
        votes = Counter(classes[i] for classes in predicted)
        best = max(votes.values())
        tied = [cls for cls, count in votes.items() if count == best]
        targets.append(max(tied, key=lambda cls: (totals[i][cls], -cls)))
    return targets


def _forward(run: ModelRun, samples: Sequence[Decoded], timings: dict[str, float]) -> dict[str, Any]:
    start = time.perf_counter()
    # on the model's device once, for the capture, Grad-CAM and the deletion/insertion curves
    given = [sample.tensors[run.key] for sample in samples]
    images = to_model(stack_rows(given), run.loaded.model)  # from pinned memory when a model is on CUDA
    if shares_memory(images, given[0]):  # each model its own copy: a model may change its input in place
        images = images.clone()
    cap = run.capturer(images)
    out = {
        "images": images,
        "logits": cap.logits,
        "probs": cap.probs,
        "spatial": {n: g.values.float().numpy() for n, g in cap.gates.items() if g.kind == "spatial"},
        "channel": {n: g.values.float().numpy() for n, g in cap.gates.items() if g.kind == "channel"},
    }
    timings["model"] = timings.get("model", 0.0) + time.perf_counter() - start
    return out


def _outcomes(
    run: ModelRun,
    out: dict[str, Any],
    targets: Sequence[int],
    truths: Sequence[int | None],
    scores: torch.Tensor,
    faithful: Sequence[dict[str, float]],
    cam_maps: torch.Tensor,
    masks: Sequence[np.ndarray | None],
    method: str,
) -> list[ModelOutcome]:
    """One model's part of each image's record, computed for the whole batch at once."""
    probs = out["probs"]
    top = probs.topk(min(3, probs.shape[1]), dim=1)
    top_values, top_indices = top.values.tolist(), top.indices.tolist()
    p_target = scores.tolist()
    cam_places = localise(cam_maps, masks)
    spatial = {name: _spatial_gates(values, masks) for name, values in out["spatial"].items()}
    channel = {name: _channel_gates(values) for name, values in out["channel"].items()}
    outcomes = []
    for i, (target, truth) in enumerate(zip(targets, truths)):
        predicted = top_indices[i][0]
        cam = CamResult(
            method,
            run.cam_layer,
            target,
            _label(run, target),
            p_target[i],
            faithful[i]["deletion_auc"],
            faithful[i]["insertion_auc"],
            cam_places[i],
        )
        outcomes.append(
            ModelOutcome(
                predicted=predicted,
                label=_label(run, predicted),
                prob=top_values[i][0],
                top3=tuple(zip(top_indices[i], top_values[i])),
                correct=None if truth is None else predicted == truth,
                cam=cam,
                spatial_gates={name: gates[i] for name, gates in spatial.items()},
                channel_gates={name: gates[i] for name, gates in channel.items()},
            )
        )
    return outcomes


def _spatial_gates(values: np.ndarray, masks: Sequence[np.ndarray | None]) -> list[SpatialGate]:
    """Mean, minimum, maximum and localisation of each image's ``[h,w]`` gate of a ``[B,h,w]`` batch."""
    flat = values.reshape(len(values), -1)
    means, lows, highs = flat.mean(axis=1).tolist(), flat.min(axis=1).tolist(), flat.max(axis=1).tolist()
    places = localise(torch.from_numpy(values), masks)
    return [SpatialGate(means[i], lows[i], highs[i], places[i]) for i in range(len(values))]


def _channel_gates(values: np.ndarray) -> list[ChannelGate]:
    """Mean and values (9 significant digits) of each image's ``[C]`` gate of a ``[B,C]`` batch."""
    means = values.mean(axis=1).tolist()
    return [ChannelGate(mean, tuple(row)) for mean, row in zip(means, nine_digits(values))]


#: The powers of ten that are exact as float64 (10**22 is the last).
_POW10 = np.array([float(10**i) for i in range(23)])


def nine_digits(values: np.ndarray) -> list[list[float]]:
    """``float(f"{v:.9g}")`` of every value of a ``[B,C]`` array (what a record keeps of a channel
    gate), as array arithmetic: the 9-digit integer ``n = rint(v * 10**k)`` divided by the exact
    ``10**k`` is the correctly rounded value that parsing the 9-digit text gives; values for which
    that cannot be sure (0, NaN, infinities, |v| >= 1e9 or < 1e-14, or within 1e-6 of a rounding
    tie) are formatted one by one."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        exact64 = np.asarray(values, dtype=np.float64)
        scale_digits = 8 - np.floor(np.log10(np.abs(exact64)))
        usable = np.isfinite(scale_digits) & (scale_digits >= 0) & (scale_digits <= 22)
        scale = _POW10[np.where(usable, scale_digits, 0).astype(np.int64)]
        scaled = exact64 * scale
        size = np.abs(scaled)
        tie = np.abs(np.abs(scaled - np.trunc(scaled)) - 0.5) <= 1e-6
        sure = usable & (size >= 1e8) & (size < 1e9 - 1) & ~tie
        rows = (np.rint(scaled) / scale).tolist()
    for i, j in zip(*np.nonzero(~sure)):
        rows[i][j] = float(f"{exact64[i, j]:.9g}")
    return rows


def localise(saliency: torch.Tensor, masks: Sequence[np.ndarray | None]) -> list[Localisation | None]:
    """Pointing game and energy pointing game of each ``[h,w]`` map of ``saliency`` ``[B,h,w]``
    against its image's mask, as :func:`attnviz.report.measures.localisation` gives them one by one:
    ``None`` without a mask or with an empty one, ``None`` in both numbers for a map with NaN or
    infinite values. Maps whose masks have the same size are scored in one call."""
    from attnviz.explain import metrics

    found: list[Localisation | None] = [None] * len(masks)
    finite = _all_finite(saliency).tolist()
    groups: dict[tuple[int, ...], dict[int, np.ndarray]] = {}
    for i, mask in enumerate(masks):
        if mask is None or not mask.any():
            continue
        if finite[i]:
            groups.setdefault(mask.shape, {})[i] = mask
        else:
            found[i] = Localisation(None, None)
    for group in groups.values():
        indices = list(group)
        maps = saliency[indices].float()
        stacked = np.stack(list(group.values()))
        hits, shares = metrics.localisation_batch(maps, stacked)
        for i, hit, share in zip(indices, hits.tolist(), shares.tolist()):
            found[i] = Localisation(bool(hit), float(share))
    return found


def _agreements(baseline: torch.Tensor, maps: torch.Tensor) -> list[Agreement]:
    """Each image's agreement of ``maps`` with the ``baseline``'s maps (``None`` in both numbers
    when either map has NaN or infinite values); computed on the baseline's device."""
    maps = maps.to(baseline.device)  # models of one report may live on different devices
    finite = (_all_finite(baseline) & _all_finite(maps)).tolist()
    found = [Agreement(None, None)] * len(maps)
    rows = [i for i, ok in enumerate(finite) if ok]
    if baseline.shape[1:] != maps.shape[1:]:  # maps of another input size: resized one pair at a time
        for i in rows:
            found[i] = Agreement(**measures.agreement(baseline[i].cpu(), maps[i].cpu()))
    elif rows:
        ious, rhos = agreement_batch(baseline[rows], maps[rows])
        for i, iou, rho in zip(rows, ious, rhos):
            found[i] = Agreement(iou, rho)
    return found


def _all_finite(maps: torch.Tensor) -> torch.Tensor:
    """``[B]``: whether each map of ``maps`` ``[B,...]`` is finite everywhere."""
    return torch.isfinite(maps).flatten(1).all(dim=1)


def _undefined_where(maps: torch.Tensor, undefined: torch.Tensor) -> torch.Tensor:
    """``maps`` with the maps of the images in ``undefined`` made NaN: a Grad-CAM of a class whose
    score is NaN (a model with NaN weights) explains nothing, though it comes out as zeros."""
    return torch.where(undefined.view(-1, *[1] * (maps.dim() - 1)), float("nan"), maps)


def _label(run: ModelRun, index: int) -> str:
    names = run.capturer.class_names
    return names[index] if names is not None and 0 <= index < len(names) else str(index)


def _unique(slug: str, used: set[str]) -> str:
    candidate, count = slug, 1
    while candidate in used:
        count += 1
        candidate = f"{slug}-{count}"
    used.add(candidate)
    return candidate


def agreement_batch(first: torch.Tensor, second: torch.Tensor) -> tuple[list[float], list[float]]:
    """Top-20% IoU and Spearman correlation of each pair of finite ``[h,w]`` maps of two ``[B,h,w]``
    batches of the same shape, computed in float64 on the maps' device (one transfer to the host):
    per row what :func:`attnviz.explain.metrics.map_agreement` gives one pair at a time (the IoU
    exactly, the correlation to the rounding of its sums)."""
    a, b = first.flatten(1).double(), second.flatten(1).double()
    count = max(1, math.ceil(0.2 * a.shape[1]))
    top_a, top_b = _top_masks(a, count), _top_masks(b, count)
    ious = (top_a & top_b).sum(dim=1).double() / (top_a | top_b).sum(dim=1).double()
    x, y = _average_ranks(a), _average_ranks(b)
    x, y = x - x.mean(dim=1, keepdim=True), y - y.mean(dim=1, keepdim=True)
    sums = {
        "ious": ious,
        "numerator": (x * y).sum(dim=1),
        "denominator": torch.sqrt((x * x).sum(dim=1) * (y * y).sum(dim=1)),
    }
    host = {key: values.tolist() for key, values in to_host(sums).items()}
    rhos = [n / d if d > 0 else float("nan") for n, d in zip(host["numerator"], host["denominator"])]
    return host["ious"], rhos


def _top_masks(rows: torch.Tensor, count: int) -> torch.Tensor:
    """Per row, the ``count`` highest values (ties: the first in order), as a boolean mask."""
    chosen = torch.argsort(-rows, dim=1, stable=True)[:, :count]
    return torch.zeros(rows.shape, dtype=torch.bool, device=rows.device).scatter_(1, chosen, True)


def _average_ranks(rows: torch.Tensor) -> torch.Tensor:
    """Per row, ranks 1..n (float64) with tied values sharing the mean of the ranks they span."""
    order = torch.argsort(rows, dim=1, stable=True)
    ordered = rows.gather(1, order)
    width = rows.shape[1]
    starts = torch.ones(rows.shape, dtype=torch.bool, device=rows.device)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    # each sorted position's group: its first position (start) and its last one
    positions = torch.arange(width, device=rows.device).expand(rows.shape)
    first = torch.cummax(torch.where(starts, positions, 0), dim=1).values
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    last = torch.cummin(torch.where(ends, positions, width - 1).flip(1), dim=1).values.flip(1)
    averages = (last + 1).double() - (last - first).double() / 2.0
    return torch.empty(rows.shape, dtype=torch.float64, device=rows.device).scatter_(1, order, averages)
