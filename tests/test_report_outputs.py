"""attnviz report's outputs beside the page: the sanity check's numbers (page, summary.csv), the maps
behind every picture (arrays/*.npz), the colour bar, the shipped metric definitions and the template
filling. Every number is checked against a computation done here."""

from __future__ import annotations

import csv
import html
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import stats
from support import ROOT, hand_gradcam, run

from attnviz.data.shapes import make_sample
from attnviz.io.checkpoints import load_model
from attnviz.io.inputs import preprocess

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = {name: ROOT / "samples" / "models" / f"{name}.pth" for name in ("cnn", "se_cnn", "cbam_cnn")}
COUNT = 16  # the default number of sanity-check images, so every one of them is in the report
CNN_TOP_DOWN = ["fc2", "fc1", "bn3", "conv3", "bn2", "conv2", "bn1", "conv1"]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """The three sample models on the first 16 shapes test images, the sanity check at its default."""
    out = tmp_path_factory.mktemp("outputs") / "report"
    result = run(
        "report",
        "--baseline",
        MODELS["cnn"],
        "--model",
        MODELS["se_cnn"],
        "--model",
        MODELS["cbam_cnn"],
        f"shapes:{COUNT}",
        "--out",
        out,
        "--steps",
        2,
        "--batch-size",
        8,
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def data() -> dict:
    samples = [make_sample(i, seed=0, split="test") for i in range(COUNT)]
    return {
        "images": torch.stack([preprocess(s.image, "cifar10") for s in samples]),
        "labels": [s.label for s in samples],
    }


def document(report: Path) -> dict:
    return json.loads((report / "results.json").read_text(encoding="utf-8"))


def rank_correlation(original: np.ndarray, randomised: np.ndarray) -> float:
    """The sanity check's ρ: scipy's Spearman, 0 for a randomised map with no rank information left."""
    if np.ptp(original) == 0:
        return float("nan")
    if np.ptp(randomised) == 0:
        return 0.0
    return float(stats.spearmanr(original.ravel(), randomised.ravel()).statistic)


# --------------------------------------------------------------------------- sanity check


def test_sanity_check_decorrelates_the_trained_models_as_a_hand_cascade_does(report, data):
    head = document(report)
    sanity = head["sanity"]
    assert sanity["count"] == 16 and len(sanity["images"]) == 16  # the default, on all 16 images
    layers = {model["name"]: model["cam_layer"] for model in head["report"]["models"]}
    assert [step["layers"] for step in sanity["models"]["cnn"]] == [[]] + [[name] for name in CNN_TOP_DOWN]
    for name, path in MODELS.items():
        steps = sanity["models"][name]
        first, last = steps[1]["spearman_mean"], steps[-1]["spearman_mean"]
        assert last < 0.5 and last < first - 0.15, (name, first, last)
        assert all(step["n"] == 16 for step in steps)

        # the cascade done here: same layers, PyTorch's own re-initialisation, same per-step seeds
        model = load_model(path).model.eval()
        images = data["images"][:16]
        with torch.no_grad():
            targets = model(images).argmax(1)
        original = hand_gradcam(model, layers[name], images, targets)
        for step in steps[1:]:
            seed = int(np.random.SeedSequence([0, step["step"]]).generate_state(1)[0])
            torch.manual_seed(seed)
            with torch.no_grad():
                for layer in step["layers"]:
                    model.get_submodule(layer).reset_parameters()
            maps = hand_gradcam(model, layers[name], images, targets)
            rho = [rank_correlation(a, b) for a, b in zip(original, maps)]
            assert step["constant"] == sum(np.ptp(m) == 0 for m in maps), (name, step["step"])
            assert step["spearman_mean"] == pytest.approx(np.nanmean(rho), abs=0.02), (name, step["step"])
            assert step["spearman"] == pytest.approx(rho, abs=0.05)


def test_a_map_made_constant_counts_as_no_correlation():
    from attnviz.explain import metrics
    from attnviz.models import build_model

    torch.manual_seed(0)
    model = build_model("cnn").eval()
    images = torch.stack([preprocess(make_sample(i, split="test").image, "cifar10") for i in range(4)])

    def zero_output(module: torch.nn.Module) -> None:  # zero logits: no gradient, an all-zero Grad-CAM
        for parameter in module.parameters(recurse=False):
            parameter.zero_()

    steps = metrics.randomisation_sanity(model, images, initializer=zero_output, steps=1)
    last = steps[-1]
    assert last["constant"].all() and last["n"] == 4
    assert last["spearman"].tolist() == [0.0] * 4 and last["spearman_mean"] == 0.0


def test_page_shows_each_steps_mean_and_n(report):
    sanity = document(report)["sanity"]
    page = (report / "index.html").read_text(encoding="utf-8")
    section = page[page.index('<section id="sanity">') : page.index("</section>", page.index('<section id="sanity">'))]
    for name, steps in sanity["models"].items():
        last = steps[-1]
        assert f"{steps[-1]['spearman_mean']:.3f} with every layer re-initialised (n=16)" in section
        headline = (
            f"{name}: {len(steps) - 1} step(s); Spearman with the trained model's map {steps[1]['spearman_mean']:.3f}"
        )
        assert html.escape(headline) in section
        row = f'<td class="l">{last["step"]}</td><td class="l">{", ".join(last["layers"])}</td><td class="">{last["spearman_mean"]:.3f}</td><td class="">16</td>'
        assert row in section
    assert html.escape("Spearman with the trained model's map –") not in section


def test_summary_csv_holds_every_sanity_step(report):
    sanity = document(report)["sanity"]
    with open(report / "summary.csv", newline="", encoding="utf-8") as file:
        rows = [row for row in csv.DictReader(file) if row["subject"].startswith("sanity:")]
    for name, steps in sanity["models"].items():
        mine = [row for row in rows if row["model"] == name]
        assert len(mine) == 2 * len(steps)
        for step in steps:
            subject = f"sanity:{step['step']}:{'+'.join(step['layers']) or '-'}"
            found = {row["metric"]: row for row in mine if row["subject"] == subject}
            assert float(found["spearman_mean"]["value"]) == pytest.approx(np.mean(step["spearman"]), abs=1e-12)
            assert int(found["spearman_mean"]["n"]) == step["n"] == len(step["spearman"])
            assert float(found["top20_iou_mean"]["value"]) == pytest.approx(np.mean(step["top20_iou"]), abs=1e-12)
    assert {row["subject"] for row in rows if row["model"] == "cnn"} >= {"sanity:0:-", "sanity:1:fc2", "sanity:8:conv1"}


# --------------------------------------------------------------------------- maps beside the pictures


def test_saved_maps_equal_the_models_own_grad_cam_and_gates(report, data):
    head = document(report)
    images = [image for image in head["images"] if image["status"] == "ok"]
    assert len(images) == COUNT
    layers = {model["name"]: model["cam_layer"] for model in head["report"]["models"]}
    cams = {
        name: hand_gradcam(load_model(path).model.eval(), layers[name], data["images"], data["labels"])
        for name, path in MODELS.items()
    }
    model = load_model(MODELS["cbam_cnn"]).model.eval()
    seen: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(f"cbam{k}.spatial_attn.sigmoid").register_forward_hook(
            lambda m, a, o, k=k: seen.__setitem__(f"cbam{k}.spatial_attn", o[:, 0])
        )
        for k in (1, 2, 3)
    ]
    with torch.no_grad():
        model(data["images"])
    for handle in handles:
        handle.remove()
    for i, image in enumerate(images):
        assert image["source"] == f"shapes:test:0:{i}"
        path = report / image["pictures"]["arrays"]
        assert path.suffix == ".npz" and path.is_file()
        with np.load(path, allow_pickle=False) as saved:
            arrays = {key: saved[key] for key in saved.files}
        assert set(arrays) == {
            "cam/cnn",
            "cam/se_cnn",
            "cam/cbam_cnn",
            "gate/cbam_cnn/cbam1.spatial_attn",
            "gate/cbam_cnn/cbam2.spatial_attn",
            "gate/cbam_cnn/cbam3.spatial_attn",
        }
        assert all(a.dtype == np.float16 for a in arrays.values())
        for name in MODELS:
            np.testing.assert_allclose(arrays[f"cam/{name}"].astype(np.float32), cams[name][i], atol=2e-3)
        for gate, values in seen.items():
            saved_gate = arrays[f"gate/cbam_cnn/{gate}"].astype(np.float32)
            assert saved_gate.shape == tuple(values.shape[1:])
            np.testing.assert_allclose(saved_gate, values[i].numpy(), atol=1e-3)
            summary = image["models"]["cbam_cnn"]["spatial_gates"][gate]
            assert saved_gate.mean() == pytest.approx(summary["mean"], abs=1e-3)


