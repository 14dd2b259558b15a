"""attnviz report: numbers checked against computations done here, bad inputs, resume, shards."""

from __future__ import annotations

import csv
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from support import ROOT, hand_gradcam, hooked_output, run

from attnviz.data.shapes import SHAPES_CLASSES, make_sample
from attnviz.explain import metrics
from attnviz.io.checkpoints import load_model
from attnviz.io.inputs import preprocess
from attnviz.report import (
    ReportOptions,
    merge_reports,
    name_models,
    resolve_source,
    run_report,
)
from attnviz.report.aggregate import Aggregator
from attnviz.report.sources import parse_shard, shard_items
from attnviz.runtime.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = {name: ROOT / "samples" / "models" / f"{name}.pth" for name in ("cnn", "se_cnn", "cbam_cnn")}
COUNT = 12
STEPS = 4
COMMON = ("--steps", STEPS, "--sanity-images", 2, "--batch-size", 1, "--quiet")


def model_args() -> list:
    return ["--baseline", MODELS["cnn"], "--model", MODELS["se_cnn"], "--model", MODELS["cbam_cnn"]]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def shapes_report(tmp_path_factory) -> Path:
    """One CLI run: the three sample models on the first 12 shapes test images (with masks)."""
    out = tmp_path_factory.mktemp("report") / "shapes"
    result = run("report", *model_args(), f"shapes:{COUNT}", "--out", out, *COMMON)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def shapes_data() -> dict:
    samples = [make_sample(i, seed=0, split="test") for i in range(COUNT)]
    return {
        "images": torch.stack([preprocess(s.image, "cifar10") for s in samples]),
        "labels": [s.label for s in samples],
        "masks": [s.mask for s in samples],
    }


