"""``attnviz report``: a batch report over many images and several models, as a static HTML page."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .options import check_checkpoints, check_device, model_loading


def _shard(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    from attnviz.report.shard import parse_shard  # light: no torch

    return parse_shard(value)


@click.command(
    epilog="""\b
Examples:
  attnviz report --baseline cnn.pth --model se.pth --model cbam.pth shapes:500 --out runs/report
  attnviz report --baseline cnn.pth --model cbam.pth photos/ --out runs/photos --workers 2 --render-workers 2
  attnviz report --baseline cnn.pth --model cbam.pth list.txt --out runs/s1 --shard 1/2   # and --shard 2/2 into runs/s2
  attnviz report --merge runs/s1 runs/s2 --out runs/report

\b
INPUT is a folder of images (class sub-folders give the true class; x.mask.png beside x.png is
its object mask), a text file with one image path per line, or a data spec: shapes, shapes:N
(the first N test images, with masks), cifar10, cifar10:N, folder:PATH.
Re-running the same command resumes: finished images are skipped.
OUT must be new, empty or a report folder of attnviz (--force: beside other files); one run at a
time writes it (a second is refused while the lock OUT/.attnviz.lock is held).
"""
)
@click.option(
    "--baseline",
    "baseline_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Checkpoint of the baseline CNN (the others' maps are compared with it).",
)
@click.option(
    "--model",
    "model_paths",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Checkpoint of a model (repeat for several).",
)
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("attnviz-report"),
    show_default=True,
    help="Report folder (index.html, results.csv, results.json, pictures).",
)
@click.option("--merge", is_flag=True, help="INPUTS are report folders of --shard runs: join them into --out.")
@model_loading
@click.option(
    "--classes",
    "classes_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Class names, one per line (or a JSON list). Default: from the checkpoints or the input.",
)
@click.option(
    "--masks",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of masks with the same relative paths as the images.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where CIFAR-10 lives (cifar10 specs).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of the shapes data set and of folder: splits.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--workers", type=click.IntRange(min=0), default=0, show_default=True, help="Processes that decode images."
)
@click.option(
    "--render-workers",
    type=click.IntRange(min=0),
    default=None,
    help="Processes that draw the pictures and write each image's record, so that the main process only runs "
    "the models [default: 0 on the CPU, whose cores run the models; on a GPU a quarter of the cores, 1 to 4].",
)
@click.option(
    "--build-workers",
    type=click.IntRange(min=0),
    default=None,
    help="Processes that read the records back, 500 at a time, to write the tables and the page, and draw the "
    "per-class excitation figures (also with --merge) [default: one per core this process may use, up to 8; 0: the "
    "main process].",
)
@click.option(
    "--shard",
    default="1/1",
    show_default=True,
    callback=_shard,
    help="Process only slice K of N (K/N); merge the slices with --merge.",
)
@click.option("--method", default="gradcam", show_default=True, help="CAM method (gradcam, gradcam++, layercam, ...).")
@click.option(
    "--steps", type=click.IntRange(min=1), default=10, show_default=True, help="Steps of the deletion/insertion curves."
)
@click.option(
    "--deletion-baseline",
    type=click.Choice(["blur", "zero", "mean"]),
    default="blur",
    show_default=True,
    help="What deleted pixels become.",
)
@click.option(
    "--sanity-images",
    type=click.IntRange(min=0),
    default=16,
    show_default=True,
    help="Images of the randomisation sanity check (0: skip it).",
)
@click.option("--no-pictures", is_flag=True, help="Numbers only: no per-image pictures.")
@click.option("--quiet", is_flag=True, help="No progress bar and no summary.")
@click.option(
    "--force",
    is_flag=True,
    help="Write into an --out folder that holds other files (beside them: a file attnviz did not write is never replaced).",
)
def report(
    baseline_path,
    model_paths,
    inputs,
    out,
    merge,
    arch,
    arch_args,
    trust_checkpoint,
    device,
    classes_file,
    masks,
    data_dir,
    seed,
    batch_size,
    workers,
    render_workers,
    build_workers,
    shard,
    method,
    steps,
    deletion_baseline,
    sanity_images,
    no_pictures,
    quiet,
    force,
):
    """Run every model on every image of INPUT and write a static HTML report with the numbers
    (accuracy, confusion matrices, pointing game, deletion/insertion, agreement with the
    baseline, gate statistics) in OUT/index.html, OUT/results.csv and OUT/results.json.

    Exits with 1 when some images could not be decoded (they are listed in the report) or, with
    --merge, when a shard is missing or not finished (the merged report holds what is finished)."""
    from attnviz.runtime.errors import UsageError

    if merge:
        if baseline_path or model_paths:
            raise UsageError("--merge joins finished report folders; it takes no --baseline/--model")
        from attnviz.report import records
        from attnviz.report.merge import merge_reports

        built = merge_reports([Path(i) for i in inputs], out, force=force, workers=_build_workers(build_workers))
        missing = records.read_run(out).get("missing_shards") or []
        _finish(built.index, built.images, None, built.failures, quiet, pending=built.pending, incomplete=bool(missing))
        return
    if len(inputs) != 1:
        raise UsageError(f"give one INPUT (a folder, a list file or a data spec), got {len(inputs)}")
    paths = [p for p in (baseline_path, *model_paths) if p is not None]
    if not paths:
        raise UsageError("give the models: --baseline CKPT and/or --model CKPT")
    check_checkpoints(*paths)  # before torch is imported
    from attnviz.io.checkpoints import load_model
    from attnviz.io.inputs import load_class_names
    from attnviz.report.runner import ReportOptions, name_models, run_report

    device = check_device(device)
    models = name_models(
        [load_model(p, arch=arch, arch_args=arch_args, trust=trust_checkpoint, device=device) for p in paths]
    )
    options = ReportOptions(
        batch_size=batch_size,
        workers=workers,
        render_workers=_render_workers(render_workers, device),
        build_workers=_build_workers(build_workers),
        shard=shard,
        method=method,
        steps=steps,
        deletion_baseline=deletion_baseline,
        sanity_images=sanity_images,
        pictures=not no_pictures,
        class_names=load_class_names(classes_file) if classes_file else None,
        masks=masks,
        data_dir=data_dir,
        seed=seed,
        progress=False if quiet else None,
        force=force,
    )
    result = run_report(models, inputs[0], out, options)
    _finish(
        result.index, result.total - len(result.failures), (result.processed, result.resumed), result.failures, quiet
    )


def _finish(
    index: Path,
    images: int,
    work: tuple[int, int] | None,
    failures: list[dict],
    quiet: bool,
    pending: int = 0,
    incomplete: bool = False,
) -> None:
    """List the skipped inputs, say what was written; exit 1 when something was skipped or is not
    finished (the unfinished shards have said so in a warning)."""
    for failure in failures:
        click.echo(f"attnviz: skipped {failure['source']}: {failure['reason']}", err=True)
    if not quiet:
        done = f" ({work[0]} processed now, {work[1]} resumed)" if work else ""
        skipped = f"; {len(failures)} skipped" if failures else ""
        unfinished = f"; {pending} not finished" if pending else ""
        click.echo(f"wrote {index}: {images} image(s){done}{skipped}{unfinished}")
    if failures or pending or incomplete:
        sys.exit(1)


def _build_workers(given: int | None) -> int:
    """The build workers asked for, or by default one per core this process may use, up to 8 (the
    models are done by then; a report of 500 images or fewer is read in the main process anyway)."""
    from attnviz.runtime.pool import usable_cores

    return given if given is not None else min(8, usable_cores())


def _render_workers(given: int | None, device: str) -> int:
    """The render workers asked for, or by default: none on the CPU (its cores run the models), and on
    a GPU a quarter of the cores (1 to 4), which keep pictures and records off the model loop."""
    import os

    if given is not None:
        return given
    if device.startswith("cpu"):
        return 0
    return min(4, max(1, (os.cpu_count() or 1) // 4))
