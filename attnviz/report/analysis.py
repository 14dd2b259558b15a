"""Per batch: every model's prediction, gates and Grad-CAM, and the numbers about them.

Each model captures its gates in one forward pass (:class:`~attnviz.capturing.capturer.Capturer`, no
feature layers) and explains one target class per image with Grad-CAM: the true class when the
image has one, else the class most models predict (ties: the higher mean probability), so all
models answer the same question and their maps can be compared. Only per-image numbers and the
small arrays the pictures need leave this module; the captures are dropped batch by batch.
"""

from __future__ import annotations

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
from attnviz.report.sources import Decoded, preset_key


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


#: Pixels per forward pass of the deletion/insertion curves (256 images of 32×32, 8 of 224×224 at least).
PERTURBED_PIXELS = 256 * 32 * 32


@dataclass(frozen=True)
class AnalysisOptions:
    """What the per-batch analysis computes."""

    method: str = "gradcam"
    steps: int = 10
    deletion_baseline: str = "blur"


def perturbed_batch(preset: Preset) -> int:
    """Perturbed images per forward pass of the deletion/insertion curves for inputs of ``preset``'s size
    (large batches run a small CNN several times faster per image on a CPU)."""
    return max(8, PERTURBED_PIXELS // (preset.size[0] * preset.size[1]))


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
        capturer = Capturer(loaded.model, layers=[], class_names=class_names, model_name=name)
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
    maps: dict[str, torch.Tensor] = {}
    for run, out in zip(runs, outputs):
        start = time.perf_counter()
        cam = gradcam(
            run.loaded.model, out["images"], target=targets, layer=run.cam_layer or None, method=options.method
        )
        scores = cam.scores.detach().float().cpu()
        maps[run.name] = _undefined_where(cam.maps.detach().float().cpu(), ~torch.isfinite(scores))
        timings["cam"] = timings.get("cam", 0.0) + time.perf_counter() - start
        start = time.perf_counter()
        faithful = measures.faithfulness(
            run.loaded.model,
            out["images"],
            cam.maps.detach(),
            targets,
            steps=options.steps,
            baseline=options.deletion_baseline,
            batch_size=perturbed_batch(run.preset),
        )
        for i, sample in enumerate(samples):
            entries[i][run.name] = _entry(
                run,
                out,
                i,
                targets[i],
                truths[i],
                float(scores[i]),
                faithful[i],
                maps[run.name][i],
                sample.mask,
                options.method,
            )
            arrays[i]["cams"][run.name] = maps[run.name][i].numpy()
            arrays[i]["spatial"][run.name] = {n: v[i] for n, v in out["spatial"].items()}
            arrays[i]["channel"][run.name] = {n: v[i] for n, v in out["channel"].items()}
        timings["metrics"] = timings.get("metrics", 0.0) + time.perf_counter() - start
    start = time.perf_counter()
    baseline = runs[0].name
    for run in runs[1:]:
        for i in range(len(samples)):
            agreement = (
                Agreement(**measures.agreement(maps[baseline][i], maps[run.name][i]))
                if _finite(maps[baseline][i], maps[run.name][i])
                else Agreement(None, None)
            )
            entries[i][run.name] = replace(entries[i][run.name], agreement=agreement)
    timings["metrics"] = timings.get("metrics", 0.0) + time.perf_counter() - start
    return list(zip(entries, arrays))


def choose_targets(truths: Sequence[int | None], logits: Sequence[torch.Tensor]) -> list[int]:
    """The class each image is explained for: its truth, else the models' majority vote
    (ties go to the class with the higher mean probability)."""
    targets = []
    probs = [values.float().softmax(dim=1) for values in logits]
    for i, truth in enumerate(truths):
        if truth is not None:
            targets.append(int(truth))
            continue
        votes = Counter(int(p[i].argmax()) for p in probs)
        best = max(votes.values())
        tied = [cls for cls, count in votes.items() if count == best]
        targets.append(max(tied, key=lambda cls: (float(sum(p[i, cls] for p in probs)), -cls)))
    return targets


def _forward(run: ModelRun, samples: Sequence[Decoded], timings: dict[str, float]) -> dict[str, Any]:
    start = time.perf_counter()
    images = torch.stack([sample.tensors[run.key] for sample in samples])
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


def _entry(
    run: ModelRun,
    out: dict[str, Any],
    i: int,
    target: int,
    truth: int | None,
    p_target: float,
    faithful: dict[str, float],
    cam_map: torch.Tensor,
    mask: np.ndarray | None,
    method: str,
) -> ModelOutcome:
    """One model's part of one image's record."""
    probs = out["probs"][i]
    top = probs.topk(min(3, probs.numel()))
    predicted = int(top.indices[0])
    cam = CamResult(
        method,
        run.cam_layer,
        target,
        _label(run, target),
        p_target,
        faithful["deletion_auc"],
        faithful["insertion_auc"],
        None if mask is None else _localisation(cam_map, mask),
    )
    spatial = {}
    for name, values in out["spatial"].items():
        gate = values[i]
        spatial[name] = SpatialGate(
            float(gate.mean()),
            float(gate.min()),
            float(gate.max()),
            None if mask is None else _localisation(gate, mask),
        )
    channel = {
        name: ChannelGate(float(values[i].mean()), tuple(float(f"{v:.9g}") for v in values[i]))
        for name, values in out["channel"].items()
    }
    return ModelOutcome(
        predicted=predicted,
        label=_label(run, predicted),
        prob=float(top.values[0]),
        top3=tuple((int(c), float(p)) for p, c in zip(top.values, top.indices)),
        correct=None if truth is None else predicted == truth,
        cam=cam,
        spatial_gates=spatial,
        channel_gates=channel,
    )


def _undefined_where(maps: torch.Tensor, undefined: torch.Tensor) -> torch.Tensor:
    """``maps`` with the maps of the images in ``undefined`` made NaN: a Grad-CAM of a class whose
    score is NaN (a model with NaN weights) explains nothing, though it comes out as zeros."""
    if bool(undefined.any()):
        maps = maps.clone()
        maps[undefined] = float("nan")
    return maps


def _finite(*maps: Any) -> bool:
    return all(bool(np.isfinite(np.asarray(m, dtype=np.float64)).all()) for m in maps)


def _localisation(saliency: Any, mask: np.ndarray) -> Localisation | None:
    """Pointing game and energy pointing game (``None`` in both for a map with NaN or infinite
    values); no localisation at all for an empty mask."""
    if not mask.any() or _finite(saliency):
        found = measures.localisation(saliency, mask)
        return Localisation(found["pointing_game"], found["energy_pointing_game"]) if found else None
    return Localisation(None, None)


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
