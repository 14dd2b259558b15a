"""maps says which resize and which class names it used, on the terminal and in summary.json."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image
from support import run

from attnviz.models import build_model


def test_maps_names_the_resize_and_where_the_class_names_come_from(tmp_path):
    torch.manual_seed(0)
    bare = tmp_path / "bare.pth"
    torch.save(build_model("cnn").state_dict(), bare)  # a course notebook's checkpoint: no class names
    image = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 96, 3), dtype=np.uint8)).save(image)
    result = run("maps", "--model", bare, image, "--out", tmp_path / "out", "--no-pictures")
    first = next(line for line in result.output.splitlines() if line.startswith("model: "))
    assert "resize to 32×32" in first and "classes: 10 (assumed: CIFAR-10)" in first
    assert "no class names stored" in result.output and "squashed" in result.output
    summary = json.loads((tmp_path / "out" / "wide" / "summary.json").read_text())
    assert summary["preset"]["resize"] == "resize to 32×32"
    assert summary["class_names_source"] == "assumed: CIFAR-10"
