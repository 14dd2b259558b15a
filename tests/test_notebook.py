"""Objects returned to notebooks display themselves inline and save what they hold."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

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


def _readme_notebook_cell() -> str:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## In a notebook") :]
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("\n```", start)]


def test_readme_notebook_cell_shows_pictures_in_a_fresh_kernel():
    """The README's snippet, pasted as one cell into a fresh kernel with nothing set up by hand
    (no ``%matplotlib inline``), shows the capture table, two figures and the Grad-CAM inline."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    root = Path(__file__).resolve().parents[1]
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(_readme_notebook_cell())]
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(root)}}
    )
    client.execute()
    outputs = notebook.cells[0].outputs
    assert not [o for o in outputs if o.output_type == "error"], outputs
    shown = [o for o in outputs if o.output_type in ("display_data", "execute_result")]
    pngs = [o for o in shown if "image/png" in o.get("data", {})]
    assert len(pngs) >= 2, [list(o.get("data", {})) for o in shown]
    for output in pngs:  # real pictures, not empty ones
        png = base64.b64decode(output["data"]["image/png"])
        picture = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
        assert picture.shape[0] > 100 and picture.shape[1] > 100 and picture.std() > 10
    html = [o["data"]["text/html"] for o in shown if "text/html" in o.get("data", {})]
    assert any("cbam1.spatial_attn" in page for page in html)  # the gate table
    assert any("data:image/png;base64," in page and "P = " in page for page in html)  # Grad-CAM
    assert all("tensor(" not in o.get("data", {}).get("text/plain", "") for o in shown)
