"""The report's per-image records as typed values, with one JSON form each; the shapes of
``run.json`` and of the aggregates.

``items/<id>.json`` holds one :class:`ImageRecord` (an analysed image) or one :class:`FailedImage`
(an input that was skipped); ``results.json``'s ``images`` lists the same objects, the channel-gate
vectors left out (:func:`slim`). ``docs/results.schema.json`` describes that JSON.

Every writer makes a record with these classes and writes :meth:`ImageRecord.to_json`; every reader
gets them back from :func:`record_from_json`, which refuses (``ValueError``) anything that is not the
shape attnviz writes, so a damaged or crafted record reads as missing. Non-finite floats stay floats
here; :func:`attnviz.runtime.text.finite` makes them ``null`` on disk, and they read back as ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypedDict

__all__ = [
    "Agreement",
    "CamResult",
    "ChannelGate",
    "FailedImage",
    "GateInfo",
    "ImageRecord",
    "Localisation",
    "ModelInfo",
    "ModelOutcome",
    "ModelSummary",
    "Record",
    "RunInfo",
    "SpatialGate",
    "Summary",
    "record_from_json",
    "replace",
    "slim",
]

#: Any JSON value (kept as read: the pictures' paths, a file stamp).
Json = Any


def _number(value: Any, what: str) -> float | None:
    """A float or ``None`` (``null`` for a non-finite value); ints are floats too."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} is not a number: {value!r}")
    return float(value)


_FLOATS = frozenset({float})


def _integer(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} is not an integer: {value!r}")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} is not text: {value!r}")
    return value


def _flag(value: Any, what: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{what} is not true, false or null: {value!r}")
    return value


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} is not an object: {value!r}")
    return value


@dataclass(frozen=True)
class Localisation:
    """Pointing game (hit or miss) and energy pointing game of a map against the image's mask
    (``None``: the map had NaN or infinite values)."""

    pointing_game: bool | None
    energy_pointing_game: float | None

    def to_json(self) -> dict[str, Json]:
        return {"pointing_game": self.pointing_game, "energy_pointing_game": self.energy_pointing_game}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Localisation | None:
        """The localisation in ``data`` (a CAM's or a gate's numbers); ``None`` when it has none (no mask)."""
        if "pointing_game" not in data:
            return None
        return cls(
            _flag(data["pointing_game"], "pointing_game"),
            _number(data.get("energy_pointing_game"), "energy_pointing_game"),
        )


@dataclass(frozen=True)
class CamResult:
    """One model's Grad-CAM of one image: its target class, the target's probability and the map's scores."""

    method: str
    layer: str
    target: int
    target_label: str | None
    p_target: float | None
    deletion_auc: float | None
    insertion_auc: float | None
    localisation: Localisation | None = None

    def to_json(self) -> dict[str, Json]:
        data: dict[str, Json] = {"method": self.method, "layer": self.layer, "target": self.target}
        if self.target_label is not None:
            data["target_label"] = self.target_label
        data |= {"p_target": self.p_target, "deletion_auc": self.deletion_auc, "insertion_auc": self.insertion_auc}
        return data | (self.localisation.to_json() if self.localisation else {})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CamResult:
        label = data.get("target_label")
        return cls(
            _text(data["method"], "cam method"),
            _text(data["layer"], "cam layer"),
            _integer(data["target"], "target"),
            None if label is None else _text(label, "target label"),
            _number(data["p_target"], "p_target"),
            _number(data.get("deletion_auc"), "deletion_auc"),
            _number(data.get("insertion_auc"), "insertion_auc"),
            Localisation.from_json(data),
        )


@dataclass(frozen=True)
class SpatialGate:
    """A spatial gate's map of one image: its mean, minimum and maximum, and how it points at the mask."""

    mean: float | None
    min: float | None
    max: float | None
    localisation: Localisation | None = None

    def to_json(self) -> dict[str, Json]:
        data: dict[str, Json] = {"mean": self.mean, "min": self.min, "max": self.max}
        return data | (self.localisation.to_json() if self.localisation else {})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SpatialGate:
        data = _object(data, "spatial gate")
        return cls(
            _number(data["mean"], "gate mean"),
            _number(data["min"], "gate min"),
            _number(data["max"], "gate max"),
            Localisation.from_json(data),
        )


