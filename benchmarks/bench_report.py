"""Time ``attnviz report`` on the CPU: 1,000 shapes images, three models, where the time goes.

The models are the trained samples (``samples/models/{cnn,se_cnn,cbam_cnn}.pth``) when present,
else the zoo's ``cnn``, ``se_cnn`` and ``cbam_cnn`` with random weights. Each configuration runs in
its own process (so its peak memory is its own) into a fresh folder.

    python benchmarks/bench_report.py                      # print the table
    python benchmarks/bench_report.py --write              # also replace "## Report" in docs/BENCHMARKS.md
    python benchmarks/bench_report.py --images 200 --configs 0/0

Stages (seconds of the run's wall time, measured in the main process):
    decode      waiting for the next decoded batch (DataLoader; with workers the decoding overlaps)
    model       forward pass with gate capture, every model
    Grad-CAM    one forward and backward pass per model (attnviz.explain.cam.gradcam)
    metrics     deletion/insertion curves, pointing games, agreement with the baseline
    sanity      the randomisation sanity check (ReportOptions' default number of images, once per report)
    rendering   drawing and writing the card pictures (with render workers: time the main process waited
                for them; the workers' own time in parentheses)
    records     writing each image's record (in the main process; render workers write them otherwise)
    aggregates, CSV, JSON   the pass over the records (reading each once and making its row, JSON entry and
                            page card; in build workers when there are several chunks), per-model and per-gate
                            aggregates, results.csv, summary.csv, results.json
    excitation figures      the per-class channel-excitation figures (in build workers after a pass that used them)
    HTML                    index.html around the cards made in the pass
    other       the rest: reading the input, probing the models, the resume scan, starting workers
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _doc import machine, write_section

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Report"
ARCHS = ("cnn", "se_cnn", "cbam_cnn")


def child(args: argparse.Namespace, workers: int, render_workers: int) -> dict:
    """One report run in this process; returns its timings, wall time and peak memory."""
    import torch
    from attnviz.cli.report import _build_workers

    from attnviz.io.checkpoints import LoadedModel, load_model
    from attnviz.io.inputs import get_preset
    from attnviz.models import build_model
    from attnviz.report import ReportOptions, name_models, run_report

    if args.threads:
        torch.set_num_threads(args.threads)
    samples = [ROOT / "samples" / "models" / f"{arch}.pth" for arch in ARCHS]
    if not args.random and all(path.is_file() for path in samples):
        models, weights = name_models([load_model(path) for path in samples]), "trained samples"
    else:
        torch.manual_seed(0)
        models = {a: LoadedModel(build_model(a).eval(), a, preset=get_preset("cifar10")) for a in ARCHS}
        weights = "random weights"
    with tempfile.TemporaryDirectory() as folder:
        options = ReportOptions(
            batch_size=args.batch_size,
            workers=workers,
            render_workers=render_workers,
            build_workers=_build_workers(None),  # the CLI's default
            steps=args.steps,
            pictures=not args.no_pictures,
            progress=False,
        )
        start = time.perf_counter()
        result = run_report(models, f"shapes:{args.images}", Path(folder) / "report", options)
        wall = time.perf_counter() - start
        files = sum(len(names) for _, _, names in os.walk(folder))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "timings": result.timings,
        "wall": wall,
        "images": result.processed,
        "peak_mib": peak,
        "threads": torch.get_num_threads(),
        "weights": weights,
        "files": files,
        "sanity_images": options.sanity_images,
    }


def run_config(args: argparse.Namespace, config: str, images: int) -> dict:
    """One configuration (``WORKERS/RENDER_WORKERS``) on ``images`` images, in a new process."""
    workers, render = (int(v) for v in config.split("/"))
    command = [sys.executable, __file__, "--child", "--images", str(images), "--configs", config]
    command += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    command += ["--threads", str(args.threads)] if args.threads else []
    command += ["--random"] if args.random else []
    command += ["--no-pictures"] if args.no_pictures else []
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(workers=workers, render_workers=render)
    return result


def stages(result: dict) -> list[tuple[str, float, str]]:
    """(stage, seconds, note) rows of one run."""
    t = result["timings"]
    tables = sum(t.get(f"build {k}", 0.0) for k in ("pass", "summary", "csv", "json"))
    if "render" in t:
        render, note = t["render"], ""
    else:
        render, note = t.get("render (waiting)", 0.0), f"({t.get('render (workers)', 0.0):.1f} in workers)"
    rows = [
        ("decode", t.get("decode", 0.0), ""),
        ("model", t.get("model", 0.0), ""),
        ("Grad-CAM", t.get("cam", 0.0), ""),
        ("metrics", t.get("metrics", 0.0), ""),
        ("sanity", t.get("sanity", 0.0), ""),
        ("rendering", render, note),
        ("records", t.get("records", 0.0), ""),
        ("aggregates, CSV, JSON", tables, ""),
        ("excitation figures", t.get("build figures", 0.0), ""),
        ("HTML", t.get("build html", 0.0), ""),
    ]
    rows.append(("other", result["wall"] - sum(r[1] for r in rows), ""))
    return rows


def table(results: list[dict]) -> str:
    head = (
        "| stage | "
        + " | ".join(f"workers {r['workers']}, render workers {r['render_workers']}" for r in results)
        + " |"
    )
    lines = [head, "| --- |" + " ---: |" * len(results)]
    per_run = [stages(r) for r in results]
    for index, (name, _, _) in enumerate(per_run[0]):
        cells = []
        for result, rows in zip(results, per_run):
            seconds, note = rows[index][1], rows[index][2]
            cells.append(f"{seconds:.1f} s ({100 * seconds / result['wall']:.0f}%){' ' + note if note else ''}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(
        "| **wall** | "
        + " | ".join(f"**{r['wall']:.1f} s** ({r['images'] / r['wall']:.1f} images/s)" for r in results)
        + " |"
    )
    lines.append("| peak memory | " + " | ".join(f"{r['peak_mib']:.0f} MiB" for r in results) + " |")
    return "\n".join(lines)


def _perturbed_batch() -> int:
    """Perturbed 32×32 images per forward pass of the report's curves on the CPU."""
    from attnviz.io.inputs import get_preset
    from attnviz.report.analysis import perturbed_batch

    return perturbed_batch(get_preset("cifar10"), "cpu")


