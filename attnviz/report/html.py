"""``index.html``: the report as one static page (inline CSS and JS, pictures as files beside it).

The cards are written as the records are read, into a temporary file (:class:`Cards`); the page is
then the summary sections followed by those cards, so its size never has to fit in memory. Every
number on the page is taken from the records and the aggregates; nothing is computed here.
"""

from __future__ import annotations

import html
import json
import re
import secrets
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import IO, Any

from attnviz import __version__
from attnviz.report.pictures import OVERLAY_CMAP
from attnviz.report.schema import ImageRecord, ModelOutcome, Record, RunInfo, Summary

CARDS_MARK = "<!--CARDS-->"
_NAV = (
    ("models", "models"),
    ("spatial", "spatial gates"),
    ("confusion", "confusion"),
    ("channels", "channel gates"),
    ("sanity", "sanity check"),
    ("failed", "skipped"),
    ("images", "images"),
)

DEFINITIONS = (
    (
        "P",
        "the model's softmax probability of the class named under its picture: the class its Grad-CAM explains "
        "(the true class where known, else the class most models predict); ✓/✗ says whether the model predicted "
        "the true class, and a wrong prediction is named with its own P",
    ),
    ("PG", "pointing game: the map's maximum falls on the object's mask (hit ✓ / miss ✗)"),
    ("EPG", "energy pointing game: the share of the map's total value that lies inside the mask"),
    (
        "del / ins",
        "deletion / insertion AUC: the target class's probability as the most salient pixels are removed "
        "from the image / added to a blank one (lower deletion and higher insertion mean a more faithful map)",
    ),
    ("IoU / ρ", "agreement with the baseline's Grad-CAM: IoU of the top-20% regions and Spearman rank correlation"),
)


class Cards:
    """The page's cards written as the records come, before the report's aggregates are known.

    :meth:`add` writes each card to ``spool`` (a file open for reading and writing) with a mark where
    a gate's constant note may go; :meth:`write_page` writes the page around the cards, each mark
    replaced by the note of a gate that the aggregates found constant (each card then reads as
    :func:`card` gives it).
    Cards written elsewhere with the same ``token`` (another process's :class:`Cards` on a chunk of
    the records) join with :meth:`add_cards`.
    """

    def __init__(self, run: RunInfo, spool: IO[str], token: str | None = None) -> None:
        self.run = run
        self.spool = spool
        self.count = 0
        self.marks = _PendingMarks(token)

    def add(self, record: Record) -> None:
        """Write the card of an analysed image (a failed one has none)."""
        if isinstance(record, ImageRecord):
            self.spool.write(_card(record, self.run, self.marks))
            self.count += 1

    def add_cards(self, text: str, count: int) -> None:
        """Keep ``count`` cards written by a :class:`Cards` with this one's token."""
        self.spool.write(text)
        self.count += count

    def write_page(
        self,
        file: IO[str],
        summary: Summary,
        sanity: dict[str, Any] | None,
        figures: dict[str, dict[str, str]],
        failures: list[dict[str, Any]],
        links: dict[str, str],
    ) -> int:
        """Write the whole page to ``file``; returns the number of cards written."""
        head, tail = _page(self.run, summary, sanity, figures, failures, links)
        file.write(head)
        self.spool.seek(0)
        self.marks.copy(self.spool, file, constant_gates(summary))
        file.write(tail)
        return self.count


def _page(
    run: RunInfo,
    summary: Summary,
    sanity: dict[str, Any] | None,
    figures: dict[str, dict[str, str]],
    failures: list[dict[str, Any]],
    links: dict[str, str],
) -> tuple[str, str]:
    """The page before its cards and after them."""
    head, tail = _template().split(CARDS_MARK)
    fields = {
        "version": __version__,
        "title": html.escape(f"attnviz report: {run['source']['input']}"),
        "css": _resource("report.css"),
        "js": _resource("report.js"),
        "meta": _meta(run, summary),
        "links": " ".join(f'<a href="{html.escape(href)}">{html.escape(text)}</a>' for text, href in links.items())
        + ' <span class="nav">'
        + " ".join(f'<a href="#{a}">{t}</a>' for a, t in _NAV)
        + "</span>",
        "sections": "\n".join(
            [
                _models_section(run, summary),
                _spatial_section(run, summary),
                _confusion_section(run, summary),
                _channel_section(run, summary, figures),
                _sanity_section(run, sanity),
                _failed_section(failures),
                _definitions(links),
            ]
        ),
        "class_options": "".join(f'<option value="{html.escape(c)}">{html.escape(c)}</option>' for c in _classes(run)),
        "sort_options": _sort_options(run, summary),
        "colorbar_css": colorbar_css(),
        "legend": legend() if run["options"].get("pictures", True) else "",
    }
    return _fill(head, fields), _fill(tail, fields)


