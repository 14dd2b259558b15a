"""How long the README's main job takes, and where the time of its pictures goes.

python benchmarks/bench_maps.py            # print the tables
python benchmarks/bench_maps.py --write    # also replace "## The maps job" in docs/BENCHMARKS.md

Part 1 runs ``attnviz maps --model samples/models/cbam_cnn.pth samples/images/*.png --out DIR`` as a
user does (a new process each time, start-up included), with and without pictures, ``--repeats``
times each (the median is reported). Part 2 draws one sample image's pictures in this process, one
thread, and times each kind: drawing to pixels, and encoding the PNG.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _doc import machine, write_section

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
SECTION = "## The maps job"
BEFORE = (
    "- Before PNG pictures were drawn as pixels (each a matplotlib figure, as `--format svg|pdf` still draws "
    "them), the same job took 67.4 s on a 2-core Xeon without render workers (5.6 s per image) and 37.0 s with 2 "
    "(bench_render.py, 2026-11-23); a render worker now costs more to start than it saves on 12 images, so "
    "`--render-workers` starts them only for 50 or more images on 4 or more cores."
)


def command(out: Path, *extra: str) -> list[str]:
    """The README's main job (its images sorted, as a shell glob gives them)."""
    images = [str(path.relative_to(ROOT)) for path in sorted((SAMPLES / "images").glob("*.png"))]
    model = str((SAMPLES / "models" / "cbam_cnn.pth").relative_to(ROOT))
    return ["attnviz", "maps", "--model", model, *images, "--out", str(out), *extra]


