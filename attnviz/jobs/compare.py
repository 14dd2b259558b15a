"""Grad-CAM of a baseline CNN against its attention variants: the CBAM paper's comparison figure.

Every model explains the same target class per image (the ground truth when known, else the
class most models predict), so the maps answer one question: where does each model look for
that class? Agreement with the baseline is measured per image as the IoU of the top-20%
regions and the Spearman rank correlation of the maps.
"""

from __future__ import annotations

import base64
import io
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from attnviz.explain.array_metrics import spearman, top_region_iou
from attnviz.io.checkpoints import LoadedModel
from attnviz.io.inputs import Preset, get_preset, preprocess
from attnviz.runtime.errors import UsageError
from attnviz.runtime.model import eval_mode, run_forward, to_model
from attnviz.runtime.text import strict_json

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TOP_FRACTION = 0.2
CAM_CMAP = "viridis"  # perceptually uniform: equal steps of the map look equally different


@dataclass
class Comparison:
    """Grad-CAM maps of several models on the same images and targets.

    Attributes:
        names: Model names, the baseline first.
        images: Original images (``[H,W,3]`` uint8), one per row.
        labels: Image names (file names), one per row.
        targets: The class explained in each row.
        target_source: ``"truth"``, ``"given"`` or ``"consensus"`` per row.
        class_names: Class names in logit order (or ``None``).
        maps: Per model, ``[N,H,W]`` maps in [0,1] at the model's input size.
        scores: Per model, ``[N]`` softmax probability of the target class.
        predicted: Per model, ``[N]`` predicted class.
        agreement: Per row, per attention model: ``top20_iou`` and ``spearman`` against the baseline.
        crop_boxes: Per model whose preset crops (the ``imagenet`` preset: resize, then centre
            crop), the ``(top, left, bottom, right)`` of each image that the model saw; its maps
            are drawn there, and nothing outside (the model never saw it).
    """

    names: list[str]
    images: list[np.ndarray]
    labels: list[str]
    targets: list[int]
    target_source: list[str]
    class_names: list[str] | None
    maps: dict[str, torch.Tensor]
    scores: dict[str, torch.Tensor]
    predicted: dict[str, torch.Tensor]
    agreement: list[dict[str, dict[str, float]]]
    crop_boxes: dict[str, list[tuple[int, int, int, int]]] = field(default_factory=dict)

    @property
    def baseline(self) -> str:
        return self.names[0]

    def label(self, index: int) -> str:
        if self.class_names is not None and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return str(index)

    def mean_agreement(self) -> dict[str, dict[str, float]]:
        """Per attention model, the mean of each agreement number over the images."""
        means: dict[str, dict[str, float]] = {}
        for name in self.names[1:]:
            rows = [row[name] for row in self.agreement]
            means[name] = {key: float(np.nanmean([row[key] for row in rows])) for key in ("top20_iou", "spearman")}
        return means

    def to_dict(self) -> dict[str, Any]:
        """Everything but the pictures, as plain JSON-ready values."""
        rows = []
        for i, label in enumerate(self.labels):
            rows.append(
                {
                    "image": label,
                    "target": {
                        "index": self.targets[i],
                        "label": self.label(self.targets[i]),
                        "source": self.target_source[i],
                    },
                    "models": {
                        name: {
                            "p_target": float(self.scores[name][i]),
                            "predicted": {
                                "index": int(self.predicted[name][i]),
                                "label": self.label(int(self.predicted[name][i])),
                            },
                        }
                        for name in self.names
                    },
                    "agreement_with_baseline": self.agreement[i],
                }
            )
        return {
            "baseline": self.baseline,
            "models": self.names,
            "top_fraction": TOP_FRACTION,
            "images": rows,
            "mean_agreement_with_baseline": self.mean_agreement(),
        }

    def figure(self, *, alpha: float = 0.5) -> Figure:
        """One row per image: input | baseline | each attention model, P under every CAM."""
        from attnviz import render

        columns: list[list[np.ndarray]] = [list(self.images)]
        captions: list[list[str]] = [["" for _ in self.images]]
        colours: list[list[str | None]] = [[None for _ in self.images]]
        for name in self.names:
            overlays, texts, wrong = [], [], []
            for i, image in enumerate(self.images):
                cam = self.maps[name][i].numpy()
                if name in self.crop_boxes:
                    cam = in_image_frame(cam, image.shape[:2], self.crop_boxes[name][i])
                overlays.append(render.cam_overlay(render.greyscale(image), cam, alpha=alpha, cmap=CAM_CMAP))
                p = "P(true class)" if self.target_source[i] == "truth" else "P(target)"
                predicted = int(self.predicted[name][i])
                missed = predicted != self.targets[i]
                texts.append(
                    f"{p} = {float(self.scores[name][i]):.3f}"
                    + (f"\npredicted: {self.label(predicted)}" if missed else "")
                )
                wrong.append("tab:red" if missed else None)
            columns.append(overlays)
            captions.append(texts)
            colours.append(wrong)
        titles = ["input", f"{self.baseline} (baseline)", *self.names[1:]]
        rows = [f"{self.target_source[i]}: {self.label(t)}" for i, t in enumerate(self.targets)]
        scale = (CAM_CMAP, 0.0, 1.0, "Grad-CAM of the target class (each map min–max normalised to 0–1)")
        return render.comparison_grid(
            self.images,
            columns,
            row_titles=rows,
            column_titles=titles,
            captions=captions,
            caption_colors=colours,
            scale=scale,
        )

    def save(self, path: str | Path, *, format: str | None = None) -> list[Path]:
        """Write the figure (PNG/SVG/PDF by suffix) and ``<stem>.json`` beside it."""
        from attnviz import render

        path = Path(path)
        written = [render.save_figure(self.figure(), path, format)]
        document = path.with_suffix(".json")
        document.write_text(strict_json(self.to_dict(), indent=2), encoding="utf-8")  # NaN (NaN weights): null
        written.append(document)
        return written

    def __repr__(self) -> str:
        means = self.mean_agreement()
        agreement = ", ".join(f"{name} {values['top20_iou']:.2f}" for name, values in means.items())
        sources = "/".join(sorted(set(self.target_source)))
        return (
            f"Comparison({len(self.images)} image(s), baseline '{self.baseline}' vs {self.names[1:]}, "
            f"targets: {sources}; mean top-20% IoU with the baseline: {agreement or '-'})"
        )

    def _repr_html_(self) -> str:
        buffer = io.BytesIO()
        self.figure().savefig(buffer, format="png", dpi=80)
        encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
        return f'<img src="data:image/png;base64,{encoded}" alt="Grad-CAM comparison"/>'


