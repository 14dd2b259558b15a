"""Hostile checkpoints: TorchScript needs trust, stored arguments cost nothing and read nothing,
files that are not checkpoints are called what they are, and torch is new enough.

Also TorchScript models, once trusted, work as far as their compiled forward lets attnviz see.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support import ROOT, run
from torch import nn
from torch.overrides import TorchFunctionMode

from attnviz.capturing.capturer import capture
from attnviz.explain import cam as cam_module
from attnviz.io.checkpoints import load_model
from attnviz.io.save import save_checkpoint
from attnviz.models import build_model
from attnviz.runtime.errors import (
    ArchitectureError,
    CheckpointError,
    UnsafeCheckpointError,
    UsageError,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def _jit_save(module: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch marks torch.jit deprecated
        torch.jit.save(module, str(path))
    return path


# ---------------------------------------------------------------- TorchScript runs code when loaded


class _WritesOnLoad(nn.Module):
    """A TorchScript archive whose ``__setstate__`` writes bytes to a file of its choice."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :4] * 2

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.target = state[0]
        self.training = state[1]
        written = torch.from_file(self.target, True, 5, dtype=torch.uint8)
        written.fill_(88)
        self.target = self.target + str(int(written.sum()))


@pytest.fixture
def hostile_archive(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "written-by-archive"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(_WritesOnLoad(str(marker)))
    return _jit_save(scripted, tmp_path / "model.pt"), marker


def test_torchscript_archive_is_refused_without_trust(hostile_archive):
    path, marker = hostile_archive
    for arch in (None, "cnn"):
        with pytest.raises(UnsafeCheckpointError) as info:
            load_model(path, arch=arch)
        message = _one_line(info)
        assert "TorchScript" in message and "runs code" in message
        assert "--trust-checkpoint" in message and "trust=True" in message and str(path) in message
    assert not marker.exists()
    # The payload is real: trusting the file runs it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(path, trust=True)
    assert loaded.format == "torchscript" and marker.read_bytes() == b"XXXXX"


def test_torchscript_archive_is_refused_by_every_command(tmp_path, hostile_archive):
    path, marker = hostile_archive
    image = ROOT / "samples" / "images" / "00_circle.png"
    commands = [
        ["inspect", "--model", path],
        ["maps", "--model", path, image, "--out", tmp_path / "maps"],
        ["compare", "--baseline", path, "--model", path, image, "--out", tmp_path / "cmp.png"],
        ["report", "--baseline", path, "--model", path, image, "--out", tmp_path / "report"],
    ]
    for command in commands:
        result = run(*command)
        assert result.exit_code == 2, (command[0], result.output)
        lines = [line for line in result.output.splitlines() if line.startswith("attnviz: error")]
        assert len(lines) == 1 and "TorchScript" in lines[0] and "--trust-checkpoint" in lines[0]
        assert "internal error" not in result.output
    assert not marker.exists()


def test_zip_with_torchscript_constants_is_torchscript(tmp_path, hostile_archive):
    """torch.load hands any zip holding constants.pkl to torch.jit.load: such a zip needs trust too."""
    path, marker = hostile_archive
    stripped = tmp_path / "no-code.pt"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(stripped, "w") as target:
        for item in source.infolist():
            if "/code/" not in item.filename:
                target.writestr(item, source.read(item))
    with pytest.raises(UnsafeCheckpointError, match="TorchScript"):
        load_model(stripped)
    assert not marker.exists()


# ---------------------------------------------------------------- trusted TorchScript works as far as it can


class _SpatialGate(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv(x))


class _Gated(nn.Module):
    """A tiny CNN with a spatial gate; any input size."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.gate = _SpatialGate(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gate(self.body(x)).mean((2, 3)))


class _Exposing(_Gated):
    """The same network returning its gated feature map beside the logits."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.gate(self.body(x))
        return self.head(features.mean((2, 3))), features


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, object]:
    """A traced model (logits only) and a scripted one that also returns its feature map."""
    folder = tmp_path_factory.mktemp("torchscript")
    torch.manual_seed(0)
    plain, exposing = _Gated().eval(), _Exposing().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = _jit_save(torch.jit.trace(plain, torch.randn(1, 3, 16, 16)), folder / "traced.pt")
        scripted = _jit_save(torch.jit.script(exposing), folder / "scripted.pt")
    return {"plain": plain, "exposing": exposing, "traced": traced, "scripted": scripted}


