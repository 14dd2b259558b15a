"""The report's page build reads and parses each record once, and its outputs are what each record
gives on its own; the page's colour bar needs no matplotlib, so a report without pictures never loads
it; a record that cannot be written is named as such."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import ROOT

from attnviz.io.checkpoints import load_model
from attnviz.report import ReportOptions, build_report, name_models, run_report
from attnviz.report import records as store
from attnviz.report.schema import ImageRecord, slim
from attnviz.runtime.text import finite

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = [ROOT / "samples" / "models" / f"{name}.pth" for name in ("cnn", "cbam_cnn")]
FAST = {"steps": 1, "sanity_images": 0, "batch_size": 4, "progress": False}
DEAD_SPATIAL, DEAD_CHANNEL = "cbam2.spatial_attn", "cbam3.channel_attn"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A report without pictures (4 images, one broken), whose records are then given pictures' paths
    and two gates made constant, so that the cards show the gate panels and their constant marks."""
    source = tmp_path_factory.mktemp("source")
    rng = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(source / f"img{index}.png")
    (source / "broken.png").write_bytes(b"not an image")
    out = tmp_path_factory.mktemp("report") / "out"
    models = name_models([load_model(path) for path in MODELS])
    assert not run_report(models, source, out, ReportOptions(pictures=False, **FAST)).ok  # the broken image
    for path in sorted((out / "items").glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if data["status"] == "ok":
            path.write_text(json.dumps(_with_pictures_and_dead_gates(data)), encoding="utf-8")
    return out


def _with_pictures_and_dead_gates(data: dict) -> dict:
    item = data["id"]
    data["pictures"] = {"image": f"images/{item}.png", "arrays": f"arrays/{item}.npz", "models": {}}
    for name, entry in data["models"].items():
        data["pictures"]["models"][name] = {
            "cam": f"cam/{name}/{item}.png",
            "spatial": {gate: f"gates/{name}/{item}.{gate}.png" for gate in entry["spatial_gates"]},
            **({"bars": f"bars/{name}/{item}.png"} if entry["channel_gates"] else {}),
        }
        if DEAD_SPATIAL in entry["spatial_gates"]:
            entry["spatial_gates"][DEAD_SPATIAL].update(mean=0.25, min=0.25, max=0.25)
            dead = entry["channel_gates"][DEAD_CHANNEL]
            dead.update(mean=0.75, values=[0.75] * len(dead["values"]))
    return data


def _records(out: Path) -> list:
    run = store.read_run(out)
    return [store.read_record(out, row["id"], run["config"]) for row in store.read_manifest(out)]


def test_the_build_reads_and_parses_each_record_once(folder, tmp_path, monkeypatch):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(folder, out)
    reads: Counter[str] = Counter()
    read_json = store.read_json

    def counted(path):
        if path.parent.name == store.ITEMS_DIR:
            reads[path.name] += 1
        return read_json(path)

    monkeypatch.setattr(store, "read_json", counted)
    built = build_report(out)
    assert built.images == 3 and len(built.failures) == 1
    assert sorted(reads) == sorted(p.name for p in (out / "items").glob("*.json")) and set(reads.values()) == {1}
    assert {f"pass {job}" for job in ("read", "aggregate", "csv", "json", "html")} <= set(built.seconds)
    assert built.workers == 0


def test_worker_processes_write_what_one_process_writes(folder, tmp_path, monkeypatch):
    """Chunks of one record each, read by two worker processes, give the same files byte for byte
    (the constant gates' marks of cards written in other processes included)."""
    import shutil

    from attnviz.report import build

    monkeypatch.setattr(build, "CHUNK_RECORDS", 1)
    written = {}
    for workers in (0, 2):
        out = tmp_path / f"workers-{workers}"
        shutil.copytree(folder, out)
        built = build_report(out, workers=workers)
        assert built.workers == workers and built.images == 3 and built.pending == 0
        written[workers] = {
            name: re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", "DATE", (out / name).read_text(encoding="utf-8"))
            for name in ("results.csv", "summary.csv", "results.json", "index.html")
        }
    assert written[0] == written[2]
    page = written[2]["index.html"]
    assert page.count('class="constant"') >= 6 and "\x00" not in page and page.count('<article class="card') == 3
    assert json.loads(written[2]["results.json"])["summary"]["images"] == 3


def test_worker_processes_draw_the_excitation_figures_one_process_draws(folder, tmp_path, monkeypatch):
    """With pictures, each channel gate's per-class figure: the same PNG from a worker as from here."""
    import shutil

    from attnviz.report import build

    monkeypatch.setattr(build, "CHUNK_RECORDS", 1)  # workers read the records, then draw the figures
    drawn = {}
    for workers in (0, 2):
        out = tmp_path / f"workers-{workers}"
        shutil.copytree(folder, out)
        run = json.loads((out / store.RUN_FILE).read_text(encoding="utf-8"))
        run["options"]["pictures"] = True  # the fixture ran without: its figures are drawn now
        (out / store.RUN_FILE).write_text(json.dumps(run), encoding="utf-8")
        build_report(out, workers=workers)
        drawn[workers] = {p.name: p.read_bytes() for p in sorted((out / "figures").glob("*.png"))}
    assert drawn[0] == drawn[2] and len(drawn[0]) == 3  # cbam_cnn's three channel gates
    for data in drawn[2].values():
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=float)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 400 and pixels.std() > 10  # a drawn figure


