"""``attnviz maps``: every attention gate of a model on some images, as arrays and pictures."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .options import (
    check_checkpoints,
    check_device,
    input_options,
    model_loading,
    resolve_inputs,
)


@click.command(
    epilog="""\b
Examples:
  attnviz maps --model samples/models/cbam_cnn.pth samples/images/*.png
  attnviz maps --model resnet.pth --arch resnet18_cbam cat.jpg --out runs/cat --format svg
  attnviz maps --model se.pth --no-pictures photos/*.jpg   # arrays and JSON only
"""
)
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path), help="Checkpoint file.")
@model_loading
@input_options
# readable=False: an unreadable image is skipped and listed like a broken one, not a reason to stop the run
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path, readable=False))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("attnviz-maps"),
    show_default=True,
    help="Output folder (one sub-folder per image).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["png", "svg", "pdf"]),
    default="png",
    show_default=True,
    help="Picture format.",
)
@click.option(
    "--order", type=click.Choice(["weight", "channel"]), default="weight", show_default=True, help="Channel bar order."
)
@click.option(
    "--scale",
    type=click.Choice(["absolute", "minmax"]),
    default="absolute",
    show_default=True,
    help="Colour scale of spatial overlays: the gate's [0,1] range, or each map's min-max.",
)
@click.option(
    "--layers", default=None, help="Comma-separated feature layers to capture (default: each conv block / stage)."
)
@click.option("--no-pictures", is_flag=True, help="Write only attention.npz and summary.json.")
@click.option("--no-cam", is_flag=True, help="Skip Grad-CAM.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--render-workers",
    type=click.IntRange(min=0),
    default=None,
    help="Processes that draw the pictures (0: in this process). Default: one per core, up to 4, for 50 or more images on 4 or more cores.",
)
def maps(
    model_path,
    arch,
    arch_args,
    trust_checkpoint,
    device,
    preset,
    size,
    classes_file,
    images,
    out,
    fmt,
    order,
    scale,
    layers,
    no_pictures,
    no_cam,
    batch_size,
    render_workers,
):
    """Capture every SE/CBAM gate of MODEL on IMAGES and write arrays, JSON and pictures.

    For each image, prints the top prediction and a table of gates, and writes
    OUT/<image stem>/attention.npz (gate/<name>, in/<module>, out/<module>, feature/<layer>),
    OUT/<image stem>/summary.json and the pictures.
    """
    check_checkpoints(model_path)  # before torch is imported
    from rich.console import Console

    from attnviz.io.checkpoints import load_model
    from attnviz.jobs.maps import Failure, MapsOptions, run_maps

    console = Console(highlight=False, soft_wrap=True)
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    loaded = load_model(model_path, arch=arch, arch_args=arch_args, trust=trust_checkpoint, device=check_device(device))
    resolved, names = resolve_inputs(loaded, preset, size, classes_file)
    options = MapsOptions(
        pictures=not no_pictures,
        format=fmt,
        order=order,
        scale=scale,
        cam=not no_cam,
        batch_size=batch_size,
        render_workers=_auto_workers(len(images)) if render_workers is None else render_workers,
        layers=[name.strip() for name in layers.split(",") if name.strip()] if layers else None,
    )
    console.print(
        f"model: {loaded.arch} ({loaded.format}) from {loaded.source}; input: {resolved.name} preset, "
        f"{resolved.resize_description()}; classes: {_classes(loaded, names)}",
        markup=False,
    )

    def report(item):
        if isinstance(item, Failure):
            errors.print(f"attnviz: skipped {item.path}: {item.reason}", markup=False)
            return
        _print_result(console, item)
        for failure in item.failed_pictures:
            errors.print(f"attnviz: {item.path}: picture not drawn: {failure.picture}: {failure.error}", markup=False)

    results, failures = run_maps(
        loaded, list(images), out, options=options, preset=resolved, class_names=names, on_image=report
    )
    if not results:
        from attnviz.runtime.errors import InputImageError

        raise InputImageError(f"none of the {len(images)} image(s) could be used; nothing written")
    console.print(f"wrote {len(results)} image(s) to {out}{_shortfall(results, failures)}", markup=False)
    if failures or any(result.failed_pictures for result in results):
        sys.exit(1)


def _shortfall(results, failures) -> str:
    """What the run lacks: images skipped, pictures not drawn (empty when nothing)."""
    skipped = f"; {len(failures)} skipped" if failures else ""
    incomplete = [result for result in results if result.failed_pictures]
    pictures = sum(len(result.failed_pictures) for result in incomplete)
    return skipped + (f"; {pictures} picture(s) of {len(incomplete)} image(s) not drawn" if incomplete else "")


def _auto_workers(n_images: int) -> int:
    import os

    cores = os.cpu_count() or 1  # a worker's start-up costs about 10 images' pictures; on 2 cores it slows the model
    return min(4, cores) if n_images >= 50 and cores >= 4 else 0


def _print_result(console, result) -> None:
    from rich.markup import escape  # file, class and gate names are text, never markup
    from rich.table import Table

    prediction = result.summary["prediction"]
    console.print(
        f"\n[bold]{escape(result.path)}[/bold] → {escape(str(prediction['label']))} (p={_number(prediction['prob'])})  → {escape(str(result.out_dir))}"
    )
    if not result.summary["gates"] and result.nothing_found:  # one plain line instead of an empty table
        console.print(result.nothing_found, markup=False)
        return
    table = Table(show_edge=False, pad_edge=False, box=None)
    notes = any(row.get("constant") for row in result.summary["gates"])
    for column in ("gate", "kind", "shape", "mean", "min", "max", *(["note"] if notes else [])):
        table.add_column(column, justify="right" if column in ("mean", "min", "max") else "left")
    for row in result.summary["gates"]:
        note = ["constant gate" if row.get("constant") else ""]
        table.add_row(
            escape(row["name"]),
            row["kind"],
            "x".join(map(str, row["shape"])),
            *(_number(row[key]) for key in ("mean", "min", "max")),
            *(note if notes else []),
        )
    console.print(table)


def _classes(loaded, names) -> str:
    """Which class names are shown and where they come from."""
    source = loaded.class_names_source if names == loaded.class_names else "given"
    if not names:
        return "shown by index"
    return f"{len(names)} ({source})"


def _number(value) -> str:
    """Three decimals; ``–`` for a missing value (NaN in the model's output is ``null`` in summary.json)."""
    return "–" if value is None else f"{value:.3f}"