def compare(
    models: Mapping[str, LoadedModel],
    images: Sequence[np.ndarray],
    *,
    labels: Sequence[str] | None = None,
    truth: Sequence[int | None] | None = None,
    target: int | str | None = None,
    class_names: Sequence[str] | None = None,
    method: str = "gradcam",
) -> Comparison:
    """Explain the same class with every model on every image.

    Args:
        models: Name → loaded model, the baseline first (dicts keep insertion order).
        images: Original RGB images (``[H,W,3]`` uint8); each model preprocesses them with its
            own preset.
        labels: A name per image (file names), for the JSON.
        truth: The true class per image (``None`` where unknown).
        target: One class (index or name) to explain in every image; overrides ``truth``.
        class_names: Class names; default: the first model's.
        method: Any :func:`attnviz.explain.cam.gradcam` method.
    """
    from attnviz.explain.cam import gradcam

    if len(models) < 2:
        raise UsageError("compare needs a baseline and at least one more model")
    if not images:
        raise UsageError("compare needs at least one image")
    names = list(models)
    class_names = list(class_names) if class_names is not None else _first_names(models)
    batches = {name: _batch(images, loaded, labels) for name, loaded in models.items()}
    predicted, logits = {}, {}
    for name, loaded in models.items():
        with torch.no_grad():
            logits[name] = _eval_logits(loaded.model, batches[name])
        predicted[name] = logits[name].argmax(1)
    targets, sources = _targets(len(images), names, logits, truth, target, class_names)
    maps, scores = {}, {}
    for name, loaded in models.items():
        result = gradcam(loaded.model, batches[name], target=targets, method=method, class_names=class_names)
        maps[name] = result.maps.detach().float().cpu()
        scores[name] = result.scores.detach().float().cpu()
    agreement = []
    for i in range(len(images)):
        row = {}
        for name in names[1:]:
            base, other = _same_size(maps[names[0]][i], maps[name][i])
            row[name] = {"top20_iou": top_region_iou(base, other, TOP_FRACTION), "spearman": spearman(base, other)}
        agreement.append(row)
    crop_boxes = {
        name: [_preset_of(loaded).crop_box(*np.asarray(image).shape[:2]) for image in images]
        for name, loaded in models.items()
        if _preset_of(loaded).crop is not None
    }
    return Comparison(
        crop_boxes=crop_boxes,
        names=names,
        images=[np.asarray(image) for image in images],
        labels=list(labels) if labels is not None else [f"image {i}" for i in range(len(images))],
        targets=targets,
        target_source=sources,
        class_names=class_names,
        maps=maps,
        scores=scores,
        predicted=predicted,
        agreement=agreement,
    )


