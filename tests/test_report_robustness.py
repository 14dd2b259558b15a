"""attnviz report (and maps) under awkward conditions: its own output as input, unfinished shards,
models of other classes, Ctrl-C with worker processes, warnings, logs without a terminal,
changed files on resume, a single image as input, exit codes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support import ROOT, run

from attnviz.data.shapes import make_sample
from attnviz.io.checkpoints import load_model
from attnviz.report import ReportOptions, name_models, resolve_source, run_report
from attnviz.runtime.errors import UsageError
from attnviz.runtime.progress import ProgressLines

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = ROOT / "samples" / "models"
IMAGES = ROOT / "samples" / "images"
FAST = ("--steps", 2, "--sanity-images", 0, "--batch-size", 4, "--no-pictures")


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def images_in(folder: Path, count: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(IMAGES.glob("*.png"))[:count]:
        shutil.copy(path, folder / path.name)
    return folder


# --------------------------------------------------------------------------- 1. own output as input


def test_the_report_folder_is_refused_as_input_and_nothing_is_written(tmp_path):
    same = images_in(tmp_path / "same")
    before = sorted(p.name for p in same.iterdir())
    result = run("report", "--baseline", MODELS / "cnn.pth", same, "--out", same, *FAST)
    assert result.exit_code == 2
    [line] = lines(result.stderr)
    assert line.startswith("attnviz: error: INPUT") and "is the report folder" in line
    assert sorted(p.name for p in same.iterdir()) == before  # no run.json, no items/

    inside = images_in(tmp_path / "report" / "inputs")
    result = run("report", "--baseline", MODELS / "cnn.pth", inside, "--out", tmp_path / "report", *FAST)
    assert result.exit_code == 2 and "is inside the report folder" in result.stderr


def test_sub_folders_holding_a_report_are_not_read_as_images(tmp_path):
    folder = images_in(tmp_path / "in", 2)
    first = run(
        "report",
        "--baseline",
        MODELS / "cnn.pth",
        folder,
        "--out",
        folder / "old-report",
        "--steps",
        2,
        "--sanity-images",
        0,
        "--quiet",
    )
    assert first.exit_code == 0, first.output
    assert len(list((folder / "old-report").rglob("*.png"))) >= 4  # its thumbnails and Grad-CAMs

    second = run("report", "--baseline", MODELS / "cnn.pth", folder, "--out", tmp_path / "new", *FAST, "--quiet")
    assert second.exit_code == 0, second.output
    document = json.loads((tmp_path / "new" / "results.json").read_text())
    assert sorted(Path(i["source"]).name for i in document["images"]) == sorted(p.name for p in folder.glob("*.png"))
    assert [i.key for i in resolve_source(folder).items] == sorted(p.name for p in folder.glob("*.png"))
    with pytest.raises(UsageError, match="is an attnviz report folder"):
        resolve_source(folder / "old-report")


# --------------------------------------------------------------------------- 2. unfinished shards


def test_merging_an_unfinished_or_missing_shard_says_so_and_exits_1(tmp_path):
    shards = []
    for k in (1, 2):
        out = tmp_path / f"s{k}"
        result = run(
            "report", "--baseline", MODELS / "cnn.pth", "shapes:8", "--out", out, *FAST, "--quiet", "--shard", f"{k}/2"
        )
        assert result.exit_code == 0, result.output
        shards.append(out)
    records = sorted((shards[1] / "items").glob("*.json"))
    assert len(records) >= 2
    for record in records[1:]:  # as if the run of shard 2 had been interrupted after its first image
        record.unlink()
    unfinished = len(records) - 1

    result = run("report", "--merge", *shards, "--out", tmp_path / "merged", "--quiet")
    assert result.exit_code == 1
    assert lines(result.stderr) == [
        (
            f"attnviz: warning: shard 2/2 ({shards[1]}) is not finished: {unfinished} of {len(records)} image(s) have no "
            "result yet; finish it (re-run its command) and merge again"
        )
    ]
    document = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert document["summary"]["pending"] == unfinished
    assert len(document["images"]) == 8 - unfinished  # what is finished is still merged
    page = (tmp_path / "merged" / "index.html").read_text(encoding="utf-8")
    assert f"INCOMPLETE: {unfinished} image(s) not processed yet" in page

    alone = run("report", "--merge", shards[0], "--out", tmp_path / "half")
    assert alone.exit_code == 1
    assert lines(alone.stderr) == ["attnviz: warning: merging without shard(s) 2: their images are not in the report"]
    assert json.loads((tmp_path / "half" / "run.json").read_text())["missing_shards"] == [2]
    assert "INCOMPLETE: shard(s) 2 missing from this merge" in (tmp_path / "half" / "index.html").read_text(
        encoding="utf-8"
    )
    assert "INCOMPLETE" not in (shards[0] / "index.html").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- 3. class names


def _checkpoint(tmp_path: Path, name: str, classes: int = 10, class_names: list[str] | None = None) -> Path:
    data = torch.load(MODELS / "cnn.pth", weights_only=True)
    data["state_dict"]["fc2.weight"] = data["state_dict"]["fc2.weight"][:classes].clone()
    data["state_dict"]["fc2.bias"] = data["state_dict"]["fc2.bias"][:classes].clone()
    data["arch_kwargs"] = {"num_classes": classes}
    data["record"] = {}
    if class_names is None:
        data.pop("class_names")
    else:
        data["class_names"] = class_names
    torch.save(data, tmp_path / name)
    return tmp_path / name


def test_models_with_other_classes_are_a_usage_error_unless_classes_are_given(tmp_path):
    renamed = _checkpoint(tmp_path, "renamed.pth", class_names=[f"c{i}" for i in range(10)])
    result = run(
        "report", "--baseline", MODELS / "cnn.pth", "--model", renamed, "shapes:2", "--out", tmp_path / "a", *FAST
    )
    assert result.exit_code == 2
    assert lines(result.stderr) == [lines(result.stderr)[0]] and "the models' classes differ" in result.stderr
    assert "circle" in result.stderr and "c0" in result.stderr and not (tmp_path / "a").exists()

    fewer = _checkpoint(tmp_path, "five.pth", classes=5)
    result = run(
        "report", "--baseline", MODELS / "cnn.pth", "--model", fewer, "shapes:2", "--out", tmp_path / "b", *FAST
    )
    assert result.exit_code == 2 and "different numbers of classes (cnn: 10, cnn (five): 5)" in result.stderr

    names = tmp_path / "classes.txt"
    names.write_text("\n".join(f"k{i}" for i in range(10)))
    result = run(
        "report",
        "--baseline",
        MODELS / "cnn.pth",
        "--model",
        renamed,
        "shapes:2",
        "--out",
        tmp_path / "c",
        *FAST,
        "--quiet",
        "--classes",
        names,
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "c" / "run.json").read_text())["class_names"][0] == "k0"


# --------------------------------------------------------------------------- 4. Ctrl-C with workers


def _interrupt(args: list, out: Path, times: int = 1) -> subprocess.CompletedProcess:
    """Start the CLI in a process group of its own, wait until its workers draw, then Ctrl-C the
    whole group (as a terminal does), ``times`` times."""
    process = subprocess.Popen(
        [sys.executable, "-m", "attnviz.cli.main", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not list(out.rglob("*.png")):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no picture was drawn"
            time.sleep(0.1)
        time.sleep(0.5)
        assert process.poll() is None, "finished before it could be interrupted"
        for _ in range(times):
            os.killpg(process.pid, signal.SIGINT)
            time.sleep(0.3)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.skipif(sys.platform == "win32", reason="process groups and SIGINT are POSIX")
def test_ctrl_c_with_render_workers_stops_cleanly_and_keeps_the_finished_images(tmp_path):
    out = tmp_path / "report"
    done = _interrupt(
        [
            "report",
            "--baseline",
            MODELS / "cnn.pth",
            "--model",
            MODELS / "cbam_cnn.pth",
            "shapes:400",
            "--out",
            out,
            "--render-workers",
            2,
            "--sanity-images",
            0,
            "--steps",
            2,
            "--batch-size",
            8,
        ],
        out,
    )
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "SpawnProcess" not in done.stderr
    assert lines(done.stderr)[-1] == "attnviz: interrupted"
    assert not list(out.rglob("*.tmp"))
    for record in (out / "items").glob("*.json"):  # every record written is whole
        assert json.loads(record.read_text())["status"] == "ok"


@pytest.mark.skipif(sys.platform == "win32", reason="process groups and SIGINT are POSIX")
@pytest.mark.parametrize("times", [1, 2], ids=["once", "twice"])
def test_ctrl_c_with_maps_render_workers_stops_cleanly(tmp_path, times):
    folder = tmp_path / "in"
    folder.mkdir()
    for copy in range(4):
        for path in sorted(IMAGES.glob("*.png")):
            shutil.copy(path, folder / f"{copy}-{path.name}")
    out = tmp_path / "maps"
    done = _interrupt(
        [
            "maps",
            "--model",
            MODELS / "cbam_cnn.pth",
            *sorted(folder.iterdir()),
            "--out",
            out,
            "--render-workers",
            2,
            "--batch-size",
            4,
        ],
        out,
        times,
    )
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "SpawnProcess" not in done.stderr
    assert lines(done.stderr)[-1] == "attnviz: interrupted"
    folders = [f for f in out.iterdir() if f.is_dir()]
    assert folders and len(folders) < 48
    for folder in folders:  # finished (summary.json and every picture it lists) or arrays only
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        if "summary.json" in files:
            listed = json.loads((folder / "summary.json").read_text())["pictures"]
            assert sorted(files) == sorted(["attention.npz", "summary.json", *listed])
        else:
            assert files == ["attention.npz"], folder


# --------------------------------------------------------------------------- 5. warnings


def test_warnings_are_one_line_and_the_handler_is_restored(tmp_path):
    folder = tmp_path / "in"
    images_in(folder / "cats", 2)
    original = warnings.showwarning
    result = run("report", "--baseline", MODELS / "cnn.pth", folder, "--out", tmp_path / "out", *FAST, "--quiet")
    assert result.exit_code == 0, result.output
    assert lines(result.stderr) == ["attnviz: warning: labels that name no class of the models are ignored: cats"]
    assert warnings.showwarning is original
    with warnings.catch_warnings(record=True) as caught:  # outside the CLI, warnings are Python's again
        warnings.simplefilter("always")
        warnings.warn("plain", stacklevel=1)
    assert [str(w.message) for w in caught] == ["plain"]


# --------------------------------------------------------------------------- 6. progress in logs


def test_progress_lines_when_stderr_is_not_a_terminal(tmp_path):
    args = ("report", "--baseline", MODELS / "cnn.pth", "shapes:10", "--out", tmp_path / "out")
    args += ("--steps", 2, "--sanity-images", 1, "--batch-size", 2, "--no-pictures")
    result = run(*args)
    assert result.exit_code == 0, result.output
    err = lines(result.stderr)
    assert err[0] == "report: 10 of 10 image(s) to process"
    counts = [int(m[1]) for line in err if (m := re.fullmatch(r"report: (\d+)/10 images, ETA \d\d:\d\d", line))]
    assert counts == list(range(1, 10))  # a line per tenth
    assert re.fullmatch(r"report: 10/10 images, done in \d\d:\d\d", err[10])
    assert err[11] == "report: randomisation sanity check on 1 image(s), 1 model(s)"
    assert err[12].startswith("report: writing ") and len(err) == 13
    assert "\x1b" not in result.stderr and "\r" not in result.stderr  # no terminal control

    again = run(*args)  # the same command again
    assert lines(again.stderr)[0] == "report: all 10 image(s) finished earlier"
    quiet = run("report", "--baseline", MODELS / "cnn.pth", "shapes:10", "--out", tmp_path / "out", *FAST, "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == "" and quiet.stdout == ""


def test_progress_lines_every_tenth_or_every_30_seconds(capsys):
    now = [0.0]
    lines_ = ProgressLines(1000, 100, "report", clock=lambda: now[0])
    for _ in range(900):
        lines_.advance(1)
    lines_.finish()
    err = lines(capsys.readouterr().err)
    assert err[0] == "report: 900 of 1000 image(s) to process (100 finished earlier)"
    assert [line.split(",")[0] for line in err[1:-1]] == [f"report: {n}/1000 images" for n in range(200, 1000, 100)]
    assert err[-1] == "report: 1000/1000 images, done in 00:00"

    slow = ProgressLines(1000, 0, "report", clock=lambda: now[0])
    for _ in range(3):
        now[0] += 31.0
        slow.advance(1)  # far from a tenth, but 31 s went by each time
    err = lines(capsys.readouterr().err)
    assert err[1:] == [
        "report: 1/1000 images, ETA 8:36:09",
        "report: 2/1000 images, ETA 8:35:38",
        "report: 3/1000 images, ETA 8:35:07",
    ]


# --------------------------------------------------------------------------- 7. changed files on resume


def test_resume_redoes_an_image_whose_file_changed(tmp_path):
    folder = images_in(tmp_path / "in", 3)
    models = name_models([load_model(MODELS / "cnn.pth")])
    options = ReportOptions(steps=2, sanity_images=0, batch_size=4, pictures=False, progress=False)
    out = tmp_path / "out"
    assert (run_report(models, folder, out, options).processed) == 3
    records = {Path(json.loads(p.read_text())["source"]).name: p for p in (out / "items").glob("*.json")}
    stamps = {name: p.stat().st_mtime_ns for name, p in records.items()}

    changed = sorted(records)[1]
    replacement = np.asarray(Image.fromarray(make_sample(7, seed=0, split="test").image).resize((48, 40)))
    Image.fromarray(replacement).save(folder / changed)
    later = time.time() + 5
    os.utime(folder / changed, (later, later))
    second = run_report(models, folder, out, options)
    assert (second.processed, second.resumed) == (1, 2)
    assert {n: p.stat().st_mtime_ns for n, p in records.items() if n != changed} == {
        n: s for n, s in stamps.items() if n != changed
    }
    record = json.loads(records[changed].read_text())
    assert record["files"] == [[(folder / changed).stat().st_size, (folder / changed).stat().st_mtime_ns], None]
    assert record["size"] == [40, 48]  # the new file's numbers

    mask = folder / f"{Path(min(records)).stem}.mask.png"  # a mask appears beside the first image
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(mask)
    third = run_report(models, folder, out, options)
    assert (third.processed, third.resumed) == (1, 2)
    assert json.loads(records[min(records)].read_text())["has_mask"] is True


# --------------------------------------------------------------------------- 8. one image as input


def test_a_single_image_file_is_an_input_and_other_files_say_what_they_are_not(tmp_path):
    image = IMAGES / "00_circle.png"
    result = run("report", "--baseline", MODELS / "cnn.pth", image, "--out", tmp_path / "one", *FAST, "--quiet")
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "one" / "results.json").read_text())
    assert [Path(i["source"]).name for i in document["images"]] == ["00_circle.png"]

    renamed = tmp_path / "picture.dat"  # an image by its content, whatever its name
    shutil.copy(image, renamed)
    assert [i.path for i in resolve_source(renamed).items] == [str(renamed)]

    for name, data in (("weights.bin", bytes(range(256)) * 4), ("model.pth", (MODELS / "cnn.pth").read_bytes())):
        (tmp_path / name).write_bytes(data)
        result = run("report", "--baseline", MODELS / "cnn.pth", tmp_path / name, "--out", tmp_path / "x", *FAST)
        assert result.exit_code == 2
        assert lines(result.stderr) == [
            f"attnviz: error: '{tmp_path / name}' is neither an image nor a list file (a text file with one image path per line)"
        ]


# --------------------------------------------------------------------------- 9. exit codes


def test_exit_codes_match_the_readme(tmp_path):
    table = re.findall(r"^\| (\d+) \| (.+) \|$", (ROOT / "README.md").read_text(encoding="utf-8"), re.MULTILINE)
    documented = {int(code): meaning for code, meaning in table}
    assert set(documented) == {0, 1, 2, 130}
    assert "skipped" in documented[1] and "usage error" in documented[2] and "interrupted" in documented[130]

    missing = run("report", "--baseline", tmp_path / "none.pth", "shapes:2", "--out", tmp_path / "a", *FAST)
    assert missing.exit_code == 2
    assert lines(missing.stderr) == [f"attnviz: error: checkpoint '{tmp_path / 'none.pth'}' does not exist"]
    assert not (tmp_path / "a").exists()

    folder = images_in(tmp_path / "in", 2)
    (folder / "broken.png").write_bytes(b"not an image")
    skipped = run("report", "--baseline", MODELS / "cnn.pth", folder, "--out", tmp_path / "b", *FAST, "--quiet")
    assert skipped.exit_code == 1
    assert lines(skipped.stderr) == [line for line in lines(skipped.stderr) if line.startswith("attnviz: skipped")]
    assert len(lines(skipped.stderr)) == 1 and "broken.png" in skipped.stderr
    assert len(json.loads((tmp_path / "b" / "results.json").read_text())["images"]) == 3

    usage = run("report", "--baseline", MODELS / "cnn.pth", "shapes:2", "--out", tmp_path / "c", "--shard", "3/2")
    assert usage.exit_code == 2
    done = run("report", "--baseline", MODELS / "cnn.pth", "shapes:2", "--out", tmp_path / "d", *FAST, "--quiet")
    assert done.exit_code == 0, done.output