def test_trusted_torchscript_predicts_and_says_what_it_hides(compiled):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    loaded = load_model(compiled["traced"], trust=True)
    assert len(capture(compiled["plain"], x).gates) == 1  # the gate an eager forward shows
    with pytest.warns(UserWarning, match="runs as compiled TorchScript: attention gates and feature maps"):
        cap = capture(loaded.model, x)
    assert cap.gates == {} and cap.features == {}
    with torch.no_grad():
        torch.testing.assert_close(cap.logits, compiled["plain"](x))
    with pytest.raises(UsageError) as info:
        cam_module.gradcam(loaded.model, x)
    assert "TorchScript model returns only [1, 3]" in _one_line(info)


def test_trusted_torchscript_gradcam_on_the_feature_map_it_returns(compiled):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    scripted = load_model(compiled["scripted"], trust=True).model
    result = cam_module.gradcam(scripted, x)
    expected = cam_module.gradcam(compiled["exposing"], x, layer="gate")  # the same map, hooked in eager code
    assert result.layer == "output[1]" and expected.layer == "gate"
    torch.testing.assert_close(result.raw, expected.raw, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(result.maps, expected.maps, atol=1e-5, rtol=1e-4)
    assert torch.equal(result.targets, expected.targets)
    assert all(p.requires_grad for p in scripted.parameters())  # restored after the call
    with pytest.raises(UsageError, match="gradcam\\+\\+ needs a layer inside the model"):
        cam_module.gradcam(scripted, x, method="gradcam++")


def test_trusted_torchscript_through_the_commands(tmp_path, compiled):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        pixels = np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{i}.png")
    traced, scripted = compiled["traced"], compiled["scripted"]

    result = run("inspect", "--model", traced, "--trust-checkpoint", "--size", 16)
    assert result.exit_code == 0 and "attention gates: not visible" in result.output
    assert "internal error" not in result.output

    result = run(
        "maps", "--model", traced, "--trust-checkpoint", images / "0.png", "--out", tmp_path / "m1", "--no-pictures"
    )
    assert result.exit_code == 0, result.output
    assert "attnviz: warning: no Grad-CAM" in result.output
    summary = json.loads((tmp_path / "m1" / "0" / "summary.json").read_text())
    assert summary["model"]["format"] == "torchscript" and summary["gates"] == [] and "gradcam" not in summary
    assert "cam/gradcam" not in np.load(tmp_path / "m1" / "0" / "attention.npz").files

    result = run(
        "maps", "--model", scripted, "--trust-checkpoint", images / "0.png", "--out", tmp_path / "m2", "--no-pictures"
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "m2" / "0" / "summary.json").read_text())
    assert summary["gradcam"]["layer"] == "output[1]"
    cam = np.load(tmp_path / "m2" / "0" / "attention.npz")["cam/gradcam"]
    assert cam.shape == (224, 224) and 0.0 <= cam.min() and cam.max() == pytest.approx(1.0)

    result = run(
        "compare",
        "--baseline",
        scripted,
        "--model",
        scripted,
        "--trust-checkpoint",
        images / "0.png",
        images / "1.png",
        "--out",
        tmp_path / "cmp.png",
    )
    assert result.exit_code == 0, result.output
    compared = json.loads((tmp_path / "cmp.json").read_text())
    assert (tmp_path / "cmp.png").stat().st_size > 0
    (agreement,) = compared["mean_agreement_with_baseline"].values()  # a model agrees with itself
    assert agreement == {"top20_iou": 1.0, "spearman": 1.0}
    for row in compared["images"]:
        first, second = row["models"].values()
        assert first["p_target"] == second["p_target"] and 0 < first["p_target"] < 1

    result = run(
        "compare",
        "--baseline",
        scripted,
        "--model",
        traced,
        "--trust-checkpoint",
        images / "0.png",
        "--out",
        tmp_path / "cmp2.png",
    )
    assert result.exit_code == 2 and "internal error" not in result.output
    assert "TorchScript model returns only" in result.output

    result = run(
        "report",
        "--baseline",
        scripted,
        "--model",
        scripted,
        "--trust-checkpoint",
        images,
        "--out",
        tmp_path / "report",
        "--no-pictures",
        "--sanity-images",
        2,
        "--steps",
        2,
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert "no sanity check for" in result.output and "internal error" not in result.output
    records = json.loads((tmp_path / "report" / "results.json").read_text())
    assert (tmp_path / "report" / "index.html").is_file() and len(records["images"]) == 2


# ---------------------------------------------------------------- stored arguments cost nothing


class _AllocationGuard(TorchFunctionMode):
    """Refuses (before allocating) any real tensor of more than ``limit`` elements."""

    _FACTORIES = {torch.empty, torch.zeros, torch.ones, torch.rand, torch.randn, torch.full, torch.empty_strided}

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._FACTORIES and torch.device(kwargs.get("device") or "cpu").type != "meta":
            size = args[0] if args and isinstance(args[0], (tuple, list, torch.Size)) else args
            numel = int(np.prod([int(s) for s in size if isinstance(s, int)], dtype=np.int64))
            self.largest = max(self.largest, numel)
            if numel > self.limit:
                raise MemoryError(f"{func.__name__}{tuple(size)} would allocate {numel} elements")
        return func(*args, **kwargs)


def test_stored_num_classes_allocates_nothing_beyond_the_weights(tmp_path):
    path = tmp_path / "big.pt"
    save_checkpoint(path, build_model("cnn"), "cnn", arch_kwargs={"num_classes": 2_000_000})
    guard = _AllocationGuard(limit=10_000_000)
    with guard, pytest.raises(ArchitectureError) as info:
        load_model(path)
    message = _one_line(info)
    assert "fc2.weight (model [2000000, 512], file [10, 512])" in message
    assert guard.largest < 10_000_000
    # The same weights with honest arguments load, and only as large as they are.
    save_checkpoint(path, build_model("cnn"), "cnn", arch_kwargs={"num_classes": 10})
    with _AllocationGuard(limit=2_000_000):
        assert load_model(path).arch_kwargs == {"num_classes": 10}


def test_named_library_model_is_checked_before_it_is_built(tmp_path):
    """A tiny file naming a large library model does not build that model to find out it does not fit."""
    path = tmp_path / "tiny.pt"
    torch.save({"fc.weight": torch.zeros(2, 3), "fc.bias": torch.zeros(2)}, path)
    with _AllocationGuard(limit=2_000_000), pytest.raises(ArchitectureError, match="does not fit torchvision:vgg11"):
        load_model(path, arch="torchvision:vgg11")


@pytest.mark.parametrize(
    ("arch", "kwargs", "named"),
    [
        (
            "torchvision:lraspp_mobilenet_v3_large",
            {"num_classes": 2, "weights_backbone": "MobileNet_V3_Large_Weights.IMAGENET1K_V1"},
            "weights_backbone",
        ),
        ("timm:resnet18", {"num_classes": 2, "checkpoint_path": "/etc/hostname"}, "checkpoint_path"),
        (
            "timm:resnet18",
            {"num_classes": 2, "pretrained_cfg_overlay": {"file": "/etc/hostname"}},
            "pretrained_cfg_overlay",
        ),
        ("timm:resnet18", {"num_classes": 2, "act_layer": "../../evil.py"}, "act_layer"),
    ],
)
def test_stored_arguments_that_read_or_download_need_trust(tmp_path, monkeypatch, arch, kwargs, named):
    cache = tmp_path / "torch-home"
    cache.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(cache))
    monkeypatch.setenv("HF_HOME", str(cache / "hf"))
    path = tmp_path / "stored.pt"
    checkpoint = {
        "format": "attnviz",
        "version": 1,
        "arch": arch,
        "arch_kwargs": kwargs,
        "state_dict": {"fc.weight": torch.zeros(2, 3)},
        "preset": None,
        "class_names": None,
        "record": {},
    }
    torch.save(checkpoint, path)
    with _AllocationGuard(limit=5_000_000), pytest.raises(UnsafeCheckpointError) as info:
        load_model(path)
    message = _one_line(info)
    assert named in message and "--trust-checkpoint" in message and str(path) in message
    assert list(cache.rglob("*")) == []


