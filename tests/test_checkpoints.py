"""Checkpoint formats, architecture resolution and the safety rules of loading."""

from __future__ import annotations

import builtins
import os
import sys
import warnings

import numpy as np
import pytest
import timm
import torch
import torchvision
from torch import nn

from attnviz.io.checkpoints import load_model
from attnviz.io.inputs import PRESETS
from attnviz.io.save import save_checkpoint
from attnviz.models import build_model, list_architectures
from attnviz.runtime.errors import (
    ArchitectureError,
    CheckpointError,
    UnsafeCheckpointError,
    UsageError,
)

ZOO = list_architectures()


def _randomize_buffers(model: nn.Module) -> nn.Module:
    """Give BatchNorm running statistics non-default values, so loading them is tested too."""
    gen = torch.Generator().manual_seed(1)
    for name, buf in model.named_buffers():
        if name.endswith("running_mean"):
            buf.copy_(torch.randn(buf.shape, generator=gen) * 0.1)
        elif name.endswith("running_var"):
            buf.copy_(torch.rand(buf.shape, generator=gen) + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def zoo() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: _randomize_buffers(build_model(name)) for name in ZOO}


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def _same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    assert not b.training
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b(x))


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- attnviz format


@pytest.mark.parametrize("name", ZOO)
def test_attnviz_format_round_trip(tmp_path, zoo, batch, name):
    path = tmp_path / f"{name}.pt"
    record = {"epochs": 3, "history": {"test_acc": [0.5, 0.61]}, "optimizer": ("adam", 1e-3)}
    names = [f"class {i}" for i in range(10)]
    save_checkpoint(path, zoo[name], name, preset="cifar10", class_names=names, record=record)

    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "attnviz" and raw["version"] == 1 and raw["arch"] == name
    assert raw["preset"] == PRESETS["cifar10"].to_dict()
    assert all(t.device.type == "cpu" for t in raw["state_dict"].values())

    loaded = load_model(path)
    assert (loaded.format, loaded.arch, loaded.source) == ("attnviz", name, str(path))
    assert loaded.preset == PRESETS["cifar10"]
    assert loaded.class_names == names and loaded.record == record
    assert loaded.arch_kwargs["num_classes"] == 10
    _same_outputs(zoo[name], loaded.model, batch)


def test_attnviz_format_keeps_non_default_kwargs(tmp_path, batch):
    torch.manual_seed(3)
    kwargs = {"num_classes": 5, "ratio": 8, "kernel_size": 3}
    model = _randomize_buffers(build_model("cbam_cnn", **kwargs))
    save_checkpoint(tmp_path / "a.pt", model, "cbam_cnn", arch_kwargs=kwargs, preset=None)
    loaded = load_model(tmp_path / "a.pt")
    assert loaded.arch_kwargs == kwargs
    assert loaded.preset == PRESETS["cifar10"]  # none stored: the zoo architecture's preset
    _same_outputs(model, loaded.model, batch)
    # Without stored kwargs they are read from the weights' shapes.
    save_checkpoint(tmp_path / "b.pt", model, "cbam_cnn", preset="imagenet")
    loaded = load_model(tmp_path / "b.pt")
    assert loaded.arch_kwargs == kwargs and loaded.preset == PRESETS["imagenet"]


def test_save_is_atomic_unwraps_and_validates(tmp_path, zoo):
    path = tmp_path / "sub" / "m.pt"
    path.parent.mkdir()
    path.write_bytes(b"old contents")
    save_checkpoint(path, nn.DataParallel(zoo["cnn"]), "cnn")
    assert sorted(os.listdir(path.parent)) == ["m.pt"]  # no temp file left behind
    keys = list(torch.load(path, weights_only=True)["state_dict"])
    assert keys == list(zoo["cnn"].state_dict()) and not any(k.startswith("module.") for k in keys)

    with pytest.raises(UsageError, match=r"record\['acc'\] is a numpy.float64"):
        save_checkpoint(tmp_path / "x.pt", zoo["cnn"], "cnn", record={"acc": np.float64(0.5)})
    with pytest.raises(UsageError, match=r"arch_kwargs\['act'\] is a torch.nn.modules.activation.ReLU"):
        save_checkpoint(tmp_path / "x.pt", zoo["cnn"], "cnn", arch_kwargs={"act": nn.ReLU()})
    with pytest.raises(UsageError, match="class_names"):
        save_checkpoint(tmp_path / "x.pt", zoo["cnn"], "cnn", class_names="cat dog")
    assert not (tmp_path / "x.pt").exists()


