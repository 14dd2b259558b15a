"""``results.csv`` (one row per image), ``summary.csv`` (one row per aggregated number) and
``results.json`` (everything but the channel-gate vectors, which stay in ``items/``)."""

from __future__ import annotations

import csv
import json
import shutil
from typing import IO, Any

from attnviz.report.schema import ImageRecord, Record, RunInfo, Summary, slim
from attnviz.runtime.text import csv_cell, finite, strict_json

IMAGE_COLUMNS = ("id", "name", "source", "status", "reason", "truth", "truth_index")
MODEL_COLUMNS = (
    "predicted",
    "predicted_index",
    "prob",
    "correct",
    "target",
    "p_target",
    "deletion_auc",
    "insertion_auc",
    "pointing_game",
    "energy_pointing_game",
)
AGREEMENT_COLUMNS = ("top20_iou", "spearman")
SPATIAL_COLUMNS = ("mean", "pointing_game", "energy_pointing_game")


def csv_columns(run: RunInfo) -> list[str]:
    """The columns of ``results.csv``: image facts, then per model ``MODEL:metric`` and
    ``MODEL:GATE:metric`` for each gate (made safe for spreadsheets like every cell, :func:`csv_cell`)."""
    columns = list(IMAGE_COLUMNS)
    for model in run["models"]:
        name = model["name"]
        columns += [f"{name}:{key}" for key in MODEL_COLUMNS]
        if name != run["baseline"]:
            columns += [f"{name}:{key}" for key in AGREEMENT_COLUMNS]
        for gate, facts in model["gates"].items():
            keys = SPATIAL_COLUMNS if facts["kind"] == "spatial" else ("mean",) if facts["kind"] == "channel" else ()
            columns += [f"{name}:{gate}:{key}" for key in keys]
    return [csv_cell(column) for column in columns]


def csv_row(record: Record, run: RunInfo) -> dict[str, Any]:
    """One image's row of ``results.csv``."""
    row: dict[str, Any] = {key: getattr(record, key, None) for key in IMAGE_COLUMNS}
    for name, entry in (record.models if isinstance(record, ImageRecord) else {}).items():
        cam = entry.cam
        row.update(
            {
                f"{name}:predicted": entry.label,
                f"{name}:predicted_index": entry.predicted,
                f"{name}:prob": entry.prob,
                f"{name}:correct": entry.correct,
                f"{name}:target": cam.target,
                f"{name}:p_target": cam.p_target,
                f"{name}:deletion_auc": cam.deletion_auc,
                f"{name}:insertion_auc": cam.insertion_auc,
            }
        )
        if cam.localisation is not None:
            row.update({f"{name}:{key}": value for key, value in cam.localisation.to_json().items()})
        if entry.agreement is not None:
            row.update({f"{name}:{key}": value for key, value in entry.agreement.to_json().items()})
        for gate, values in entry.spatial_gates.items():
            row.update(
                {f"{name}:{gate}:{key}": value for key, value in values.to_json().items() if key in SPATIAL_COLUMNS}
            )
        for gate, channel in entry.channel_gates.items():
            row[f"{name}:{gate}:mean"] = channel.mean
    return {csv_cell(key): csv_cell(value) for key, value in finite(row).items()}


class ResultsCsv:
    """``results.csv`` written one record at a time: the header at once (unless ``header`` is false:
    rows to append to another's), then a row per :meth:`add`."""

    def __init__(self, file: IO[str], run: RunInfo, *, header: bool = True) -> None:
        self.run = run
        self.file = file
        self.writer = csv.DictWriter(file, fieldnames=csv_columns(run), extrasaction="ignore", lineterminator="\n")
        if header:
            self.writer.writeheader()

    def add(self, record: Record) -> None:
        """Write the record's row."""
        self.writer.writerow(csv_row(record, self.run))

    def add_rows(self, text: str) -> None:
        """Write rows written by another :class:`ResultsCsv` of the same run (without its header)."""
        self.file.write(text)


