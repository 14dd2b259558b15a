"""Rebuild a report folder's outputs from its records: ``results.csv``, ``summary.csv``,
``results.json``, the per-class excitation figures and ``index.html``.

One pass over the records named by the manifest reads and parses each record once and feeds it to
every output: the aggregates, a row of ``results.csv``, and its entry of ``results.json`` and card
of ``index.html``, which wait in temporary files (spools) until the aggregates that head those files
are known; then the files are written, the spools copied into them without parsing.

The pass goes chunk by chunk (:data:`CHUNK_RECORDS` manifest rows): each chunk gives its aggregates
and its text of every output (:func:`read_part`), in this process or in worker processes, and the
chunks join in manifest order, so the outputs are the same either way.
"""

from __future__ import annotations

import io
import itertools
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from attnviz.report import records as store
from attnviz.report.aggregate import Aggregator
from attnviz.report.figures import write_excitation
from attnviz.report.html import Cards, constant_note
from attnviz.report.results import ResultsCsv, ResultsJson, write_summary_csv
from attnviz.report.schema import FailedImage, RunInfo, Summary
from attnviz.runtime.files import atomic_file, write_bytes
from attnviz.runtime.text import file_slug

if TYPE_CHECKING:
    from attnviz.runtime.pool import WorkerPool

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
        seconds: Wall time of this process: the pass over the records (``pass``: reading, parsing and
            each record's part of every output, in worker processes or here), the aggregates
            (``summary``), ``figures``, and writing ``csv`` (summary.csv), ``json`` and ``html``;
            ``pass read``, ``pass aggregate``, ``pass csv``, ``pass json`` and ``pass html``: the
            seconds each of the pass's jobs took, summed over the processes that did them.
        workers: Worker processes that read the records (0: this process read them; no more are
            started than there are chunks).
    """

    index: Path
    images: int
    failures: list[dict[str, Any]]
    pending: int
    summary: Summary
    seconds: dict[str, float] = field(default_factory=dict)
    workers: int = 0


def build_report(out: str | Path, *, workers: int = 0) -> BuildResult:
    """Write every output of the report folder ``out`` from its run description and records.

    Args:
        out: The report folder.
        workers: Processes that read the records, :data:`CHUNK_RECORDS` at a time, when there
            are two chunks or more, and then draw the excitation figures (0 or 1: this process).
            They are spawned: a script that calls this with workers needs the
            ``if __name__ == "__main__":`` guard. The outputs do not depend on it; at most
            ``workers + 1`` chunks wait in memory.

    Raises:
        UsageError: ``out`` is not a report folder.
    """
    out = Path(out)
    run = store.read_run(out)
    seconds: dict[str, float] = dict.fromkeys(("pass", "summary", "csv", "json", "html"), 0.0)
    seconds |= {f"pass {key}": 0.0 for key in _JOBS}
    with ExitStack() as stack:
        table = ResultsCsv(stack.enter_context(atomic_file(out / "results.csv", "w")), run)
        entries = ResultsJson(stack.enter_context(_spool(out)))
        cards = Cards(run, stack.enter_context(_spool(out)))
        aggregator = Aggregator([m["name"] for m in run["models"]], run.get("class_names"))
        failures: list[dict[str, Any]] = []
        pending = 0
        caught: dict[tuple[type[Warning], str], None] = {}

        def join(part: _Part) -> None:
            nonlocal pending
            table.add_rows(part.rows)
            entries.add_entries(part.entries, part.records)
            cards.add_cards(part.cards, part.images)
            aggregator.merge(part.aggregator)
            failures.extend(part.failures)
            pending += part.pending
            caught.update(dict.fromkeys(part.warnings))
            for key, value in part.seconds.items():
                seconds[f"pass {key}"] += value

        with ExitStack() as processes:  # the workers stop once the pass and the figures are done
            pool = processes.enter_context(_worker_pool(workers)) if workers >= 2 else None
            start = time.perf_counter()
            used = _pass(out, run, cards.marks.token, pool, workers, join)
            for category, message in caught:  # once each, here: where the command's warnings are shown
                warnings.warn(message, category, stacklevel=2)
            seconds["pass"] = time.perf_counter() - start

            start = time.perf_counter()
            summary = aggregator.summary()
            summary["pending"] = pending
            aggregator.warn_non_finite()
            seconds["summary"] = time.perf_counter() - start
            start = time.perf_counter()
            figures = _figures(out, run, summary, pool if used else None)  # workers already started
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
    return BuildResult(out / "index.html", summary["images"], failures, summary["pending"], summary, seconds, used)


#: Manifest rows per chunk of the pass over the records. Fixed, so that the report's sums, added
#: chunk by chunk in manifest order, come out the same however many processes read the chunks.
CHUNK_RECORDS = 500
_JOBS = ("read", "aggregate", "csv", "json", "html")


@dataclass
class _Part:
    """One chunk of the records, read and turned into its share of every output (text to append)."""

    aggregator: Aggregator
    rows: str
    entries: str
    cards: str
    records: int
    images: int
    failures: list[dict[str, Any]]
    pending: int
    warnings: list[tuple[type[Warning], str]]
    seconds: dict[str, float]


def _chunks(rows: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """The manifest's rows, :data:`CHUNK_RECORDS` at a time."""
    while chunk := list(itertools.islice(rows, CHUNK_RECORDS)):
        yield chunk


def _worker_pool(workers: int) -> WorkerPool:
    from attnviz.runtime.pool import WorkerPool

    return WorkerPool(workers)  # processes start with the first jobs submitted, one per job up to ``workers``


def _pass(
    out: Path, run: RunInfo, token: str, pool: WorkerPool | None, workers: int, join: Callable[[_Part], None]
) -> int:
    """Read every chunk of the manifest's records and ``join`` their parts in manifest order, in
    ``pool`` when there are two chunks or more; returns the number of worker processes used (0: read
    here; at most one per chunk)."""
    chunks = _chunks(store.read_manifest(out))
    first = list(itertools.islice(chunks, 2))
    chunks = itertools.chain(first, chunks)
    if pool is None or len(first) < 2:
        for rows in chunks:
            join(read_part(str(out), run, rows, token))
        return 0
    submitted = 0
    ahead: deque[Future[_Part]] = deque()
    for rows in chunks:
        ahead.append(pool.submit(read_part, str(out), run, rows, token))
        submitted += 1
        if len(ahead) > workers:  # each worker busy, with one more chunk queued
            join(ahead.popleft().result())
    while ahead:
        join(ahead.popleft().result())
    return min(workers, submitted)


def read_part(out: str, run: RunInfo, rows: list[dict[str, Any]], token: str) -> _Part:
    """Read the records of manifest ``rows`` of the report folder ``out`` and make their part of
    every output (page cards with constant-gate place holders of ``token``); a worker's job."""
    folder = Path(out)
    seconds = dict.fromkeys(_JOBS, 0.0)
    aggregator = Aggregator([m["name"] for m in run["models"]], run.get("class_names"))
    rows_text, entries_text, cards_text = io.StringIO(), io.StringIO(), io.StringIO()
    table = ResultsCsv(rows_text, run, header=False)
    entries = ResultsJson(entries_text, continued=True)
    cards = Cards(run, cards_text, token)
    takers = (("aggregate", aggregator.add), ("csv", table.add), ("json", entries.add), ("html", cards.add))
    failures, pending = [], 0
    with warnings.catch_warnings(record=True) as caught:  # shown by the main process, as its own
        warnings.simplefilter("always")
        for row in rows:
            start = time.perf_counter()
            record = store.read_record(folder, row["id"], run["config"])
            seconds["read"] += time.perf_counter() - start
            if record is None:
                pending += 1
                continue
            for key, take in takers:
                start = time.perf_counter()
                take(record)
                seconds[key] += time.perf_counter() - start
            if isinstance(record, FailedImage):
                failures.append({"id": record.id, "source": record.source, "reason": record.reason})
    return _Part(
        aggregator,
        rows_text.getvalue(),
        entries_text.getvalue(),
        cards_text.getvalue(),
        entries.count,
        cards.count,
        failures,
        pending,
        list(dict.fromkeys((found.category, str(found.message)) for found in caught)),
        seconds,
    )


def _spool(out: Path) -> IO[str]:
    """A temporary text file for what waits to be copied into an output: in memory up to
    :data:`SPOOL_MEMORY`, then an unnamed file in ``out``."""
    return tempfile.SpooledTemporaryFile(SPOOL_MEMORY, mode="w+", encoding="utf-8", newline="", dir=str(out))


def _figures(out: Path, run: RunInfo, summary: Summary, pool: WorkerPool | None) -> dict[str, dict[str, str]]:
    """One per-class excitation heat map per channel gate, from the exact per-class means over
    every image, drawn in ``pool`` when there are two or more; model -> gate -> relative path."""
    if not run["options"].get("pictures", True):
        return {}
    figures: dict[str, dict[str, str]] = {}
    jobs = []
    for model in run["models"]:
        channel_gates = summary["models"][model["name"]]["channel_gates"]
        for gate, facts in model["gates"].items():
            stats = channel_gates.get(gate)
            if facts["kind"] != "channel" or not stats or not stats["per_class"]:
                continue
            relative = f"{FIGURES_DIR}/excitation-{model['slug']}-{file_slug(gate)}.png"
            title = f"{model['name']} · {gate}, by {stats['grouped_by']}"
            jobs.append((out / relative, stats["per_class"], title, constant_note(stats)))
            figures.setdefault(model["name"], {})[gate] = relative
    if pool is not None and len(jobs) > 1:
        for drawn in [pool.submit(draw_excitation, *job) for job in jobs]:
            drawn.result()  # raises what the drawing raised
    else:
        for job in jobs:
            draw_excitation(*job)
    return figures


def draw_excitation(path: Path, per_class: dict[str, Any], title: str, note: str) -> None:
    """:func:`write_excitation`, with every argument positional (a worker's job)."""
    write_excitation(path, per_class, title, note=note)


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
