"""``attnviz compare`` names classes as the other commands do (``settle_class_names``): a bare
state_dict of a 10-class CIFAR-10 model gets CIFAR-10's names with one warning that says so,
never silently; names stored in a checkpoint are used without one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from support import run

from attnviz.io.inputs import CIFAR10_CLASSES
from attnviz.io.save import save_checkpoint
from attnviz.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def image(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def _compare(tmp_path, baseline, model, image):
    return run("compare", "--baseline", baseline, "--model", model, image, "--out", tmp_path / "out" / "c.png",
               "--device", "cpu")  # fmt: skip


def _labels(tmp_path):
    """The class labels compare.json names (targets and predictions); they are not indices."""
    rows = json.loads((tmp_path / "out" / "c.json").read_text())["images"]
    found = {row["target"]["label"] for row in rows}
    found |= {model["predicted"]["label"] for row in rows for model in row["models"].values()}
    return found


def test_bare_state_dicts_get_cifar10_names_with_one_warning(tmp_path, image, seeded):
    for arch in ("cnn", "se_cnn"):
        torch.save(build_model(arch).state_dict(), tmp_path / f"{arch}.pth")
    result = _compare(tmp_path, tmp_path / "cnn.pth", tmp_path / "se_cnn.pth", image)
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if line.startswith("attnviz: warning:")]
    assert len(warned) == 1, result.stderr
    assert "no class names stored in" in warned[0] and "using CIFAR-10's (airplane, automobile, bird, cat" in warned[0]
    assert _labels(tmp_path) <= set(CIFAR10_CLASSES)


def test_stored_names_are_used_without_a_warning(tmp_path, image, seeded):
    names = [f"class{i}" for i in range(10)]
    for arch in ("cnn", "se_cnn"):
        save_checkpoint(tmp_path / f"{arch}.pth", build_model(arch), arch, arch_kwargs={"num_classes": 10},
                        class_names=names)  # fmt: skip
    result = _compare(tmp_path, tmp_path / "cnn.pth", tmp_path / "se_cnn.pth", image)
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr
    assert _labels(tmp_path) <= set(names)