def constant_note(stats: dict[str, Any]) -> str:
    """What the report says of a gate whose aggregates (``min``, ``max``, ``constant``) show one value
    everywhere; ``""`` for a gate that varies (or one aggregated before gates' ranges were kept)."""
    if not stats.get("constant"):
        return ""
    return f"constant gate ({(stats['min'] + stats['max']) / 2:.3f} everywhere): it does not select anything"


def constant_gates(summary: Summary) -> dict[str, dict[str, str]]:
    """Model -> gate -> :func:`constant_note` of each constant gate, spatial and channel ones."""
    found: dict[str, dict[str, str]] = {}
    for name, stats in summary["models"].items():
        for gate, facts in [*stats["spatial_gates"].items(), *stats["channel_gates"].items()]:
            if note := constant_note(facts):
                found.setdefault(name, {})[gate] = note
    return found


def card(record: ImageRecord, run: RunInfo, constant: dict[str, dict[str, str]] | None = None) -> str:
    """One image's card: the image, each model's prediction and Grad-CAM, the gates on demand;
    ``constant`` (:func:`constant_gates`) marks the gates that are constant over the whole report."""
    return _card(record, run, _known_marks(constant or {}))


#: The HTML that marks a gate as constant: ``(model, gate, inline)`` -> ``""`` or the note (``inline``:
#: under a spatial gate's picture; else a paragraph under the channel bars).
ConstantMarks = Callable[[str, str, bool], str]


def _known_marks(constant: dict[str, dict[str, str]]) -> ConstantMarks:
    """The marks of the constant gates ``constant`` (:func:`constant_gates`)."""

    def mark(model: str, gate: str, inline: bool) -> str:
        notes = constant.get(model, {})
        return _constant_mark(gate, notes[gate], inline) if gate in notes else ""

    return mark


def _constant_mark(gate: str, note: str, inline: bool) -> str:
    if inline:
        return f'<br><span class="constant">{html.escape(note)}</span>'
    return f'<p class="constant">{html.escape(f"{gate}: {note}")}</p>'


