"""Rebuild a report folder's outputs from its records: ``results.csv``, ``summary.csv``,
``results.json``, the per-class excitation figures and ``index.html``.

One streaming pass over the records named by the manifest reads and parses each record once and
feeds it to every output: the aggregates, a row of ``results.csv``, and its entry of ``results.json``
and card of ``index.html``, which wait in temporary files (spools) until the aggregates that head
those files are known; then the files are written, the spools copied into them without parsing.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Any

from attnviz.report import records as store
from attnviz.report.aggregate import Aggregator
from attnviz.report.figures import write_excitation
from attnviz.report.html import Cards, constant_note
from attnviz.report.results import ResultsCsv, ResultsJson, write_summary_csv
from attnviz.report.schema import FailedImage, Record, RunInfo, Summary
from attnviz.runtime.files import atomic_file, write_bytes
from attnviz.runtime.text import file_slug

FIGURES_DIR = "figures"
#: The metric definitions, shipped as package data of ``attnviz`` and copied next to ``index.html``.
METRICS_DOC = "METRICS.md"
METRICS_PAGE = "metrics.html"
#: Characters of a results.json's entries or a page's cards kept in memory before they go to a temporary file.
SPOOL_MEMORY = 16 << 20


@dataclass
class BuildResult:
    """What the rebuild found and wrote.

    Attributes:
        index: ``index.html``.
        images: Images in the report.
        failures: ``{"id", "source", "reason"}`` of every skipped input.
        pending: Manifest items that have no record yet (an interrupted run).
        summary: The aggregates written to ``results.json``.
        seconds: Time spent reading and parsing the records (``read``) and per output (``aggregate``,
            ``figures``, ``csv``, ``json``, ``html``).
    """

    index: Path
    images: int
    failures: list[dict[str, Any]]
    pending: int
    summary: Summary
    seconds: dict[str, float] = field(default_factory=dict)


def build_report(out: str | Path) -> BuildResult:
    """Write every output of the report folder ``out`` from its run description and records.

    Raises:
        UsageError: ``out`` is not a report folder.
    """
    out = Path(out)
    run = store.read_run(out)
    seconds: dict[str, float] = dict.fromkeys(("read", "aggregate", "csv", "json", "html"), 0.0)
    with ExitStack() as stack:
        table = ResultsCsv(stack.enter_context(atomic_file(out / "results.csv", "w")), run)
        entries = ResultsJson(stack.enter_context(_spool(out)))
        cards = Cards(run, stack.enter_context(_spool(out)))
        summary, failures = _read_once(out, run, {"csv": table.add, "json": entries.add, "html": cards.add}, seconds)

        start = time.perf_counter()
        figures = _figures(out, run, summary)
        seconds["figures"] = time.perf_counter() - start
        sanity = store.read_json(out / store.SANITY_FILE)
        sanity = sanity if isinstance(sanity, dict) and sanity.get("config") == run["config"] else None
        links = _links(out)

        start = time.perf_counter()
        _write_text(out / "summary.csv", lambda f: write_summary_csv(f, summary, sanity))
        seconds["csv"] += time.perf_counter() - start
        start = time.perf_counter()
        head = {"report": _report_head(run), "summary": summary, "sanity": sanity, "failed": failures}
        _write_text(out / "results.json", lambda f: entries.write(f, head))
        seconds["json"] += time.perf_counter() - start
        start = time.perf_counter()
        _write_text(out / "index.html", lambda f: cards.write_page(f, summary, sanity, figures, failures, links))
        seconds["html"] += time.perf_counter() - start
    return BuildResult(out / "index.html", summary["images"], failures, summary["pending"], summary, seconds)


def _read_once(
    out: Path, run: RunInfo, outputs: dict[str, Callable[[Record], None]], seconds: dict[str, float]
) -> tuple[Summary, list[dict[str, Any]]]:
    """Read every record once, feeding it to the aggregates and to ``outputs`` (key in ``seconds`` ->
    what takes the record); returns the aggregates and the failures (``{"id", "source", "reason"}``)."""
    aggregator = Aggregator([m["name"] for m in run["models"]], run.get("class_names"))
    takers = [("aggregate", aggregator.add), *outputs.items()]
    failures, pending = [], 0
    for record in _timed_records(out, run, seconds):
        if record is None:
            pending += 1
            continue
        for key, take in takers:
            start = time.perf_counter()
            take(record)
            seconds[key] += time.perf_counter() - start
        if isinstance(record, FailedImage):
            failures.append({"id": record.id, "source": record.source, "reason": record.reason})
    start = time.perf_counter()
    summary = aggregator.summary()
    summary["pending"] = pending
    aggregator.warn_non_finite()
    seconds["aggregate"] += time.perf_counter() - start
    return summary, failures


def _timed_records(out: Path, run: RunInfo, seconds: dict[str, float]) -> Iterator[Record | None]:
    """Each manifest row's record (``None``: none yet), adding the time spent reading to ``seconds["read"]``."""
    rows = store.read_manifest(out)
    while True:
        start = time.perf_counter()
        row = next(rows, None)
        record = store.read_record(out, row["id"], run["config"]) if row is not None else None
        seconds["read"] += time.perf_counter() - start
        if row is None:
            return
        yield record