@dataclass(frozen=True)
class ChannelGate:
    """A channel gate's vector of one image (``values``: one weight per channel) and its mean."""

    mean: float | None
    values: tuple[float | None, ...] | None = None

    def to_json(self) -> dict[str, Json]:
        return {"mean": self.mean} if self.values is None else {"mean": self.mean, "values": list(self.values)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChannelGate:
        data = _object(data, "channel gate")
        values = data.get("values")
        if values is not None and not isinstance(values, list):
            raise ValueError(f"channel gate values are not a list: {values!r}")
        if values is None:
            vector = None
        elif _FLOATS.issuperset(map(type, values)):  # what attnviz writes: checked in C
            vector = tuple(values)
        else:
            vector = tuple(_number(v, "channel gate value") for v in values)
        return cls(_number(data["mean"], "gate mean"), vector)


@dataclass(frozen=True)
class Agreement:
    """How a model's Grad-CAM agrees with the baseline's: top-20% IoU and Spearman's ρ."""

    top20_iou: float | None
    spearman: float | None

    def to_json(self) -> dict[str, Json]:
        return {"top20_iou": self.top20_iou, "spearman": self.spearman}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Agreement:
        data = _object(data, "agreement")
        return cls(_number(data["top20_iou"], "top20_iou"), _number(data["spearman"], "spearman"))


@dataclass(frozen=True)
class ModelOutcome:
    """One model's part of one image's record.

    Attributes:
        predicted: The predicted class index.
        label: Its name.
        prob: Its probability (``None``: not finite).
        top3: ``[class index, probability]`` of the three most probable classes.
        correct: Whether ``predicted`` is the truth (``None``: the image has no known class).
        cam: The Grad-CAM and its scores.
        spatial_gates: Gate name -> its numbers.
        channel_gates: Gate name -> its vector and mean.
        agreement: With the baseline's Grad-CAM (``None`` for the baseline itself).
    """

    predicted: int
    label: str
    prob: float | None
    top3: tuple[tuple[int, float | None], ...]
    correct: bool | None
    cam: CamResult
    spatial_gates: dict[str, SpatialGate] = field(default_factory=dict)
    channel_gates: dict[str, ChannelGate] = field(default_factory=dict)
    agreement: Agreement | None = None

    def to_json(self) -> dict[str, Json]:
        data: dict[str, Json] = {
            "predicted": self.predicted,
            "label": self.label,
            "prob": self.prob,
            "top3": [[index, prob] for index, prob in self.top3],
            "correct": self.correct,
            "cam": self.cam.to_json(),
            "spatial_gates": {name: gate.to_json() for name, gate in self.spatial_gates.items()},
            "channel_gates": {name: gate.to_json() for name, gate in self.channel_gates.items()},
        }
        return data | ({"agreement": self.agreement.to_json()} if self.agreement is not None else {})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelOutcome:
        data = _object(data, "model outcome")
        top3 = data["top3"]
        if not isinstance(top3, list) or not all(isinstance(pair, list) and len(pair) == 2 for pair in top3):
            raise ValueError(f"top3 is not a list of [class, probability] pairs: {top3!r}")
        agreement = data.get("agreement")
        return cls(
            _integer(data["predicted"], "predicted"),
            _text(data["label"], "label"),
            _number(data["prob"], "prob"),
            tuple((_integer(c, "top3 class"), _number(p, "top3 probability")) for c, p in top3),
            _flag(data["correct"], "correct"),
            CamResult.from_json(_object(data["cam"], "cam")),
            {
                _text(k, "gate"): SpatialGate.from_json(v)
                for k, v in _object(data["spatial_gates"], "spatial gates").items()
            },
            {
                _text(k, "gate"): ChannelGate.from_json(v)
                for k, v in _object(data["channel_gates"], "channel gates").items()
            },
            None if agreement is None else Agreement.from_json(agreement),
        )

    def slim(self) -> ModelOutcome:
        """This outcome without the channel-gate vectors (as ``results.json`` lists it)."""
        return replace(self, channel_gates={name: ChannelGate(gate.mean) for name, gate in self.channel_gates.items()})


@dataclass(frozen=True)
class _Identity:
    """Which input a record is about: its id (the record's file name), its place in the source, its
    key in the source, a display name and where it came from (a path, or the key)."""

    id: str
    index: int
    key: str
    name: str
    source: str

    def _identity_json(self) -> dict[str, Json]:
        return {"id": self.id, "index": self.index, "key": self.key, "name": self.name, "source": self.source}

    @staticmethod
    def _identity_from(data: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "id": _text(data["id"], "id"),
            "index": _integer(data["index"], "index"),
            "key": _text(data["key"], "key"),
            "name": _text(data["name"], "name"),
            "source": _text(data["source"], "source"),
        }


@dataclass(frozen=True)
class FailedImage(_Identity):
    """An input that could not be analysed (not decodable, its pictures failed …) and why."""

    config: str = ""
    reason: str = ""
    status: str = field(default="failed", init=False)

    def to_json(self) -> dict[str, Json]:
        return self._identity_json() | {"status": self.status, "config": self.config, "reason": self.reason}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FailedImage:
        return cls(
            **cls._identity_from(data), config=_text(data["config"], "config"), reason=_text(data["reason"], "reason")
        )


@dataclass(frozen=True)
class ImageRecord(_Identity):
    """An analysed image: every number the report shows for it.

    Attributes:
        config: Fingerprint of the report's configuration it was made with.
        truth: Its class name (or index as text), ``None`` when unknown.
        truth_index: Its class index, ``None`` when unknown.
        size: ``[height, width]`` of the image file.
        thumb_size: ``[height, width]`` of its thumbnail.
        has_mask: Whether a mask came with it.
        note: A remark about its decoding (``None``: none).
        models: Model name -> its outcome, in the report's model order.
        pictures: The pictures' paths relative to the report folder (``None``: none drawn).
        files: ``[size, mtime in ns]`` of its image and mask files when it was made (``None``: generated).
    """

    config: str = ""
    truth: str | None = None
    truth_index: int | None = None
    size: tuple[int, ...] = ()
    thumb_size: tuple[int, int] = (0, 0)
    has_mask: bool = False
    note: str | None = None
    models: dict[str, ModelOutcome] = field(default_factory=dict)
    pictures: Json = None
    files: Json = None
    status: str = field(default="ok", init=False)

    def to_json(self) -> dict[str, Json]:
        return self._identity_json() | {
            "status": self.status,
            "config": self.config,
            "truth": self.truth,
            "truth_index": self.truth_index,
            "size": list(self.size),
            "thumb_size": list(self.thumb_size),
            "has_mask": self.has_mask,
            "note": self.note,
            "models": {name: outcome.to_json() for name, outcome in self.models.items()},
            "pictures": self.pictures,
            "files": self.files,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageRecord:
        truth, index, note = data.get("truth"), data.get("truth_index"), data.get("note")
        pictures = data.get("pictures")
        if pictures is not None and not isinstance(pictures, Mapping):
            raise ValueError(f"pictures is not an object: {pictures!r}")
        return cls(
            **cls._identity_from(data),
            config=_text(data["config"], "config"),
            truth=None if truth is None else _text(truth, "truth"),
            truth_index=None if index is None else _integer(index, "truth_index"),
            size=tuple(_integer(v, "size") for v in _list(data["size"], "size")),
            thumb_size=_pair(data["thumb_size"]),
            has_mask=bool(_flag(data["has_mask"], "has_mask")),
            note=None if note is None else _text(note, "note"),
            models={_text(k, "model"): ModelOutcome.from_json(v) for k, v in _object(data["models"], "models").items()},
            pictures=pictures,
            files=data.get("files"),
        )


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{what} is not a list: {value!r}")
    return value


def _pair(value: Any) -> tuple[int, int]:
    height, width = _list(value, "thumb_size")
    return _integer(height, "thumb height"), _integer(width, "thumb width")


#: What ``items/<id>.json`` holds.
Record = ImageRecord | FailedImage


def record_from_json(data: Any) -> Record:
    """The record that ``data`` (a parsed ``items/<id>.json``) holds.

    Raises:
        ValueError: ``data`` is not a record as attnviz writes them.
    """
    data = _object(data, "record")
    try:
        return ImageRecord.from_json(data) if data.get("status") == "ok" else FailedImage.from_json(data)
    except (KeyError, TypeError) as error:
        raise ValueError(f"not a report record: {type(error).__name__}: {error}") from None


def slim(record: Record) -> Record:
    """``record`` as ``results.json`` lists it: without the channel-gate vectors."""
    if isinstance(record, FailedImage):
        return record
    return replace(record, models={name: outcome.slim() for name, outcome in record.models.items()})


# --------------------------------------------------------------------------- folder-level documents
# ``run.json`` and the aggregates are JSON as read and written (TypedDicts: no conversion, so the
# folders of earlier versions and hand-made values read as before); their keys are typed here.


class GateInfo(TypedDict):
    """A gate of a model: ``channel`` or ``spatial``, and its shape without the batch dimension."""

    kind: str
    shape: list[int]


class ModelInfo(TypedDict):
    """One model of ``run.json`` (see :meth:`attnviz.report.analysis.ModelRun.describe`)."""

    name: str
    slug: str
    arch: str
    source: str
    format: str
    preset: dict[str, Any]
    cam_layer: str
    gates: dict[str, GateInfo]
    num_classes: int
    parameters: str


class _RunInfo(TypedDict):
    format: str
    version: int
    config: str
    source: dict[str, Any]
    models: list[ModelInfo]
    baseline: str
    class_names: list[str] | None
    options: dict[str, Any]
    shard: list[int]


class RunInfo(_RunInfo, total=False):
    """``run.json``: what ran (models, options, input, shard) and the configuration fingerprint
    ``config`` that every record depends on; a merged report adds ``shards`` and ``missing_shards``."""

    shards: list[list[int]]
    missing_shards: list[int]


class ModelSummary(TypedDict):
    """One model's aggregates (``results.json``: ``summary.models.NAME``)."""

    images: int
    non_finite: int
    accuracy: dict[str, Any]
    confusion: dict[str, Any] | None
    means: dict[str, float | None]
    counts: dict[str, int]
    spatial_gates: dict[str, dict[str, Any]]
    channel_gates: dict[str, dict[str, Any]]


class _Summary(TypedDict):
    images: int
    failed: int
    labelled: int
    misclassified_by_any: int
    models_disagree: int
    gate_sample: int
    models: dict[str, ModelSummary]


class Summary(_Summary, total=False):
    """The aggregates over every image (``results.json``: ``summary``); ``pending`` is added by the build."""

    pending: int
