"""Hostile files and faults in maps and report outputs: output folder names, NaN models, CSV formula
injection, a full disk, --out below a file, unreadable images, deeply nested records."""

from __future__ import annotations

import builtins
import collections
import csv
import enum
import errno
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support import run

from attnviz.io.save import save_checkpoint
from attnviz.jobs.maps import _output_folders
from attnviz.models import build_model
from attnviz.report.results import csv_columns
from attnviz.runtime.text import csv_cell, strict_json

pytestmark = pytest.mark.usefixtures("one_thread")

HOSTILE = [
    '=HYPERLINK("http://evil.example","x")',
    "@SUM(1+1)",
    "+1-2",
    "-2+3",
    "\tTAB",
    "\rCR",
    "plain",
    "c7",
    "c8",
    "c9",
]
FAST_REPORT = ("--steps", 2, "--sanity-images", 0, "--batch-size", 4, "--quiet")
DANGEROUS = ("=", "+", "-", "@", "\t", "\r")


def _image(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path, format="PNG")
    return path


def _strict(text: str) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faults")
    torch.manual_seed(0)
    paths = {"cnn": root / "cnn.pth", "hostile": root / "hostile.pth", "nan": root / "broken.pth"}
    save_checkpoint(paths["cnn"], build_model("cnn"), "cnn", preset="cifar10", class_names=[f"c{i}" for i in range(10)])
    hostile = build_model("cnn")
    with torch.no_grad():
        hostile.fc2.bias[0] = 1e4  # always predicts class 0, the =HYPERLINK one
    save_checkpoint(paths["hostile"], hostile, "cnn", preset="cifar10", class_names=HOSTILE)
    broken = build_model("cbam_cnn")
    with torch.no_grad():
        broken.conv1.weight.fill_(float("nan"))
    save_checkpoint(paths["nan"], broken, "cbam_cnn", preset="cifar10", class_names=[f"c{i}" for i in range(10)])
    return paths


# --------------------------------------------------------------------------- item 7: maps output names


def test_every_maps_image_gets_its_own_folder_inside_out(models, tmp_path):
    sources = [
        _image(tmp_path / "in" / name, seed)
        for seed, name in enumerate(
            [
                "...png",
                "a/same.png",
                "b/same.png",
                "same-2.png",
                ".hidden.png",
                "x" * 200 + ".png",
                "Case.png",
                "case.png",
            ]
        )
    ]
    out = tmp_path / "work" / "out"
    out.mkdir(parents=True)
    result = run("maps", "--model", models["cnn"], *sources, "--out", out, "--no-pictures", "--no-cam")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["out"]  # nothing beside --out
    folders = sorted(p for p in out.iterdir() if not p.name.startswith("."))  # .attnviz.json: the folder's owner
    assert len(folders) == len(sources) and all(p.is_dir() for p in folders)
    assert len({p.name.casefold() for p in folders}) == len(sources)  # distinct on case-insensitive disks too
    assert all(not p.name.startswith(".") and len(p.name.encode()) <= 100 for p in folders)
    named = {json.loads((p / "summary.json").read_text())["image"]: p.name for p in folders}
    assert sorted(named) == sorted(str(s) for s in sources)
    assert named[str(tmp_path / "in" / "a/same.png")] == "same"
    assert named[str(tmp_path / "in" / "same-2.png")] == "same-2"
    assert named[str(tmp_path / "in" / "b/same.png")] == "same-3"
    for folder in folders:
        with np.load(folder / "attention.npz") as arrays:
            assert "feature/conv3" in arrays or len(arrays.files) > 0
    assert f"wrote {len(sources)} image(s)" in result.stdout


def test_maps_prints_names_with_console_markup_as_text(models, tmp_path):
    image = _image(tmp_path / "x[" / "[/]y[bold].png", 1)
    result = run("maps", "--model", models["cnn"], image, "--out", tmp_path / "out", "--no-pictures", "--no-cam")
    assert result.exit_code == 0, result.output
    assert f"{image} →" in result.stdout and "wrote 1 image(s)" in result.stdout
    [folder] = _visible(tmp_path / "out")
    assert json.loads((tmp_path / "out" / folder / "summary.json").read_text())["image"] == str(image)