def test_extra_entries_are_stored_and_stay_weights_only_readable(tmp_path, zoo):
    optimizer = torch.optim.Adam(zoo["cnn"].parameters(), lr=1e-3)
    zoo["cnn"](torch.rand(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    path = tmp_path / "last.pth"
    save_checkpoint(path, zoo["cnn"], "cnn", extra={"train_state": {"epoch": 3, "optimizer": optimizer.state_dict()}})
    payload = torch.load(path, weights_only=True)
    assert payload["train_state"]["epoch"] == 3
    saved, live = payload["train_state"]["optimizer"]["state"], optimizer.state_dict()["state"]
    assert saved.keys() == live.keys()
    assert all(torch.equal(saved[k]["exp_avg"], live[k]["exp_avg"]) for k in live)
    assert load_model(str(path)).arch == "cnn"
    with pytest.raises(UsageError, match="state_dict"):
        save_checkpoint(tmp_path / "y.pth", zoo["cnn"], "cnn", extra={"state_dict": {}})
    with pytest.raises(UsageError, match=r"extra\['train_state'\]\['fn'\] is a builtins.function"):
        save_checkpoint(tmp_path / "y.pth", zoo["cnn"], "cnn", extra={"train_state": {"fn": lambda: 0}})
    assert not (tmp_path / "y.pth").exists()


# ---------------------------------------------------------------- notebook state_dicts


@pytest.mark.parametrize("name", ZOO)
def test_bare_state_dict_architecture_is_inferred(tmp_path, zoo, batch, name):
    path = tmp_path / "notebook.pth"
    torch.save(zoo[name].state_dict(), path)
    loaded = load_model(path)
    assert (loaded.arch, loaded.format) == (name, "state_dict")
    assert loaded.preset == PRESETS["cifar10"] and loaded.class_names is None
    _same_outputs(zoo[name], loaded.model, batch)


def _wrapped(model: nn.Module) -> dict[str, nn.Module]:
    """The real wrappers that prefix state_dict keys (no compilation happens until a call)."""
    return {
        "plain": model,
        "DataParallel": nn.DataParallel(model),
        "compiled": torch.compile(model),
        "compiled DataParallel": torch.compile(nn.DataParallel(model)),
    }


@pytest.mark.parametrize(
    ("key", "wrapper"),
    [
        ("state_dict", "plain"),
        ("model_state_dict", "DataParallel"),
        ("model", "compiled"),
        ("net", "compiled DataParallel"),
    ],
)
def test_wrapped_and_prefixed_state_dicts(tmp_path, zoo, batch, key, wrapper):
    model = zoo["cbam_cnn"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = _wrapped(model)[wrapper].state_dict()
    if wrapper != "plain":
        assert not any(k in model.state_dict() for k in state)  # really prefixed
    path = tmp_path / "wrapped.pth"
    torch.save({key: state, "epoch": 7, "best_acc": torch.tensor(0.875), "optimizer": optimizer.state_dict()}, path)
    loaded = load_model(path)
    assert loaded.arch == "cbam_cnn"
    assert loaded.record == {"epoch": 7, "best_acc": 0.875}
    _same_outputs(model, loaded.model, batch)


def test_prefixed_nested_model(tmp_path, zoo, batch):
    model = zoo["resnet18_cbam"]
    state = _wrapped(model)["compiled DataParallel"].state_dict()
    assert next(iter(state)) == "_orig_mod.module.backbone.conv1.weight"
    torch.save({"model_state_dict": state, "epoch": 2}, tmp_path / "r.pth")
    loaded = load_model(tmp_path / "r.pth")
    assert loaded.arch == "resnet18_cbam" and loaded.record == {"epoch": 2}
    _same_outputs(model, loaded.model, batch)


def test_numpy_values_beside_the_weights_load_without_trust(tmp_path, zoo):
    path = tmp_path / "np.pth"
    torch.save({"net": zoo["cnn"].state_dict(), "acc": np.float64(0.25), "curve": np.array([1.0, 2.0])}, path)
    loaded = load_model(path)
    assert loaded.record == {"acc": 0.25, "curve": [1.0, 2.0]} and isinstance(loaded.record["acc"], float)


# ---------------------------------------------------------------- named architectures


FOREIGN_MODEL = """
import torch
from torch import nn
from foreign_blocks import Block


class Net(nn.Module):
    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = Block(8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.block(self.stem(x))
        return self.head(x.mean((2, 3)))
"""

FOREIGN_BLOCKS = """
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1), nn.Sigmoid())

    def forward(self, x):
        x = self.bn(x)
        return x * self.gate(x)
"""


def test_foreign_file_architecture(tmp_path, batch):
    code = tmp_path / "code"
    code.mkdir()
    (code / "my_net.py").write_text(FOREIGN_MODEL)
    (code / "foreign_blocks.py").write_text(FOREIGN_BLOCKS)
    path_before = list(sys.path)

    loaded = load_model(_foreign_checkpoint(tmp_path, code, num_classes=7), arch=f"{code / 'my_net.py'}:Net")
    assert sys.path == path_before  # the file's folder was on sys.path only while importing
    assert loaded.arch_kwargs == {"num_classes": 7} and loaded.preset is None
    _same_outputs(_foreign_reference(code, 7), loaded.model, batch)

    with pytest.raises(ArchitectureError, match="has no 'Nett'; nn.Module classes there: Net"):
        load_model(tmp_path / "foreign.pth", arch=f"{code / 'my_net.py'}:Nett")
    with pytest.raises(ArchitectureError, match="does not exist"):
        load_model(tmp_path / "foreign.pth", arch=f"{tmp_path / 'nope.py'}:Net")


def _foreign_checkpoint(tmp_path, code, num_classes: int) -> str:
    model = _foreign_reference(code, num_classes)
    path = tmp_path / "foreign.pth"
    torch.save(model.state_dict(), path)
    return str(path)


def _foreign_reference(code, num_classes: int) -> nn.Module:
    """The same class, imported independently of attnviz, with fixed weights."""
    sys.path.insert(0, str(code))
    try:
        namespace: dict = {}
        exec(compile(FOREIGN_MODEL, "reference", "exec"), namespace)
        torch.manual_seed(5)
        return _randomize_buffers(namespace["Net"](num_classes=num_classes))
    finally:
        sys.path.remove(str(code))
        sys.modules.pop("foreign_blocks", None)


def test_module_path_architecture(tmp_path, zoo, batch):
    path = tmp_path / "m.pth"
    torch.save(zoo["se_cnn"].state_dict(), path)
    loaded = load_model(path, arch="attnviz.models:SE_CNN")
    assert loaded.arch == "attnviz.models:SE_CNN" and loaded.arch_kwargs == {}
    _same_outputs(zoo["se_cnn"], loaded.model, batch)
    with pytest.raises(ArchitectureError, match="cannot import module 'no_such_pkg.mod'"):
        load_model(path, arch="no_such_pkg.mod:Net")


@pytest.mark.parametrize(
    ("arch", "factory"),
    [
        ("timm:seresnet18", lambda: timm.create_model("seresnet18", pretrained=False, num_classes=10)),
        ("torchvision:resnet18", lambda: torchvision.models.resnet18(weights=None, num_classes=10)),
    ],
)
def test_library_architectures_fit_num_classes(tmp_path, batch, arch, factory):
    torch.manual_seed(4)
    model = _randomize_buffers(factory())
    path = tmp_path / "lib.pth"
    torch.save(model.state_dict(), path)
    loaded = load_model(path, arch=arch)
    assert (loaded.arch, loaded.arch_kwargs, loaded.preset) == (arch, {"num_classes": 10}, None)
    _same_outputs(model, loaded.model, batch)
    # The same in attnviz's format: the stored kwargs rebuild it.
    save_checkpoint(tmp_path / "lib.avz", model, arch, arch_kwargs={"num_classes": 10}, preset="imagenet")
    again = load_model(tmp_path / "lib.avz")
    assert again.arch == arch and again.preset == PRESETS["imagenet"]
    _same_outputs(model, again.model, batch)


def test_unknown_library_models(tmp_path, zoo):
    path = tmp_path / "m.pth"
    torch.save(zoo["cnn"].state_dict(), path)
    with pytest.raises(ArchitectureError, match="timm has no model 'seresnet181'"):
        load_model(path, arch="timm:seresnet181")
    with pytest.raises(ArchitectureError, match="torchvision has no model 'resnet19'"):
        load_model(path, arch="torchvision:resnet19")
    with pytest.raises(ArchitectureError, match="unknown architecture 'cbam'.*timm:NAME"):
        load_model(path, arch="cbam")


# ---------------------------------------------------------------- TorchScript


def test_torchscript_round_trip(tmp_path, zoo, batch):
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch marks torch.jit deprecated
        torch.jit.save(torch.jit.trace(zoo["cbam_cnn"], batch), str(path))
        loaded = load_model(path, trust=True)  # loading TorchScript runs the archive's code
    assert (loaded.format, loaded.arch, loaded.preset) == ("torchscript", "torchscript", None)
    _same_outputs(zoo["cbam_cnn"], loaded.model, batch)


# ---------------------------------------------------------------- unsafe pickles


class _ShellCommand:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


class _WriteFile:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.sentinel)!r}, 'w').write('ran')",))


