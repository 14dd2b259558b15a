"""``attnviz compare``: Grad-CAM of a baseline against attention models (the CBAM paper's figure)."""

from __future__ import annotations

import csv
from pathlib import Path

import click

from .options import arch_args_option, check_checkpoints, check_device


@click.command(
    epilog="""\b
Examples:
  attnviz compare --baseline cnn.pth --model se.pth --model cbam.pth img1.png img2.png
  attnviz compare --baseline samples/models/cnn.pth --model samples/models/cbam_cnn.pth \\
      samples/images/*.png --labels samples/images/labels.csv --out runs/compare.png
  attnviz compare --baseline a.pth --model b.pth --target cat photos/*.jpg
"""
)
@click.option(
    "--baseline",
    "baseline_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Checkpoint of the baseline CNN.",
)
@click.option(
    "--model",
    "model_paths",
    required=True,
    multiple=True,
    type=click.Path(path_type=Path),
    help="Checkpoint of an attention model (repeat for several).",
)
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--labels",
    "labels_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="CSV with columns image,label (file name and class name or index): explain the true class.",
)
@click.option("--target", default=None, help="Explain this class (name or index) in every image instead.")
@click.option("--method", default="gradcam", show_default=True, help="CAM method (gradcam, gradcam++, layercam, ...).")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("attnviz-compare/compare.png"),
    show_default=True,
    help="Figure path (.png/.svg/.pdf); the numbers go to the same name with .json.",
)
@click.option(
    "--arch",
    default=None,
    metavar="NAME",
    help="Architecture for bare state_dicts that cannot be inferred (applies to all).",
)
@arch_args_option
@click.option(
    "--trust-checkpoint",
    is_flag=True,
    help="Allow checkpoints that run code when loaded (TorchScript, pickled models). Only for files you trust.",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (cuda when a GPU is available, else cpu), cpu, cuda, cuda:1, ...",
)
def compare(
    baseline_path, model_paths, images, labels_file, target, method, out, arch, arch_args, trust_checkpoint, device
):
    """Draw one row per image: input | baseline Grad-CAM | each attention model's Grad-CAM,
    with the class above the row and each model's softmax score P for it under its map.
    Also reports how much each attention model's map agrees with the baseline's
    (IoU of the top-20% regions, Spearman rank correlation)."""
    check_checkpoints(baseline_path, *model_paths)  # before torch is imported
    from rich.console import Console
    from rich.table import Table

    from attnviz.io.checkpoints import load_model
    from attnviz.io.inputs import load_rgb
    from attnviz.jobs.compare import compare as run_compare

    console = Console(highlight=False, soft_wrap=True)
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    device = check_device(device)
    models = {}
    for path in (baseline_path, *model_paths):
        loaded = load_model(path, arch=arch, arch_args=arch_args, trust=trust_checkpoint, device=device)
        name = loaded.arch if loaded.arch not in models else f"{loaded.arch} ({path.stem})"
        if name in models:
            name = str(path)
        models[name] = loaded
    originals, kept = [], []
    for path in images:
        try:
            originals.append(load_rgb(path))
            kept.append(path)
        except Exception as error:  # noqa: BLE001 - reported per file, the rest go on
            errors.print(f"attnviz: skipped {path}: {error}", markup=False)
    if not originals:
        from attnviz.runtime.errors import InputImageError

        raise InputImageError(f"none of the {len(images)} image(s) could be read; nothing to compare")
    names = _class_names(list(models.values()))
    truth = _read_truth(labels_file, kept, names) if labels_file else _truth_from_folders(kept, names)
    result = run_compare(
        models, originals, labels=[str(p) for p in kept], truth=truth, target=target, class_names=names, method=method
    )
    written = result.save(out)

    table = Table(
        "image",
        "target",
        *[f"P {n}" for n in result.names],
        *[f"IoU/ρ {n}" for n in result.names[1:]],
        box=None,
        show_edge=False,
    )
    for i, label in enumerate(result.labels):
        agreement = [
            f"{result.agreement[i][n]['top20_iou']:.2f}/{result.agreement[i][n]['spearman']:.2f}"
            for n in result.names[1:]
        ]
        table.add_row(
            Path(label).name,
            f"{result.label(result.targets[i])} ({result.target_source[i]})",
            *[f"{float(result.scores[n][i]):.3f}" for n in result.names],
            *agreement,
        )
    console.print(table)
    for name, means in result.mean_agreement().items():
        console.print(
            f"{name} vs {result.baseline}: mean top-20% IoU {means['top20_iou']:.3f}, mean Spearman {means['spearman']:.3f}"
        )
    console.print("wrote " + ", ".join(str(p) for p in written))
    if len(kept) < len(images):
        raise SystemExit(1)


def _class_names(models: list) -> list[str] | None:
    """The first checkpoint's stored class names; else the baseline's as ``settle_class_names`` settles
    them (CIFAR-10's for a 10-class model of CIFAR-10 input, with one warning that says so, else none)."""
    from attnviz.io.checkpoints import settle_class_names

    stored = next((m.class_names for m in models if m.class_names), None)
    return list(stored) if stored else settle_class_names(models[0])


def _read_truth(path: Path, images: list[Path], class_names: list[str] | None) -> list[int | None]:
    from attnviz.runtime.errors import UsageError

    try:
        with open(path, newline="", encoding="utf-8") as file:
            rows = {row["image"].strip(): row["label"].strip() for row in csv.DictReader(file)}
    except (OSError, KeyError, csv.Error) as error:
        raise UsageError(
            f"cannot read labels from {path}: expected a CSV with columns image,label ({error})"
        ) from error
    truth: list[int | None] = []
    for image in images:
        label = rows.get(image.name, rows.get(str(image)))
        if label is None:
            truth.append(None)
        elif label.isdigit():
            truth.append(int(label))
        elif class_names and label in class_names:
            truth.append(class_names.index(label))
        else:
            raise UsageError(f"label '{label}' of {image.name} in {path} is not a known class")
    return truth


def _truth_from_folders(images: list[Path], class_names: list[str] | None) -> list[int | None] | None:
    """ImageFolder layout: an image inside a folder named after a class has that class as truth."""
    if not class_names:
        return None
    truth = [class_names.index(p.parent.name) if p.parent.name in class_names else None for p in images]
    return truth if any(t is not None for t in truth) else None
