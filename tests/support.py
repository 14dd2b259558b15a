"""Helpers shared by the test modules (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from attnviz.cli.main import cli
from click.testing import CliRunner, Result

ROOT = Path(__file__).resolve().parents[1]


def run(*args: object) -> Result:
    """Invoke the ``attnviz`` command line in this process; exceptions propagate."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def hand_gradcam(model: torch.nn.Module, layer: str, images: torch.Tensor, targets: object) -> np.ndarray:
    """Grad-CAM written out: gradient-weighted channel sum at the layer, ReLU, bilinear, min-max."""
    seen = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, a, o: seen.__setitem__("a", o))
    try:
        logits = model(images)
    finally:
        handle.remove()
    activation = seen["a"]
    (grads,) = torch.autograd.grad(logits[torch.arange(len(targets)), torch.as_tensor(targets)].sum(), activation)
    cam = F.relu((grads.mean(dim=(2, 3), keepdim=True) * activation).sum(1)).detach()
    cam = F.interpolate(cam[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    low = cam.flatten(1).min(1).values[:, None, None]
    span = cam.flatten(1).max(1).values[:, None, None] - low
    return torch.where(span > 0, (cam - low) / span.clamp_min(1e-30), (cam > 0).float()).numpy()


def hooked_output(model: torch.nn.Module, module: str, images: torch.Tensor) -> torch.Tensor:
    """What ``module`` of ``model`` outputs on ``images``, read by a forward hook (no grad)."""
    seen = {}
    handle = model.get_submodule(module).register_forward_hook(lambda m, a, o: seen.__setitem__("out", o))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    return seen["out"]
