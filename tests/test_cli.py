"""The command line: outputs checked by content, bad input answered with one line and an exit code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from attnviz.cli.main import cli
from click.testing import CliRunner
from PIL import Image
from support import run

from attnviz.io.checkpoints import load_model
from attnviz.io.inputs import CIFAR10_CLASSES, get_preset, load_rgb, preprocess
from attnviz.io.save import save_checkpoint
from attnviz.models import build_model
from attnviz.runtime.errors import AttnvizError


def _image(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    paths: dict[str, Path] = {}
    torch.manual_seed(0)
    for arch in ("cnn", "se_cnn", "cbam_cnn"):
        paths[arch] = root / f"{arch}.pth"
        save_checkpoint(paths[arch], build_model(arch), arch, preset="cifar10", class_names=list(CIFAR10_CLASSES))
    paths["a"] = _image(root / "a.png", 1)
    paths["b"] = _image(root / "b.jpg", 2)
    paths["root"] = root
    return paths


def test_maps_writes_arrays_and_summary_with_the_models_values(workspace, tmp_path):
    result = run(
        "maps", "--model", workspace["cbam_cnn"], workspace["a"], workspace["b"], "--out", tmp_path, "--no-pictures"
    )
    assert result.exit_code == 0, result.output
    assert "cbam1.spatial_attn" in result.stdout and "spatial" in result.stdout

    loaded = load_model(workspace["cbam_cnn"])
    image = preprocess(load_rgb(workspace["a"]), get_preset("cifar10"))[None]
    seen = {}
    handles = [
        loaded.model.get_submodule(name).register_forward_hook(
            lambda m, a, o, name=name: seen.__setitem__(name, (a[0].clone(), o.clone()))
        )
        for name in ("cbam1.channel_attn", "cbam1.spatial_attn", "cbam3")
    ]
    with torch.no_grad():
        probs = loaded.model(image).softmax(1)[0]
    for handle in handles:
        handle.remove()

    arrays = np.load(tmp_path / "a" / "attention.npz")
    x, y = seen["cbam1.spatial_attn"]
    spatial = arrays["gate/cbam1.spatial_attn"]
    assert spatial.shape == (16, 16)  # batch dimension dropped
    expected_spatial = (y * x).sum(1)[0] / (x * x).sum(1)[0]
    np.testing.assert_allclose(spatial, expected_spatial.numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(
        arrays["in/cbam1.channel_attn"], seen["cbam1.channel_attn"][0][0].numpy(), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(arrays["feature/cbam3"], seen["cbam3"][1][0].numpy(), rtol=1e-5, atol=1e-6)
    assert arrays["cam/gradcam"].shape == (32, 32)

    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["model"]["arch"] == "cbam_cnn"
    assert summary["preset"]["name"] == "cifar10" and summary["preset"]["size"] == [32, 32]
    assert summary["prediction"]["index"] == int(probs.argmax())
    assert summary["prediction"]["label"] == CIFAR10_CLASSES[int(probs.argmax())]
    assert summary["prediction"]["prob"] == pytest.approx(float(probs.max()), abs=1e-6)
    assert [p["index"] for p in summary["prediction"]["top5"]] == probs.argsort(descending=True)[:5].tolist()
    gates = {g["name"]: g for g in summary["gates"]}
    assert set(gates) == {f"cbam{i}.{part}" for i in (1, 2, 3) for part in ("channel_attn", "spatial_attn")}
    row = gates["cbam1.spatial_attn"]
    assert row["kind"] == "spatial" and row["shape"] == [16, 16] and row["module"] == "cbam1.spatial_attn"
    assert row["mean"] == pytest.approx(float(spatial.mean()), abs=1e-6)
    assert row["min"] == pytest.approx(float(spatial.min()), abs=1e-6)
    assert row["max"] == pytest.approx(float(spatial.max()), abs=1e-6)


def test_maps_pictures_show_the_captured_values(workspace, tmp_path):
    result = run("maps", "--model", workspace["se_cnn"], workspace["a"], "--out", tmp_path)
    assert result.exit_code == 0, result.output
    folder = tmp_path / "a"
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary["pictures"]) >= {"bars/ca1.png", "bars/ca2.png", "bars/ca3.png", "gradcam.png", "index.png"}
    for name in summary["pictures"]:
        picture = np.asarray(Image.open(folder / name).convert("RGB"))
        assert picture.ndim == 3 and picture.shape[0] > 100 and picture.shape[1] > 100
        assert picture.std() > 5  # not a blank canvas
    assert any(name.startswith("features/") for name in summary["pictures"])


def test_maps_render_workers_draw_the_same_pictures_in_input_order(workspace, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    images = [workspace["a"], broken, workspace["b"]]  # two drawn images show the order; each costs ~10 s
    args = ["maps", "--model", workspace["cbam_cnn"], *images]
    serial = run(*args, "--out", tmp_path / "serial", "--render-workers", "0")
    parallel = run(*args, "--out", tmp_path / "parallel", "--render-workers", "2")
    assert serial.exit_code == parallel.exit_code == 1
    assert "broken.png" in parallel.stderr and parallel.stderr.count("attnviz: skipped") == 1
    order = [line.split(" → ")[0] for line in parallel.stdout.splitlines() if " → " in line]
    assert order == [str(workspace["a"]), str(workspace["b"])]
    for stem in ("a", "b"):
        summary = json.loads((tmp_path / "parallel" / stem / "summary.json").read_text())
        assert summary == json.loads((tmp_path / "serial" / stem / "summary.json").read_text())
        assert len(summary["pictures"]) > 10
        for name in summary["pictures"]:
            drawn = np.asarray(Image.open(tmp_path / "parallel" / stem / name).convert("RGB"))
            np.testing.assert_array_equal(
                drawn, np.asarray(Image.open(tmp_path / "serial" / stem / name).convert("RGB"))
            )


def test_maps_svg_format(workspace, tmp_path):
    result = run(
        "maps", "--model", workspace["cbam_cnn"], workspace["a"], "--out", tmp_path, "--format", "svg", "--no-cam"
    )
    assert result.exit_code == 0, result.output
    spatial = (tmp_path / "a" / "spatial" / "cbam1.spatial_attn.svg").read_text()
    assert spatial.lstrip().startswith("<?xml") and "<svg" in spatial


def test_bad_images_are_listed_and_the_good_ones_still_processed(workspace, tmp_path):
    broken = tmp_path / "in"
    broken.mkdir()
    (broken / "empty.png").write_bytes(b"")
    (broken / "text.png").write_text("not an image")
    good = np.asarray(Image.open(workspace["a"]))
    Image.fromarray(good).save(broken / "whole.png")
    (broken / "truncated.png").write_bytes((broken / "whole.png").read_bytes()[:200])
    args = ["maps", "--model", workspace["cnn"], "--no-pictures", "--out", tmp_path / "out"]
    names = ["missing.png", "empty.png", "text.png", "truncated.png", "whole.png"]
    result = run(*args, *[broken / n for n in names])
    assert result.exit_code == 1
    assert (tmp_path / "out" / "whole" / "summary.json").exists()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 4 and all(line.startswith("attnviz: skipped") for line in lines)
    for name in names[:4]:
        assert any(name in line for line in lines)
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p, "does not exist"),
        (lambda p: (p.write_bytes(b""), p)[1], "empty"),
        (lambda p: (torch.save({"conv.weight": torch.zeros(3, 3)}, p), p)[1], "architecture"),
    ],
    ids=["missing", "zero-byte", "no-architecture"],
)
def test_bad_checkpoints_give_one_line_and_exit_code(workspace, tmp_path, make, message):
    checkpoint = make(tmp_path / "model.pth")
    result = run("maps", "--model", checkpoint, workspace["a"], "--out", tmp_path / "out")
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("attnviz: error:")
    assert message in lines[0].lower()
    assert "Traceback" not in result.output


def test_debug_shows_the_traceback(workspace, tmp_path):
    with pytest.raises(AttnvizError):
        CliRunner().invoke(
            cli, ["--debug", "maps", "--model", str(tmp_path / "none.pth"), str(workspace["a"])], catch_exceptions=False
        )


def test_inspect_reports_architecture_gates_and_parameters(workspace, tmp_path):
    result = run("inspect", "--model", workspace["cbam_cnn"], "--json", tmp_path / "facts.json")
    assert result.exit_code == 0, result.output
    model = build_model("cbam_cnn")
    total = sum(p.numel() for p in model.parameters())
    assert total == 1_150_896
    assert f"{total:,}" in result.stdout
    facts = json.loads((tmp_path / "facts.json").read_text())
    assert facts["total_params"] == total
    assert [g["kind"] for g in facts["gates"]] == ["channel", "spatial"] * 3
    shapes = {row["name"]: row["output_shape"] for row in facts["layers"]}
    assert shapes["cbam1"] == [1, 32, 16, 16] and shapes["fc2"] == [1, 10]


def test_inspect_list_names_every_architecture():
    result = run("inspect", "--list")
    assert result.exit_code == 0
    for name in ("cnn", "se_cnn", "cbam_cnn", "densenet_se", "resnet18_cbam", "resnet_se"):
        assert name in result.stdout


def test_compare_figure_panels_and_p_values_match_the_models(workspace, tmp_path):
    out = tmp_path / "cmp.png"
    result = run(
        "compare",
        "--baseline",
        workspace["cnn"],
        "--model",
        workspace["se_cnn"],
        "--model",
        workspace["cbam_cnn"],
        workspace["a"],
        workspace["b"],
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    document = json.loads(out.with_suffix(".json").read_text())
    assert document["models"] == ["cnn", "se_cnn", "cbam_cnn"]
    image = preprocess(load_rgb(workspace["a"]), get_preset("cifar10"))[None]
    row = document["images"][0]
    target = row["target"]["index"]
    for arch in ("cnn", "se_cnn", "cbam_cnn"):
        with torch.no_grad():
            p = load_model(workspace[arch]).model(image).softmax(1)[0, target]
        assert row["models"][arch]["p_target"] == pytest.approx(float(p), abs=1e-5)
    for arch in ("se_cnn", "cbam_cnn"):
        agreement = row["agreement_with_baseline"][arch]
        assert 0.0 <= agreement["top20_iou"] <= 1.0 and -1.0 <= agreement["spearman"] <= 1.0
    picture = np.asarray(Image.open(out).convert("RGB"))
    assert picture.shape[0] > 400 and picture.shape[1] > 400


def test_help_has_examples():
    for command in ("maps", "compare", "inspect"):
        result = run(command, "--help")
        assert result.exit_code == 0 and "Examples" in result.stdout


def test_device_auto_picks_the_gpu_only_when_there_is_one(monkeypatch, workspace, tmp_path):
    from attnviz.cli.options import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert check_device("auto") == "cuda"
    monkeypatch.undo()
    result = run("maps", "--model", workspace["cnn"], workspace["a"], "--out", tmp_path, "--no-pictures")
    assert result.exit_code == 0, result.output  # the default, auto, runs here with or without a GPU
    if not torch.cuda.is_available():
        result = run("maps", "--model", workspace["cnn"], workspace["a"], "--out", tmp_path, "--device", "cuda")
        assert result.exit_code != 0
        assert [line for line in result.stderr.splitlines() if line.strip()] == [
            "attnviz: error: device 'cuda' asked for, but no CUDA GPU is available; use --device cpu"
        ]


def test_compare_with_no_readable_image_is_one_line_and_exit_2(workspace, tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    result = run(
        "compare",
        "--baseline",
        workspace["cnn"],
        "--model",
        workspace["cbam_cnn"],
        tmp_path / "text.png",
        tmp_path / "missing.png",
        "--out",
        tmp_path / "fig.png",
    )
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 3 and lines[:2] == [line for line in lines if line.startswith("attnviz: skipped")]
    assert lines[2] == "attnviz: error: none of the 2 image(s) could be read; nothing to compare"
    assert not (tmp_path / "fig.png").exists()


def test_maps_with_no_usable_image_is_exit_2(workspace, tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    result = run(
        "maps", "--model", workspace["cnn"], tmp_path / "text.png", tmp_path / "missing.png", "--out", tmp_path / "out"
    )
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert [line.split(":")[1].strip() for line in lines[:2]] == [
        "skipped " + str(tmp_path / "text.png"),
        "skipped " + str(tmp_path / "missing.png"),
    ]
    assert lines[2] == "attnviz: error: none of the 2 image(s) could be used; nothing written"
    assert "Traceback" not in result.output


# --- start-up: options and paths are checked before torch is imported ---------------------------

_WITHOUT_TORCH = """
import sys
from attnviz.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print("exit", code, "torch", "torch" in sys.modules, file=sys.stderr)
"""


def _run_light(tmp_path: Path, *args: str):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "args",
    [
        ("maps", "--model", "missing.pth", "x.png"),
        ("inspect", "--model", "missing.pth"),
        ("compare", "--baseline", "missing.pth", "--model", "m.pth", "x.png"),
        ("report", "--model", "missing.pth", "shapes:2"),
    ],
)
def test_a_missing_checkpoint_is_answered_without_importing_torch(tmp_path, args):
    done = _run_light(tmp_path, *args)
    assert "attnviz: error: checkpoint 'missing.pth' does not exist" in done.stderr
    assert done.stderr.strip().endswith("exit 2 torch False"), done.stderr


def test_a_file_that_is_no_checkpoint_and_a_bad_shard_are_answered_without_torch(tmp_path):
    (tmp_path / "notes.pth").write_text("# some notes\n")
    done = _run_light(tmp_path, "maps", "--model", "notes.pth", "x.png")
    assert "'notes.pth' is not a PyTorch checkpoint: it is a text file" in done.stderr
    assert done.stderr.strip().endswith("exit 2 torch False"), done.stderr
    done = _run_light(tmp_path, "report", "--model", "notes.pth", "shapes:2", "--shard", "3/2")
    assert "--shard must be K/N" in done.stderr and done.stderr.strip().endswith("exit 2 torch False"), done.stderr


def test_train_answers_an_unknown_architecture_without_torch(tmp_path):
    from attnviz.models import get_spec
    from attnviz.runtime.errors import ArchitectureError

    done = _run_light(tmp_path, "train", "--arch", "cbam_cn", "--epochs", "1", "--out", "x.pth")
    with pytest.raises(ArchitectureError) as info:
        get_spec("cbam_cn")  # the library's own message, close matches included
    assert f"attnviz: error: {info.value}" in done.stderr and "did you mean 'cbam_cnn'" in done.stderr
    assert done.stderr.strip().endswith("exit 2 torch False"), done.stderr
    assert not (tmp_path / "x.pth").exists()


def test_inspect_list_imports_no_torch_and_shows_the_registry(tmp_path):
    from attnviz.models import get_spec, list_architectures

    done = _run_light(tmp_path, "inspect", "--list")
    assert done.stderr.strip().endswith("exit 0 torch False"), done.stderr
    first_cells = [line.split() for line in done.stdout.splitlines()[1:] if line[:2].strip()]  # not wrapped text
    rows = {cells[0]: cells[1] for cells in first_cells}
    assert list(rows) == list_architectures()
    assert all(rows[name] == get_spec(name).preset for name in rows)
    assert get_spec("cbam_cnn").description.split()[0] in done.stdout
