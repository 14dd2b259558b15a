"""``fit`` and ``attnviz train`` on a user's own architecture (``file.py:Class``, ``package.module:Class``).

The model file is written in the test; its forward flattens with ``x.view(x.size(0), -1)``, which
fails on channels-last feature maps: training asked for channels-last turns it off with one line,
finishes, and the checkpoint loads again with ``arch="file.py:Class"`` and predicts exactly like a
model built from the file by hand with the saved weights.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support import run

from attnviz.data.shapes import SHAPES_CLASSES
from attnviz.data.specs import make_datasets
from attnviz.io.checkpoints import load_model
from attnviz.runtime.errors import ArchitectureError, UnsafeCheckpointError, UsageError
from attnviz.train import TrainSettings, fit

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL_FILE = """
import torch
from torch import nn


class ViewNet(nn.Module):
    def __init__(self, num_classes=10, width=4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.gate = nn.Linear(width, width)
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(width * 8 * 8, num_classes)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = x * torch.sigmoid(self.gate(x.mean((2, 3))))[:, :, None, None]
        x = self.pool(x)
        return self.fc(x.view(x.size(0), -1))


class FixedNet(nn.Module):
    def __init__(self, outputs=3):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, outputs)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))
"""
SMALL = {"train_size": 64, "test_size": 32, "batch_size": 32, "num_workers": 0, "device": "cpu", "progress": False}


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "usernets" / "mynet.py"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(MODEL_FILE))
    return path


def _by_hand(path: Path, name: str, **kwargs: object) -> torch.nn.Module:
    """The class imported from ``path`` independently of attnviz, built with ``kwargs``."""
    spec = importlib.util.spec_from_file_location(f"by_hand_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)(**kwargs).eval()


def _test_set(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    _, test, _ = make_datasets("shapes", train_size=8, test_size=size, seed=0)
    return torch.stack([test[i][0] for i in range(size)]), torch.tensor([int(test[i][1]) for i in range(size)])


def test_a_user_view_model_trains_with_channels_last_turned_off_and_loads_back(model_file, tmp_path):
    arch = f"{model_file}:ViewNet"
    with pytest.warns(UserWarning, match="^channels-last turned off for ViewNet") as caught:
        result = fit(
            arch,
            "shapes",
            epochs=1,
            out=tmp_path / "view.pth",
            settings=TrainSettings(channels_last=True),
            arch_args={"width": 3},
            **SMALL,
        )
    notices = [str(w.message) for w in caught if "turned off" in str(w.message)]
    assert len(notices) == 1 and "view size is not compatible" in notices[0] and "\n" not in notices[0]
    record = result.record
    assert record["arch"] == arch and record["arch_kwargs"] == {"width": 3, "num_classes": len(SHAPES_CLASSES)}
    assert record["preset"] == "cifar10" and record["channels_last"] is False and record["turned_off"] == notices[0]

    loaded = load_model(result.best_path, arch=arch)
    assert loaded.arch == arch and loaded.class_names == list(SHAPES_CLASSES)
    assert loaded.preset is not None and loaded.preset.size == (32, 32)
    saved = torch.load(result.best_path, weights_only=True)["state_dict"]
    hand = _by_hand(model_file, "ViewNet", num_classes=len(SHAPES_CLASSES), width=3)
    hand.load_state_dict(saved)
    images, labels = _test_set()
    with torch.no_grad():
        ours, theirs = loaded.model(images), hand(images)
    assert torch.equal(ours, theirs)
    accuracy = 100.0 * (theirs.argmax(1) == labels).float().mean().item()
    assert accuracy == pytest.approx(record["final_test_acc"], abs=1e-6)  # the trained model, not a fresh one


def test_a_model_without_num_classes_must_have_the_datas_width(model_file, tmp_path):
    arch = f"{model_file}:FixedNet"
    with pytest.raises(ArchitectureError, match=r"FixedNet gives 3 outputs, but shapes has 10 classes") as error:
        fit(arch, "shapes", epochs=1, out=tmp_path / "fixed.pth", **SMALL)
    assert "\n" not in str(error.value) and "--arch-args" in str(error.value)
    assert not (tmp_path / "fixed.pth").exists()

    result = fit(arch, "shapes", epochs=1, out=tmp_path / "fixed.pth", arch_args={"outputs": 10}, **SMALL)
    assert result.record["arch_kwargs"] == {"outputs": 10}  # no num_classes: FixedNet does not take it
    assert load_model(result.best_path, arch=arch).class_names == list(SHAPES_CLASSES)


def test_package_module_form_and_bad_names(model_file, tmp_path, monkeypatch):
    monkeypatch.chdir(model_file.parent.parent)
    (model_file.parent / "__init__.py").write_text("")
    try:
        result = fit(
            "usernets.mynet:ViewNet", "shapes", epochs=1, out=tmp_path / "pkg.pth", **{**SMALL, "test_size": 8}
        )
    finally:
        for name in [n for n in sys.modules if n.startswith("usernets")]:
            del sys.modules[name]
    assert load_model(result.best_path, arch="usernets.mynet:ViewNet").arch_kwargs == {"num_classes": 10}
    with pytest.raises(ArchitectureError, match="nn.Module classes there: FixedNet, ViewNet"):
        fit(f"{model_file}:Nope", epochs=1, out=tmp_path / "x.pth", **SMALL)
    with pytest.raises(ArchitectureError, match="does not exist"):
        fit("missing/net.py:Net", epochs=1, out=tmp_path / "x.pth", **SMALL)
    with pytest.raises(UsageError, match="ImageNet backbone"):
        fit(f"{model_file}:ViewNet", epochs=1, out=tmp_path / "x.pth", weights=tmp_path / "w.pth", **SMALL)
    with pytest.raises(ArchitectureError, match="unknown architecture 'vgg'.*file.py:Class"):
        fit("vgg", epochs=1, out=tmp_path / "x.pth", **SMALL)


def test_cli_trains_a_user_file_and_maps_loads_it(model_file, tmp_path):
    arch = f"{model_file}:ViewNet"
    out = tmp_path / "view.pth"
    common = ["--data", "shapes", "--train-size", "32", "--test-size", "8", "--batch-size", "16"]
    result = run(
        "train", "--arch", arch, "--arch-args", '{"width": 2}', *common, "--epochs", "1", "--out", out,
        "--workers", "0", "--device", "cpu", "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"{arch} on shapes: best test accuracy" in result.output
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / "grey.png")
    maps = run(
        "maps", "--model", out, "--arch", arch, tmp_path / "grey.png", "--out", tmp_path / "maps",
        "--no-pictures", "--device", "cpu",
    )  # fmt: skip
    assert maps.exit_code == 0, maps.output
    summary = json.loads((tmp_path / "maps" / "grey" / "summary.json").read_text())
    assert summary["prediction"]["label"] in SHAPES_CLASSES
    with pytest.raises(UnsafeCheckpointError, match="names code to import"):
        load_model(out)  # a stored code path is never imported without the user naming it
    missing = run("train", "--arch", "nowhere/net.py:Net", "--epochs", "1", "--out", tmp_path / "n.pth")
    assert missing.exit_code == 2 and "attnviz: error:" in missing.output and "does not exist" in missing.output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        help_text = run("train", "--help").output
    assert "file.py:Class" in help_text


def test_a_torchvision_model_trains_and_loads_without_naming_it_again(tmp_path):
    import torchvision

    small = {**SMALL, "train_size": 16, "test_size": 8, "batch_size": 8}
    result = fit("torchvision:mobilenet_v3_small", "shapes", epochs=1, out=tmp_path / "mv3.pth", **small)
    loaded = load_model(result.best_path)  # stored timm/torchvision names import no user code
    assert loaded.arch == "torchvision:mobilenet_v3_small" and loaded.arch_kwargs == {"num_classes": 10}
    hand = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    hand.load_state_dict(torch.load(result.best_path, weights_only=True)["state_dict"])
    images, _ = _test_set(4)
    with torch.no_grad():
        assert torch.equal(loaded.model(images), hand(images))
