"""The checkpoint modules' own helpers: sniffing, the safe read, building, plain values."""

from __future__ import annotations

import pickle
import zipfile

import pytest
import torch
from torch import nn

from attnviz.io.build import build_for, check_stored_kwargs, names_code
from attnviz.io.safe_load import read_checkpoint
from attnviz.io.save import FORMAT, is_plain, save_checkpoint
from attnviz.io.sniff import check_file, file_kind
from attnviz.models import build_model
from attnviz.runtime.errors import ArchitectureError, CheckpointError, UnsafeCheckpointError


def test_file_kind_reads_bytes_only(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "new.pth")
    torch.save({"w": torch.ones(2)}, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    assert file_kind(str(tmp_path / "new.pth")) == "zip"
    assert file_kind(str(tmp_path / "old.pth")) == "legacy"
    with zipfile.ZipFile(tmp_path / "script.pt", "w") as archive:
        archive.writestr("m/constants.pkl", b"")
    assert file_kind(str(tmp_path / "script.pt")) == "torchscript"
    (tmp_path / "notes.txt").write_text("hello world\n")
    with pytest.raises(CheckpointError, match="is a text file \\(it starts with 'hello world'\\)"):
        file_kind(str(tmp_path / "notes.txt"))
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(CheckpointError, match="Python pickle not written by torch.save"):
        file_kind(str(tmp_path / "plain.pkl"))


def test_check_file_refuses_missing_empty_and_folders(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        check_file(str(tmp_path / "none.pth"))
    with pytest.raises(CheckpointError, match="is a directory"):
        check_file(str(tmp_path))
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is empty \(0 bytes\)"):
        check_file(str(tmp_path / "empty.pth"))


class _Payload:
    def __reduce__(self):  # pragma: no cover - never called by the safe reader
        return (print, ("ran",))


def test_read_checkpoint_is_weights_only_unless_trusted(tmp_path):
    torch.save({"w": torch.arange(3.0), "epoch": 4}, tmp_path / "sd.pth")
    read = read_checkpoint(tmp_path / "sd.pth")
    assert read["epoch"] == 4 and torch.equal(read["w"], torch.arange(3.0))
    torch.save({"obj": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(UnsafeCheckpointError, match="would import and call builtins.print"):
        read_checkpoint(tmp_path / "evil.pth")
    (tmp_path / "junk.pth").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(tmp_path / "junk.pth")


def test_names_code_and_stored_kwargs():
    assert names_code("my_file.py:Net") and names_code("pkg.mod:Net")
    assert not names_code("timm:resnet18") and not names_code("torchvision:resnet18") and not names_code("cnn")
    check_stored_kwargs({"num_classes": 10, "act": "relu", "widths": [16, 32]}, "timm:x", "f.pth")
    for bad in ({"checkpoint_path": "a"}, {"act": "../../etc"}, {"cfg": {"a": 1}}, {"drop": float("nan")}):
        with pytest.raises(UnsafeCheckpointError):
            check_stored_kwargs(bad, "timm:x", "f.pth")


def test_build_for_loads_strictly_and_names_the_difference():
    source = build_model("cnn")
    model, arch, kwargs = build_for(source.state_dict(), "cnn", None, "f.pth")
    assert arch == "cnn" and isinstance(model, nn.Module)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))
    broken = dict(source.state_dict())
    broken.pop(next(iter(broken)))
    with pytest.raises(ArchitectureError, match="does not fit cnn: 1 missing"):
        build_for(broken, "cnn", None, "f.pth")


def test_is_plain_matches_what_weights_only_reads_back(tmp_path):
    assert is_plain({"a": [1, 2.0, "x", None, True], "b": (1,)})
    assert not is_plain({1: "int key"}) and not is_plain(torch.ones(1)) and not is_plain({"a": {1, 2}})
    save_checkpoint(tmp_path / "m.pth", build_model("cnn"), "cnn", record={"acc": 0.5, "hist": [1, 2]})
    stored = torch.load(tmp_path / "m.pth", weights_only=True)
    assert stored["format"] == FORMAT and stored["record"] == {"acc": 0.5, "hist": [1, 2]}