class _PendingMarks:
    """Marks of gates whose constancy is not known yet: each ``(model, gate, inline)`` gets a place
    holder (NUL, a random token of this build, the key in hexadecimal, NUL: no record's text can
    forge one, and any process given the token writes the same), which :meth:`copy` replaces once the
    constant gates are known."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token or secrets.token_hex(8)
        self._pattern = re.compile(f"\x00{re.escape(self.token)}:([0-9a-f]*)\x00")
        self._holders: dict[tuple[str, str, bool], str] = {}

    def __call__(self, model: str, gate: str, inline: bool) -> str:
        key = (model, gate, inline)
        if key not in self._holders:
            self._holders[key] = f"\x00{self.token}:{json.dumps(key).encode().hex()}\x00"
        return self._holders[key]

    def copy(self, source: IO[str], target: IO[str], constant: dict[str, dict[str, str]]) -> None:
        """Copy ``source`` to ``target``, each place holder replaced by its mark under ``constant``."""
        known = _known_marks(constant)
        marks: dict[str, str] = {}

        def mark(found: re.Match[str]) -> str:
            key = found.group(1)
            if key not in marks:
                model, gate, inline = json.loads(bytes.fromhex(key))
                marks[key] = known(model, gate, inline)
            return marks[key]

        for line in source:
            target.write(self._pattern.sub(mark, line) if "\x00" in line else line)


def _card(record: ImageRecord, run: RunInfo, marks: ConstantMarks) -> str:
    """:func:`card`, with the constant gates' marks from ``marks``."""
    models = [m["name"] for m in run["models"]]
    entries = record.models
    truth = record.truth_index
    predictions = [entries[m].predicted for m in models]
    mis = truth is not None and any(p != truth for p in predictions)
    classes = [record.truth] if record.truth else sorted({entries[m].label for m in models})
    attrs = {
        "id": record.id,
        "mis": int(mis),
        "dis": int(len(set(predictions)) > 1),
        "classes": "|".join(classes),
        "v": json.dumps(_sort_values(record, models), separators=(",", ":"), allow_nan=False),
    }
    data = " ".join(f'data-{k}="{html.escape(str(v), quote=True)}"' for k, v in attrs.items())
    height, width = record.thumb_size
    pictures = record.pictures or {"image": None, "models": {name: {"cam": None} for name in models}}
    truth_text = f"truth: {record.truth}" if record.truth else "truth: unknown"
    figures = [_figure(pictures["image"], width, height, "input", "", "input")]
    for name in models:
        figures.append(
            _model_figure(name, entries[name], pictures["models"][name]["cam"], width, height, name == run["baseline"])
        )
    gates = "".join(_gate_panel(name, entries[name], pictures["models"][name], width, height, marks) for name in models)
    note = f'<p class="note">{html.escape(record.note)}</p>' if record.note else ""
    scale = legend() if any(pictures["models"][name].get("spatial") for name in models) else ""
    details = (
        f'<details class="gates"><summary>spatial gates and channel bars</summary>{scale}{gates}</details>'
        if gates
        else ""
    )
    arrays = pictures.get("arrays")
    data_link = (
        f'<a class="data" href="{html.escape(arrays)}" title="the maps of these pictures (Grad-CAM, spatial gates) '
        f'as float16 arrays">npz</a>'
        if arrays
        else ""
    )
    return (
        f'<article class="card{" mis" if mis else ""}" {data}>'
        f'<header><span class="name" title="{html.escape(record.source)}">{html.escape(record.name)}</span>'
        f'<span class="truth">{html.escape(truth_text)}{data_link}</span></header>'
        f'<div class="row">{"".join(figures)}</div>{note}{details}</article>\n'
    )


# --------------------------------------------------------------------------- cards


def _figure(src: str | None, width: int, height: int, caption: str, css: str, alt: str) -> str:
    """A picture with its caption (HTML) and ``alt`` text (the caption alone when the report has no pictures)."""
    image = (
        ""
        if src is None
        else (
            f'<img src="{html.escape(src)}" loading="lazy" width="{width}" height="{height}" alt="{html.escape(alt)}">'
        )
    )
    return f'<figure class="{css}">{image}<figcaption>{caption}</figcaption></figure>'


def _model_figure(name: str, entry: ModelOutcome, src: str | None, width: int, height: int, baseline: bool) -> str:
    cam = entry.cam
    css = {True: "m ok", False: "m bad", None: "m"}[entry.correct]
    numbers = [f"del {_num(cam.deletion_auc)}", f"ins {_num(cam.insertion_auc)}"]
    if cam.localisation is not None:
        numbers += [f"PG {_num(cam.localisation.pointing_game)}", f"EPG {_num(cam.localisation.energy_pointing_game)}"]
    if entry.agreement is not None:
        numbers += [f"IoU {_num(entry.agreement.top20_iou)}", f"ρ {_num(entry.agreement.spearman)}"]
    explained = str(cam.target_label if cam.target_label is not None else cam.target)
    caption = (
        f"<b>{html.escape(name)}</b>{' (baseline)' if baseline else ''}<br>"
        f'<span class="pred">{_verdict(entry, explained)}</span><span class="nums">{" · ".join(numbers)}</span>'
    )
    return _figure(src, width, height, caption, css, f"Grad-CAM of {explained} by {name}")


