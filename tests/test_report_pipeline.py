"""The report's render queue: a picture that cannot be drawn makes its image a failure, in this
process as in worker processes, and the other images are still written."""

from __future__ import annotations

import json

from support import ROOT

from attnviz.io.checkpoints import load_model
from attnviz.report import ReportOptions, name_models, run_report

MODEL = ROOT / "samples" / "models" / "cnn.pth"


def test_a_picture_that_fails_in_this_process_skips_its_image_and_keeps_the_others(tmp_path, monkeypatch):
    from attnviz.report import pictures

    draw, calls = pictures.write, []

    def failing_second(job, folder):
        calls.append(job["id"])
        if len(calls) == 2:
            raise ValueError("cannot draw this one")
        return draw(job, folder)

    monkeypatch.setattr(pictures, "write", failing_second)
    options = ReportOptions(steps=2, sanity_images=0, batch_size=2, progress=False, render_workers=0)
    result = run_report(name_models([load_model(MODEL)]), "shapes:3", tmp_path / "out", options)
    assert result.processed == 3 and len(calls) == 3
    [failure] = result.failures
    assert "could not draw its pictures: ValueError: cannot draw this one" in failure["reason"]
    records = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "out" / "items").glob("*.json")}
    assert sorted(r["status"] for r in records.values()) == ["failed", "ok", "ok"]
    assert records[calls[1]]["status"] == "failed"
    for record in records.values():
        if record["status"] == "ok":
            assert (tmp_path / "out" / record["pictures"]["image"]).is_file()
