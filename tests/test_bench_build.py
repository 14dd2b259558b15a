"""benchmarks/bench_build.py at a tiny size: every worker count ran, read its chunks where it says, and
wrote the same files; the JSON renders as a section of docs/BENCHMARKS.md without touching the real file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_build  # noqa: E402  (benchmarks/ is not a package)
from _doc import write_section  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_worker_count_writes_the_same_report(tmp_path, monkeypatch):
    from attnviz.report import build

    monkeypatch.setattr(build, "CHUNK_RECORDS", build.CHUNK_RECORDS)  # restored after --chunk
    path = tmp_path / "build.json"
    bench_build.main(
        ["--images", "30", "--seed-images", "3", "--chunk", "8", "--workers", "0,2", "--repeats", "1"]
        + ["--json", str(path)]
    )
    result = json.loads(path.read_text(encoding="utf-8"))
    rows = result["rows"]
    assert [(row["workers"], row["used"]) for row in rows] == [(0, 0), (2, 2)]
    assert all(row["images"] == 30 and row["same_outputs"] for row in rows)
    assert all(0 < row["pass_s"] <= row["wall_s"] for row in rows)

    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## Other\n\nkept\n", encoding="utf-8")
    write_section(bench_build.SECTION, bench_build.section(result), doc)
    text = doc.read_text(encoding="utf-8")
    assert "kept" in text and text.count("| yes |") == 2 and "30 records" in text