def _verdict(entry: ModelOutcome, explained: str) -> str:
    """One line: the explained class and its P, ✓/✗ against the truth, the prediction where it differs."""
    mark = {True: " ✓", False: " ✗", None: ""}[entry.correct]
    if entry.cam.target == entry.predicted:
        return f"{html.escape(entry.label)} P {_num(entry.prob)}{mark}"
    verb = "predicted" if entry.correct is False else "predicts"
    return (
        f"{html.escape(explained)} P {_num(entry.cam.p_target)}{mark} "
        f"({verb} {html.escape(entry.label)}, P {_num(entry.prob)})"
    )


def _gate_panel(
    name: str, entry: ModelOutcome, pictures: dict[str, Any], width: int, height: int, marks: ConstantMarks
) -> str:
    parts = []
    for gate, src in pictures.get("spatial", {}).items():
        values = entry.spatial_gates[gate]
        found = values.localisation
        extra = "" if found is None else f"<br>PG {_num(found.pointing_game)} · EPG {_num(found.energy_pointing_game)}"
        dead = marks(name, gate, True)
        caption = (
            f"{html.escape(gate)}<br>min {_num(values.min)} · mean {_num(values.mean)} · max {_num(values.max)}"
            f"{extra}{dead}"
        )
        parts.append(
            f'<figure class="gate"><img data-src="{html.escape(src)}" width="{width}" height="{height}" '
            f'alt="{html.escape(gate)}"><figcaption>{caption}</figcaption></figure>'
        )
    bars = pictures.get("bars")
    if bars:
        parts.append(f'<img class="bars" data-src="{html.escape(bars)}" alt="channel gates of {html.escape(name)}">')
        parts += [marks(name, gate, False) for gate in entry.channel_gates]
    if not parts:
        return ""
    return f'<div class="gatemodel"><b>{html.escape(name)}</b><div class="row">{"".join(parts)}</div></div>'


def _sort_values(record: ImageRecord, models: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {"name": record.name}
    for name in models:
        entry = record.models[name]
        cam = entry.cam
        found = cam.localisation
        values[f"prob:{name}"] = entry.prob
        values[f"p_target:{name}"] = cam.p_target
        values[f"deletion_auc:{name}"] = cam.deletion_auc
        values[f"insertion_auc:{name}"] = cam.insertion_auc
        values[f"pointing_game:{name}"] = _hit(found.pointing_game if found else None)
        values[f"energy_pointing_game:{name}"] = found.energy_pointing_game if found else None
        if entry.agreement is not None:
            values[f"top20_iou:{name}"] = entry.agreement.top20_iou
            values[f"spearman:{name}"] = entry.agreement.spearman
        for gate, stats in entry.spatial_gates.items():
            found = stats.localisation
            values[f"gate_mean:{name}:{gate}"] = stats.mean
            values[f"gate_pointing_game:{name}:{gate}"] = _hit(found.pointing_game if found else None)
            values[f"gate_energy_pointing_game:{name}:{gate}"] = found.energy_pointing_game if found else None
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in values.items()}


def _hit(value: Any) -> int | None:
    """A pointing-game hit as 1/0 for sorting (hits first when descending); ``None`` without a mask."""
    return None if value is None else int(bool(value))


def _sort_options(run: RunInfo, summary: Summary) -> str:
    """The keys the cards can be sorted by; localisation keys only for models scored against masks."""
    models, baseline = [m["name"] for m in run["models"]], run["baseline"]
    options = [("name", "name")]
    labels = (
        ("prob", "confidence P"),
        ("p_target", "P of the explained class"),
        ("deletion_auc", "deletion AUC"),
        ("insertion_auc", "insertion AUC"),
    )
    localisation = (("pointing_game", "pointing game (hits first)"), ("energy_pointing_game", "energy pointing game"))
    for model in run["models"]:
        name = model["name"]
        stats = summary["models"].get(name)
        masked = bool(stats["counts"].get("pointing_game")) if stats is not None else False
        options += [(f"{key}:{name}", f"{text}: {name}") for key, text in labels]
        if masked:
            options += [(f"{key}:{name}", f"Grad-CAM {text}: {name}") for key, text in localisation]
        if name != baseline:
            options += [
                (f"top20_iou:{name}", f"top-20% IoU with {baseline}: {name}"),
                (f"spearman:{name}", f"Spearman with {baseline}: {name}"),
            ]
        for gate, facts in model["gates"].items():
            if facts["kind"] != "spatial":
                continue
            options.append((f"gate_mean:{name}:{gate}", f"mean of {gate}: {name}"))
            if stats is not None and stats["spatial_gates"].get(gate, {}).get("masked"):
                options += [(f"gate_{key}:{name}:{gate}", f"{gate} {text}: {name}") for key, text in localisation]
    default = f"prob:{models[0]}"
    return "".join(
        f'<option value="{html.escape(v)}"{" selected" if v == default else ""}>{html.escape(t)}</option>'
        for v, t in options
    )


