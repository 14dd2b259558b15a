"""Architectures users bring: constructor arguments, files inside packages, honest errors and class names."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support import run

from attnviz.io.checkpoints import load_model
from attnviz.io.inputs import CIFAR10_CLASSES, get_preset, load_rgb, preprocess
from attnviz.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

RESIDUAL_NET = '''
import torch
from torch import nn


class ChannelGate(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.fc = nn.Linear(channels, channels)

    def forward(self, x):
        return x * torch.sigmoid(self.fc(x.mean((2, 3))))[:, :, None, None]


class ResidualNet(nn.Module):
    """Jongchan's signature: ResidualNet(network_type, depth, num_classes, att_type)."""

    def __init__(self, network_type, depth, num_classes, att_type):
        super().__init__()
        assert network_type in ("ImageNet", "CIFAR10") and att_type in ("BAM", "CBAM")
        width = 4 if network_type == "ImageNet" else 6
        self.convs = nn.ModuleList(
            nn.Conv2d(3 if i == 0 else width, width, 3, padding=1) for i in range(depth // 9)
        )
        self.gate = ChannelGate(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        for conv in self.convs:
            x = torch.relu(conv(x))
        return self.fc(self.gate(x).mean((2, 3)))
'''
ARGS = {"network_type": "ImageNet", "depth": 18, "num_classes": 5, "att_type": "CBAM"}

SE_MODULE = """
import torch
from torch import nn


class SELayer(nn.Module):
    def __init__(self, channel, reduction=2):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channel, channel // reduction), nn.ReLU(), nn.Linear(channel // reduction, channel))

    def forward(self, x):
        return x * torch.sigmoid(self.fc(x.mean((2, 3))))[:, :, None, None]
"""

SE_RESNET = """
from torch import nn
{import_line}


def se_resnet_tiny(num_classes=3):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), SELayer(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
"""


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def _image(path: Path) -> Path:
    pixels = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _direct_probs(model: torch.nn.Module, image: Path, size: int) -> np.ndarray:
    batch = preprocess(load_rgb(image), get_preset("imagenet", size=size))[None]
    with torch.no_grad():
        return torch.softmax(model.eval()(batch), dim=1)[0].numpy()


def _stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def _module_from(file: Path, name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"reference_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


@pytest.fixture
def residual(tmp_path: Path) -> dict[str, Path]:
    file = _write(tmp_path / "model_resnet.py", RESIDUAL_NET)
    torch.manual_seed(0)
    model = _module_from(file, "ResidualNet")(**ARGS)
    torch.save(model.state_dict(), tmp_path / "ckpt.pth")
    return {"file": file, "ckpt": tmp_path / "ckpt.pth", "image": _image(tmp_path / "img.png"), "model": model}


# --- (a) constructor arguments ------------------------------------------------------------------


def test_cli_arch_args_build_the_users_class_and_predict_as_the_model_does(residual, tmp_path):
    out = tmp_path / "out"
    arch = f"{residual['file']}:ResidualNet"
    result = run(
        "maps", "--model", residual["ckpt"], "--arch", arch, "--arch-args", json.dumps(ARGS),
        residual["image"], "--out", out, "--no-pictures", "--no-cam", "--size", "32",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "img" / "summary.json").read_text())
    expected = _direct_probs(residual["model"], residual["image"], 32)
    top5 = summary["prediction"]["top5"]
    assert [p["index"] for p in top5] == list(np.argsort(-expected)[:5])
    np.testing.assert_allclose([p["prob"] for p in top5], np.sort(expected)[::-1][:5], atol=1e-6)


def test_api_arch_args_build_the_users_class_with_the_same_outputs(residual):
    loaded = load_model(residual["ckpt"], arch=f"{residual['file']}:ResidualNet", arch_args=ARGS)
    assert loaded.arch_kwargs == ARGS
    batch = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(batch), residual["model"].eval()(batch), rtol=0, atol=0)


def test_explicit_arch_args_win_over_inferred_ones_for_a_registry_model(tmp_path):
    model = build_model("se_cnn", num_classes=4, reduction_ratio=8)
    torch.save(model.state_dict(), tmp_path / "se.pth")
    loaded = load_model(tmp_path / "se.pth", arch="se_cnn", arch_args={"reduction_ratio": 8})
    assert loaded.arch_kwargs == {"num_classes": 4, "reduction_ratio": 8}
    with pytest.raises(Exception, match="does not fit"):
        load_model(tmp_path / "se.pth", arch="se_cnn", arch_args={"reduction_ratio": 4})


@pytest.mark.parametrize(
    "text", ["{not json", "[1, 2]", '"ImageNet"', '{"depth": 18'], ids=["broken", "list", "string", "unclosed"]
)
def test_bad_arch_args_are_one_line_and_exit_2(residual, tmp_path, text):
    arch = f"{residual['file']}:ResidualNet"
    result = run("inspect", "--model", residual["ckpt"], "--arch", arch, "--arch-args", text)
    assert result.exit_code == 2
    lines = _stderr_lines(result)
    assert len(lines) == 1 and lines[0].startswith("attnviz: error:") and "--arch-args" in lines[0], lines
    assert "Traceback" not in result.output


def test_arch_args_are_accepted_by_every_command_that_takes_arch():
    for command in ("maps", "compare", "inspect", "report", "train"):
        result = run(command, "--help")
        assert "--arch-args" in result.stdout, command


# --- (b) files inside packages ------------------------------------------------------------------


@pytest.mark.parametrize(
    "import_line",
    ["from senet.se_module import SELayer", "from .se_module import SELayer"],
    ids=["absolute", "relative"],
)
@pytest.mark.parametrize("with_init", [True, False], ids=["package", "namespace"])
def test_a_file_that_imports_its_own_package(tmp_path, monkeypatch, import_line, with_init):
    repo = tmp_path / "repo"
    if with_init:
        _write(repo / "senet" / "__init__.py", "")
    _write(repo / "senet" / "se_module.py", SE_MODULE)
    _write(repo / "senet" / "se_resnet.py", SE_RESNET.format(import_line=import_line))
    monkeypatch.chdir(repo)
    namespace: dict = {}
    exec(textwrap.dedent(SE_MODULE), namespace)  # the same layer, built here without importing the package
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        namespace["SELayer"](4),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    )
    torch.save(model.state_dict(), tmp_path / "se.pth")

    result = run("inspect", "--model", tmp_path / "se.pth", "--arch", "senet/se_resnet.py:se_resnet_tiny")
    assert result.exit_code == 0, result.output
    loaded = load_model(tmp_path / "se.pth", arch="senet/se_resnet.py:se_resnet_tiny")
    batch = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(batch), model.eval()(batch), rtol=0, atol=0)
    assert str(repo) not in sys.path  # on sys.path for the import only


def test_a_missing_sibling_package_says_how_to_name_the_module(tmp_path):
    file = _write(tmp_path / "repo" / "nets" / "model.py", "from helpers.blocks import Block\n")
    torch.save({"w": torch.zeros(1)}, tmp_path / "m.pth")
    result = run("inspect", "--model", tmp_path / "m.pth", "--arch", f"{file}:Net")
    assert result.exit_code == 2
    (line,) = _stderr_lines(result)
    assert "No module named 'helpers'" in line and "package.module:Class" in line


# --- (c) a factory runs once, (d) the user's warnings are theirs ---------------------------------

FACTORY = """
import warnings
from torch import nn


def make():
    print("building the model")
    warnings.warn("deprecated thing")
    return nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
"""


@pytest.fixture
def factory(tmp_path: Path) -> dict[str, Path]:
    file = _write(tmp_path / "factory.py", FACTORY)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(2, 3)
    )
    torch.save(model.state_dict(), tmp_path / "f.pth")
    return {"file": file, "ckpt": tmp_path / "f.pth"}


def test_a_factory_runs_once(factory):
    result = run("inspect", "--model", factory["ckpt"], "--arch", f"{factory['file']}:make")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("building the model") == 1


def test_a_warning_from_the_users_code_is_not_labelled_as_attnvizs(factory):
    result = run("inspect", "--model", factory["ckpt"], "--arch", f"{factory['file']}:make")
    assert result.exit_code == 0, result.output
    warning = [line for line in _stderr_lines(result) if "deprecated thing" in line]
    assert len(warning) == 1
    assert not warning[0].startswith("attnviz: warning") and "factory.py" in warning[0]


# --- (e) library state_dicts are not matched to the course's models ------------------------------


@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_a_library_state_dict_is_not_matched_to_the_course_models(tmp_path, library):
    if library == "timm":
        timm = pytest.importorskip("timm")
        with torch.device("meta"):
            model = timm.create_model("resnet18", num_classes=10, pretrained=False)
    else:
        import torchvision

        with torch.device("meta"):
            model = torchvision.models.resnet18(num_classes=10)
    torch.save({k: torch.zeros(v.shape) for k, v in model.state_dict().items()}, tmp_path / "r18.pth")
    result = run("inspect", "--model", tmp_path / "r18.pth")
    assert result.exit_code == 2
    (line,) = _stderr_lines(result)
    for course in ("cnn (", "se_cnn", "cbam_cnn", "densenet_se", "resnet_se"):
        assert course not in line, line
    assert "timm:resnet18" in line and "torchvision:resnet18" in line

    named = run("inspect", "--model", tmp_path / "r18.pth", "--arch", "cnn")  # a wrong --arch: the same hint
    assert named.exit_code == 2 and "does not fit cnn" in named.stderr and "torchvision:resnet18" in named.stderr
    assert "resnet_se" not in named.stderr


def test_a_course_model_with_a_changed_layer_still_gets_its_nearest(tmp_path):
    state = build_model("cbam_cnn").state_dict()
    state["fc2.weight"] = torch.zeros(10, 7)
    torch.save(state, tmp_path / "c.pth")
    result = run("inspect", "--model", tmp_path / "c.pth")
    assert result.exit_code == 2
    assert "nearest: cbam_cnn" in result.stderr


# --- (g) class names ------------------------------------------------------------------------------


@pytest.fixture
def shapes_cnn(tmp_path: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    torch.save(build_model("cnn", num_classes=10).state_dict(), tmp_path / "cnn.pth")
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"shape{i}" for i in range(10)) + "\n")
    return {"ckpt": tmp_path / "cnn.pth", "names": names, "image": _image(tmp_path / "img.png")}


def test_assumed_cifar10_names_are_said_in_one_warning(shapes_cnn, tmp_path):
    result = run(
        "maps", "--model", shapes_cnn["ckpt"], shapes_cnn["image"], "--out", tmp_path / "o", "--no-pictures", "--no-cam"
    )
    assert result.exit_code == 0, result.output
    (warning,) = [line for line in _stderr_lines(result) if "warning" in line]
    assert "cnn.pth" in warning and "CIFAR-10" in warning and "airplane, automobile" in warning
    assert "--classes" in warning


def test_given_class_names_give_no_warning_and_are_used(shapes_cnn, tmp_path):
    out = tmp_path / "o"
    result = run(
        "maps", "--model", shapes_cnn["ckpt"], shapes_cnn["image"], "--out", out, "--no-pictures", "--no-cam",
        "--classes", shapes_cnn["names"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr
    assert json.loads((out / "img" / "summary.json").read_text())["prediction"]["label"].startswith("shape")


def test_loaded_model_says_where_its_class_names_come_from(shapes_cnn, tmp_path):
    from attnviz.io.checkpoints import settle_class_names
    from attnviz.io.save import save_checkpoint

    bare = load_model(shapes_cnn["ckpt"])
    assert bare.class_names is None and bare.class_names_source == "indices"
    with pytest.warns(UserWarning, match="CIFAR-10"):
        assert settle_class_names(bare, None, "cifar10") == list(CIFAR10_CLASSES)
    assert bare.class_names_source == "assumed: CIFAR-10"
    assert settle_class_names(bare, ["a"] * 10, "cifar10") == ["a"] * 10 and bare.class_names_source == "given"

    five = tmp_path / "five.pth"
    torch.save(build_model("cnn", num_classes=5).state_dict(), five)
    loaded = load_model(five)
    assert settle_class_names(loaded, None, "cifar10") is None and loaded.class_names_source == "indices"

    saved = tmp_path / "saved.pth"
    save_checkpoint(saved, build_model("cnn"), "cnn", preset="cifar10", class_names=[f"c{i}" for i in range(10)])
    assert load_model(saved).class_names_source == "checkpoint"


def test_train_records_the_arch_args_so_loading_needs_no_flag(tmp_path):
    out = tmp_path / "se.pth"
    result = run(
        "train", "--arch", "se_cnn", "--arch-args", '{"reduction_ratio": 8}', "--epochs", "1", "--out", out,
        "--train-size", "8", "--test-size", "8", "--batch-size", "8", "--workers", "0", "--device", "cpu",
        "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    loaded = load_model(out)
    assert loaded.arch_kwargs == {"num_classes": 10, "reduction_ratio": 8}
    assert loaded.model.ca1.fc[0].out_features == 32 // 8