def write_summary_csv(file: IO[str], summary: Summary, sanity: dict[str, Any] | None = None) -> None:
    """``summary.csv``: ``model, subject, metric, value, n`` (subject: ``model``, ``grad-cam``, a gate, or
    ``sanity:STEP:LAYERS`` for each step of the randomisation sanity check, with its ``spearman_mean`` and
    ``top20_iou_mean``; ``LAYERS`` are the modules re-initialised at that step joined by ``+``, ``-`` for
    the trained model)."""
    writer = csv.writer(file, lineterminator="\n")
    writer.writerow(["model", "subject", "metric", "value", "n"])

    def write(cells: list[Any]) -> None:
        writer.writerow([csv_cell(cell) for cell in cells])

    for name, stats in summary["models"].items():
        accuracy = stats["accuracy"]
        write([name, "model", "accuracy", accuracy["value"], accuracy["labelled"]])
        for key, value in stats["means"].items():
            subject = "model" if key == "prob" else "grad-cam"
            write([name, subject, f"mean_{key}", value, stats["counts"][key]])
        for gate, values in stats["spatial_gates"].items():
            for key in SPATIAL_COLUMNS:
                n = values["masked"] if key != "mean" else stats["images"]
                write([name, gate, f"mean_{key}", values.get(key), n])
        for gate, values in stats["channel_gates"].items():
            for key, value in (values.get("statistics") or {}).items():
                if isinstance(value, (int, float)) or value is None:
                    write([name, gate, key, value, values["sample"]])
            write([name, gate, "class_selectivity", values.get("class_selectivity"), values["sample"]])
        for step in ((sanity or {}).get("models") or {}).get(name, []):
            subject = f"sanity:{step['step']}:{'+'.join(step.get('layers') or []) or '-'}"
            images = len(step.get("top20_iou") or [])
            write([name, subject, "spearman_mean", step.get("spearman_mean"), step.get("n", "")])
            write([name, subject, "top20_iou_mean", step.get("top20_iou_mean"), images])


class ResultsJson:
    """``results.json`` built before its head is known: :meth:`add` writes each record's entry to
    ``spool`` (a file open for reading and writing), :meth:`write` the file: ``head``'s keys, then
    ``images``, one entry per record without the channel-gate vectors (``docs/results.schema.json``
    describes the whole). A ``continued`` one writes entries to join another's with
    :meth:`add_entries` (a chunk of the records, in another process)."""

    def __init__(self, spool: IO[str], *, continued: bool = False) -> None:
        self.spool = spool
        self.count = 0
        self._after = int(continued)  # entries that continue another's list: each after a comma

    def add(self, record: Record) -> None:
        """Keep the record's entry of ``images``."""
        self.spool.write(_image_entry(self.count + self._after, record))
        self.count += 1

    def add_entries(self, text: str, count: int) -> None:
        """Keep ``count`` entries written by another :class:`ResultsJson` (each after a comma, as
        for a non-first entry: the comma of this file's first entry is dropped)."""
        if count and not self.count:
            text = text.removeprefix(",")
        self.spool.write(text)
        self.count += count

    def write(self, file: IO[str], head: dict[str, Any]) -> None:
        """Write ``results.json`` to ``file``: ``head``'s keys, then every entry kept."""
        _write_head(file, head)
        self.spool.seek(0)
        shutil.copyfileobj(self.spool, file, COPY_CHUNK)
        file.write(_JSON_END)


#: Characters copied at a time from a spool to its file.
COPY_CHUNK = 1 << 20
_JSON_END = "\n]}\n"


def _write_head(file: IO[str], head: dict[str, Any]) -> None:
    file.write("{\n")
    for key, value in head.items():
        file.write(f"{json.dumps(key)}: {strict_json(value)},\n")
    file.write('"images": [')


def _image_entry(index: int, record: Record) -> str:
    """The record's entry of ``images``, after a comma unless it is the first (``index`` 0)."""
    entry = strict_json(slim(record).to_json())
    return (",\n" if index else "\n") + entry