#: The colours of :data:`OVERLAY_CMAP` (matplotlib's ``jet``) at its 256 stops, as
#: :func:`attnviz.render.colormap_lut` gives them (``rrggbb`` each): written out, so that the page needs
#: no matplotlib (``tests/test_report_build_once.py`` checks them against matplotlib's colour map).
OVERLAY_COLOURS = (
    "00008000008400008900008d00009200009600009b00009f0000a40000a80000ad0000b20000b60000bb0000bf0000c4"
    "0000c80000cd0000d10000d60000da0000df0000e30000e80000ed0000f10000f60000fa0000ff0000ff0000ff0000ff"
    "0000ff0004ff0008ff000cff0010ff0014ff0018ff001cff0020ff0024ff0028ff002cff0030ff0034ff0038ff003cff"
    "0040ff0044ff0048ff004cff0050ff0054ff0058ff005cff0060ff0064ff0068ff006cff0070ff0074ff0078ff007cff"
    "0080ff0084ff0088ff008cff0090ff0094ff0098ff009cff00a0ff00a4ff00a8ff00acff00b0ff00b4ff00b8ff00bcff"
    "00c0ff00c4ff00c8ff00ccff00d0ff00d4ff00d8ff00dcfe00e0fb00e4f802e8f406ecf109f0ee0cf4eb0ff8e713fce4"
    "16ffe119ffde1cffdb1fffd723ffd426ffd129ffce2cffca30ffc733ffc436ffc139ffbe3cffba40ffb743ffb446ffb1"
    "49ffad4dffaa50ffa753ffa456ffa05aff9d5dff9a60ff9763ff9466ff906aff8d6dff8a70ff8773ff8377ff807aff7d"
    "7dff7a80ff7783ff7387ff708aff6d8dff6a90ff6694ff6397ff609aff5d9dff5aa0ff56a4ff53a7ff50aaff4dadff49"
    "b1ff46b4ff43b7ff40baff3cbeff39c1ff36c4ff33c7ff30caff2cceff29d1ff26d4ff23d7ff1fdbff1cdeff19e1ff16"
    "e4ff13e7ff0febff0ceeff09f1fc06f4f802f8f500fbf100feed00ffea00ffe600ffe200ffde00ffdb00ffd700ffd300"
    "ffd000ffcc00ffc800ffc400ffc100ffbd00ffb900ffb600ffb200ffae00ffab00ffa700ffa300ff9f00ff9c00ff9800"
    "ff9400ff9100ff8d00ff8900ff8600ff8200ff7e00ff7a00ff7700ff7300ff6f00ff6c00ff6800ff6400ff6000ff5d00"
    "ff5900ff5500ff5200ff4e00ff4a00ff4700ff4300ff3f00ff3b00ff3800ff3400ff3000ff2d00ff2900ff2500ff2200"
    "ff1e00ff1a00ff1600ff1300fa0f00f60b00f10800ed0400e80000e40000df0000da0000d60000d10000cd0000c80000"
    "c40000bf0000bb0000b60000b20000ad0000a80000a400009f00009b00009600009200008d0000890000840000800000"
)


def colorbar_css() -> str:
    """The page's one colour bar: the overlays' colormap as a CSS gradient, one hard-edged band per
    entry of its lookup table (value ``v`` is drawn with entry ``floor(v·N)``, as the overlays do)."""
    colours = [OVERLAY_COLOURS[i : i + 6] for i in range(0, len(OVERLAY_COLOURS), 6)]
    size = len(colours)
    stops = ",".join(f"#{colour} {100 * i / size:.4g}% {100 * (i + 1) / size:.4g}%" for i, colour in enumerate(colours))
    return f".colorbar {{ background: linear-gradient(to right,{stops}); }}"