def test_colour_bar_has_the_overlays_colours(report):
    page = (report / "index.html").read_text(encoding="utf-8")
    gradient = re.search(r"\.colorbar \{ background: linear-gradient\(to right,([^)]*)\); \}", page)
    assert gradient is not None
    stops = [
        re.fullmatch(r"#(\w\w)(\w\w)(\w\w) ([\d.]+)% ([\d.]+)%", stop).groups() for stop in gradient.group(1).split(",")
    ]
    bands = np.array([[int(r, 16), int(g, 16), int(b, 16)] for r, g, b, _, _ in stops])
    edges = np.array([float(start) for *_, start, _ in stops] + [float(stops[-1][4])]) / 100
    assert edges[0] == 0 and edges[-1] == 1 and np.all(np.diff(edges) > 0)
    assert page.count('<span class="colorbar">') >= 1 + COUNT  # the Images section and every gates panel
    images_section = page[page.index('<section id="images">') :]
    assert images_section.index('class="legend"') < images_section.index('<article class="card')

    # Undo the overlay's 50 % blend on a picture and read the colour bar at the saved map's values.
    image = next(i for i in document(report)["images"] if i["status"] == "ok")
    thumb = np.asarray(Image.open(report / image["pictures"]["image"]).convert("RGB")).astype(np.float64)
    with np.load(report / image["pictures"]["arrays"]) as saved:
        maps = {key: saved[key].astype(np.float32) for key in saved.files}
    checked = 0
    for picture, key in (
        (image["pictures"]["models"]["cbam_cnn"]["cam"], "cam/cbam_cnn"),
        (image["pictures"]["models"]["cbam_cnn"]["spatial"]["cbam1.spatial_attn"], "gate/cbam_cnn/cbam1.spatial_attn"),
    ):
        overlay = np.asarray(Image.open(report / picture).convert("RGB")).astype(np.float64)
        colour = 2 * overlay - thumb
        values = F.interpolate(
            torch.from_numpy(maps[key])[None, None], size=thumb.shape[:2], mode="bilinear", align_corners=False
        )[0, 0].numpy()
        band = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(bands) - 1)
        close = (np.abs(colour - bands[band]) <= 6).all(axis=2)
        assert close.mean() > 0.95, (picture, close.mean())
        checked += 1
    assert checked == 2