def section(results: list[dict], small: dict | None, command: str, args: argparse.Namespace) -> str:
    first = results[0]
    inline = next((r for r in results if r["render_workers"] == 0), first)
    t = inline["timings"]
    per_image_model = 1000 * t.get("metrics", 0.0) / (inline["images"] * len(ARCHS))
    render_ms = 1000 * t.get("render", 0.0) / max(1, inline["images"])
    memory = (
        f"- Memory does not grow with the number of images: peak {small['peak_mib']:.0f} MiB for {small['images']} images "
        f"against {first['peak_mib']:.0f} MiB for {first['images']} (same configuration as the first column).\n"
        if small
        else ""
    )
    return (
        f"{SECTION}\n\n"
        f"Command: `{command}`  \n"
        f"Date: {datetime.date.today().isoformat()}  \n"
        f"Machine: {machine()}, torch threads {first['threads']}  \n"
        f"`attnviz report` on `shapes:{args.images}` with `cnn` (baseline), `se_cnn` and `cbam_cnn` ({first['weights']}), "
        f"deletion/insertion with {args.steps} steps, sanity check on {first['sanity_images']} images, batch size "
        f"{args.batch_size}, pictures {'off' if args.no_pictures else 'on'} ({first['files']} files written). "
        "Each configuration ran once, in its own process, into a fresh folder; "
        "the CPU was shared with other work, so expect some noise. Seconds are the main process's wall "
        "time per stage (see the script's docstring).\n\n"
        f"{table(results)}\n\n"
        "- Deletion/insertion dominates: the two curves run the model on `2 × steps` perturbed copies of every image "
        f"(they share their ends: the image and the baseline) per model ({per_image_model:.0f} ms per "
        f"image and model here, in batches of {_perturbed_batch()} perturbed 32×32 images, channels-last on the CPU). "
        "`--steps` trades "
        "the curves' resolution for time.\n"
        f"- Rendering draws 9 pictures per image (input, 3 Grad-CAM overlays, 3 spatial gates, 2 channel strips; "
        f"{render_ms:.1f} ms per image in the main process). Render workers take it off the main process; on 2 cores "
        "they then compete with the models' threads, so the stages they overlap with get slower.\n"
        f"{memory}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--configs", default="0/0,1/1", help="comma-separated WORKERS/RENDER_WORKERS")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-pictures", action="store_true", help="numbers only, as `attnviz report --no-pictures`")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--random", action="store_true", help="random weights even when the samples exist")
    parser.add_argument(
        "--small",
        type=int,
        default=100,
        help="also run the first configuration on this many images to compare peak memory (0: skip)",
    )
    parser.add_argument("--write", action="store_true", help="replace the section in docs/BENCHMARKS.md")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        workers, render = (int(v) for v in args.configs.split("/"))
        print(json.dumps(child(args, workers, render)))
        return
    configs = args.configs.split(",")
    results = [run_config(args, config, args.images) for config in configs]
    small = run_config(args, configs[0], args.small) if args.small else None
    command = "python benchmarks/bench_report.py " + " ".join(sys.argv[1:])
    body = section(results, small, command.strip(), args)
    print(body)
    if args.write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
