"""benchmarks/bench_gpu.py's code paths on the CPU at a tiny size (``--device cpu --quick``).

The timings themselves are not checked (they are a machine's); what is checked is that every row of
every part ran, that ratios and throughputs are positive finite numbers derived from the medians,
that the bytes of a capture are the bytes of its tensors, and that the JSON renders as a section of
docs/BENCHMARKS.md without touching the real file.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_gpu  # noqa: E402  (benchmarks/ is not a package)
from _doc import write_section  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

CAPTURE_ROWS = {
    "forward (no_grad)",
    "capture: gates only (feature_images=0)",
    "capture: defaults (features of the first 8 images)",
    "capture: features of every image",
}
GRADCAM_ROWS = {
    "forward+backward",
    "attnviz gradcam",
    "pytorch-grad-cam GradCAM",
    "captum LayerGradCam + upsample",
    "torchcam GradCAM",
}


# Two small models keep this test fast: a CBAM model of attnviz's zoo and torchvision's SE model.
# Every row runs the same code on every model; on the GPU all of bench_gpu.MODELS run.
QUICK_MODELS = ("cbam_cnn", "efficientnet_b0")


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The script run as benchmarks/gpu_check.sh runs it: a new process from the repository's root,
    with only what the installed project and benchmarks/ give to import."""
    path = tmp_path_factory.mktemp("bench") / "gpu.json"
    command = [sys.executable, str(BENCHMARKS / "bench_gpu.py"), "--device", "cpu", "--quick"]
    command += ["--models", ",".join(QUICK_MODELS), "--json", str(path)]
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=BENCHMARKS.parent, env=environment, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(path.read_text(encoding="utf-8"))


def test_every_part_and_model_is_there(results: dict) -> None:
    assert results["device"] == "cpu" and results["quick"] is True
    assert results["errors"] == []
    names = [m.name for m in bench_gpu.MODELS if m.key in QUICK_MODELS]
    assert [case["model"] for case in results["capture"]] == names
    gradcam_cases = {(case["model"], case["batch"]) for case in results["gradcam"]}
    assert gradcam_cases == {(name, b) for name in names for b in bench_gpu.QUICK.gradcam_batches}
    assert [run["input"] for run in results["report"]] == [spec for spec, *_ in bench_gpu.QUICK.reports]
    assert results["maps"]["returncode"] == 0
    assert [case["model"] for case in results["curves"]] == names


def test_capture_rows_ratios_and_bytes(results: dict) -> None:
    for case in results["capture"]:
        rows = case["rows"]
        assert set(rows) == CAPTURE_ROWS, case["model"]
        reference = rows["forward (no_grad)"]["median_ms"]
        for name, row in rows.items():
            assert row["min_ms"] <= row["median_ms"] <= row["max_ms"]
            assert row["ratio"] == pytest.approx(row["median_ms"] / reference), (case["model"], name)
            assert positive(row["ratio"])
        for name in CAPTURE_ROWS - {"forward (no_grad)"}:
            assert positive(rows[name]["bytes"]) and positive(rows[name]["gb_per_s"])
            gb_per_s = rows[name]["bytes"] / (rows[name]["median_ms"] / 1e3) / 1e9
            assert rows[name]["gb_per_s"] == pytest.approx(gb_per_s)
        # Features of every image are at least the default's (the first images' only, or the same).
        assert (
            rows["capture: features of every image"]["bytes"]
            >= rows["capture: defaults (features of the first 8 images)"]["bytes"]
        )


def test_capture_bytes_are_the_tensors_bytes() -> None:
    from attnviz.capturing.capturer import Capturer
    from attnviz.models import build_model

    torch.manual_seed(0)
    model = build_model("cbam_cnn").eval()
    captured = Capturer(model)(torch.randn(2, 3, 32, 32))
    tensors = [captured.images, captured.logits, *captured.inputs.values(), *captured.outputs.values()]
    tensors += [gate.values for gate in captured.gates.values()] + list(captured.features.values())
    assert bench_gpu.capture_bytes(captured) == sum(t.numel() * t.element_size() for t in tensors)


def test_gradcam_rows_and_layers(results: dict) -> None:
    for case in results["gradcam"]:
        assert set(case["rows"]) == GRADCAM_ROWS, case["model"]
        assert case["layer"]
        reference = case["rows"]["forward+backward"]["median_ms"]
        for row in case["rows"].values():
            assert row["ratio"] == pytest.approx(row["median_ms"] / reference)
            assert positive(row["ratio"]) and positive(row["images_per_s"])


def test_report_and_maps_rows(results: dict) -> None:
    for run in results["report"]:
        assert run["images"] > 0 and positive(run["wall_s"])
        assert run["images_per_s"] == pytest.approx(run["images"] / run["wall_s"])
        assert run["command"].startswith("attnviz report --baseline")
        stages = run["stages"]
        assert {"model", "Grad-CAM", "metrics", "other"} <= set(stages)
        assert sum(stages.values()) == pytest.approx(run["wall_s"])
    assert positive(results["maps"]["wall_s"]) and results["maps"]["images"] == 1


def test_curves_rows_and_formats_agree(results: dict) -> None:
    for case in results["curves"]:
        assert set(case["rows"]) == {"forward (no_grad)", *bench_gpu.CURVES_FORMATS}, case["model"]
        reference = case["rows"]["forward (no_grad)"]["median_ms"]
        for row in case["rows"].values():
            assert row["ratio"] == pytest.approx(row["median_ms"] / reference) and positive(row["ratio"])
        assert case["steps"] == bench_gpu.QUICK.report_steps and case["per_pass"] >= 8
        # the two memory formats give the same AUCs up to float rounding
        assert 0.0 <= case["max_auc_difference"] < 1e-5


def test_section_renders_every_part(results: dict, tmp_path: Path) -> None:
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## Report\n\nkept\n", encoding="utf-8")
    write_section(bench_gpu.SECTION, bench_gpu.section(results), doc)
    text = doc.read_text(encoding="utf-8")
    assert "## Report\n\nkept" in text and text.count(bench_gpu.SECTION) == 1
    for case in results["capture"] + results["gradcam"] + results["curves"]:
        assert case["model"] in text
    assert "deletion/insertion: channels-last batches" in text
    assert "shapes:" in text and "attnviz maps" in text and results["machine"] in text


def test_from_json_prints_the_tables(results: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps(results), encoding="utf-8")
    bench_gpu.main(["--from-json", str(path)])
    assert bench_gpu.SECTION in capsys.readouterr().out
