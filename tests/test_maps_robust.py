"""``attnviz maps`` when something goes wrong or is unusual: a picture that cannot be drawn costs only
itself, ``--debug`` anywhere shows per-image tracebacks, a model without gates is said so in one line,
and every kind of gate gets a picture of its own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from attnviz.cli.main import cli
from click.testing import CliRunner
from PIL import Image
from support import ROOT, run

from attnviz import capture, render
from attnviz.io.inputs import CIFAR10_CLASSES
from attnviz.io.save import save_checkpoint
from attnviz.jobs.maps_pictures import PictureJob, draw_pictures
from attnviz.models import build_model
from attnviz.runtime.errors import AttnvizError

CHANNEL_GATES = ("cbam1.channel_attn", "cbam2.channel_attn", "cbam3.channel_attn")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("robust")
    torch.manual_seed(0)
    paths = {}
    for arch in ("cnn", "cbam_cnn"):
        paths[arch] = root / f"{arch}.pth"
        save_checkpoint(paths[arch], build_model(arch), arch, preset="cifar10", class_names=list(CIFAR10_CLASSES))
    rng = np.random.default_rng(3)
    paths["image"] = root / "shape.png"
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(paths["image"])
    return paths


def _broken_bars(*args, **kwargs):
    raise RuntimeError("bars exploded")


@pytest.fixture
def quick(monkeypatch) -> None:
    """Figures not rasterised and feature grids left empty (matplotlib is the slow part): these tests
    are about which files are written; test_every_gate_kind_gets_a_picture draws for real."""
    monkeypatch.setattr(render, "figure_to_rgb", lambda figure: np.full((8, 8, 3), 200, np.uint8))
    monkeypatch.setattr(render, "feature_grid", lambda *args, **kwargs: render.new_figure(1, 1))


def _maps(workspace, out: Path, *extra: object):
    return run(
        "maps", "--model", workspace["cbam_cnn"], workspace["image"], "--out", out, "--render-workers", 0, *extra
    )


def test_a_picture_that_fails_costs_only_itself(workspace, tmp_path, monkeypatch, quick):
    monkeypatch.setattr(render, "bars_picture", _broken_bars)  # PNG bars are drawn as pixels
    shown = []
    real_index = render.sheet_picture
    monkeypatch.setattr(
        render, "sheet_picture", lambda panels, **kw: shown.extend(p[0] for p in panels) or real_index(panels, **kw)
    )

    result = _maps(workspace, tmp_path)

    assert result.exit_code == 1, result.output
    folder = tmp_path / "shape"
    arrays = np.load(folder / "attention.npz")
    assert {f"gate/{name}" for name in CHANNEL_GATES} <= set(arrays.files)
    summary = json.loads((folder / "summary.json").read_text())
    assert [f["picture"] for f in summary["failed_pictures"]] == [f"{name} (channel)" for name in CHANNEL_GATES]
    assert all(f["error"] == "RuntimeError: bars exploded" for f in summary["failed_pictures"])
    written = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png"))
    assert written == sorted(summary["pictures"])
    assert not (folder / "bars").exists() or not any((folder / "bars").iterdir())
    assert (folder / "spatial" / "cbam1.spatial_attn.png").is_file() and (folder / "gradcam.png").is_file()
    assert "index.png" in summary["pictures"]
    assert shown and not any("(channel)" in label for label in shown)  # the sheet holds only what was drawn
    lines = [line for line in result.stderr.splitlines() if "bars exploded" in line]
    assert len(lines) == len(CHANNEL_GATES)
    assert all(name in line for name, line in zip(CHANNEL_GATES, lines))
    assert "Traceback" not in result.output


def test_a_picture_cut_short_is_removed(workspace, tmp_path, monkeypatch, quick):
    real_save = render.save_rgb

    def half_written(rgb, path):
        if Path(path).parent.name == "spatial":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(b"\x89PNG half")
            raise ValueError("encoder gave up")
        return real_save(rgb, path)

    monkeypatch.setattr(render, "save_rgb", half_written)
    result = _maps(workspace, tmp_path, "--no-cam")
    assert result.exit_code == 1, result.output
    folder = tmp_path / "shape"
    assert not list(folder.glob("spatial/*.png"))
    summary = json.loads((folder / "summary.json").read_text())
    assert {f["picture"] for f in summary["failed_pictures"]} == {f"cbam{i}.spatial_attn (spatial)" for i in (1, 2, 3)}
    assert (folder / "bars" / "cbam1.channel_attn.png").is_file()


def test_a_drawing_that_fails_as_a_whole_keeps_the_arrays(workspace, tmp_path, monkeypatch):
    from attnviz.jobs import maps_pictures

    def lost(*args):
        raise RuntimeError("worker lost")

    monkeypatch.setattr(maps_pictures, "draw_pictures", lost)
    result = _maps(workspace, tmp_path)
    assert result.exit_code == 1, result.output
    assert (tmp_path / "shape" / "attention.npz").is_file()
    summary = json.loads((tmp_path / "shape" / "summary.json").read_text())
    assert summary["failed_pictures"] == [{"picture": "all pictures", "error": "RuntimeError: worker lost"}]
    assert "none of the" not in result.stderr


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_before_or_after_the_command_shows_a_per_image_traceback(workspace, tmp_path, monkeypatch, quick, where):
    monkeypatch.setattr(render, "bars_picture", _broken_bars)
    args = ["maps", "--model", workspace["cbam_cnn"], workspace["image"], "--out", tmp_path, "--render-workers", 0]
    args = ["--debug", *args] if where == "before" else [args[0], "--debug", *args[1:]]
    result = run(*args)
    assert result.exit_code == 1, result.output
    assert result.stderr.count("Traceback (most recent call last)") == len(CHANNEL_GATES)
    assert "in _broken_bars" in result.stderr and "bars exploded" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["maps", "--debug", "--model", "{missing}", "{image}"],
        ["compare", "--debug", "--baseline", "{missing}", "--model", "{missing}", "{image}"],
        ["inspect", "--debug", "--model", "{missing}"],
        ["report", "--debug", "--baseline", "{missing}", "--model", "{missing}", "{image}", "--out", "{out}"],
        ["train", "--debug", "--arch", "no_such_arch", "--epochs", "1", "--out", "{out}/x.pth"],
    ],
)
def test_every_command_takes_debug_after_its_name(workspace, tmp_path, args):
    fill = {"missing": tmp_path / "none.pth", "image": workspace["image"], "out": tmp_path / "out"}
    with pytest.raises(AttnvizError):  # --debug: the error propagates with its traceback
        CliRunner().invoke(cli, [a.format(**fill) for a in args], catch_exceptions=False)


def test_a_model_without_gates_is_said_so_in_one_line(workspace, tmp_path, quick):
    result = run("maps", "--model", workspace["cnn"], workspace["image"], "--out", tmp_path, "--render-workers", 0)
    assert result.exit_code == 0, result.output
    said = capture(build_model("cnn").eval(), torch.zeros(1, 3, 32, 32)).nothing_found()
    assert said is not None and said.startswith("no attention gates found")
    assert [line for line in result.stdout.splitlines() if line.startswith("no attention gates found")] == [said]
    assert not any(line.split()[:2] == ["gate", "kind"] for line in result.stdout.splitlines())  # no empty table
    summary = json.loads((tmp_path / "shape" / "summary.json").read_text())
    assert summary["gates"] == [] and "failed_pictures" not in summary
    assert (tmp_path / "shape" / "attention.npz").is_file() and (tmp_path / "shape" / "gradcam.png").is_file()


def test_inspect_says_so_too(workspace):
    result = run("inspect", "--model", workspace["cnn"])
    assert result.exit_code == 0, result.output
    said = capture(build_model("cnn").eval(), torch.zeros(1, 3, 32, 32)).nothing_found()
    assert said is not None and said in result.stdout.splitlines()


class _Options:
    format = "png"
    order = "weight"
    scale = "absolute"
    top_n = 4


def _job() -> PictureJob:
    rng = np.random.default_rng(0)
    gates = {
        "ca.h": ("axis", rng.random((6, 8, 1))),
        "ca.w": ("axis", rng.random((6, 1, 8))),
        "bam": ("full", rng.random((6, 8, 8))),
        "sk": ("branch", rng.random((2, 6))),
        "odd": ("other", rng.random((3, 4, 5))),
    }
    return PictureJob(
        arrays={f"gate/{name}": values.astype(np.float32) for name, (_, values) in gates.items()},
        original=rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        gate_kinds={name: kind for name, (kind, _) in gates.items()},
        gated_modules={},
        label="circle",
        prob=0.5,
    )


def test_every_gate_kind_gets_a_picture(tmp_path):
    drawn = draw_pictures(_job(), tmp_path, _Options())
    assert drawn.failed == []
    expected = {
        "axis/ca.h.png",
        "axis/ca.w.png",
        "full/bam.png",
        "branch/sk.png",
        "other/odd.png",
        "index.png",
    }
    assert {str(path.relative_to(tmp_path)) for path in drawn.files} == expected
    for name in expected:
        pixels = np.asarray(Image.open(tmp_path / name).convert("RGB"))
        assert pixels.shape[0] > 50 and pixels.shape[1] > 50, name
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 8, f"{name} is blank"


def test_report_debug_shows_the_traceback_of_an_image_it_skipped(tmp_path, monkeypatch):
    from attnviz.report import pictures

    def broken(job, folder):
        raise ValueError("cannot draw this one")

    monkeypatch.setattr(pictures, "write", broken)
    model = ROOT / "samples" / "models" / "cnn.pth"
    args = ["--baseline", model, "shapes:1", "--out", tmp_path, "--render-workers", 0, "--steps", 2]
    result = run("report", "--debug", *args, "--sanity-images", 0, "--quiet")
    assert result.exit_code == 1, result.output
    assert "Traceback (most recent call last)" in result.stderr and "in broken" in result.stderr
    assert "attnviz: skipped" in result.stderr and "cannot draw this one" in result.stderr


def test_ctrl_c_after_the_pictures_are_stored_leaves_the_arrays_only(workspace, tmp_path, monkeypatch, quick):
    """A Ctrl-C between storing an image's pictures and writing its summary.json: the image keeps
    attention.npz only (pictures listed nowhere must not stay)."""
    from attnviz.io.checkpoints import load_model
    from attnviz.jobs import maps as maps_job

    real_write = maps_job.write_bytes

    def interrupted(path, data):
        if Path(path).name == "summary.json":
            raise KeyboardInterrupt
        return real_write(path, data)

    monkeypatch.setattr(maps_job, "write_bytes", interrupted)
    out = tmp_path / "out"
    options = maps_job.MapsOptions(render_workers=0)
    with pytest.raises(KeyboardInterrupt):
        maps_job.run_maps(load_model(workspace["cbam_cnn"]), [workspace["image"]], out, options=options)
    folder = out / "shape"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == ["attention.npz"]


def test_ctrl_c_while_the_arrays_are_written_leaves_no_empty_folder(workspace, tmp_path, monkeypatch):
    from attnviz.io.checkpoints import load_model
    from attnviz.jobs import maps as maps_job

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(maps_job.np, "savez_compressed", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        maps_job.run_maps(load_model(workspace["cbam_cnn"]), [workspace["image"]], out, options=maps_job.MapsOptions())
    assert not (out / "shape").exists()


def test_a_ctrl_c_right_after_an_images_folder_is_made_leaves_no_empty_folder(tmp_path, monkeypatch):
    from attnviz.jobs import maps

    folder = tmp_path / "out" / "image"
    folder.parent.mkdir()
    real_mkdir = Path.mkdir

    def mkdir_then_interrupted(self: Path, *args, **kwargs) -> None:
        real_mkdir(self, *args, **kwargs)
        if self == folder:
            raise KeyboardInterrupt

    monkeypatch.setattr(Path, "mkdir", mkdir_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        maps._write_arrays(None, None, None, 0, None, None, folder)  # type: ignore[arg-type]
    assert list(folder.parent.iterdir()) == []