def legend() -> str:
    """The colour scale of the overlays: 0 to 1 on the colormap of :data:`OVERLAY_CMAP`."""
    return (
        f'<div class="legend" title="colormap {html.escape(OVERLAY_CMAP)}"><span class="tick">0</span>'
        '<span class="colorbar"></span><span class="tick">1</span><span class="text">Grad-CAM (each map min-max '
        "scaled to [0, 1]) and spatial gates (their own sigmoid values)</span></div>"
    )


# --------------------------------------------------------------------------- summary sections


def _meta(run: RunInfo, summary: Summary) -> str:
    shards = run.get("shards") or [run["shard"]]
    shard_text = "" if shards == [[1, 1]] else f" · shards {', '.join(f'{k}/{n}' for k, n in shards)}"
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        f"{summary['images']} image(s) · {summary['failed']} skipped · {summary['labelled']} with a true class · "
        f"{len(run['models'])} model(s), baseline {run['baseline']}{shard_text} · Grad-CAM method "
        f"{run['options']['method']} · built {created}"
    )
    unfinished = []
    if summary.get("pending"):
        unfinished.append(f"{summary['pending']} image(s) not processed yet (an interrupted run: re-run the command)")
    if run.get("missing_shards"):
        unfinished.append(f"shard(s) {', '.join(map(str, run['missing_shards']))} missing from this merge")
    if unfinished:
        return (
            html.escape(text) + f' <strong class="unfinished">INCOMPLETE: {html.escape("; ".join(unfinished))}</strong>'
        )
    return html.escape(text)


def _models_section(run: RunInfo, summary: Summary) -> str:
    head = (
        "model",
        "arch",
        "checkpoint",
        "input",
        "CAM layer",
        "accuracy",
        "mean P",
        "PG",
        "EPG",
        "del AUC",
        "ins AUC",
        f"IoU vs {run['baseline']}",
        f"ρ vs {run['baseline']}",
    )
    rows = []
    for model in run["models"]:
        stats = summary["models"][model["name"]]
        means, counts = stats["means"], stats["counts"]
        accuracy = stats["accuracy"]
        acc = f"{accuracy['value']:.3f} ({accuracy['correct']}/{accuracy['labelled']})" if accuracy["labelled"] else "–"
        preset = model["preset"]
        cells = [
            model["name"],
            model["arch"],
            Path(model["source"]).name if model["source"] else "–",
            f"{preset['name']} {preset['size'][0]}×{preset['size'][1]}",
            model["cam_layer"] or "–",
            acc,
            _num(means.get("prob")),
            _rate(means.get("pointing_game"), counts.get("pointing_game")),
            _num(means.get("energy_pointing_game")),
            _num(means.get("deletion_auc")),
            _num(means.get("insertion_auc")),
            _num(means.get("top20_iou")),
            _num(means.get("spearman")),
        ]
        rows.append(cells)
    note = (
        f"Means over the images; PG and EPG over the {max((summary['models'][m['name']]['counts'].get('pointing_game', 0) for m in run['models']), default=0)} "
        f"image(s) with a mask. Grad-CAM explains the true class where known, else the class most models predict; "
        f"deletion/insertion use {run['options']['steps']} steps and a {run['options']['deletion_baseline']} baseline."
    )
    return f'<section id="models"><h2>Models</h2>{_table(head, rows, left=5)}<p class="note">{html.escape(note)}</p></section>'


def _spatial_section(run: RunInfo, summary: Summary) -> str:
    rows = []
    for model in run["models"]:
        for gate, stats in summary["models"][model["name"]]["spatial_gates"].items():
            facts = model["gates"].get(gate)
            shape = "×".join(map(str, facts["shape"] if facts is not None else []))
            rows.append(
                [
                    model["name"],
                    gate,
                    shape,
                    _num(stats.get("mean")),
                    _rate(stats.get("pointing_game"), stats.get("masked")),
                    _num(stats.get("energy_pointing_game")),
                    _range(stats),
                ]
            )
    if not rows:
        return ""
    head = ("model", "spatial gate", "size", "mean value", "PG", "EPG", "range over every image")
    note = "Spatial gates are upsampled bilinearly to the mask's size before they are scored."
    return (
        f'<section id="spatial"><h2>Spatial gates</h2>{_table(head, rows, left=3)}<p class="note">{note}</p></section>'
    )