def wall(extra: tuple[str, ...], repeats: int) -> tuple[float, list[float]]:
    """Median wall seconds of the command (a fresh output folder each time) and every run's."""
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            subprocess.run(command(Path(folder) / "maps", *extra), cwd=ROOT, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
    return statistics.median(times), times


def import_seconds(repeats: int) -> float:
    """Median wall seconds of a new Python process that imports what ``attnviz maps`` needs to load a model."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import attnviz.io.checkpoints, attnviz.jobs.maps"], cwd=ROOT, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def picture_job():  # type: ignore[no-untyped-def]
    """The pictures' arrays of the first sample image, as ``attnviz maps`` hands them to the drawing."""
    import torch

    from attnviz.capturing.capturer import Capturer
    from attnviz.io.checkpoints import load_model
    from attnviz.io.inputs import get_preset, load_input
    from attnviz.jobs.maps import _gradcam
    from attnviz.jobs.maps_pictures import PictureJob

    loaded = load_model(SAMPLES / "models" / "cbam_cnn.pth")
    item = load_input(sorted((SAMPLES / "images").glob("*.png"))[0], get_preset(loaded.preset or "imagenet"))
    capturer = Capturer(loaded.model, class_names=loaded.class_names, model_name=loaded.arch, feature_images=None)
    cap = capturer(torch.stack([item.tensor]), originals=[item.original])
    arrays = cap.arrays(0)
    cams = _gradcam(loaded, cap, loaded.class_names)
    if cams is not None:
        arrays["cam/gradcam"] = cams[0].numpy()
    return PictureJob.from_capture(cap, 0, item.original, arrays)


def kind_of(path: Path) -> str:
    """The kind of a picture from its path in the image's folder."""
    if path.name.startswith("index."):
        return "index sheet"
    if path.name.startswith("gradcam."):
        return "Grad-CAM overlay"
    return {
        "bars": "channel bars",
        "spatial": "spatial-gate overlay",
        "features": "feature grid",
    }.get(path.parent.name, path.parent.name)


def picture_times(repeats: int) -> list[tuple[str, int, float, float]]:
    """Per kind: how many pictures, median ms per picture to draw to pixels and to encode as PNG."""
    from attnviz import render
    from attnviz.jobs import maps_pictures
    from attnviz.jobs.maps import MapsOptions

    job = picture_job()
    draws: dict[str, list[float]] = {}
    encodes: dict[str, list[float]] = {}
    counts: dict[str, int] = {}

    def timed(label: str, path: Path, make: Callable[[], object], options: object, drawn: object) -> object:
        start = time.perf_counter()
        made = make()
        rgb = made.rgb if isinstance(made, render.Picture) else render.figure_to_rgb(made)  # type: ignore[arg-type]
        drawn_at = time.perf_counter()
        render.png_bytes(rgb, fast=True)
        draws.setdefault(kind_of(path), []).append(drawn_at - start)
        encodes.setdefault(kind_of(path), []).append(time.perf_counter() - drawn_at)
        return rgb

    original = maps_pictures._draw_one
    maps_pictures._draw_one = timed  # type: ignore[assignment]  # this script's own process, restored below
    try:
        with tempfile.TemporaryDirectory() as folder:
            for round_ in range(repeats + 1):
                before = {kind: len(times) for kind, times in draws.items()}
                maps_pictures.draw_pictures(job, Path(folder), MapsOptions())
                if round_ == 0:  # warm-up: fonts and colour maps loaded once per process
                    draws.clear()
                    encodes.clear()
                else:
                    counts = {kind: len(times) - before.get(kind, 0) for kind, times in draws.items()}
    finally:
        maps_pictures._draw_one = original  # type: ignore[assignment]
    return [
        (kind, counts[kind], statistics.median(draws[kind]) * 1e3, statistics.median(encodes[kind]) * 1e3)
        for kind in draws
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="replace the section in docs/BENCHMARKS.md")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    full, full_runs = wall((), args.repeats)
    bare, bare_runs = wall(("--no-pictures",), args.repeats)
    start_up = import_seconds(args.repeats)
    kinds = picture_times(args.repeats)
    per_image = sum(count * (draw + encode) for _, count, draw, encode in kinds)
    runs = ", ".join(f"{t:.1f}" for t in full_runs)
    rows = [
        "| `attnviz maps`, cbam_cnn, 12 sample images | wall (s), median | runs (s) |",
        "| --- | ---: | --- |",
        f"| pictures (the default) | {full:.1f} | {runs} |",
        f"| `--no-pictures` | {bare:.1f} | {', '.join(f'{t:.1f}' for t in bare_runs)} |",
        f"| of which: a new Python importing attnviz's model loading (torch) | {start_up:.1f} | |",
        "",
        "| picture kind (one image's pictures, one thread) | pictures | draw (ms each) | PNG encode (ms each) |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {kind} | {count} | {draw:.1f} | {encode:.1f} |" for kind, count, draw, encode in kinds),
        f"| **all pictures of one image** | {sum(c for _, c, _, _ in kinds)} | | **{per_image:.0f} ms** |",
    ]
    shown = "attnviz maps --model samples/models/cbam_cnn.pth samples/images/*.png --out runs/maps"
    body = "\n".join(
        [
            SECTION,
            "",
            f"Command: `python benchmarks/bench_maps.py --repeats {args.repeats}{' --write' if args.write else ''}`  ",
            f"Date: {datetime.date.today().isoformat()}  ",
            f"Machine: {machine(('torch', 'matplotlib', 'pillow', 'opencv-python-headless'))}  ",
            f"The README's main job, `{shown}`, run as a new process each time (start-up included), "
            f"{args.repeats} times each, on a CPU shared with other work; then one image's pictures drawn "
            "in one process (median per picture after a warm-up round).",
            "",
            *rows,
            "",
            f"- The pictures add {full - bare:.1f} s to the job ({(full - bare) / 12:.2f} s per image, wall); "
            f"drawing and encoding one image's pictures takes {per_image / 1e3:.2f} s of one core. The rest "
            f"of the {full:.1f} s is the job without pictures: {start_up:.1f} s starting Python and importing "
            "torch (torchvision is imported only when a `resnet18_cbam` is built), then loading "
            "the checkpoint, the forward pass and Grad-CAM (milliseconds per image) and writing `attention.npz`.",
            "- PNG pictures are drawn as pixels (`attnviz/render/pictures.py`: Pillow's FreeType text, numpy "
            "and OpenCV for images and colour maps, PNG with zlib level 1 and the SUB filter); the largest single "
            "cost is the index sheet, every picture at its own size on one sheet (about 5 megapixels to compose "
            "and compress). `--format svg|pdf` draws matplotlib figures instead (see Rendering), 100–400 ms each.",
            BEFORE,
            "",
        ]
    )
    print(body)
    if args.write:
        write_section(SECTION, body)


if __name__ == "__main__":
    sys.exit(main())
