"""A dead gate (one value everywhere) is said to be one: in the capture, maps' table and inspect."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from support import run

import attnviz
from attnviz.io.inputs import CIFAR10_CLASSES
from attnviz.io.save import save_checkpoint
from attnviz.models import build_model


def _dead_cbam_cnn() -> torch.nn.Module:
    """cbam_cnn with cbam2's channel MLP dead (zero output weights): sigmoid(0) = 0.5 everywhere."""
    torch.manual_seed(0)
    model = build_model("cbam_cnn").eval()
    torch.nn.init.zeros_(model.cbam2.channel_attn.fc[2].weight)
    return model


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("constant")
    model = _dead_cbam_cnn()
    checkpoint = root / "dead.pth"
    save_checkpoint(checkpoint, model, "cbam_cnn", preset="cifar10", class_names=list(CIFAR10_CLASSES))
    image = root / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
    return {"model": model, "checkpoint": checkpoint, "image": image, "root": root}


def test_the_capture_marks_a_dead_gate_constant_and_the_live_ones_not(workspace):
    images = torch.randn(3, 3, 32, 32)
    cap = attnviz.capture(workspace["model"], images, layers=[])
    dead = cap.gates["cbam2.channel_attn"]
    torch.testing.assert_close(dead.values, torch.full_like(dead.values, 0.5))  # the independent truth
    assert dead.is_constant() and all(dead.is_constant(i) for i in range(3))
    rows = {row["name"]: row["constant"] for row in cap.gate_table(0)}
    assert rows == {name: name == "cbam2.channel_attn" for name in cap.gates}


def test_maps_table_and_inspect_say_constant_gate(workspace, tmp_path):
    out = run(
        "maps", "--model", workspace["checkpoint"], workspace["image"], "--out", tmp_path / "m", "--no-pictures"
    ).output
    line = next(line for line in out.splitlines() if "cbam2.channel_attn" in line)
    assert "constant gate" in line
    assert not any("constant" in line for line in out.splitlines() if "cbam1.channel_attn" in line)
    shown = run("inspect", "--model", workspace["checkpoint"]).output
    gates_table = shown[shown.index("attention gates") :]
    line = next(line for line in gates_table.splitlines() if "cbam2.channel_attn" in line)
    assert "constant gate" in line


def test_a_torchscript_model_is_not_said_to_have_no_sigmoid():
    model = torch.jit.trace(_dead_cbam_cnn(), torch.randn(1, 3, 32, 32))
    with pytest.warns(UserWarning, match="compiled TorchScript"):
        cap = attnviz.capture(model, torch.randn(1, 3, 32, 32))
    assert "TorchScript" in cap.nothing_found() and "calls no sigmoid" not in cap.nothing_found()