@pytest.mark.parametrize("zip_format", [True, False])
@pytest.mark.parametrize(
    ("payload", "global_name"), [(_ShellCommand, f"{os.system.__module__}.system"), (_WriteFile, "builtins.exec")]
)
def test_malicious_pickle_runs_nothing(tmp_path, zoo, payload, global_name, zip_format):
    sentinel = tmp_path / "SENTINEL"
    path = tmp_path / "evil.pth"
    evil = {"state_dict": {"fc.weight": torch.ones(2, 3)}, "note": payload(sentinel)}
    torch.save(evil, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_model(path)
    message = _one_line(info)
    assert global_name in message and "--trust-checkpoint" in message and "trust=True" in message
    assert str(path) in message
    assert not sentinel.exists()


def test_whole_pickled_model_needs_trust(tmp_path, zoo, batch):
    path = tmp_path / "whole.pth"
    torch.save(zoo["cbam_cnn"], path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_model(path)
    assert "attnviz.models.cifar_cnn.CBAM_CNN" in _one_line(info)
    loaded = load_model(path, trust=True)
    assert (loaded.format, loaded.arch) == ("pickled-model", "pickled:attnviz.models.cifar_cnn.CBAM_CNN")
    _same_outputs(zoo["cbam_cnn"], loaded.model, batch)


def test_checkpoint_naming_code_needs_the_caller_to_name_it(tmp_path, zoo):
    path = tmp_path / "a.pt"
    save_checkpoint(path, zoo["se_cnn"], "attnviz.models:SE_CNN", preset=None)
    with pytest.raises(UnsafeCheckpointError, match="names code to import"):
        load_model(path)
    assert load_model(path, arch="attnviz.models:SE_CNN").arch == "attnviz.models:SE_CNN"


# ---------------------------------------------------------------- mismatches


def test_renamed_layer_is_named(tmp_path, zoo):
    state = {("fc3" + k[3:] if k.startswith("fc2.") else k): v for k, v in zoo["cbam_cnn"].state_dict().items()}
    torch.save(state, tmp_path / "renamed.pth")
    with pytest.raises(ArchitectureError) as info:
        load_model(tmp_path / "renamed.pth", arch="cbam_cnn")
    message = _one_line(info)
    assert "2 missing: fc2.weight, fc2.bias" in message and "2 unexpected: fc3.weight, fc3.bias" in message
    assert "nearest architectures: cbam_cnn" in message

    with pytest.raises(ArchitectureError) as info:  # inferred: the closest architecture and its differences
        load_model(tmp_path / "renamed.pth")
    message = _one_line(info)
    assert str(tmp_path / "renamed.pth") in message and "cbam_cnn" in message and "fc3.weight" in message


def test_wrong_shape_is_named(tmp_path, zoo):
    state = dict(zoo["cbam_cnn"].state_dict())
    state["cbam2.spatial_attn.conv.weight"] = torch.zeros(1, 2, 5, 5)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(ArchitectureError) as info:
        load_model(tmp_path / "shape.pth", arch="cbam_cnn")
    message = _one_line(info)
    assert "1 wrong shape: cbam2.spatial_attn.conv.weight (model [1, 2, 7, 7], file [1, 2, 5, 5])" in message
    assert "missing" not in message and "unexpected" not in message


def test_library_mismatch_is_named(tmp_path, zoo):
    state = zoo["cnn"].state_dict()
    torch.save(state, tmp_path / "cnn.pth")
    with pytest.raises(ArchitectureError) as info:
        load_model(tmp_path / "cnn.pth", arch="torchvision:resnet18")
    message = _one_line(info)
    expected = torchvision.models.resnet18(weights=None).state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    assert f"does not fit torchvision:resnet18: {len(missing)} missing: {missing[0]}, {missing[1]}" in message
    assert f"{len(unexpected)} unexpected: {unexpected[0]}" in message
    assert "conv1.weight (model [64, 3, 7, 7], file [32, 3, 3, 3])" in message
    assert "cnn matches exactly" in message


# ---------------------------------------------------------------- unreadable files


def test_unreadable_checkpoints(tmp_path, zoo):
    text = tmp_path / "notes.pth"
    text.write_text("hello, not a checkpoint\n")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    good = tmp_path / "good.pth"
    torch.save(zoo["cnn"].state_dict(), good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    listed = tmp_path / "list.pth"
    torch.save([1, 2], listed)
    keyed = tmp_path / "keyed.pth"
    torch.save({"epoch": 3, "weights": [1.0]}, keyed)
    cases = {
        tmp_path / "missing.pth": "does not exist",
        tmp_path: "is a directory",
        empty: "empty",
        text: "not a PyTorch checkpoint: it is a text file",
        cut: "not a readable PyTorch checkpoint",
        listed: "holds a list",
        keyed: "top-level keys are epoch, weights",
    }
    for path, reason in cases.items():
        with pytest.raises(CheckpointError, match=reason) as info:
            load_model(path)
        assert str(path) in _one_line(info)
        assert not isinstance(info.value, UnsafeCheckpointError | ArchitectureError)


def test_bad_device_is_a_usage_error(tmp_path, zoo):
    torch.save(zoo["cnn"].state_dict(), tmp_path / "m.pth")
    with pytest.raises(UsageError, match="unknown device"):
        load_model(tmp_path / "m.pth", device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            load_model(tmp_path / "m.pth", device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_saves_cpu_tensors_and_loads_on_cuda(tmp_path, zoo, batch):
    model = build_model("cbam_cnn").cuda().eval()
    model.load_state_dict(zoo["cbam_cnn"].state_dict())
    save_checkpoint(tmp_path / "gpu.pt", model, "cbam_cnn")
    assert all(
        t.device.type == "cpu" for t in torch.load(tmp_path / "gpu.pt", weights_only=True)["state_dict"].values()
    )
    loaded = load_model(tmp_path / "gpu.pt", device="cuda")
    assert next(loaded.model.parameters()).device.type == "cuda"
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(batch.cuda()).cpu(), zoo["cbam_cnn"](batch), atol=1e-4, rtol=1e-4)