def test_maps_removes_the_pictures_of_an_image_whose_drawing_fails_and_keeps_its_arrays(models, tmp_path, monkeypatch):
    import attnviz.jobs.maps_pictures

    def failing(job, folder, options):  # draws nothing for a (fast), fails halfway for b
        if folder.name == "b":
            (folder / "bars").mkdir()
            (folder / "bars" / "half.png").write_bytes(b"cut short")
            raise ValueError("cannot draw this one")
        return attnviz.jobs.maps_pictures.Drawn()

    monkeypatch.setattr(attnviz.jobs.maps_pictures, "draw_pictures", failing)
    images = [_image(tmp_path / f"{n}.png", i) for i, n in enumerate("ab")]
    result = run(
        "maps", "--model", models["cnn"], *images, "--out", tmp_path / "out", "--no-cam", "--render-workers", 0
    )
    assert result.exit_code == 1, result.output
    [line] = _lines(result.stderr)
    assert line == f"attnviz: {images[1]}: picture not drawn: all pictures: ValueError: cannot draw this one"
    assert _visible(tmp_path / "out") == ["a", "b"] and (tmp_path / "out" / "a" / "summary.json").is_file()
    kept = sorted(str(p.relative_to(tmp_path / "out" / "b")) for p in (tmp_path / "out" / "b").rglob("*"))
    assert kept == ["attention.npz", "summary.json"]


def test_output_folder_names_are_deterministic_and_never_collide():
    names = _output_folders([Path(p) for p in ["a/same.png", "b/same.png", "same-2.png", "c/same.png", "../..png", ""]])
    assert names == ["same", "same-3", "same-2", "same-4", "image", "image-2"]
    assert _output_folders([Path("x/..png"), Path("y/..png"), Path("a/image.png")]) == ["image", "image-2", "image-3"]
    assert _output_folders([Path("Case.png"), Path("case.png"), Path("case-2.png")]) == ["Case", "case-3", "case-2"]
    assert _output_folders([Path("a.png"), Path("a.png")]) == ["a", "a-2"]  # the same file twice: two folders


# --------------------------------------------------------------------------- item 8: NaN