def _confusion_section(run: RunInfo, summary: Summary) -> str:
    blocks = []
    for model in run["models"]:
        confusion = summary["models"][model["name"]]["confusion"]
        if not confusion:
            continue
        labels, matrix = confusion["labels"], confusion["matrix"]
        peak = max((max(row) for row in matrix), default=0) or 1
        head = "".join(f'<th title="predicted">{html.escape(label)}</th>' for label in labels)
        body = []
        for i, row in enumerate(matrix):
            cells = "".join(
                f'<td class="{"diag" if i == j else ""}" style="background: rgba(9,105,218,{0.6 * v / peak:.3f})">{v}</td>'
                for j, v in enumerate(row)
            )
            body.append(f'<tr><th class="l">{html.escape(labels[i])}</th>{cells}</tr>')
        blocks.append(
            f'<div><h3>{html.escape(model["name"])}</h3><table class="confusion"><tr><th class="l">true \\ predicted</th>'
            f"{head}</tr>{''.join(body)}</table></div>"
        )
    if not blocks:
        return ""
    return f'<section id="confusion"><h2>Confusion matrices</h2><div class="wrap">{"".join(blocks)}</div></section>'


def _channel_section(run: RunInfo, summary: Summary, figures: dict[str, dict[str, str]]) -> str:
    rows, blocks, keys = [], [], []
    for model in run["models"]:
        for stats in summary["models"][model["name"]]["channel_gates"].values():
            for key in stats.get("statistics") or {}:
                if key not in keys and key not in ("images", "channels") and _scalar(stats["statistics"][key]):
                    keys.append(key)
    for model in run["models"]:
        for gate, stats in summary["models"][model["name"]]["channel_gates"].items():
            statistics = stats.get("statistics") or {}
            rows.append(
                [
                    model["name"],
                    gate,
                    str(stats["channels"]),
                    str(stats["sample"]),
                    *[_num(statistics.get(key)) for key in keys],
                    _num(stats.get("class_selectivity")),
                    _range(stats),
                ]
            )
            src = figures.get(model["name"], {}).get(gate)
            if src:
                note = constant_note(stats)
                summary_text = f"{model['name']} · {gate}: mean excitation per class (class × channel heat map)" + (
                    f" — {note}" if note else ""
                )
                blocks.append(
                    f'<details class="fig"><summary>{html.escape(summary_text)}</summary>'
                    f'<img data-src="{html.escape(src)}" alt="per-class excitation of {html.escape(gate)}"></details>'
                )
    if not rows:
        return ""
    head = ("model", "channel gate", "channels", "images", *keys, "class selectivity", "range over every image")
    sample = summary["gate_sample"]
    note = (
        f"Gate statistics and class selectivity over {sample} image(s)"
        + (
            " (every image)."
            if sample == summary["images"]
            else f" (a fixed sample of the {summary['images']}; "
            "the per-class means in results.json and the heat maps below are exact over every image)."
        )
        + f" Classes: {_grouping(summary, run)}."
    )
    return (
        f'<section id="channels"><h2>Channel gates</h2>{_table(head, rows, left=2)}<p class="note">{html.escape(note)}</p>'
        f"{''.join(blocks)}</section>"
    )


def _grouping(summary: Summary, run: RunInfo) -> str:
    for model in run["models"]:
        for stats in summary["models"][model["name"]]["channel_gates"].values():
            return stats["grouped_by"]
    return ""