class _Table(nn.Module):
    """A module whose argument sizes a buffer that its state_dict does not hold."""

    def __init__(self, entries: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.register_buffer("table", torch.zeros(entries), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_stored_arguments_cannot_allocate_unsaved_buffers(tmp_path):
    arch = "test_checkpoint_safety:_Table"  # code the caller names; the arguments come from the file
    path = tmp_path / "table.pt"
    save_checkpoint(path, _Table(), arch, arch_kwargs={"entries": 1_000_000_000}, preset=None)
    with _AllocationGuard(limit=1_000_000), pytest.raises(UnsafeCheckpointError) as info:
        load_model(path, arch=arch)
    message = _one_line(info)
    assert "1,000,000,000 elements" in message and "--trust-checkpoint" in message
    save_checkpoint(path, _Table(), arch, arch_kwargs={"entries": 8}, preset=None)
    assert load_model(path, arch=arch).model.table.shape == (8,)


def test_plain_stored_arguments_still_build(tmp_path):
    model = build_model("densenet_se", num_classes=3, block_config=(1, 1, 1, 1), growth_rate=4)
    path = tmp_path / "dense.pt"
    save_checkpoint(
        path, model, "densenet_se", arch_kwargs={"num_classes": 3, "block_config": [1, 1, 1, 1], "growth_rate": 4}
    )
    loaded = load_model(path)
    assert loaded.arch_kwargs["block_config"] == [1, 1, 1, 1]
    with torch.no_grad():
        x = torch.randn(1, 3, 32, 32)
        assert torch.equal(loaded.model(x), model.eval()(x))


def test_stored_input_size_is_bounded(tmp_path):
    path = tmp_path / "huge-input.pt"
    save_checkpoint(path, build_model("cnn"), "cnn", preset=None)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["preset"] = {"name": "x", "size": [100_000, 100_000], "mean": [0.5] * 3, "std": [0.5] * 3}
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = _one_line(info)
    assert "100000x100000" in message and "--trust-checkpoint" in message
    assert load_model(path, trust=True).preset.size == (100_000, 100_000)


# ---------------------------------------------------------------- files that are not checkpoints


def _onnx_binary() -> bytes:
    # ir_version 8, producer_name "pytorch", producer_version "2.1", then a graph field.
    return b"\x08\x08\x12\x07pytorch\x1a\x032.1:\x8a\x01\n\x0bnode_0" + bytes(range(64))


def _not_checkpoints(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    cases = {
        "random": (np.random.default_rng(0).bytes(4096), "unknown format"),
        "text": (b"epoch,loss\n1,0.5\n2,0.4\n", "text file"),
        "onnx-text": (b'ir_version: 8\nproducer_name: "pytorch"\ngraph {\n  node {\n  }\n}\n', "ONNX"),
        "onnx": (_onnx_binary(), "ONNX"),
        "pickle": (pickle.dumps({"epoch": 3, "weights": [1.0, 2.0]}), "pickle not written by torch.save"),
        "zip": (None, "zip archive"),
        "safetensors": (
            b"\x20\x00\x00\x00\x00\x00\x00\x00" + b'{"a":{"dtype":"F32","shape":[1]}}' + b"\0" * 4,
            "safetensors",
        ),
    }
    out = {}
    for name, (data, what) in cases.items():
        path = tmp_path / (f"{name}.onnx" if name == "onnx" else f"{name}.pth")
        if data is None:
            with zipfile.ZipFile(path, "w") as archive:
                archive.writestr("weights/readme.txt", "not torch")
        else:
            path.write_bytes(data)
        out[name] = (path, what)
    return out


def test_files_that_are_not_checkpoints_are_called_what_they_are(tmp_path):
    for name, (path, what) in _not_checkpoints(tmp_path).items():
        with pytest.raises(CheckpointError) as info:
            load_model(path)
        message = _one_line(info)
        assert not isinstance(info.value, UnsafeCheckpointError), name
        assert f"{str(path)!r} is not a PyTorch checkpoint" in message and what in message, (name, message)
        assert "trust" not in message and "pickled Python objects" not in message, name
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty") as info:
        load_model(empty)
    assert not isinstance(info.value, UnsafeCheckpointError) and "trust" not in _one_line(info)


def test_damaged_checkpoint_is_not_called_unsafe(tmp_path):
    """A torch.save file with a broken pickle inside is damaged, not a pickle needing trust."""
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    data = bytearray(path.read_bytes())
    data[150:154] = b"\xff\xfe\xfd\xfc"  # inside the pickle of the saved dict: opcodes that do not exist
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = _one_line(info)
    assert not isinstance(info.value, UnsafeCheckpointError)
    assert "not a readable PyTorch checkpoint" in message and "Unsupported operand 255" in message
    assert "trust" not in message


def test_genuine_file_the_safe_loader_cannot_read_still_names_its_globals(tmp_path):
    """A legacy torch.save file in pickle protocol 4 (framed, which weights_only cannot read) is a real
    checkpoint: its message names what it would import and offers the trust flag."""
    path = tmp_path / "framed.pth"
    torch.save(build_model("cnn").state_dict(), path, _use_new_zipfile_serialization=False, pickle_protocol=4)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_model(path)
    message = _one_line(info)
    assert "torch._utils._rebuild_tensor_v2" in message and "collections.OrderedDict" in message
    assert "--trust-checkpoint" in message
    assert load_model(path, trust=True).arch == "cnn"


def test_cli_names_a_foreign_file_in_one_line(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(_onnx_binary())
    result = run("inspect", "--model", path)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"attnviz: error: {str(path)!r} is not a PyTorch checkpoint: it looks like an ONNX model "
        "(attnviz reads PyTorch checkpoints: a state_dict, a whole model or TorchScript)"
    ]


# ---------------------------------------------------------------- torch >= 2.6


def test_torch_lower_bound_is_safe_for_weights_only():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    bounds = {}
    for requirement in project["dependencies"]:
        found = re.fullmatch(r"(torch|torchvision)>=([\d.]+)(,.*)?", requirement.replace(" ", ""))
        if found:
            bounds[found.group(1)] = tuple(int(p) for p in found.group(2).split("."))
    assert bounds["torch"] >= (2, 6) and bounds["torchvision"] >= (0, 21)


def test_old_torch_refuses_untrusted_files(tmp_path, monkeypatch):
    path = tmp_path / "m.pth"
    torch.save(build_model("cnn").state_dict(), path)
    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
    with pytest.raises(UnsafeCheckpointError) as info:
        load_model(path)
    message = _one_line(info)
    assert "2.5.1" in message and "CVE-2025-32434" in message and "torch>=2.6" in message
    assert load_model(path, trust=True).arch == "cnn"