def _first_names(models: Mapping[str, LoadedModel]) -> list[str] | None:
    for loaded in models.values():
        if loaded.class_names:
            return list(loaded.class_names)
    return None


def _preset_of(loaded: LoadedModel) -> Preset:
    return get_preset(loaded.preset or "imagenet")


def _batch(images: Sequence[np.ndarray], loaded: LoadedModel, labels: Sequence[str] | None = None) -> torch.Tensor:
    preset = _preset_of(loaded)
    names = list(labels) if labels is not None else [None] * len(images)
    return torch.stack([preprocess(image, preset, name=name) for image, name in zip(images, names)])


def in_image_frame(cam: np.ndarray, size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """A map computed on a crop of an image, placed in the image's frame: resized (bilinear) to
    the crop ``box`` (``top, left, bottom, right``), zero outside it."""
    import cv2

    top, left, bottom, right = box
    frame = np.zeros(size, dtype=np.float32)
    frame[top:bottom, left:right] = cv2.resize(
        cam.astype(np.float32), (right - left, bottom - top), interpolation=cv2.INTER_LINEAR
    )
    return frame


def _eval_logits(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    with eval_mode(model):
        output = run_forward(model, to_model(batch, model))
    logits = output[0] if isinstance(output, (tuple, list)) and output else output  # (logits, features)
    return logits.float().cpu()


def _targets(
    count: int,
    names: list[str],
    logits: dict[str, torch.Tensor],
    truth: Sequence[int | None] | None,
    target: int | str | None,
    class_names: Sequence[str] | None,
) -> tuple[list[int], list[str]]:
    if target is not None:
        index = _class_index(target, class_names)
        return [index] * count, ["given"] * count
    targets, sources = [], []
    for i in range(count):
        known = truth[i] if truth is not None else None
        if known is not None:
            targets.append(int(known))
            sources.append("truth")
            continue
        votes = Counter(int(logits[name][i].argmax()) for name in names)
        best = max(votes.values())
        tied = [cls for cls, n in votes.items() if n == best]
        mean_prob = {cls: float(np.mean([logits[name][i].softmax(0)[cls] for name in names])) for cls in tied}
        targets.append(max(tied, key=lambda cls: mean_prob[cls]))
        sources.append("predicted")
    return targets, sources


def _class_index(target: int | str, class_names: Sequence[str] | None) -> int:
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
        return int(target)
    if class_names is None or target not in class_names:
        known = ", ".join(class_names) if class_names else "none known"
        raise UsageError(f"unknown class '{target}' (classes: {known})")
    return list(class_names).index(target)


def _same_size(first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring two maps to the larger one's size (models may take different input sizes)."""
    if first.shape == second.shape:
        return first, second
    size = max(first.shape, second.shape, key=lambda s: s[0] * s[1])

    def resize(m: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(m[None, None], size=tuple(size), mode="bilinear", align_corners=False)[
            0, 0
        ]

    return resize(first), resize(second)
