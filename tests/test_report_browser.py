"""The report in a real browser: headless Chromium opens index.html from disk (no server).

The page writes its state into ``<body data-*>`` (status, cards, visible cards, pictures loaded
and failed, script errors); ``chromium --dump-dom`` returns the DOM after the page ran, and
``--screenshot`` draws it. Skipped only when Chromium is not installed (``apt-get install chromium``).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from attnviz.cli.main import cli
from click.testing import CliRunner
from PIL import Image

from attnviz.data.shapes import make_sample

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "samples" / "models"
CHROMIUM = next(
    (
        path
        for path in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
        if path and Path(path).exists()
    ),
    None,
)
CLASSES = ("circle", "square", "triangle")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")


class _Page(HTMLParser):
    """The body's attributes, every <img> and the sort keys offered by a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str] = {}
        self.images: list[dict[str, str | None]] = []
        self.sort_keys: list[str] = []
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self.body = {k: v or "" for k, v in attrs}
        elif tag == "img":
            self.images.append(dict(attrs))
        elif tag == "select":
            self._select = dict(attrs).get("id")
        elif tag == "option" and self._select == "f-sort":
            self.sort_keys.append(dict(attrs).get("value") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """Six shapes images in class folders with masks (one of them the object's complement), one broken
    file; cnn against cbam_cnn."""
    root = tmp_path_factory.mktemp("browser")
    folder = root / "images"
    for i in range(6):
        sample = make_sample(i % 3 + 10 * (i // 3), seed=0, split="test")
        target = folder / CLASSES[i % 3]
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sample.image).save(target / f"img{i}.png")
        mask = ~sample.mask if i == 5 else sample.mask  # one mask off the object: a pointing-game miss
        Image.fromarray(mask.astype(np.uint8) * 255).save(target / f"img{i}.mask.png")
    (folder / "broken.png").write_text("not an image")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = CliRunner().invoke(
            cli,
            [
                "report",
                "--baseline",
                str(MODELS / "cnn.pth"),
                "--model",
                str(MODELS / "cbam_cnn.pth"),
                str(folder),
                "--out",
                str(root / "out"),
                "--steps",
                "2",
                "--sanity-images",
                "1",
                "--batch-size",
                "3",
                "--quiet",
            ],
            catch_exceptions=False,
        )
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 1  # the broken file
    return root / "out"


def browse(page: Path, fragment: str, profile: Path, *extra: str) -> tuple[_Page, str]:
    """Open ``page#fragment`` in headless Chromium; return the parsed DOM after its scripts ran and stderr."""
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=10000",
        *extra,
        f"{page.resolve().as_uri()}#{fragment}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    parsed = _Page()
    parsed.feed(done.stdout)
    return parsed, done.stderr


def console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


def test_every_card_and_picture_loads_without_errors(report, tmp_path):
    page, stderr = browse(report / "index.html", "eager=1&open=1", tmp_path / "profile", "--dump-dom")
    body = page.body
    assert body["data-status"] == "ready"
    assert "data-errors" not in body and not console_errors(stderr)
    assert body["data-cards"] == "6" and body["data-visible"] == "6"
    # 6 inputs, 6×2 Grad-CAMs, 6×3 spatial gates and 6 channel strips of cbam_cnn, 3 excitation figures
    sources = [img["src"] for img in page.images]
    assert all(sources) and len(sources) == 6 + 12 + 18 + 6 + 3
    assert body["data-images-loaded"] == str(len(sources)) and body["data-images-failed"] == "0"
    assert all((report / src).is_file() for src in sources)


def test_filters_and_sorting_show_the_right_cards(report, tmp_path):
    document = json.loads((report / "results.json").read_text())
    images = [image for image in document["images"] if image["status"] == "ok"]
    wrong = [i["id"] for i in images if any(m["predicted"] != i["truth_index"] for m in i["models"].values())]
    disagree = [i["id"] for i in images if len({m["predicted"] for m in i["models"].values()}) > 1]

    page, _ = browse(report / "index.html", "mis=1", tmp_path / "p1", "--dump-dom")
    assert page.body["data-visible"] == str(len(wrong))
    assert sorted(json.loads(page.body["data-order"])) == sorted(wrong)
    page, _ = browse(report / "index.html", "dis=1", tmp_path / "p2", "--dump-dom")
    assert sorted(json.loads(page.body["data-order"])) == sorted(disagree)
    page, _ = browse(report / "index.html", "class=square", tmp_path / "p3", "--dump-dom")
    assert page.body["data-visible"] == "2"

    with open(report / "results.csv", newline="") as file:
        rows = [row for row in csv.DictReader(file) if row["status"] == "ok"]
    expected = [row["id"] for row in sorted(rows, key=lambda row: float(row["cbam_cnn:deletion_auc"]))]
    page, _ = browse(report / "index.html", "sort=deletion_auc%3Acbam_cnn&dir=asc", tmp_path / "p4", "--dump-dom")
    assert json.loads(page.body["data-order"]) == expected


def test_sorting_by_pointing_game_and_spatial_gate_metrics(report, tmp_path):
    with open(report / "results.csv", newline="") as file:
        rows = [row for row in csv.DictReader(file) if row["status"] == "ok"]
    page, _ = browse(report / "index.html", "", tmp_path / "p1", "--dump-dom")
    gates = ("cbam1.spatial_attn", "cbam2.spatial_attn", "cbam3.spatial_attn")
    for model in ("cnn", "cbam_cnn"):
        assert f"pointing_game:{model}" in page.sort_keys and f"energy_pointing_game:{model}" in page.sort_keys
    for gate in gates:
        for key in ("gate_mean", "gate_pointing_game", "gate_energy_pointing_game"):
            assert f"{key}:cbam_cnn:{gate}" in page.sort_keys
    assert not any(key.startswith("gate_") and ":cnn:" in key for key in page.sort_keys)  # cnn has no spatial gate

    # descending energy pointing game of a spatial gate; equal values keep the page's order (sort is stable)
    column = "cbam_cnn:cbam2.spatial_attn:energy_pointing_game"
    expected = [row["id"] for row in sorted(rows, key=lambda row: -float(row[column]))]
    page, _ = browse(
        report / "index.html",
        f"sort=gate_energy_pointing_game%3Acbam_cnn%3A{gates[1]}&dir=desc",
        tmp_path / "p2",
        "--dump-dom",
    )
    assert json.loads(page.body["data-order"]) == expected
    # pointing game (of a map that both hits and misses here): every hit before every miss
    keys = {f"{m}:pointing_game": f"pointing_game:{m}" for m in ("cnn", "cbam_cnn")}
    keys |= {f"cbam_cnn:{g}:pointing_game": f"gate_pointing_game:cbam_cnn:{g}" for g in gates}
    column = next(column for column in keys if {row[column] for row in rows} == {"0", "1"})
    page, _ = browse(
        report / "index.html", f"sort={keys[column].replace(':', '%3A')}&dir=desc", tmp_path / "p3", "--dump-dom"
    )
    hits = {row["id"]: row[column] for row in rows}
    order = [hits[i] for i in json.loads(page.body["data-order"])]
    assert order == sorted(order, reverse=True) and len(order) == 6


def test_the_checks_see_a_missing_picture_and_a_script_error(report, tmp_path):
    broken = tmp_path / "copy"
    shutil.copytree(report, broken)
    missing = next((broken / "cam").rglob("*.png"))
    missing.unlink()
    text = (broken / "index.html").read_text(encoding="utf-8")
    (broken / "index.html").write_text(
        text.replace("</body>", "<script>noSuchFunction();</script></body>"), encoding="utf-8"
    )
    page, stderr = browse(broken / "index.html", "eager=1", tmp_path / "profile", "--dump-dom")
    assert page.body["data-images-failed"] == "1"
    assert missing.name in page.body["data-failed-sources"]
    assert "noSuchFunction" in page.body["data-errors"]
    assert console_errors(stderr)


def test_screenshot_of_the_report(report, tmp_path):
    """Kept in $ATTNVIZ_SCREENSHOT_DIR (as report.png) when that is set, else in a temporary folder."""
    folder = Path(os.environ["ATTNVIZ_SCREENSHOT_DIR"]) if os.environ.get("ATTNVIZ_SCREENSHOT_DIR") else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    shot = folder / "report.png"
    shot.unlink(missing_ok=True)
    browse(
        report / "index.html",
        "eager=1",
        tmp_path / "profile",
        f"--screenshot={shot}",
        "--window-size=1280,2400",
        "--hide-scrollbars",
    )
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    assert pixels.shape == (2400, 1280, 3)
    assert pixels.std() > 20  # tables, cards and pictures, not a blank page
    ink = (pixels < 200).all(axis=2).mean()  # text, lines and dark picture areas
    assert 0.01 < ink < 0.6, ink
    rows = np.flatnonzero((pixels.max(axis=2) - pixels.min(axis=2) > 80).any(axis=1))
    assert rows.size > 100  # strongly coloured rows: colour bar, overlays, pictures
    assert rows.max() - rows.min() > 400  # spread down the page, not one stray picture
