"""How long each picture takes: build the figure, draw it to pixels, and save a PNG.

python benchmarks/bench_render.py            # print the table
python benchmarks/bench_render.py --write    # also replace "## Rendering" in docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _doc import machine, write_section

from attnviz import render

SECTION = "## Rendering"


def cases(rng: np.random.Generator) -> dict[str, Callable[[], object]]:
    """Figures of the sizes the course's models produce."""
    image32 = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    image224 = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    return {
        "channel bars, 128 channels, one image": lambda: render.channel_bars(rng.uniform(0, 1, 128)),
        "channel bars, 512 channels, one image": lambda: render.channel_bars(rng.uniform(0, 1, 512)),
        "channel bars, 500 images x 128, per class": lambda: render.channel_bars(
            rng.uniform(0, 1, (500, 128)), labels=rng.integers(0, 10, 500), class_names=[f"c{i}" for i in range(10)]
        ),
        "spatial overlay, 8x8 gate on 32x32": lambda: render.spatial_overlay(image32, rng.uniform(0, 1, (8, 8))),
        "spatial overlay, 7x7 gate on 224x224": lambda: render.spatial_overlay(image224, rng.uniform(0, 1, (7, 7))),
        "feature grid, 128x8x8, top 8, before/after": lambda: render.feature_grid(
            rng.uniform(0, 1, (128, 8, 8)), after=rng.uniform(0, 1, (128, 8, 8))
        ),
        "comparison grid, 4 images x 4 columns": lambda: render.comparison_grid(
            [image32] * 4,
            [[image32] * 4] * 4,
            row_titles=["truth: cat"] * 4,
            column_titles=["input", "cnn", "se", "cbam"],
            captions=[["P = 0.9"] * 4] * 4,
        ),
    }


def measure(build: Callable[[], object], repeats: int, folder: Path) -> tuple[float, float, float]:
    """Median seconds to build the figure, draw it to RGB, and save it as a 150-dpi PNG."""
    builds, draws, saves = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        figure = build()
        built = time.perf_counter()
        render.figure_to_rgb(figure)
        drawn = time.perf_counter()
        render.save_figure(figure, folder / "figure.png")
        saved = time.perf_counter()
        builds.append(built - start)
        draws.append(drawn - built)
        saves.append(saved - drawn)
    return statistics.median(builds), statistics.median(draws), statistics.median(saves)


def overlay_speed(rng: np.random.Generator, repeats: int = 50) -> list[str]:
    lines = []
    for height, width in ((32, 32), (224, 224), (768, 1024)):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        heat = rng.uniform(0, 1, (7, 7))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            render.overlay_rgb(image, heat)
            times.append(time.perf_counter() - start)
        lines.append(
            f"| overlay_rgb (array, no figure), {height}x{width} | {statistics.median(times) * 1e3:.2f} | - | - |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="replace the section in docs/BENCHMARKS.md")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = ["| picture | build (ms) | draw to RGB (ms) | save PNG, 150 dpi (ms) |", "| --- | ---: | ---: | ---: |"]
    with tempfile.TemporaryDirectory() as folder:
        for name, build in cases(rng).items():
            build_s, draw_s, save_s = measure(build, args.repeats, Path(folder))
            rows.append(f"| {name} | {build_s * 1e3:.0f} | {draw_s * 1e3:.0f} | {save_s * 1e3:.0f} |")
    rows.extend(overlay_speed(rng))
    body = "\n".join(
        [
            SECTION,
            "",
            f"Command: `python benchmarks/bench_render.py --repeats {args.repeats}{' --write' if args.write else ''}`  ",
            f"Date: {datetime.date.today().isoformat()}  ",
            f"Machine: {machine(('torch', 'matplotlib'))}; {torch.get_num_threads()} torch threads  ",
            f"Median of {args.repeats} runs per picture. Each picture is one matplotlib figure: what the Python "
            "API, notebooks and `attnviz maps --format svg|pdf` draw. The PNG pictures of `attnviz maps` are "
            "drawn as pixels instead, in a few milliseconds each (see The maps job).",
            "",
            *rows,
            "",
        ]
    )
    print(body)
    if args.write:
        write_section(SECTION, body)


if __name__ == "__main__":
    sys.exit(main())