def _sanity_section(run: RunInfo, sanity: dict[str, Any] | None) -> str:
    if not sanity or not sanity.get("models"):
        return ""
    blocks = []
    head = ("step", "re-initialised", "mean ρ", "n", "constant maps", "mean top-20% IoU", "ρ per image")
    for name, steps in sanity["models"].items():
        rows = [
            [
                str(step.get("step", "")),
                ", ".join(step.get("layers") or []) or "(trained model)",
                _num(step.get("spearman_mean")),
                _num(step.get("n")),
                _num(step.get("constant")),
                _num(step.get("top20_iou_mean")),
                _cell(step.get("spearman") or []),
            ]
            for step in steps
        ]
        first, last = (steps[1], steps[-1]) if len(steps) > 1 else ({}, {})
        headline = (
            f"{name}: {len(steps) - 1} step(s); Spearman with the trained model's map "
            f"{_num(first.get('spearman_mean'))} after re-initialising {', '.join(first.get('layers') or []) or '–'}, "
            f"{_num(last.get('spearman_mean'))} with every layer re-initialised (n={_num(last.get('n'))}); "
            f"top-20% IoU {_num(last.get('top20_iou_mean'))}"
        )
        blocks.append(
            f'<details class="fig"><summary>{html.escape(headline)}</summary>{_table(head, rows, left=2)}</details>'
        )
    images = sanity.get("images", [])
    shown = ", ".join(images[:8]) + (" …" if len(images) > 8 else "")
    note = (
        f"Expensive, so computed on a small fixed subset: the first {len(images)} image(s) of the input ({shown}). "
        "The model's layers are re-initialised one by one from the top; a map that stays similar to the trained "
        "model's (high Spearman ρ) does not depend on what the model learned. A map that re-initialising made "
        "constant keeps no rank information, so its ρ is 0; n is the number of images the mean is over."
    )
    return (
        f'<section id="sanity"><h2>Randomisation sanity check</h2><p class="note">{html.escape(note)}</p>'
        f"{''.join(blocks)}</section>"
    )


def _failed_section(failures: list[dict[str, Any]]) -> str:
    if not failures:
        return ""
    items = "".join(f"<li>{html.escape(f['source'])}: <span>{html.escape(f['reason'])}</span></li>" for f in failures)
    return f'<section id="failed"><h2>Skipped files ({len(failures)})</h2><ul class="failed">{items}</ul></section>'


def _definitions(links: dict[str, str]) -> str:
    items = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in DEFINITIONS)
    more = (
        f' Full definitions: <a href="{html.escape(links["metric definitions"])}">metrics.html</a>.'
        if "metric definitions" in links
        else ""
    )
    return f'<section id="definitions"><h2>Definitions</h2><ul>{items}</ul><p class="note">{more}</p></section>'


# --------------------------------------------------------------------------- helpers


def _table(head: Iterable[str], rows: list[list[str]], left: int = 1) -> str:
    head_html = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(str(h))}</th>' for i, h in enumerate(head))
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"l" if i < left else ""}">{html.escape(str(c))}</td>' for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head_html}</tr>{body}</table>"


def _classes(run: RunInfo) -> list[str]:
    return list(run.get("class_names") or [])


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, bool):
        return "✓" if value else "✗"
    if isinstance(value, int):
        return str(value)
    return f"{float(value):.3f}"


def _range(stats: dict[str, Any]) -> str:
    """A gate's minimum – maximum over every channel or position and image, or that it is constant."""
    note = constant_note(stats)
    if note or stats.get("min") is None:
        return note or "–"
    return f"{_num(stats['min'])} – {_num(stats['max'])}"


def _rate(value: Any, count: Any) -> str:
    return "–" if value is None or not count else f"{value:.3f} (n={count})"


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value[:8]) + (" …" if len(value) > 8 else "")
    return value if isinstance(value, str) else _num(value)


def _fill(text: str, fields: dict[str, str]) -> str:
    """Replace every ``{{name}}`` of the template in one pass, so that ``{{…}}`` inside a filled-in
    value (an input's or a model's name) stays as it is."""
    return re.sub(r"\{\{(\w+)\}\}", lambda match: fields.get(match.group(1), match.group(0)), text)


def _template() -> str:
    return _resource("template.html")


def _resource(name: str) -> str:
    return resources.files("attnviz.report").joinpath(name).read_text(encoding="utf-8")
