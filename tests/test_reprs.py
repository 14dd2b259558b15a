"""Short reprs: a loaded model and an input image print their key facts on one line, never their
tensors, arrays or the whole network; an input image shows itself in a notebook as a small picture."""

from __future__ import annotations

import base64
import io
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from attnviz.io.checkpoints import load_model, settle_class_names
from attnviz.io.inputs import load_input
from attnviz.io.save import save_checkpoint
from attnviz.models import build_model

FORBIDDEN = ("tensor(", "array(", "Sequential(", "Conv2d(", "Parameter")


def _short(text: str) -> None:
    assert len(text) < 300 and "\n" not in text, text
    assert not any(word in text for word in FORBIDDEN), text


def test_loaded_model_repr_names_the_facts_in_one_short_line(tmp_path, seeded):
    model = build_model("cbam_cnn", num_classes=3)
    path = tmp_path / "cbam.pth"
    save_checkpoint(path, model, "cbam_cnn", arch_kwargs={"num_classes": 3}, class_names=["a", "b", "c"])
    loaded = load_model(path)
    text = repr(loaded)
    _short(text)
    count = sum(p.numel() for p in model.parameters())
    for fact in (
        "cbam_cnn",
        "cbam.pth",
        "attnviz",
        f"{count:,} parameters",
        "cpu",
        "cifar10",
        "3 classes (checkpoint)",
    ):
        assert fact in text, (fact, text)
    assert str(tmp_path) not in text  # the file's name, not its folder
    assert str(loaded) == text


def test_loaded_model_repr_says_where_assumed_class_names_come_from(tmp_path, seeded):
    path = tmp_path / "bare.pth"
    torch.save(build_model("cnn").state_dict(), path)
    loaded = load_model(path)
    assert "classes by index" in repr(loaded) and "state_dict" in repr(loaded)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        settle_class_names(loaded)
    text = repr(loaded)
    _short(text)
    assert "10 classes (assumed: CIFAR-10)" in text


def test_input_image_repr_and_inline_picture(tmp_path):
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:, :32] = (255, 0, 0)
    rgb[:, 32:] = (0, 0, 255)
    Image.fromarray(rgb).save(tmp_path / "halves.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the aspect-ratio warning of the cifar10 resize
        image = load_input(tmp_path / "halves.png", "cifar10")
    text = repr(image)
    _short(text)
    for fact in ("halves.png", "64×48", "model input 32×32", "resize to 32×32"):
        assert fact in text, (fact, text)

    html = image._repr_html_()
    assert len(html) < 20_000 and "tensor(" not in html
    found = re.search(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert found, html[:200]
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(found.group(1)))).convert("RGB"))
    assert np.array_equal(shown, rgb)  # a small image is shown as it is
    assert "halves.png" in html and "64×48" in html


def test_a_large_input_is_shown_as_a_thumbnail(tmp_path):
    rgb = np.zeros((300, 600, 3), np.uint8)
    rgb[:, :300] = (0, 200, 0)
    rgb[:, 300:] = (250, 250, 0)
    Image.fromarray(rgb).save(tmp_path / "wide.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = load_input(tmp_path / "wide.png", "imagenet")
    found = re.search(r"base64,([A-Za-z0-9+/=]+)", image._repr_html_())
    assert found
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(found.group(1)))).convert("RGB")).astype(int)
    seen_h, seen_w = image.original.shape[:2]
    assert max(shown.shape[:2]) == 160 and shown.shape[1] / shown.shape[0] == pytest.approx(seen_w / seen_h, abs=0.02)
    # the centre crop the model sees: green on its left half, yellow on its right half
    assert np.abs(shown[:, 2] - (0, 200, 0)).max() <= 2 and np.abs(shown[:, -3] - (250, 250, 0)).max() <= 2
