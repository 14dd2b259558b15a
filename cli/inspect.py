"""``attnviz inspect``: what a checkpoint holds — architecture, attention modules, training record."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .options import check_checkpoints, check_device, model_loading


@click.command(
    epilog="""\b
Examples:
  attnviz inspect --model samples/models/cbam_cnn.pth
  attnviz inspect --model resnet.pth --arch resnet18_cbam --depth 3
  attnviz inspect --model ckpt.pth --json facts.json
  attnviz inspect --list
"""
)
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None, help="Checkpoint file.")
@model_loading
@click.option(
    "--depth", type=click.IntRange(min=1), default=2, show_default=True, help="Module nesting depth of the layer table."
)
@click.option(
    "--size", type=int, default=None, help="Input size for the shape table (default: the checkpoint's preset)."
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the facts as JSON.",
)
@click.option("--list", "list_archs", is_flag=True, help="List the architectures attnviz knows and exit.")
def inspect(model_path, arch, arch_args, trust_checkpoint, device, depth, size, json_path, list_archs):
    """Print the architecture summary (layers, output shapes, parameters), the attention
    modules found with their gate kinds, and the checkpoint's training record."""
    from rich.console import Console
    from rich.table import Table

    from attnviz.runtime.errors import UsageError

    console = Console(highlight=False, soft_wrap=True)
    if list_archs:
        from attnviz.models.catalog import catalog_entries  # names only: no torch

        table = Table("name", "preset", "description", box=None, show_edge=False)
        for entry in catalog_entries():
            table.add_row(entry.name, entry.preset, entry.description)
        console.print(table)
        return
    if model_path is None:
        raise UsageError("inspect needs --model CHECKPOINT (or --list)")
    check_checkpoints(model_path)  # before torch is imported

    from attnviz.io.checkpoints import load_model
    from attnviz.io.inputs import get_preset
    from attnviz.jobs.inspect import summarize

    loaded = load_model(model_path, arch=arch, arch_args=arch_args, trust=trust_checkpoint, device=check_device(device))
    preset = (
        get_preset(loaded.preset or "imagenet", size=size) if size or not loaded.preset else get_preset(loaded.preset)
    )
    facts = summarize(loaded.model, preset.size, depth=depth)

    console.print(f"[bold]{model_path}[/bold]: {loaded.arch} ({loaded.format})")
    if loaded.arch_kwargs:
        console.print("arguments: " + ", ".join(f"{k}={v!r}" for k, v in loaded.arch_kwargs.items()))
    console.print(f"input: {preset.name} {preset.size[0]}x{preset.size[1]}, mean {preset.mean}, std {preset.std}")
    if loaded.class_names:
        console.print(f"classes ({len(loaded.class_names)}): {', '.join(loaded.class_names)}", markup=False)

    layers = Table("layer", "type", "output shape", "params", box=None, show_edge=False, title="layers")
    for row in facts.layers:
        shape = "-" if row.output_shape is None else "x".join(map(str, row.output_shape))
        layers.add_row("  " * row.depth + row.name, row.type, shape, f"{row.params:,}")
    console.print(layers)
    console.print(f"total parameters: {facts.total_params:,} (trainable {facts.trainable_params:,})")

    gates = Table(
        "gate",
        "kind",
        "shape",
        "function",
        "on a random image",
        box=None,
        show_edge=False,
        title=f"attention gates ({len(facts.gates)})",
    )
    for gate in facts.gates:
        values = f"{gate['min']:.3f}–{gate['max']:.3f}"
        if gate["constant"]:
            values = f"constant gate ({gate['mean']:.3f})"
        gates.add_row(gate["name"], gate["kind"], "x".join(map(str, gate["shape"])), gate["function"], values)
    hidden = "attention gates: not visible (the forward runs as compiled TorchScript)"
    found = facts.nothing_found or "no attention gates found"
    console.print(gates if facts.gates else hidden if loaded.format == "torchscript" else found, markup=False)

    if loaded.record:
        console.print("[bold]training record[/bold]")
        for key, value in loaded.record.items():
            if isinstance(value, (list, dict)) and len(value) > 6:
                value = f"<{type(value).__name__} of {len(value)}>"
            console.print(f"  {key}: {value}", markup=False)
    else:
        console.print("training record: none in this checkpoint")

    if json_path is not None:
        document = {
            "checkpoint": str(model_path),
            "arch": loaded.arch,
            "arch_kwargs": loaded.arch_kwargs,
            "format": loaded.format,
            "record": loaded.record,
            **facts.to_dict(),
        }
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(document, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
