"""results.json against docs/results.schema.json, and the typed records' one JSON form."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import ROOT

from attnviz.io.checkpoints import load_model
from attnviz.report import ReportOptions, name_models, run_report
from attnviz.report import records as store
from attnviz.report.schema import (
    Agreement,
    CamResult,
    ChannelGate,
    FailedImage,
    ImageRecord,
    Localisation,
    ModelOutcome,
    SpatialGate,
    record_from_json,
    slim,
)
from attnviz.runtime.text import finite

jsonschema = pytest.importorskip("jsonschema")

pytestmark = pytest.mark.usefixtures("one_thread")

SCHEMA = json.loads((ROOT / "docs" / "results.schema.json").read_text(encoding="utf-8"))
MODELS = [ROOT / "samples" / "models" / f"{name}.pth" for name in ("cnn", "cbam_cnn")]
FAST = {"steps": 2, "batch_size": 2, "progress": False}


@pytest.fixture(scope="module")
def models() -> dict:
    return name_models([load_model(path) for path in MODELS])


@pytest.fixture(scope="module")
def shapes_report(models, tmp_path_factory) -> Path:
    """Generated images with masks (pointing games), the sanity check, no pictures."""
    out = tmp_path_factory.mktemp("schema") / "shapes"
    run_report(models, "shapes:3", out, ReportOptions(sanity_images=1, pictures=False, **FAST))
    return out


@pytest.fixture(scope="module")
def folder_report(models, tmp_path_factory) -> Path:
    """Image files without masks or labels, one of them broken (a failed record), with pictures."""
    folder = tmp_path_factory.mktemp("schema") / "in"
    folder.mkdir()
    for i in range(2):
        pixels = (np.random.default_rng(i).random((20, 24, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    out = folder.parent / "report"
    run_report(models, folder, out, ReportOptions(sanity_images=0, render_workers=0, **FAST))
    return out


def _validator() -> jsonschema.protocols.Validator:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    return jsonschema.Draft202012Validator(SCHEMA)


def _results(report: Path) -> dict:
    return json.loads((report / "results.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("report", ["shapes_report", "folder_report"])
def test_results_json_follows_its_schema(report, request):
    results = _results(request.getfixturevalue(report))
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in _validator().iter_errors(results)]
    assert errors == []
    assert results["images"]  # the schema was checked against real entries


def test_the_reports_cover_every_kind_of_entry(shapes_report, folder_report):
    shapes, folder = _results(shapes_report), _results(folder_report)
    first = shapes["images"][0]["models"]["cbam_cnn"]
    assert (
        "pointing_game" in first["cam"]
        and "agreement" in first
        and "agreement" not in shapes["images"][0]["models"]["cnn"]
    )
    assert shapes["sanity"] is not None and shapes["images"][0]["pictures"] is None
    assert [image["status"] for image in folder["images"]] == ["failed", "ok", "ok"]
    assert "pointing_game" not in folder["images"][1]["models"]["cbam_cnn"]["cam"]
    assert folder["images"][1]["pictures"]["image"].startswith("images/")


@pytest.mark.parametrize(
    ("path", "key"),
    [
        (("images", 1, "models", "cnn"), "prob"),
        (("images", 1, "models", "cbam_cnn", "cam"), "p_target"),
        (("images", 1), "thumb_size"),
        (("images", 0), "reason"),
        (("summary",), "pending"),
        (("report",), "config"),
    ],
)
def test_the_schema_rejects_an_entry_missing_a_required_field(folder_report, path, key):
    results = _results(folder_report)
    broken = copy.deepcopy(results)
    part = broken
    for step in path:
        part = part[step]
    del part[key]
    validator = _validator()
    assert validator.is_valid(results)
    assert not validator.is_valid(broken)


def test_the_schema_rejects_wrong_types_and_unknown_fields(folder_report):
    results = _results(folder_report)
    wrong = copy.deepcopy(results)
    wrong["images"][1]["models"]["cnn"]["prob"] = "high"
    extra = copy.deepcopy(results)
    extra["images"][1]["models"]["cnn"]["cam"]["extra"] = 1
    assert not _validator().is_valid(wrong) and not _validator().is_valid(extra)


@pytest.mark.parametrize("report", ["shapes_report", "folder_report"])
def test_every_record_reads_back_to_the_same_json(report, request):
    folder = request.getfixturevalue(report)
    paths = sorted((folder / store.ITEMS_DIR).glob("*.json"))
    assert paths
    for path in paths:
        text = path.read_text(encoding="utf-8")
        record = record_from_json(json.loads(text))
        assert store.read_record(folder, path.stem) == record
        again = json.dumps(finite(record.to_json()), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        assert again == text  # same keys, same order, same numbers


def test_results_json_lists_the_records_without_their_channel_vectors(folder_report):
    results = _results(folder_report)
    shapes = {
        gate: facts["shape"]
        for model in results["report"]["models"]
        if model["name"] == "cbam_cnn"
        for gate, facts in model["gates"].items()
        if facts["kind"] == "channel"
    }
    for entry in results["images"]:
        record = store.read_record(folder_report, entry["id"])
        assert finite(slim(record).to_json()) == entry
        if isinstance(record, ImageRecord):
            gates = record.models["cbam_cnn"].channel_gates
            assert {gate: [len(g.values or ())] for gate, g in gates.items()} == shapes
            assert all(set(g) == {"mean"} for g in entry["models"]["cbam_cnn"]["channel_gates"].values())


def _outcome(**changes) -> ModelOutcome:
    cam = CamResult("gradcam", "conv", 2, "two", float("nan"), 0.25, 0.75, Localisation(True, 0.5))
    fields = {
        "predicted": 1,
        "label": "one",
        "prob": 0.5,
        "top3": ((1, 0.5), (2, 0.3)),
        "correct": None,
        "cam": cam,
        "spatial_gates": {"s": SpatialGate(0.5, 0.0, 1.0)},
        "channel_gates": {"c": ChannelGate(0.5, (0.25, 0.75))},
        "agreement": Agreement(1.0, None),
    }
    return ModelOutcome(**(fields | changes))


def test_to_json_writes_each_field_once_and_nan_becomes_null():
    data = finite(_outcome().to_json())
    assert data == {
        "predicted": 1,
        "label": "one",
        "prob": 0.5,
        "top3": [[1, 0.5], [2, 0.3]],
        "correct": None,
        "cam": {
            "method": "gradcam",
            "layer": "conv",
            "target": 2,
            "target_label": "two",
            "p_target": None,
            "deletion_auc": 0.25,
            "insertion_auc": 0.75,
            "pointing_game": True,
            "energy_pointing_game": 0.5,
        },
        "spatial_gates": {"s": {"mean": 0.5, "min": 0.0, "max": 1.0}},
        "channel_gates": {"c": {"mean": 0.5, "values": [0.25, 0.75]}},
        "agreement": {"top20_iou": 1.0, "spearman": None},
    }
    back = ModelOutcome.from_json(data)
    assert back.cam.p_target is None and back == _outcome(
        cam=_outcome().cam.__class__("gradcam", "conv", 2, "two", None, 0.25, 0.75, Localisation(True, 0.5))
    )
    assert "agreement" not in _outcome(agreement=None).to_json()
    assert math.isnan(_outcome().cam.p_target)


def test_a_record_not_shaped_as_attnviz_writes_it_is_refused(folder_report):
    ok = json.loads(next(p for p in (folder_report / store.ITEMS_DIR).glob("img0-*.json")).read_text())
    failed = json.loads(next((folder_report / store.ITEMS_DIR).glob("broken-*.json")).read_text())
    assert isinstance(record_from_json(failed), FailedImage) and isinstance(record_from_json(ok), ImageRecord)
    for change in (
        lambda r: r["models"]["cnn"].pop("label"),
        lambda r: r.__setitem__("index", "0"),
        lambda r: r["models"]["cnn"].__setitem__("top3", [[1]]),
        lambda r: r.__setitem__("pictures", "x"),
        lambda r: r["models"]["cnn"]["cam"].__setitem__("pointing_game", 0.5),
    ):
        broken = copy.deepcopy(ok)
        change(broken)
        with pytest.raises(ValueError):
            record_from_json(broken)
    with pytest.raises(ValueError):
        record_from_json({k: v for k, v in failed.items() if k != "reason"})
    with pytest.raises(ValueError):
        record_from_json([ok])


def test_each_gates_range_and_constant_flag_are_described(folder_report):
    results = _results(folder_report)
    gates = results["summary"]["models"]["cbam_cnn"]
    facts = {**gates["spatial_gates"], **gates["channel_gates"]}
    assert all(f["min"] <= f["max"] for f in facts.values())
    assert all(f["constant"] is (f["max"] - f["min"] < 1e-3) for f in facts.values())
    for key, value in (("constant", "yes"), ("min", "low")):
        for kind in ("spatial_gates", "channel_gates"):
            wrong = copy.deepcopy(results)
            gate = next(iter(wrong["summary"]["models"]["cbam_cnn"][kind].values()))
            gate[key] = value
            assert not _validator().is_valid(wrong), (kind, key)
