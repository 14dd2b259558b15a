"""Objects returned to notebooks display themselves inline and save what they hold."""

from __future__ import annotations

import numpy as np
import torch

import attnviz
from attnviz.models import build_model


def test_gradcam_result_saves_its_tensors_and_shows_inline(tmp_path):
    torch.manual_seed(0)
    model = build_model("se_cnn").eval()
    images = torch.randn(3, 3, 32, 32)
    result = attnviz.gradcam(model, images)
    result.save(tmp_path / "cam.npz")
    saved = np.load(tmp_path / "cam.npz")
    np.testing.assert_array_equal(saved["maps"], result.maps.numpy())
    np.testing.assert_array_equal(saved["targets"], model(images).argmax(1).numpy())
    assert str(saved["layer"]) == result.layer == "pool3"
    html = result._repr_html_()
    assert html.count("<img") == 3 and "data:image/png;base64," in html
    assert f"P = {float(result.scores[0]):.3f}" in html


def test_capture_shows_prediction_and_gate_table_inline():
    torch.manual_seed(0)
    model = build_model("cbam_cnn").eval()
    cap = attnviz.capture(model, torch.randn(1, 3, 32, 32), class_names=[f"c{i}" for i in range(10)])
    html = cap._repr_html_()
    assert html.count("<tr>") == 1 + len(cap.gates) == 7
    assert cap.topk(0, 1)[0].label in html


def test_importing_attnviz_does_not_import_matplotlib():
    import subprocess
    import sys

    code = "import attnviz, sys; attnviz.capture; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