def _spool(out: Path) -> IO[str]:
    """A temporary text file for what waits to be copied into an output: in memory up to
    :data:`SPOOL_MEMORY`, then an unnamed file in ``out``."""
    return tempfile.SpooledTemporaryFile(SPOOL_MEMORY, mode="w+", encoding="utf-8", newline="", dir=str(out))


def _figures(out: Path, run: RunInfo, summary: Summary) -> dict[str, dict[str, str]]:
    """One per-class excitation heat map per channel gate, from the exact per-class means over
    every image; model -> gate -> relative path."""
    if not run["options"].get("pictures", True):
        return {}
    figures: dict[str, dict[str, str]] = {}
    for model in run["models"]:
        channel_gates = summary["models"][model["name"]]["channel_gates"]
        for gate, facts in model["gates"].items():
            stats = channel_gates.get(gate)
            if facts["kind"] != "channel" or not stats or not stats["per_class"]:
                continue
            relative = f"{FIGURES_DIR}/excitation-{model['slug']}-{file_slug(gate)}.png"
            title = f"{model['name']} · {gate}, by {stats['grouped_by']}"
            write_excitation(out / relative, stats["per_class"], title, note=constant_note(stats))
            figures.setdefault(model["name"], {})[gate] = relative
    return figures


def _links(out: Path) -> dict[str, str]:
    links = {"results.csv": "results.csv", "summary.csv": "summary.csv", "results.json": "results.json"}
    definitions = resources.files("attnviz").joinpath(METRICS_DOC)
    if definitions.is_file():
        text = definitions.read_bytes()
        write_bytes(out / METRICS_DOC, text)
        write_bytes(out / METRICS_PAGE, _text_page("attnviz: metric definitions", text.decode("utf-8")))
        links["metric definitions"] = METRICS_PAGE
    return links


def _text_page(title: str, text: str) -> bytes:
    """A page that shows ``text`` (Markdown) as it is, wrapped: browsers open it from disk, unlike a .md file."""
    import html

    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>'
        '<body style="max-width:60rem;margin:2rem auto;padding:0 1rem">'
        f'<pre style="white-space:pre-wrap;font:0.95rem/1.5 ui-monospace,monospace">{html.escape(text)}</pre>'
        "</body></html>\n"
    ).encode()


def _report_head(run: RunInfo) -> dict[str, Any]:
    keys = ("format", "version", "config", "source", "models", "baseline", "class_names", "options", "shard")
    facts: dict[str, Any] = dict(run)
    return {key: facts[key] for key in keys if key in facts} | {"shards": run.get("shards", [run["shard"]])}


def _write_text(path: Path, write: Callable[[IO[str]], Any]) -> None:
    with atomic_file(path, "w") as file:
        write(file)
