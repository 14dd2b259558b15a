"""The report read by a person: the per-class excitation as a class × channel heat map, one line per
model on a card, and a constant (dead) gate said wherever the report shows a gate. Every number is
checked against the model's own gate values, read here with forward hooks."""

from __future__ import annotations

import html
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image
from support import ROOT, run

from attnviz.data.shapes import SHAPES_CLASSES, make_sample
from attnviz.io.checkpoints import load_model
from attnviz.io.inputs import preprocess
from attnviz.io.save import save_checkpoint
from attnviz.report.aggregate import Aggregator

pytestmark = pytest.mark.usefixtures("one_thread")

BUNDLED = ROOT / "samples" / "models" / "cbam_cnn.pth"
COUNT = 6
NOTE = "constant gate (0.500 everywhere): it does not select anything"


@pytest.fixture(scope="module")
def dead_cbam(tmp_path_factory) -> Path:
    """The bundled cbam_cnn with cbam2.channel_attn made dead (its MLP's output weights zero:
    sigmoid(0) = 0.5 everywhere), as a model trained too briefly can come out."""
    loaded = load_model(BUNDLED)
    torch.nn.init.zeros_(loaded.model.cbam2.channel_attn.fc[2].weight)
    path = tmp_path_factory.mktemp("dead") / "cbam_cnn.pth"
    save_checkpoint(path, loaded.model, "cbam_cnn", preset=loaded.preset, class_names=loaded.class_names)
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory, dead_cbam) -> Path:
    """That model on six shapes images."""
    out = tmp_path_factory.mktemp("readable") / "report"
    result = run(
        "report",
        "--baseline",
        dead_cbam,
        f"shapes:{COUNT}",
        "--out",
        out,
        "--steps",
        1,
        "--sanity-images",
        0,
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def gates(dead_cbam) -> dict[str, np.ndarray]:
    """Every gate of cbam_cnn on the report's images, ``[N, C]`` or ``[N, H, W]``, read by hooks."""
    samples = [make_sample(i, seed=0, split="test") for i in range(COUNT)]
    images = torch.stack([preprocess(s.image, "cifar10") for s in samples])
    model = load_model(dead_cbam).model.eval()
    seen: dict[str, np.ndarray] = {}
    handles = [
        model.get_submodule(f"cbam{k}.{part}.sigmoid").register_forward_hook(
            lambda m, a, o, name=f"cbam{k}.{part}": seen.__setitem__(name, o.double().numpy())
        )
        for k in (1, 2, 3)
        for part in ("channel_attn", "spatial_attn")
    ]
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    out = {name: (v.reshape(COUNT, -1) if "channel" in name else v[:, 0]) for name, v in seen.items()}
    out["labels"] = np.array([s.label for s in samples])
    return out


def page(report: Path) -> str:
    return (report / "index.html").read_text(encoding="utf-8")


def section(text: str, name: str) -> str:
    start = text.index(f'<section id="{name}">')
    return text[start : text.index("</section>", start)]


def plain(fragment: str) -> str:
    return html.unescape(re.sub(r"<br>", " ", re.sub(r"<(?!br>)[^>]+>", "", fragment)))


def heat_axes(figure):
    return next(ax for ax in figure.axes if ax.get_label() == "heatmap")


# --------------------------------------------------------------------------- the heat map


def _records(values: np.ndarray, labels: np.ndarray) -> list[dict]:
    cam = {"method": "gradcam", "layer": "x", "target": 0, "p_target": 0.5, "deletion_auc": 0.1, "insertion_auc": 0.2}
    return [
        {
            "status": "ok",
            "id": f"i{n}",
            "truth_index": int(label),
            "models": {
                "m": {
                    "predicted": int(label),
                    "prob": 0.5,
                    "cam": cam,
                    "spatial_gates": {},
                    "channel_gates": {"g": {"mean": float(row.mean()), "values": row.tolist()}},
                }
            },
        }
        for n, (row, label) in enumerate(zip(values, labels))
    ]


def test_heat_map_rows_are_classes_and_columns_channels_in_one_order():
    from attnviz.report.figures import excitation_figure, excitation_png

    rng = np.random.default_rng(3)
    labels = np.array([0, 2, 2, 1, 0, 2, 1, 0, 0])
    values = rng.random((len(labels), 7))
    names = ["cat", "dog", "bird"]
    aggregator = Aggregator(["m"], names)
    for record in _records(values, labels):
        aggregator.add(record)
    per_class = aggregator.summary()["models"]["m"]["channel_gates"]["g"]["per_class"]

    means = np.stack([values[labels == k].mean(0) for k in range(3)])  # rows: cat, dog, bird
    order = np.argsort(-means.mean(0), kind="stable")
    figure = excitation_figure(per_class, "m · g")
    ax = heat_axes(figure)
    cells = np.asarray(ax.images[0].get_array())
    assert cells.shape == (3, 7)
    np.testing.assert_allclose(cells, means[:, order], atol=1e-12)
    assert ax.images[0].get_clim() == (0.0, 1.0)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cat (n=4)", "dog (n=2)", "bird (n=3)"]
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(c) for c in order]  # each column's channel
    assert "sorted by the mean over classes" in ax.get_xlabel()
    assert any(a.get_label() == "colorbar" for a in figure.axes)

    # the pixels: each cell's centre has the colour of its value
    rgb = np.asarray(Image.open(io.BytesIO(excitation_png(per_class, "m · g"))).convert("RGB"))
    figure.canvas.draw()
    height = figure.canvas.get_width_height()[1]
    lut = colormaps["viridis"]
    for row in range(3):
        for column in range(7):
            x, y = ax.transData.transform((column, row))
            expected = np.array(lut(cells[row, column])[:3]) * 255
            assert np.abs(rgb[int(round(height - y)), int(round(x))] - expected).max() <= 3, (row, column)


