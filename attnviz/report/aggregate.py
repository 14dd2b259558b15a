"""Numbers over all images, gathered from the per-image records one record at a time.

Memory stays bounded: running sums and counts per model (accuracy, confusion matrix, metric means,
per-class sums of every channel gate) plus the channel-gate vectors of a fixed sample of at most
``sample_limit`` images (those whose id hashes lowest, so the sample does not depend on the order
of the records, on shards or on merges). Gate statistics and class selectivity use that sample
(every image when there are no more than ``sample_limit``); the per-class means in ``results.json``
(and the per-class excitation heat maps drawn from them) are exact over all images, and so is each gate's range (its
minimum and maximum over every channel or position and image) and whether it is constant.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from attnviz.report.schema import ModelSummary, Record, Summary

SAMPLE_LIMIT = 2000
CAM_METRICS = ("prob", "p_target", "deletion_auc", "insertion_auc", "pointing_game", "energy_pointing_game")
AGREEMENT_METRICS = ("top20_iou", "spearman")
#: A gate whose maximum and minimum over every channel or position and image differ by less than this is
#: constant (a dead gate scales everything alike), as :meth:`attnviz.capturing.results.Gate.is_constant`.
CONSTANT_TOLERANCE = 1e-3


@dataclass
class _Mean:
    total: float = 0.0
    count: int = 0

    def add(self, value: Any) -> None:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return
        self.total += float(value)
        self.count += 1

    def merge(self, other: _Mean) -> None:
        self.total += other.total
        self.count += other.count

    @property
    def value(self) -> float | None:
        return self.total / self.count if self.count else None


@dataclass
class _Range:
    low: float = math.inf
    high: float = -math.inf

    def add(self, low: Any, high: Any) -> None:
        if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
            self.low, self.high = min(self.low, float(low)), max(self.high, float(high))

    def facts(self) -> dict[str, Any]:
        """``min``, ``max`` and ``constant`` (``None`` each when no finite value was seen)."""
        if self.low > self.high:
            return {"min": None, "max": None, "constant": None}
        return {"min": self.low, "max": self.high, "constant": self.high - self.low < CONSTANT_TOLERANCE}


def _counts() -> defaultdict[Any, int]:
    return defaultdict(int)


def _means() -> defaultdict[str, _Mean]:
    return defaultdict(_Mean)


@dataclass
class _ModelSums:
    """One model's running sums (module-level factories only: a chunk's sums travel between processes)."""

    images: int = 0
    labelled: int = 0
    correct: int = 0
    confusion: dict[tuple[int, int], int] = field(default_factory=_counts)
    means: dict[str, _Mean] = field(default_factory=_means)
    spatial: dict[str, dict[str, _Mean]] = field(default_factory=partial(defaultdict, _means))
    class_sums: dict[str, dict[int, np.ndarray]] = field(default_factory=partial(defaultdict, dict))
    class_counts: dict[str, dict[int, int]] = field(default_factory=partial(defaultdict, _counts))
    ranges: dict[str, _Range] = field(default_factory=partial(defaultdict, _Range))
    non_finite: int = 0

    def merge(self, other: _ModelSums) -> None:
        """Add ``other``'s sums (of the records after this one's) to these."""
        self.images += other.images
        self.labelled += other.labelled
        self.correct += other.correct
        self.non_finite += other.non_finite
        for pair, count in other.confusion.items():
            self.confusion[pair] += count
        for key, mean in other.means.items():
            self.means[key].merge(mean)
        for gate, means in other.spatial.items():
            for key, mean in means.items():
                self.spatial[gate][key].merge(mean)
        for gate, totals in other.class_sums.items():
            mine = self.class_sums[gate]
            for label, total in totals.items():
                mine[label] = mine[label] + total if label in mine else total
                self.class_counts[gate][label] += other.class_counts[gate][label]
        for gate, extent in other.ranges.items():
            mine_range = self.ranges[gate]  # listed even when it saw no finite value, as when added one by one
            if extent.low <= extent.high:
                mine_range.add(extent.low, extent.high)


class Aggregator:
    """Feed it records with :meth:`add`; read the totals with :meth:`summary`.

    Args:
        models: Model names, the baseline first.
        class_names: Class names (``None``: indices).
        sample_limit: Images kept for gate statistics and class selectivity.
    """

    def __init__(
        self, models: Sequence[str], class_names: Sequence[str] | None, sample_limit: int = SAMPLE_LIMIT
    ) -> None:
        self.models = list(models)
        self.class_names = list(class_names) if class_names is not None else None
        self.sample_limit = sample_limit
        self.sums = {name: _ModelSums() for name in self.models}
        self.images = 0
        self.failed = 0
        self.labelled = 0
        self.misclassified = 0
        self.disagree = 0
        self._sample: list[tuple[int, str, dict[str, tuple[int, dict[str, np.ndarray]]]]] = []

    def add(self, record: Record | Mapping[str, Any]) -> None:
        """Count one image's record (failed images count as failed only); a record or its JSON form.

        The sums read the JSON form (:meth:`~attnviz.report.schema.ImageRecord.to_json`), where a
        number lost to NaN is ``None`` as on disk."""
        if not isinstance(record, Mapping):
            record = record.to_json()
        if record.get("status") != "ok":
            self.failed += 1
            return
        self.images += 1
        truth = record.get("truth_index")
        self.labelled += truth is not None
        models = record["models"]
        predictions = {models[name]["predicted"] for name in self.models if name in models}
        self.disagree += len(predictions) > 1
        self.misclassified += truth is not None and any(p != truth for p in predictions)
        sampled: dict[str, tuple[int, dict[str, np.ndarray]]] = {}
        for name in self.models:
            entry = models.get(name)
            if entry is not None:
                label = truth if truth is not None else entry["predicted"]
                self._add_model(self.sums[name], entry, truth, label)
                sampled[name] = (label, _finite_gates(entry["channel_gates"], np.float32))
        self._keep_sample(record["id"], sampled)

    def merge(self, other: Aggregator) -> None:
        """Add the records ``other`` counted (those after this one's, for the same models) to these.

        Counts, ranges and the gate sample come out as if every record had been added here; sums
        differ from adding one by one only by rounding (a report merges its chunks in a fixed order,
        so its numbers do not depend on how many processes read them)."""
        self.images += other.images
        self.failed += other.failed
        self.labelled += other.labelled
        self.misclassified += other.misclassified
        self.disagree += other.disagree
        for name in self.models:
            self.sums[name].merge(other.sums[name])
        for entry in other._sample:
            self._keep(entry)

    def summary(self) -> Summary:
        """Everything gathered, as plain JSON-ready values."""
        return {
            "images": self.images,
            "failed": self.failed,
            "labelled": self.labelled,
            "misclassified_by_any": self.misclassified,
            "models_disagree": self.disagree,
            "gate_sample": len(self._sample),
            "models": {name: self._model_summary(name) for name in self.models},
        }

    def sample(self, model: str, gate: str) -> tuple[np.ndarray, np.ndarray]:
        """The sampled images' values ``[n,C]`` of one channel gate and their class labels ``[n]``."""
        rows, labels = [], []
        for _, _, models in sorted(self._sample, key=lambda entry: (-entry[0], entry[1])):
            if model in models and gate in models[model][1]:
                labels.append(models[model][0])
                rows.append(models[model][1][gate])
        return np.asarray(rows, dtype=np.float64), np.asarray(labels, dtype=np.int64)

    def label_source(self) -> str:
        """What the per-class figures group by."""
        return (
            "true class"
            if self.labelled == self.images and self.images
            else ("true class where known, else the model's prediction" if self.labelled else "the model's prediction")
        )

    # ------------------------------------------------------------------ internals

    def _add_model(self, sums: _ModelSums, entry: dict[str, Any], truth: int | None, label: int) -> None:
        sums.images += 1
        sums.non_finite += _non_finite(entry)
        if truth is not None:
            sums.labelled += 1
            sums.correct += entry["predicted"] == truth
            sums.confusion[(truth, entry["predicted"])] += 1
        cam = entry["cam"]
        sums.means["prob"].add(entry["prob"])
        for key in CAM_METRICS[1:]:
            sums.means[key].add(cam.get(key))
        for key in AGREEMENT_METRICS:
            sums.means[key].add(entry.get("agreement", {}).get(key))
        for gate, values in entry["spatial_gates"].items():
            for key in ("mean", "pointing_game", "energy_pointing_game"):
                sums.spatial[gate][key].add(values.get(key))
            sums.ranges[gate].add(values.get("min"), values.get("max"))
        for gate, vector in _finite_gates(entry["channel_gates"], np.float64).items():
            if vector.size:
                sums.ranges[gate].add(vector.min(), vector.max())
            per_class = sums.class_sums[gate]
            per_class[label] = per_class[label] + vector if label in per_class else vector
            sums.class_counts[gate][label] += 1

    def _keep_sample(self, item_id: str, models: dict[str, tuple[int, dict[str, np.ndarray]]]) -> None:
        rank = int(hashlib.sha1(item_id.encode("utf-8")).hexdigest()[:15], 16)
        self._keep((-rank, item_id, models))  # a max-heap on rank: the highest rank leaves first

    def _keep(self, entry: tuple[int, str, dict[str, tuple[int, dict[str, np.ndarray]]]]) -> None:
        if len(self._sample) < self.sample_limit:
            heapq.heappush(self._sample, entry)
        elif entry > self._sample[0]:
            heapq.heapreplace(self._sample, entry)

    def _model_summary(self, name: str) -> ModelSummary:
        sums = self.sums[name]
        return {
            "images": sums.images,
            "non_finite": sums.non_finite,
            "accuracy": {
                "correct": sums.correct,
                "labelled": sums.labelled,
                "value": sums.correct / sums.labelled if sums.labelled else None,
            },
            "confusion": self._confusion(sums),
            "means": {key: mean.value for key, mean in sums.means.items()},
            "counts": {key: mean.count for key, mean in sums.means.items()},
            "spatial_gates": {
                gate: {key: mean.value for key, mean in values.items()}
                | {"masked": values["pointing_game"].count}
                | sums.ranges[gate].facts()
                for gate, values in sums.spatial.items()
            },
            "channel_gates": {gate: self._channel_summary(name, gate) for gate in sums.class_sums},
        }

    def warn_non_finite(self) -> None:
        """One warning line naming the models that gave NaN or infinite values (a model with NaN
        weights): their numbers are missing (``null``, ``–``) and their maps not drawn."""
        bad = {name: sums.non_finite for name, sums in self.sums.items() if sums.non_finite}
        if bad:
            counts = ", ".join(f"{name} on {count} of {self.sums[name].images} image(s)" for name, count in bad.items())
            warnings.warn(
                f"NaN or infinite values from {counts} (check the weights): those numbers are missing in the "
                "report and their maps are not drawn",
                stacklevel=2,
            )

    def _confusion(self, sums: _ModelSums) -> dict[str, Any] | None:
        if not sums.confusion:
            return None
        size = len(self.class_names) if self.class_names else 1 + max(max(pair) for pair in sums.confusion)
        size = max(size, 1 + max(max(pair) for pair in sums.confusion))
        matrix = np.zeros((size, size), dtype=np.int64)
        for (truth, predicted), count in sums.confusion.items():
            matrix[truth, predicted] = count
        return {
            "labels": [self.label(k) for k in range(size)],
            "rows": "true class",
            "columns": "predicted class",
            "matrix": matrix.tolist(),
        }

    def _channel_summary(self, name: str, gate: str) -> dict[str, Any]:
        from attnviz.explain import metrics  # torch: not for the processes that only read records

        sums = self.sums[name]
        per_class = {
            self.label(k): {"n": sums.class_counts[gate][k], "mean": (total / sums.class_counts[gate][k]).tolist()}
            for k, total in sorted(sums.class_sums[gate].items())
        }
        values, labels = self.sample(name, gate)
        statistics = metrics.gate_statistics(values) if len(values) else None
        selectivity = (
            float(metrics.class_selectivity(values, labels)) if len(values) and len(set(labels.tolist())) > 1 else None
        )
        return {
            "channels": int(values.shape[1]) if len(values) else None,
            "grouped_by": self.label_source(),
            "per_class": per_class,
            "sample": int(len(values)),
            "statistics": statistics,
            "class_selectivity": selectivity,
        } | sums.ranges[gate].facts()

    def label(self, index: int) -> str:
        if self.class_names is not None and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return str(index)


def _non_finite(entry: dict[str, Any]) -> bool:
    """True when a model's part of a record lost values to NaN or infinities (``null`` in the record)."""
    gates = [*entry["spatial_gates"].values(), *entry["channel_gates"].values()]
    return (
        entry.get("prob") is None or entry["cam"].get("p_target") is None or any(g.get("mean") is None for g in gates)
    )


def _finite_gates(gates: dict[str, Any], dtype: Any) -> dict[str, np.ndarray]:
    """Each channel gate's vector, leaving out those with NaN or infinite values (``null`` in a
    record: a model with NaN weights), which no mean or statistic can use."""
    vectors = {
        gate: np.asarray([np.nan if v is None else v for v in values["values"]], dtype=dtype)
        for gate, values in gates.items()
    }
    return {gate: vector for gate, vector in vectors.items() if np.isfinite(vector).all()}
