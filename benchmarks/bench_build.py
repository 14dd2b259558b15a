"""How long rebuilding a report's outputs from its records takes, by number of build workers.

A real report of ``--seed-images`` images (the three sample models, numbers only, one deletion step)
is made once; its records are then copied under new ids up to ``--images`` records (each copy keeps
every number, so the tables and the page are as large as a real report's). ``build_report`` runs
with each worker count (``--workers``; median of ``--repeats`` runs into the same folder), and the
outputs of every worker count are checked to be the same bytes.

    python benchmarks/bench_build.py --write                      # this machine, into docs/BENCHMARKS.md
    python benchmarks/bench_build.py --json build.json            # elsewhere (benchmarks/gpu_check.sh)
    python benchmarks/bench_build.py --from-json build.json --write

Columns: wall time of ``build_report``; the pass over the records (reading, parsing, and each
record's row, JSON entry and card: what the workers share); records per second; the time over the
one-process build's.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _doc import machine, write_section

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Report rebuild"
SAMPLES = [ROOT / "samples" / "models" / f"{name}.pth" for name in ("cnn", "se_cnn", "cbam_cnn")]
OUTPUTS = ("results.csv", "summary.csv", "results.json", "index.html")


def default_workers() -> list[int]:
    """0 (the main process), then 2, 4, 8 up to the cores this process may use."""
    from attnviz.runtime.pool import usable_cores

    return [0, *(n for n in (2, 4, 8) if n <= max(2, usable_cores()))]


def make_report(folder: Path, seed_images: int, images: int) -> None:
    """A report of ``seed_images`` images, its records copied up to ``images``."""
    import torch

    from attnviz.io.checkpoints import load_model
    from attnviz.report import ReportOptions, name_models, run_report
    from attnviz.report import records as store

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    models = name_models([load_model(path) for path in SAMPLES])
    options = ReportOptions(steps=1, sanity_images=0, batch_size=64, pictures=False, progress=False)
    run_report(models, f"shapes:{seed_images}", folder, options)
    rows = list(store.read_manifest(folder))
    originals = [json.loads((folder / store.ITEMS_DIR / f"{row['id']}.json").read_text()) for row in rows]
    manifest = []
    for index in range(images):
        record = dict(originals[index % len(originals)])
        if index >= len(originals):
            suffix = hashlib.sha1(str(index).encode()).hexdigest()[:10]
            record.update(id=f"copy-{index:06d}-{suffix}", index=index, name=f"copy-{index:06d}")
            store.write_json(folder / store.ITEMS_DIR / f"{record['id']}.json", record, compact=True)
        manifest.append({"index": index, "id": record["id"], "key": record["key"], "name": record["name"]})
    store.write_manifest(folder, manifest)


def measure(folder: Path, workers: list[int], repeats: int, done: Callable[[list[dict]], None]) -> list[dict]:
    """Each worker count's median wall and pass seconds; the outputs of each compared with the first's;
    ``done(rows)`` after each count (the rows so far)."""
    from attnviz.report import build_report

    rows: list[dict] = []
    reference = None
    for count in workers:
        walls, passes, used = [], [], 0
        for _ in range(repeats):
            start = time.perf_counter()
            built = build_report(folder, workers=count)
            walls.append(time.perf_counter() - start)
            passes.append(built.seconds["pass"])
            used = built.workers
        outputs = {name: _without_date((folder / name).read_text(encoding="utf-8")) for name in OUTPUTS}
        reference = reference or outputs
        rows.append(
            {
                "workers": count,
                "used": used,
                "wall_s": statistics.median(walls),
                "wall_min_s": min(walls),
                "wall_max_s": max(walls),
                "pass_s": statistics.median(passes),
                "images": built.images,
                "same_outputs": outputs == reference,
            }
        )
        done(rows)
    return rows


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _without_date(text: str) -> str:
    import re

    return re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", "DATE", text)


def section(result: dict) -> str:
    rows = result["rows"]
    serial = next(row for row in rows if row["workers"] < 2)["wall_s"]
    lines = [
        "| build workers | wall: median (min–max) | pass over the records | records / s | × one process | same files |",
        "| ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['workers']} | {row['wall_s']:.2f} s ({row['wall_min_s']:.2f}–{row['wall_max_s']:.2f}) "
            f"| {row['pass_s']:.2f} s | {row['images'] / row['wall_s']:.0f} | {row['wall_s'] / serial:.2f}× "
            f"| {'yes' if row['same_outputs'] else '**no**'} |"
        )
    best = min(rows, key=lambda row: row["wall_s"])
    return (
        f"{SECTION}\n\n"
        f"Command: `{result['command']}`  \n"
        f"Date: {result['date']}  \n"
        f"Machine: {result['machine']}  \n"
        f"`build_report` on a report of {result['images']} records (three models, numbers only: "
        f"{result['seed_images']} real records, copied under new ids), median of {result['repeats']} runs per row; "
        "the `attnviz report` CLI and `--merge` run it with `--build-workers` (default: one per core, up to 8).\n\n"
        + "\n".join(lines)
        + "\n\n"
        f"- {best['workers']} build worker(s) rebuild it in {best['wall_s']:.2f} s against {serial:.2f} s in one "
        f"process ({serial / best['wall_s']:.1f}× faster). Outside the pass (the summary of the aggregates, "
        f"writing summary.csv, results.json and index.html around the chunks' text) the main process spends "
        f"{best['wall_s'] - best['pass_s']:.2f} s.\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000, help="records in the report")
    parser.add_argument("--seed-images", type=int, default=200, help="images the report is made of")
    parser.add_argument(
        "--workers", default=None, help="comma-separated build worker counts (default: 0,2,4,8 ≤ cores)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=_positive, default=None, help="records per chunk (default: the report's)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--from-json", type=Path, help="print (and --write) the table of this JSON")
    parser.add_argument("--write", action="store_true", help=f'replace "{SECTION}" in docs/BENCHMARKS.md')
    args = parser.parse_args(argv)
    if args.from_json:
        result = json.loads(args.from_json.read_text(encoding="utf-8"))
    else:
        from attnviz.report import build

        if args.chunk:
            build.CHUNK_RECORDS = args.chunk  # the main process splits the manifest
        workers = [int(n) for n in args.workers.split(",")] if args.workers else default_workers()
        if not any(count < 2 for count in workers):
            parser.error("--workers needs 0 or 1 among its counts: the one-process build the others are compared with")
        result = {
            "command": "python benchmarks/bench_build.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": datetime.date.today().isoformat(),
            "machine": machine(),
            "images": args.images,
            "seed_images": args.seed_images,
            "repeats": args.repeats,
            "rows": [],
        }

        def save(rows: list[dict]) -> None:  # after every row: a run cut short keeps what it measured
            result["rows"] = rows
            if args.json:
                args.json.write_text(json.dumps(result, indent=1), encoding="utf-8")

        with tempfile.TemporaryDirectory() as temporary:
            folder = Path(temporary) / "report"
            make_report(folder, args.seed_images, args.images)
            measure(folder, sorted(workers, key=lambda count: count >= 2), args.repeats, save)
    body = section(result)
    print(body)
    if args.write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