# --------------------------------------------------------------------------- metric definitions


def test_installed_package_ships_the_metric_definitions(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("attnviz", "cli"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("attnviz-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        assert "attnviz/METRICS.md" in archive.namelist()
        archive.extractall(site)

    out = tmp_path / "report"
    script = (
        "import sys, attnviz; from attnviz.cli.main import cli; print(attnviz.__file__, flush=True); "
        "cli.main(sys.argv[1:], prog_name='attnviz')"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "report",
            "--baseline",
            str(MODELS["cnn"]),
            "shapes:2",
            "--out",
            str(out),
            "--steps",
            "1",
            "--sanity-images",
            "0",
            "--no-pictures",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert Path(done.stdout.splitlines()[0]).is_relative_to(site)  # the installed copy, not this checkout
    page = (out / "index.html").read_text(encoding="utf-8")
    assert '<a href="metrics.html">metric definitions</a>' in page
    shown = (out / "metrics.html").read_text(encoding="utf-8")
    assert shown.startswith("<!DOCTYPE html>") and "Randomisation sanity check" in shown
    assert (out / "METRICS.md").read_bytes() == (ROOT / "attnviz" / "METRICS.md").read_bytes()
    assert "Randomisation sanity check" in (out / "METRICS.md").read_text(encoding="utf-8")
    # docs/METRICS.md is a pointer to that one copy, not a second one
    assert "attnviz/METRICS.md" in (ROOT / "docs" / "METRICS.md").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- template


def test_names_with_template_fields_are_shown_as_they_are(tmp_path):
    folder = tmp_path / "in{{js}}"
    (folder / "circle").mkdir(parents=True)
    Image.fromarray(make_sample(0, seed=0, split="test").image).save(folder / "circle" / "{{js}}{{css}}.png")
    out = tmp_path / "out"
    result = run(
        "report",
        "--baseline",
        MODELS["cnn"],
        folder,
        "--out",
        out,
        "--steps",
        1,
        "--sanity-images",
        0,
        "--no-pictures",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    page = (out / "index.html").read_text(encoding="utf-8")
    script = (ROOT / "attnviz" / "report" / "report.js").read_text(encoding="utf-8")
    assert page.count(script) == 1 and page.count('"use strict";') == 1  # the script once, in <script>
    assert page.count(".card.mis {") == 1  # the style sheet once
    title = re.search(r"<title>(.*?)</title>", page, re.S).group(1)
    assert title.endswith("in{{js}}") and "<" not in title
    assert ">circle/{{js}}{{css}}.png</span>" in page
    assert "{{" not in page.replace("{{js}}{{css}}.png", "").replace("in{{js}}", "")  # every template field filled