def test_warnings_of_worker_processes_are_raised_by_the_main_process(folder, tmp_path, monkeypatch):
    """A record whose channel values overflow float32 warns (numpy); the warning reaches the caller
    once, whichever process read the record."""
    import shutil

    from attnviz.report import build

    monkeypatch.setattr(build, "CHUNK_RECORDS", 1)
    for workers in (0, 2):
        out = tmp_path / f"workers-{workers}"
        shutil.copytree(folder, out)
        for path in sorted((out / "items").glob("*.json")):
            data = json.loads(path.read_text(encoding="utf-8"))
            if data["status"] == "ok":
                data["models"]["cbam_cnn"]["channel_gates"]["cbam1.channel_attn"]["values"][0] = 1.7e308
                path.write_text(json.dumps(data), encoding="utf-8")
        with pytest.warns(RuntimeWarning, match="overflow") as caught:
            build_report(out, workers=workers)
        messages = [str(w.message) for w in caught]
        assert "overflow encountered in cast" in messages and len(messages) == len(set(messages)), messages


def test_the_processes_that_read_records_do_not_load_torch():
    """A worker of the build imports the module of its job: it must start in a fraction of torch's import."""
    script = "import sys, attnviz.report.build; print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_cards_are_each_records_card_with_the_constant_gates_of_the_whole_report(folder):
    from attnviz.report.html import card, constant_gates

    built = build_report(folder)
    run = store.read_run(folder)
    page = (folder / "index.html").read_text(encoding="utf-8")
    constant = constant_gates(built.summary)
    assert {DEAD_SPATIAL, DEAD_CHANNEL} <= set(constant["cbam_cnn"])
    cards = "".join(card(r, run, constant) for r in _records(folder) if isinstance(r, ImageRecord))
    assert cards.count('class="constant"') == len(constant["cbam_cnn"]) * 3 and "\x00" not in page
    assert cards in page
    assert page.count('<article class="card') == 3
    head = page[: page.index("<article")]
    assert "constant gate (0.250 everywhere)" in head and "constant gate (0.750 everywhere)" in head


def test_results_csv_and_json_hold_each_record_as_read(folder):
    from attnviz.report.results import csv_columns, csv_row

    build_report(folder)
    run = store.read_run(folder)
    records = _records(folder)
    expected = [{k: str(v) for k, v in csv_row(r, run).items()} for r in records]
    with open(folder / "results.csv", encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == csv_columns(run)
    assert [{k: v for k, v in row.items() if v != ""} for row in rows] == [
        {k: v for k, v in row.items() if v not in ("", "None")} for row in expected
    ]
    results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    assert results["images"] == [json.loads(json.dumps(finite(slim(r).to_json()))) for r in records]
    assert results["summary"]["images"] == 3 and [f["reason"] for f in results["failed"]] == [records[0].reason]


def test_the_colour_bar_table_is_matplotlibs_colour_map():
    import matplotlib

    from attnviz.report.html import colorbar_css
    from attnviz.report.pictures import OVERLAY_CMAP

    cmap = matplotlib.colormaps[OVERLAY_CMAP]
    expected = np.rint(np.asarray(cmap(np.arange(cmap.N)))[:, :3] * 255).astype(int)
    stops = re.findall(r"#(\w\w)(\w\w)(\w\w) ([\d.]+)% ([\d.]+)%", colorbar_css())
    assert [[int(c, 16) for c in stop[:3]] for stop in stops] == expected.tolist()
    assert [float(stop[4]) for stop in stops] == [float(f"{100 * (i + 1) / cmap.N:.4g}") for i in range(cmap.N)]


def test_a_report_without_pictures_never_imports_matplotlib(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        import torch
        torch.set_num_threads(1)
        from attnviz.io.checkpoints import load_model
        from attnviz.report import ReportOptions, name_models, run_report
        models = name_models([load_model({str(MODELS[1])!r})])
        options = ReportOptions(steps=1, sanity_images=0, batch_size=2, pictures=False, progress=False)
        run_report(models, "shapes:2", {str(tmp_path / "out")!r}, options)
        print(sorted(m for m in sys.modules if m.startswith(("matplotlib", "attnviz.render"))))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert "colorbar" in (tmp_path / "out" / "index.html").read_text(encoding="utf-8")


def test_a_record_that_cannot_be_written_is_named_in_the_reason(tmp_path, monkeypatch):
    write_bytes, calls = store.write_bytes, []

    def failing_second_record(path, data):
        if path.parent.name == store.ITEMS_DIR and json.loads(data)["status"] == "ok":
            calls.append(path.name)
            if len(calls) == 2:
                raise OSError(13, "Permission denied")
        return write_bytes(path, data)

    monkeypatch.setattr(store, "write_bytes", failing_second_record)
    options = ReportOptions(pictures=False, render_workers=0, **FAST)
    result = run_report(name_models([load_model(MODELS[0])]), "shapes:3", tmp_path / "out", options)
    [failure] = result.failures
    assert failure["reason"] == "could not write its record: PermissionError: [Errno 13] Permission denied"


def _depth(value) -> int:
    """Levels of lists and dicts in ``value``, counted recursively."""
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
    return 0 if children is None else 1 + max(map(_depth, children), default=0)


def test_the_depth_check_of_a_record_counts_lists_and_dicts_as_written():
    rng = np.random.default_rng(3)

    def value(depth: int):
        kind = rng.integers(0, 4) if depth < 40 else 0
        if kind == 0:
            return [1, 2.5, None, True, "x"][rng.integers(0, 5)]
        items = [value(depth + 1) for _ in range(rng.integers(0, 4))]
        return items if kind < 3 else {str(i): item for i, item in enumerate(items)}

    samples = [value(0) for _ in range(300)] + [[[]] * 3, {"a": [0.5] * 100}, [], {}, 1.0]
    for sample in samples:
        for limit in (0, 1, 2, 5, 32):
            assert store._deeper_than(sample, limit) == (_depth(sample) > limit), (sample, limit)