def test_maps_with_a_nan_model_warns_once_and_writes_strict_json(models, tmp_path):
    image = _image(tmp_path / "a.png", 1)
    result = run("maps", "--model", models["nan"], image, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    warnings = [line for line in _lines(result.stderr) if line.startswith("attnviz: warning:")]
    assert len(warnings) == 1 and "NaN" in warnings[0] and len(_lines(result.stderr)) == 1
    summary = _strict((tmp_path / "out" / "a" / "summary.json").read_text())
    assert summary["prediction"]["prob"] is None
    assert all(entry["prob"] is None for entry in summary["prediction"]["top5"])
    assert summary["gates"] and all(gate["mean"] is None for gate in summary["gates"])
    assert "cam/gradcam" in summary["non_finite"] and "gate/cbam1.spatial_attn" in summary["non_finite"]
    assert summary["pictures"] == []  # nothing drawn from NaN maps
    assert sorted(p.name for p in (tmp_path / "out" / "a").iterdir()) == ["attention.npz", "summary.json"]
    assert "p=–" in result.stdout


def test_report_with_a_nan_model_finishes_with_missing_values(models, tmp_path):
    folder = tmp_path / "in"
    for seed in range(2):
        _image(folder / f"img{seed}.png", seed)
    result = run(
        "report", "--baseline", models["cnn"], "--model", models["nan"], folder, "--out", tmp_path / "r", *FAST_REPORT
    )
    assert result.exit_code == 0, result.output
    [warning] = _lines(result.stderr)
    assert warning.startswith("attnviz: warning:") and "NaN" in warning and "cbam_cnn" in warning
    document = _strict((tmp_path / "r" / "results.json").read_text())
    for image in document["images"]:
        entry = image["models"]["cbam_cnn"]
        assert entry["prob"] is None and entry["cam"]["p_target"] is None
        assert entry["agreement"] == {"top20_iou": None, "spearman": None}  # no agreement with a NaN map
        assert image["models"]["cnn"]["prob"] > 0
    assert document["summary"]["models"]["cbam_cnn"]["means"]["prob"] is None
    assert document["summary"]["models"]["cnn"]["means"]["prob"] > 0
    page = (tmp_path / "r" / "index.html").read_text()
    assert "P –" in page and not re.search(r"\bnan\b", page, re.IGNORECASE)
    for path in (tmp_path / "r" / "items").iterdir():
        _strict(path.read_text())


def test_compare_with_a_nan_model_writes_strict_json(models, tmp_path):
    image = _image(tmp_path / "a.png", 1)
    result = run("compare", "--baseline", models["cnn"], "--model", models["nan"], image, "--out", tmp_path / "fig.png")
    assert result.exit_code == 0, result.output
    [entry] = _strict((tmp_path / "fig.json").read_text())["images"]
    assert entry["models"]["cbam_cnn"]["p_target"] is None and entry["models"]["cnn"]["p_target"] > 0


# --------------------------------------------------------------------------- item 9: CSV formula injection


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised():
    for text in HOSTILE[:6]:
        assert csv_cell(text) == "'" + text
    assert csv_cell("plain") == "plain" and csv_cell("") == ""
    assert csv_cell(-0.25) == "-0.25" and csv_cell(-3) == -3 and csv_cell(True) == 1 and csv_cell(None) == ""
    assert csv_cell(float("nan")) == ""
    run_facts = {"baseline": "=m", "models": [{"name": "=m", "gates": {"@g": {"kind": "channel"}}}]}
    assert "'=m:predicted" in csv_columns(run_facts) and "'=m:@g:mean" in csv_columns(run_facts)


def test_results_csv_neutralises_hostile_class_and_file_names(models, tmp_path):
    folder = tmp_path / "in"
    _image(folder / "=HYPERLINK(x).png", 1)
    _image(folder / "@SUM(1).png", 2)
    _image(folder / "ok.png", 3)
    result = run(
        "report", "--baseline", models["hostile"], folder, "--out", tmp_path / "r", *FAST_REPORT, "--no-pictures"
    )
    assert result.exit_code == 0, result.output
    with open(tmp_path / "r" / "results.csv", newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    by_name = {row["name"]: row for row in rows}
    assert sorted(by_name) == ["'=HYPERLINK(x).png", "'@SUM(1).png", "ok.png"]
    assert {row["cnn:predicted"] for row in rows} == {"'" + HOSTILE[0]}
    assert all(float(row["cnn:prob"]) > 0.99 for row in rows)  # numbers stay numbers
    for path in ("results.csv", "summary.csv"):
        with open(tmp_path / "r" / path, newline="", encoding="utf-8") as file:
            for row in csv.reader(file):
                for cell in row:
                    if cell.startswith(DANGEROUS):
                        float(cell)  # only our own negative numbers may start with '-'
    document = _strict((tmp_path / "r" / "results.json").read_text())  # JSON keeps the true names
    assert sorted(Path(i["source"]).name for i in document["images"]) == ["=HYPERLINK(x).png", "@SUM(1).png", "ok.png"]


# --------------------------------------------------------------------------- item 12: faults


def _unreadable(monkeypatch, path: Path) -> None:
    """``path`` answers as a file without read permission does for a normal user (root reads any file)."""
    path.chmod(0)
    real_open, real_access = builtins.open, os.access

    def fake_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file) == str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(file, *args, **kwargs)

    def fake_access(file, mode, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file) == str(path):
            return False
        return real_access(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "access", fake_access)


def test_maps_skips_an_unreadable_image_and_writes_the_others(models, tmp_path, monkeypatch):
    good = [_image(tmp_path / "a.png", 1), _image(tmp_path / "c.png", 3)]
    locked = _image(tmp_path / "b.png", 2)
    _unreadable(monkeypatch, locked)
    result = run("maps", "--model", models["cnn"], good[0], locked, good[1], "--out", tmp_path / "out", "--no-pictures")
    assert result.exit_code == 1, result.output
    [line] = _lines(result.stderr)
    assert line.startswith(f"attnviz: skipped {locked}:") and "Permission denied" in line
    assert _visible(tmp_path / "out") == ["a", "c"]
    assert "wrote 2 image(s)" in result.stdout and "1 skipped" in result.stdout


def _disk_full_after(monkeypatch, under: Path, files: int) -> list[str]:
    """``os.replace`` into ``under`` fails with ENOSPC after ``files`` successful ones (atomic writes end
    with it); attnviz's hidden bookkeeping files (the folder's owner marker) do not count."""
    real_replace, done = os.replace, []

    def replace(source, target, *args, **kwargs):
        if str(target).startswith(str(under)) and not Path(target).name.startswith("."):
            if len(done) >= files:
                raise OSError(errno.ENOSPC, "No space left on device", str(target))
            done.append(str(target))
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return done


@pytest.mark.parametrize("files", [2, 3], ids=["npz", "summary"])
def test_maps_on_a_full_disk_says_so_keeps_finished_images_and_cleans_the_partial_one(
    models, tmp_path, monkeypatch, files
):
    images = [_image(tmp_path / f"{n}.png", i) for i, n in enumerate("abc")]
    out = tmp_path / "out"
    _disk_full_after(monkeypatch, out, files)
    result = run("maps", "--model", models["cnn"], *images, "--out", out, "--no-pictures", "--render-workers", 0)
    assert result.exit_code == 1, result.output
    [line] = _lines(result.stderr)
    assert line.startswith("attnviz: error: disk full") and str(out / "b") in line and "wrote 1 image(s)" in line
    assert "nothing written" not in result.output and "internal error" not in result.output
    assert _visible(out) == ["a"]  # b's partial folder removed, c never started
    assert sorted(p.name for p in (out / "a").iterdir()) == ["attention.npz", "summary.json"]


def test_a_full_disk_removes_every_unfinished_image_still_waiting_for_its_pictures(tmp_path, monkeypatch):
    from attnviz.jobs.maps import ImageResult, MapsOptions, _Painter
    from attnviz.runtime.errors import OutputError

    outcomes = []
    for name in "abc":
        (tmp_path / name).mkdir()
        (tmp_path / name / "attention.npz").write_bytes(b"arrays")
        outcomes.append(ImageResult(name, tmp_path / name, {"image": name}, [tmp_path / name / "attention.npz"]))
    _disk_full_after(monkeypatch, tmp_path, 1)  # a's summary.json is written, b's is not
    finished = []
    with pytest.raises(OutputError, match=r"disk full: could not write .*b/summary.json; wrote 1 image") as caught:
        with _Painter(MapsOptions(pictures=False), 3) as painter:
            painter.window = 3  # all pending until the end, as while worker processes draw
            for outcome in outcomes:
                painter.put(outcome, finished.append)
    assert caught.value.exit_code == 1 and [outcome.path for outcome in finished] == ["a"]
    assert _visible(tmp_path) == ["a"]  # b and c, unfinished, are gone


def test_maps_out_below_a_regular_file_is_one_line_and_exit_2(models, tmp_path):
    (tmp_path / "file").write_text("mine")
    image = _image(tmp_path / "a.png", 1)
    result = run("maps", "--model", models["cnn"], image, "--out", tmp_path / "file" / "out", "--no-pictures")
    assert result.exit_code == 2
    [line] = _lines(result.stderr)
    assert line.startswith("attnviz: error:") and "output folder" in line and str(tmp_path / "file") in line
    assert (tmp_path / "file").read_text() == "mine"


def test_report_out_below_a_regular_file_is_one_line_and_exit_2(models, tmp_path):
    (tmp_path / "file").write_text("mine")
    _image(tmp_path / "in" / "a.png", 1)
    result = run("report", "--baseline", models["cnn"], tmp_path / "in", "--out", tmp_path / "file" / "r", *FAST_REPORT)
    assert result.exit_code == 2, result.output
    [line] = _lines(result.stderr)
    assert line.startswith("attnviz: error:") and "output folder" in line and str(tmp_path / "file") in line


def test_report_on_a_full_disk_is_one_line_and_exit_1(models, tmp_path, monkeypatch):
    _image(tmp_path / "in" / "a.png", 1)
    _disk_full_after(monkeypatch, tmp_path / "r", 1)
    result = run(
        "report", "--baseline", models["cnn"], tmp_path / "in", "--out", tmp_path / "r", *FAST_REPORT, "--no-pictures"
    )
    assert result.exit_code == 1, result.output
    [line] = _lines(result.stderr)
    assert line.startswith("attnviz: error: disk full") and str(tmp_path / "r") in line


@pytest.fixture
def shard(models, tmp_path) -> Path:
    for seed in range(2):
        _image(tmp_path / "in" / f"img{seed}.png", seed)
    result = run(
        "report",
        "--baseline",
        models["cnn"],
        tmp_path / "in",
        "--out",
        tmp_path / "s1",
        *FAST_REPORT,
        "--no-pictures",
        "--shard",
        "1/1",
    )
    assert result.exit_code == 0, result.output
    return tmp_path / "s1"


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_merging_a_deeply_nested_record_is_not_an_internal_error(shard, tmp_path):
    records = sorted((shard / "items").iterdir())
    records[0].write_text(_nested(100_000))  # deeper than the JSON parser goes
    record = json.loads(records[1].read_text())
    records[1].write_text(
        json.dumps(record)[:-1] + ', "extra": ' + _nested(900) + "}"
    )  # parses, but nothing can walk it
    result = run("report", "--merge", shard, "--out", tmp_path / "merged", "--quiet")
    assert result.exit_code == 1, result.output
    [line] = _lines(result.stderr)
    assert line.startswith("attnviz: warning:") and "not finished: 2 of 2" in line
    _strict((tmp_path / "merged" / "results.json").read_text())


def test_a_deeply_nested_run_json_is_not_a_report_folder(shard, tmp_path):
    (shard / "run.json").write_text(_nested(100_000))
    result = run("report", "--merge", shard, "--out", tmp_path / "merged", "--quiet")
    assert result.exit_code == 2, result.output
    [line] = _lines(result.stderr)
    assert line.startswith("attnviz: error:") and "is not a report folder" in line


def test_strict_json_never_writes_nan():
    text = strict_json({"p": float("nan"), "q": [float("inf"), np.float32(-np.inf), 1.5], "n": np.int64(3)})
    assert _strict(text) == {"p": None, "q": [None, None, 1.5], "n": 3}


class _Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class _Tagged(float):
    def tolist(self):
        return "tagged"


@pytest.mark.parametrize(
    "value",
    [
        {"a": [0.1, 2, None, True, "x"], "b": {"c": (1.5, [2.5])}},  # plain: the C encoder's fast path
        {"a": [0.1, float("nan")], "b": {"c": float("-inf")}},  # NaN below the top level
        {"a": np.arange(3), "b": [np.float32(0.1), torch.tensor(2.5)]},  # numpy and torch values
        {1: "int key", "s": {True: 1, None: 2, 2.5: 3}},  # keys json writes differently from str()
        [[{"deep": [float("inf")]}]],
        collections.OrderedDict({True: 1, None: 2, "s": collections.Counter({2: 1, 10: 2})}),  # subclasses
        {"e": [_Level.HIGH], _Level.LOW: _Tagged(2.5)},  # enum values and keys, a float with its own tolist
        json.loads("[" * 200 + "]" * 200),  # deeper than the plain path looks
    ],
)
@pytest.mark.parametrize("options", [{}, {"indent": 1}, {"separators": (",", ":")}, {"sort_keys": True}])
def test_strict_json_gives_the_text_of_the_cleaned_value_on_every_path(value, options):
    from attnviz.runtime.text import finite

    expected = json.dumps(finite(value), ensure_ascii=False, allow_nan=False, **options)
    assert strict_json(value, **options) == expected


def test_strict_json_of_a_value_that_contains_itself_fails_at_once():
    loop: list = []
    loop.append(loop)
    with pytest.raises((RecursionError, ValueError)):
        strict_json({"loop": loop})