def by_source(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {row["source"]: row for row in rows}


def hand_pointing(saliency: np.ndarray, mask: np.ndarray) -> tuple[bool, bool]:
    """Is the maximum inside the mask? (every near-maximal pixel, any near-maximal pixel)."""
    peaks = saliency >= saliency.max() - 1e-5
    return bool(mask[peaks].all()), bool(mask[peaks].any())


# --------------------------------------------------------------------------- numbers


def test_pointing_game_equals_a_hand_check_on_the_shapes_masks(shapes_report, shapes_data):
    rows = by_source(read_csv(shapes_report / "results.csv"))
    decided = 0
    for name, layer in (("cnn", "pool3"), ("cbam_cnn", "cbam3")):
        model = load_model(MODELS[name]).model
        maps = hand_gradcam(model, layer, shapes_data["images"], shapes_data["labels"])
        for i, mask in enumerate(shapes_data["masks"]):
            row = rows[f"shapes:test:0:{i}"]
            every, any_ = hand_pointing(maps[i], mask)
            if every == any_:  # an unambiguous hit or miss
                assert row[f"{name}:pointing_game"] == str(int(every)), (name, i)
                decided += 1
            energy = (maps[i] * mask).sum() / maps[i].sum() if maps[i].sum() > 0 else 0.0
            assert float(row[f"{name}:energy_pointing_game"]) == pytest.approx(energy, abs=1e-4)
    assert decided >= 20

    # a spatial gate, taken from the model's own sigmoid and upsampled to the 32x32 mask
    gates = hooked_output(load_model(MODELS["cbam_cnn"]).model, "cbam1.spatial_attn.sigmoid", shapes_data["images"])
    gates = F.interpolate(gates, size=(32, 32), mode="bilinear", align_corners=False)[:, 0].numpy()
    for i, mask in enumerate(shapes_data["masks"]):
        row = rows[f"shapes:test:0:{i}"]
        every, any_ = hand_pointing(gates[i], mask)
        if every == any_:
            assert row["cbam_cnn:cbam1.spatial_attn:pointing_game"] == str(int(every))
        energy = (gates[i] * mask).sum() / gates[i].sum()
        assert float(row["cbam_cnn:cbam1.spatial_attn:energy_pointing_game"]) == pytest.approx(energy, abs=1e-4)

    summary = json.loads((shapes_report / "results.json").read_text())["summary"]
    for name in MODELS:
        hits = [int(rows[f"shapes:test:0:{i}"][f"{name}:pointing_game"]) for i in range(COUNT)]
        assert summary["models"][name]["means"]["pointing_game"] == pytest.approx(np.mean(hits))


def test_deletion_and_insertion_in_the_csv_equal_the_metric(shapes_report, shapes_data):
    from attnviz.explain.cam import gradcam

    rows = by_source(read_csv(shapes_report / "results.csv"))
    for name, path in MODELS.items():
        model = load_model(path).model
        for i in range(COUNT):
            image = shapes_data["images"][i : i + 1]
            target = [shapes_data["labels"][i]]
            cam = gradcam(model, image, target=target)
            expected = metrics.deletion_insertion(
                model, image, cam.maps, target, steps=STEPS, baseline="blur", batch_size=256
            )
            row = rows[f"shapes:test:0:{i}"]
            assert float(row[f"{name}:deletion_auc"]) == pytest.approx(float(expected["deletion_auc"][0]), abs=1e-9)
            assert float(row[f"{name}:insertion_auc"]) == pytest.approx(float(expected["insertion_auc"][0]), abs=1e-9)
            assert int(row[f"{name}:target"]) == target[0]


def test_accuracy_and_confusion_matrix_equal_a_count(shapes_report, shapes_data):
    document = json.loads((shapes_report / "results.json").read_text())
    page = (shapes_report / "index.html").read_text(encoding="utf-8")
    rows = by_source(read_csv(shapes_report / "results.csv"))
    labels = np.array(shapes_data["labels"])
    for name, path in MODELS.items():
        with torch.no_grad():
            predicted = load_model(path).model(shapes_data["images"]).argmax(1).numpy()
        confusion = np.zeros((10, 10), dtype=int)
        np.add.at(confusion, (labels, predicted), 1)
        stats = document["summary"]["models"][name]
        correct = int((predicted == labels).sum())
        assert stats["accuracy"] == {"correct": correct, "labelled": COUNT, "value": pytest.approx(correct / COUNT)}
        assert stats["confusion"]["matrix"] == confusion.tolist()
        assert stats["confusion"]["labels"] == list(SHAPES_CLASSES)
        assert f"{correct / COUNT:.3f} ({correct}/{COUNT})" in page
        for i in range(COUNT):
            assert rows[f"shapes:test:0:{i}"][f"{name}:predicted"] == SHAPES_CLASSES[predicted[i]]
    wrong_by_any = sum(
        any(rows[f"shapes:test:0:{i}"][f"{n}:predicted_index"] != str(labels[i]) for n in MODELS) for i in range(COUNT)
    )
    assert document["summary"]["misclassified_by_any"] == wrong_by_any
    assert page.count('<article class="card') == COUNT
    assert page.count('data-mis="1"') == wrong_by_any


def test_per_class_excitation_is_the_mean_of_the_models_own_gate_values(shapes_report, shapes_data):
    gates = hooked_output(load_model(MODELS["se_cnn"]).model, "ca2.fc", shapes_data["images"])
    gates = gates.reshape(COUNT, -1).double().numpy()
    labels = np.array(shapes_data["labels"])
    channel = json.loads((shapes_report / "results.json").read_text())["summary"]["models"]["se_cnn"]["channel_gates"][
        "ca2"
    ]
    for k in np.unique(labels):
        entry = channel["per_class"][SHAPES_CLASSES[k]]
        assert entry["n"] == int((labels == k).sum())
        np.testing.assert_allclose(entry["mean"], gates[labels == k].mean(0), atol=1e-6)
    assert channel["class_selectivity"] == pytest.approx(metrics.class_selectivity(gates, labels), abs=1e-5)
    assert channel["statistics"]["spread"] == pytest.approx(gates.mean(0).std(), abs=1e-6)
    assert (shapes_report / "figures" / "excitation-se_cnn-ca2.png").is_file()


def test_agreement_with_the_baseline_is_the_metric_on_both_maps(shapes_report, shapes_data):
    from attnviz.explain.cam import gradcam

    rows = by_source(read_csv(shapes_report / "results.csv"))
    base, other = load_model(MODELS["cnn"]).model, load_model(MODELS["cbam_cnn"]).model
    for i in range(0, COUNT, 3):
        image, target = shapes_data["images"][i : i + 1], [shapes_data["labels"][i]]
        expected = metrics.map_agreement(gradcam(base, image, target).maps[0], gradcam(other, image, target).maps[0])
        row = rows[f"shapes:test:0:{i}"]
        assert float(row["cbam_cnn:top20_iou"]) == pytest.approx(expected["top20_iou"], abs=1e-9)
        assert float(row["cbam_cnn:spearman"]) == pytest.approx(expected["spearman"], abs=1e-9)
    assert "cnn:top20_iou" not in rows["shapes:test:0:0"]


def test_report_files_and_sanity_check(shapes_report):
    document = json.loads((shapes_report / "results.json").read_text())
    assert [image["source"] for image in document["images"]] == [f"shapes:test:0:{i}" for i in range(COUNT)]
    sanity = document["sanity"]
    assert sanity["images"] == ["shapes-00000", "shapes-00001"]
    for name in MODELS:
        steps = sanity["models"][name]
        assert steps[0]["step"] == 0 and steps[0]["spearman_mean"] == pytest.approx(1.0)
        assert len(steps) > 3 and "fc2" in steps[1]["layers"]
    page = (shapes_report / "index.html").read_text(encoding="utf-8")
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page  # nothing from the network
    record = json.loads(next((shapes_report / "items").glob("shapes-00000-*.json")).read_text())
    for entry in record["pictures"]["models"].values():
        assert (shapes_report / entry["cam"]).is_file()
    assert not list(shapes_report.rglob("*.tmp"))


# --------------------------------------------------------------------------- robustness


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims a huge image (a decompression bomb's size) and holds no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def test_bad_files_are_listed_with_reasons_and_the_good_ones_reported(tmp_path):
    folder = tmp_path / "in"
    for i, cls in enumerate(("circle", "square")):
        sample = make_sample(i, seed=0, split="test")
        (folder / cls).mkdir(parents=True)
        Image.fromarray(sample.image).save(folder / cls / f"{i}.png")
        Image.fromarray(sample.mask.astype(np.uint8) * 255).save(folder / cls / f"{i}.mask.png")
    sixteen = (np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 40).astype(np.uint16)
    Image.fromarray(sixteen).save(folder / "sixteen.png")
    assert Image.open(folder / "sixteen.png").mode == "I;16"
    whole = (folder / "circle" / "0.png").read_bytes()
    (folder / "broken.png").write_bytes(whole[: len(whole) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")
    _png_header_only(folder / "huge.png", 60000, 60000)
    (folder / "readme.txt").write_text("ignored: not an image name")

    out = tmp_path / "out"
    result = run(
        "report",
        "--baseline",
        MODELS["cnn"],
        "--model",
        MODELS["cbam_cnn"],
        folder,
        "--out",
        out,
        "--steps",
        2,
        "--sanity-images",
        0,
        "--batch-size",
        4,
        "--quiet",
        "--no-pictures",
    )
    assert result.exit_code == 1
    document = json.loads((out / "results.json").read_text())
    reasons = {Path(f["source"]).name: f["reason"] for f in document["failed"]}
    assert set(reasons) == {"broken.png", "empty.png", "notes.png", "huge.png"}
    assert "empty" in reasons["empty.png"]
    assert "not an image" in reasons["notes.png"]
    assert "too large" in reasons["huge.png"]
    assert "cannot decode" in reasons["broken.png"]
    assert document["report"]["source"]["ignored"] == ["readme.txt"]
    good = {Path(image["source"]).name: image for image in document["images"] if image["status"] == "ok"}
    assert set(good) == {"0.png", "1.png", "sixteen.png"}
    assert (
        good["0.png"]["truth"] == "circle"
        and good["1.png"]["truth"] == "square"
        and good["sixteen.png"]["truth"] is None
    )
    assert "pointing_game" in good["0.png"]["models"]["cbam_cnn"]["cam"]
    assert "pointing_game" not in good["sixteen.png"]["models"]["cbam_cnn"]["cam"]
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.count('<article class="card') == 3 and "Skipped files (4)" in page
    assert "<img" not in page and not list(out.rglob("*.png"))  # --no-pictures: numbers only
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 4 and all(line.startswith("attnviz: skipped") for line in lines)


def test_resume_skips_finished_images_and_redoes_only_what_is_missing(tmp_path, monkeypatch):
    from attnviz.report import pictures

    models = name_models([load_model(MODELS["cnn"]), load_model(MODELS["se_cnn"])])
    options = ReportOptions(steps=2, sanity_images=0, batch_size=4, progress=False)
    out = tmp_path / "out"
    calls, draw = [], pictures.write

    def interrupted(job, folder):
        calls.append(job["id"])
        if len(calls) == 4:
            raise KeyboardInterrupt
        return draw(job, folder)

    monkeypatch.setattr(pictures, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_report(models, "shapes:6", out, options)
    monkeypatch.undo()
    assert len(list((out / "items").glob("*.json"))) == 3 and not list(out.rglob("*.tmp"))

    first = run_report(models, "shapes:6", out, options)
    assert (first.processed, first.resumed) == (3, 3)
    items = sorted((out / "items").glob("*.json"))
    stamps = {p.name: p.stat().st_mtime_ns for p in items}

    second = run_report(models, "shapes:6", out, options)
    assert (second.processed, second.resumed) == (0, 6)
    assert {p.name: p.stat().st_mtime_ns for p in items} == stamps

    removed = json.loads(items[2].read_text())
    items[2].unlink()
    items[4].write_text('{"id": "trunc')  # a record cut short
    (out / "items" / f".{items[4].name}.0123456789ab.tmp").write_text("x")  # an atomic write that was killed
    third = run_report(models, "shapes:6", out, options)
    assert (third.processed, third.resumed) == (2, 4)
    redone = json.loads(items[2].read_text())
    assert redone["models"]["se_cnn"]["predicted"] == removed["models"]["se_cnn"]["predicted"]
    # redone in a batch of its own: float rounding differs from the batch of four, which can swap
    # near-equal saliency pixels at a deletion step's boundary
    assert redone["models"]["se_cnn"]["cam"]["deletion_auc"] == pytest.approx(
        removed["models"]["se_cnn"]["cam"]["deletion_auc"], abs=5e-3
    )
    assert not list(out.rglob("*.tmp"))
    assert len(read_csv(out / "results.csv")) == 6

    changed = run_report(models, "shapes:6", out, ReportOptions(steps=3, sanity_images=0, batch_size=4, progress=False))
    assert changed.processed == 6  # other numbers asked for: nothing is reused


def test_worker_processes_write_the_same_report(shapes_report, tmp_path):
    out = tmp_path / "workers"
    result = run(
        "report", *model_args(), f"shapes:{COUNT}", "--out", out, *COMMON, "--workers", 2, "--render-workers", 2
    )
    assert result.exit_code == 0, result.output
    assert (out / "results.csv").read_text() == (shapes_report / "results.csv").read_text()
    pictures = sorted(p.relative_to(shapes_report) for p in shapes_report.glob("[cgbi]*/**/*.png"))
    assert len(pictures) == COUNT * (1 + 3 + 3 + 2)  # input, Grad-CAMs, cbam spatial gates, channel strips
    for relative in pictures:
        assert (out / relative).read_bytes() == (shapes_report / relative).read_bytes(), relative


def test_shards_merged_equal_one_run(shapes_report, tmp_path):
    halves = []
    for k in (1, 2):
        out = tmp_path / f"shard{k}"
        result = run("report", *model_args(), f"shapes:{COUNT}", "--out", out, *COMMON, "--shard", f"{k}/2")
        assert result.exit_code == 0, result.output
        halves.append(out)
    sizes = [len(read_csv(h / "results.csv")) for h in halves]
    assert sum(sizes) == COUNT and all(0 < s < COUNT for s in sizes)
    result = run("report", "--merge", *halves, "--out", tmp_path / "merged", "--quiet")
    assert result.exit_code == 0, result.output
    merged = tmp_path / "merged"
    assert (merged / "results.csv").read_text() == (shapes_report / "results.csv").read_text()
    assert (merged / "summary.csv").read_text() == (shapes_report / "summary.csv").read_text()
    single, joined = (json.loads((d / "results.json").read_text()) for d in (shapes_report, merged))
    for key in ("summary", "sanity", "images", "failed"):
        assert joined[key] == single[key], key
    assert joined["report"]["shards"] == [[1, 2], [2, 2]]
    page = (merged / "index.html").read_text(encoding="utf-8")
    assert page.count('<article class="card') == COUNT

    with pytest.raises(UsageError, match="shard 1/2"):
        merge_reports([halves[0], halves[0]], tmp_path / "twice")


# --------------------------------------------------------------------------- inputs and options


def test_list_files_folders_and_specs_resolve_to_stable_items(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "cat").mkdir(parents=True)
    for name in ("cat/a.png", "b.png"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / name)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "cat" / "a.mask.png")
    (folder / "labels.csv").write_text("image,label\nb.png,dog\n")
    source = resolve_source(folder)
    assert [(i.key, i.truth, i.mask is not None) for i in source.items] == [
        ("b.png", "dog", False),
        ("cat/a.png", "cat", True),
    ]
    assert source.class_names == ["cat"]
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    assert resolve_source(other).identity() != source.identity()  # same keys, another folder: no resuming across
    assert resolve_source("shapes:3").identity() == resolve_source("shapes:9").identity() == "shapes"

    listing = tmp_path / "list.txt"
    listing.write_text("# two images\nimgs/cat/a.png\n\n" + str(folder / "b.png") + "\n")
    items = resolve_source(listing).items
    assert [Path(i.path).resolve() for i in items] == [
        (folder / "cat" / "a.png").resolve(),
        (folder / "b.png").resolve(),
    ]
    assert items[0].truth == "cat"

    shapes = resolve_source("shapes:5")
    assert [i.truth for i in shapes.items] == list(SHAPES_CLASSES[:5])
    assert [i.id for i in shapes.items] == [i.id for i in resolve_source("shapes:5").items]
    assert len({i.id for i in resolve_source("shapes:40").items}) == 40
    parts = [shard_items(resolve_source("shapes:40").items, (k, 3)) for k in (1, 2, 3)]
    assert sorted(i.index for part in parts for i in part) == list(range(40))

    for bad in ("nothing-here", "shapes:0", "folder:"):
        with pytest.raises(UsageError):
            resolve_source(bad)
    for bad in ("0/2", "3/2", "a/b"):
        with pytest.raises(UsageError):
            parse_shard(bad)
    assert parse_shard(" 2/3 ") == (2, 3)


def test_bad_options_are_usage_errors(tmp_path):
    models = name_models([load_model(MODELS["cnn"])])
    with pytest.raises(UsageError, match="at least one model"):
        run_report({}, "shapes:2", tmp_path)
    with pytest.raises(UsageError, match="steps"):
        run_report(models, "shapes:2", tmp_path, ReportOptions(steps=0))
    with pytest.raises(UsageError, match="CAM method"):
        run_report(models, "shapes:2", tmp_path, ReportOptions(method="nope"))
    result = run("report", "shapes:2", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "--baseline" in result.stderr


def test_aggregates_keep_a_bounded_sample_and_exact_class_means():
    rng = np.random.default_rng(0)
    records = []
    for i in range(50):
        gate = rng.random(6).round(6)
        records.append(
            {
                "id": f"img-{i}",
                "status": "ok",
                "truth_index": i % 3,
                "models": {
                    "m": {
                        "predicted": i % 2,
                        "prob": 0.5,
                        "cam": {"p_target": 0.4},
                        "spatial_gates": {},
                        "channel_gates": {"g": {"mean": float(gate.mean()), "values": gate.tolist()}},
                    }
                },
            }
        )
    forward, backward = (
        Aggregator(["m"], ["a", "b", "c"], sample_limit=7),
        Aggregator(["m"], ["a", "b", "c"], sample_limit=7),
    )
    for record in records:
        forward.add(record)
    for record in reversed(records):
        backward.add(record)
    values, labels = forward.sample("m", "g")
    assert values.shape == (7, 6)
    np.testing.assert_array_equal(values, backward.sample("m", "g")[0])
    summary = forward.summary()["models"]["m"]
    all_values = np.array([r["models"]["m"]["channel_gates"]["g"]["values"] for r in records])
    for k, name in enumerate("abc"):
        np.testing.assert_allclose(summary["channel_gates"]["g"]["per_class"][name]["mean"], all_values[k::3].mean(0))
    assert summary["accuracy"]["correct"] == sum((i % 2) == (i % 3) for i in range(50))
    assert summary["channel_gates"]["g"]["statistics"]["images"] == 7
