"""Options shared by several sub-commands."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

ARCH_HELP = (
    "Architecture of a bare state_dict: a registry name (see `attnviz inspect --list`), timm:NAME, "
    "torchvision:NAME, path/to/file.py:ClassName or package.module:ClassName. Inferred when omitted."
)
ARCH_ARGS_HELP = (
    "Arguments for the architecture's constructor or factory, as a JSON object, e.g. "
    '\'{"network_type": "ImageNet", "depth": 18, "num_classes": 1000, "att_type": "CBAM"}\'; '
    "they win over arguments stored in the checkpoint."
)


def parse_arch_args(ctx: click.Context | None, param: click.Parameter | None, value: str | None) -> dict | None:
    """``--arch-args`` text as a dict of keyword arguments.

    Raises:
        UsageError: Not JSON, or JSON that is not an object.
    """
    from attnviz.runtime.errors import UsageError

    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"--arch-args must be a JSON object such as '{{\"depth\": 18}}': {exc.msg} at character {exc.pos + 1}"
        ) from None
    if not isinstance(parsed, dict):
        raise UsageError(f'--arch-args must be a JSON object ({{"name": value, ...}}), not {value.strip()[:40]!r}')
    return parsed


def arch_args_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """Add --arch-args (a JSON object, parsed to a dict, or None)."""
    return click.option("--arch-args", default=None, metavar="JSON", callback=parse_arch_args, help=ARCH_ARGS_HELP)(
        function
    )


def model_loading(function: Callable[..., Any]) -> Callable[..., Any]:
    """Add --arch, --arch-args, --trust-checkpoint and --device."""
    function = click.option(
        "--device",
        default="auto",
        show_default=True,
        help="Device to run the model on: auto (cuda when a GPU is available, else cpu), cpu, cuda, cuda:1, ...",
    )(function)
    function = click.option(
        "--trust-checkpoint",
        is_flag=True,
        help="Allow checkpoints that run code when loaded (TorchScript archives, whole pickled models, stored arguments "
        "that could read files or download). Only for files from a source you trust.",
    )(function)
    function = arch_args_option(function)
    function = click.option("--arch", default=None, metavar="NAME", help=ARCH_HELP)(function)
    return function


def input_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """Add --preset, --size and --classes."""
    function = click.option(
        "--classes",
        "classes_file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Class names, one per line (or a JSON list). Default: from the checkpoint or the preset.",
    )(function)
    function = click.option(
        "--size", type=int, default=None, help="Input size in pixels (square). Default: the preset's."
    )(function)
    function = click.option(
        "--preset",
        type=click.Choice(["cifar10", "imagenet"]),
        default=None,
        help="Input normalisation and size. Default: from the checkpoint, else imagenet.",
    )(function)
    return function


def resolve_inputs(loaded: Any, preset: str | None, size: int | None, classes_file: Path | None):
    """The preset and class names for a loaded model, with the command line's overrides applied
    (CIFAR-10's names only for a 10-class model of CIFAR-10 input, with a warning that says so)."""
    from attnviz.io.checkpoints import settle_class_names
    from attnviz.io.inputs import get_preset, load_class_names

    base = preset or loaded.preset or "imagenet"
    resolved = get_preset(base, size=size) if size else get_preset(base)
    given = load_class_names(classes_file) if classes_file is not None else None
    return resolved, settle_class_names(loaded, given, resolved.name)


def check_checkpoints(*paths: Path | None) -> None:
    """Refuse a checkpoint path that is missing, a folder, empty or not a PyTorch file, before
    torch is imported (reading a few bytes, never unpickling): a wrong path is answered at once."""
    from attnviz.io.sniff import check_file, file_kind

    for path in paths:
        if path is not None:
            check_file(str(path))
            file_kind(str(path))


def check_device(device: str) -> str:
    """The device to use: ``auto`` becomes ``cuda`` when a GPU is available, else ``cpu``.

    Raises:
        UsageError: An unknown device, or one (CUDA, MPS) this machine does not have.
    """
    from attnviz.runtime.model import parse_device  # imports torch: only once a model is needed

    return str(parse_device(device))