def test_heat_map_of_the_report_is_the_exact_class_means(report, gates):
    from attnviz.report.figures import excitation_figure

    document = json.loads((report / "results.json").read_text(encoding="utf-8"))
    labels = gates["labels"]
    channel = document["summary"]["models"]["cbam_cnn"]["channel_gates"]["cbam3.channel_attn"]
    expected = np.stack([gates["cbam3.channel_attn"][labels == k].mean(0) for k in np.unique(labels)])
    assert list(channel["per_class"]) == [SHAPES_CLASSES[k] for k in np.unique(labels)]
    np.testing.assert_allclose([c["mean"] for c in channel["per_class"].values()], expected, atol=1e-6)

    # the written picture, read at the cells of the same figure drawn from the values computed here
    figure = excitation_figure(
        {SHAPES_CLASSES[k]: {"n": int((labels == k).sum()), "mean": m} for k, m in zip(np.unique(labels), expected)},
        f"cbam_cnn · cbam3.channel_attn, by {channel['grouped_by']}",  # the report's title, so the same layout
    )
    ax = heat_axes(figure)
    figure.canvas.draw()
    rgb = np.asarray(Image.open(report / "figures" / "excitation-cbam_cnn-cbam3.channel_attn.png").convert("RGB"))
    assert (rgb.shape[1], rgb.shape[0]) == figure.canvas.get_width_height()
    order = np.argsort(-expected.mean(0), kind="stable")
    lut = colormaps["viridis"]
    hits = []
    for row in range(expected.shape[0]):
        for column in range(0, expected.shape[1], 9):
            x, y = ax.transData.transform((column, row))
            colour = np.array(lut(expected[row, order[column]])[:3]) * 255
            hits.append(np.abs(rgb[int(round(rgb.shape[0] - y)), int(round(x))] - colour).max() <= 6)
    assert np.mean(hits) > 0.95


# --------------------------------------------------------------------------- cards


def test_each_model_line_on_a_card_says_class_and_p_once(report):
    document = json.loads((report / "results.json").read_text(encoding="utf-8"))
    cards = re.findall(r'<article class="card.*?</article>', page(report), re.S)
    assert len(cards) == COUNT
    for card, image in zip(cards, (i for i in document["images"] if i["status"] == "ok")):
        entry = image["models"]["cbam_cnn"]
        caption = plain(re.search(r'<figure class="m[^"]*">.*?<figcaption>(.*?)</figcaption>', card, re.S).group(1))
        line = caption.split("del ")[0].strip()
        if entry["predicted"] == image["truth_index"]:
            assert line == f"cbam_cnn (baseline) {entry['label']} P {entry['prob']:.3f} ✓"
        else:
            assert line == (
                f"cbam_cnn (baseline) {image['truth']} P {entry['cam']['p_target']:.3f} ✗ "
                f"(predicted {entry['label']}, P {entry['prob']:.3f})"
            )
        assert "Grad-CAM of" not in caption


# --------------------------------------------------------------------------- constant gates


def test_a_constant_gate_is_marked_and_a_live_one_is_not(report, gates):
    constant = {name for name, v in gates.items() if name != "labels" and np.ptp(v) < 1e-3}
    assert constant == {"cbam2.channel_attn"}  # the dead gate, seen here by the hooks
    live = {name for name in gates if name != "labels"} - constant

    summary = json.loads((report / "results.json").read_text(encoding="utf-8"))["summary"]["models"]["cbam_cnn"]
    for name, values in gates.items():
        if name == "labels":
            continue
        facts = summary["channel_gates" if "channel" in name else "spatial_gates"][name]
        assert facts["constant"] is (name in constant)
        assert facts["min"] == pytest.approx(values.min(), abs=1e-6)
        assert facts["max"] == pytest.approx(values.max(), abs=1e-6)

    text = page(report)
    for name in ("channels", "spatial"):
        for row in re.findall(r"<tr>.*?</tr>", section(text, name)):
            gate = next((g for g in constant | live if f">{g}<" in row), None)
            if gate is not None:
                assert (NOTE in html.unescape(row)) is (gate in constant), row
    heat = re.findall(r"<summary>(.*?)</summary>", section(text, "channels"))
    assert [NOTE in html.unescape(s) for s in heat] == ["cbam2.channel_attn" in s for s in heat]
    assert sum("cbam2.channel_attn" in s for s in heat) == 1

    cards = re.findall(r'<article class="card.*?</article>', text, re.S)
    for card in cards:
        marks = re.findall(r'class="constant"[^>]*>(.*?)</', card)
        assert [html.unescape(m) for m in marks] == [f"cbam2.channel_attn: {NOTE}"]
        for caption in re.findall(r'<figure class="gate[^"]*">.*?</figure>', card, re.S):  # spatial gates: live
            assert "constant gate" not in caption
