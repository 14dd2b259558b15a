"""compare on models that see a centre crop (the imagenet preset): maps drawn where the model looked."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import attnviz
from attnviz.io.checkpoints import LoadedModel
from attnviz.io.inputs import get_preset
from attnviz.jobs.compare import in_image_frame


def test_a_map_of_a_crop_is_placed_in_the_crop_box_and_zero_outside():
    cam = np.zeros((4, 4), dtype=np.float32)
    cam[0, 0] = 1.0  # hot in the crop's top-left corner
    frame = in_image_frame(cam, (60, 80), (10, 20, 50, 60))
    assert frame.shape == (60, 80)
    assert frame[:10].max() == 0 and frame[:, :20].max() == 0 and frame[50:].max() == 0 and frame[:, 60:].max() == 0
    hot = np.unravel_index(frame.argmax(), frame.shape)
    assert 10 <= hot[0] < 20 and 20 <= hot[1] < 30


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def test_compare_with_a_cropping_preset_records_the_crop_and_draws_inside_it():
    torch.manual_seed(0)
    preset = get_preset("imagenet", size=(32, 32))
    models = {
        name: LoadedModel(TinyNet().eval(), "tiny", preset=preset, class_names=["a", "b", "c"])
        for name in ("base", "att")
    }
    image = np.random.default_rng(0).integers(0, 255, (48, 96, 3), dtype=np.uint8)  # wide: the crop is the centre
    comparison = attnviz.compare(models, [image], labels=["wide.png"])
    box = preset.crop_box(48, 96)
    assert comparison.crop_boxes == {"base": [box], "att": [box]}
    top, left, bottom, right = box
    side = round(48 * 32 / preset.resize_side())  # the centre 32 of the shorter side resized to 36
    assert abs((bottom - top) - side) <= 1 and abs((right - left) - side) <= 1
    assert abs((left + right) / 2 - 48) <= 1 and abs((top + bottom) / 2 - 24) <= 1
    assert "1 image(s), baseline 'base' vs ['att']" in repr(comparison) and "tensor" not in repr(comparison)
    figure = comparison.figure()
    assert len(figure.axes) >= 3
