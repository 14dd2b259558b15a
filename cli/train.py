"""``attnviz train``: train a course architecture, or the user's own, with the course's recipe."""

from __future__ import annotations

from pathlib import Path

import click

from attnviz.runtime.errors import UsageError

from .options import arch_args_option


def _stage_epochs(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    try:
        first, second = (int(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected two epochs such as 5,20, got {value!r}") from None
    return first, second


@click.command(
    epilog="""\b
Examples:
  attnviz train --arch cbam_cnn --data shapes --epochs 10 --out runs/cbam_shapes.pth
  attnviz train --arch se_cnn --data cifar10 --data-dir ~/datasets --epochs 50 --out se.pth --tensorboard runs/se
  attnviz train --arch resnet18_cbam --data cifar10 --epochs 50 --out r18.pth --weights resnet18-f37072fd.pth
  attnviz train --arch cnn --data folder:photos --epochs 20 --out cnn.pth
  attnviz train --arch cbam_cnn --epochs 20 --out runs/cbam_shapes.pth --resume runs/cbam_shapes.last.pth
  attnviz train --arch my_models/net.py:MyNet --arch-args '{"width": 64}' --epochs 10 --out mynet.pth
  attnviz maps --model mynet.pth --arch my_models/net.py:MyNet cat.png   # name your code again to load it

\b
The best checkpoint (by test accuracy) is written to OUT, the last one next to it as
*.last.pth; --resume continues a run from a *.last.pth up to --epochs.
"""
)
@click.option(
    "--arch",
    required=True,
    metavar="NAME",
    help="Architecture: cnn, se_cnn, cbam_cnn, densenet_se, resnet18_cbam, resnet_se; timm:NAME, torchvision:NAME; "
    "or your own model as path/to/file.py:Class or package.module:Class (it gets the data's num_classes when it "
    "takes that argument; loading its checkpoint needs --arch again).",
)
@arch_args_option
@click.option(
    "--data",
    default="shapes",
    show_default=True,
    metavar="SPEC",
    help="shapes (generated), cifar10, or folder:PATH (ImageFolder with train/ and test/).",
)
@click.option("--epochs", type=click.IntRange(min=1), required=True, help="Total number of epochs.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Best checkpoint; the last one goes next to it as *.last.pth.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder holding CIFAR-10 (cifar-10-batches-py). Default: ./data.",
)
@click.option("--download", is_flag=True, help="Download CIFAR-10 into --data-dir if it is not there (needs internet).")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-3,
    show_default=True,
    help="Adam learning rate (resnet18_cbam stages: lr, lr/10, lr/100).",
)
@click.option(
    "--stage-epochs",
    default="5,20",
    show_default=True,
    callback=_stage_epochs,
    help="resnet18_cbam: last epochs of stages 1 and 2.",
)
@click.option(
    "--weights",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Local ImageNet resnet18 state_dict for resnet18_cbam's backbone (random init without).",
)
@click.option(
    "--resume",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Continue from a *.last.pth checkpoint.",
)
@click.option(
    "--tensorboard",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="TensorBoard log folder (scalars, and the attention of 8 test images every epoch).",
)
@click.option(
    "--train-size", type=click.IntRange(min=1), default=None, help="Training images (default: all; shapes: 20000)."
)
@click.option("--test-size", type=click.IntRange(min=1), default=None, help="Test images (default: all; shapes: 4000).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="DataLoader worker processes (default: half the CPU cores, at most 4).",
)
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available).")
@click.option("--no-progress", is_flag=True, help="No progress bars; one log line per epoch.")
def train(
    arch,
    arch_args,
    data,
    epochs,
    out,
    data_dir,
    download,
    batch_size,
    lr,
    stage_epochs,
    weights,
    resume,
    tensorboard,
    train_size,
    test_size,
    seed,
    workers,
    device,
    no_progress,
):
    """Train an architecture on a data set with the course's recipe and save attnviz checkpoints.

    Adam with ReduceLROnPlateau on the test loss (patience 3, factor 0.5) and the notebooks'
    augmentation; resnet18_cbam uses the three-stage fine-tuning (CBAM + fc, then + layer3/4,
    then everything). Runs on the GPU with mixed precision when there is one.
    """
    import logging

    from rich.console import Console

    from attnviz.models.catalog import catalog_entry

    if ":" not in arch:
        catalog_entry(arch)  # an unknown name is answered before torch loads
    if weights is not None and not weights.is_file():
        raise UsageError(f"--weights file not found: {weights}")

    from attnviz.train.trainer import fit

    if no_progress:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = fit(
        arch,
        data,
        epochs=epochs,
        out=out,
        batch_size=batch_size,
        lr=lr,
        data_dir=data_dir,
        device=device,
        tensorboard=tensorboard,
        resume=resume,
        stage_epochs=stage_epochs,
        seed=seed,
        num_workers=workers,
        train_size=train_size,
        test_size=test_size,
        weights=weights,
        download=download,
        progress=not no_progress,
        arch_args=arch_args,
    )
    record = result.record
    Console(highlight=False, soft_wrap=True).print(
        f"{arch} on {data}: best test accuracy {record['best_test_acc']:.2f}% (epoch {record['best_epoch']}), "
        f"final {record['final_test_acc']:.2f}% after {record['epochs']} epochs, {record['wall_time_s']:.0f}s\n"
        f"best: {result.best_path}\nlast: {result.last_path}",
        markup=False,
    )
