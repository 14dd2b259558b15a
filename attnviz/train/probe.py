"""Channels-last and autocast only where the model accepts them.

Many models are written for contiguous float32 tensors: ``x.view(-1, C*H*W)`` on a feature map fails
on a channels-last tensor, and some custom operations refuse float16 or bfloat16. Before training,
:func:`settle_runtime` runs one forward and backward pass of a copy of the model on a small batch as
the runtime asks; when that raises, it tries again without channels-last, without autocast, and
without both, keeps the first that works and says in one warning what was turned off and why.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from attnviz.runtime.errors import first_line
from attnviz.train.settings import Runtime


def settle_runtime(model: nn.Module, runtime: Runtime, images: torch.Tensor, targets: torch.Tensor) -> Runtime:
    """``runtime``, less the channels-last format or autocast when ``model`` cannot train with them.

    Warns:
        UserWarning: One line naming what was turned off and the first line of the exception.
    """
    settled, notice = choose_runtime(model, runtime, images, targets)
    if notice is not None:
        warnings.warn(notice, stacklevel=2)
    return settled


def choose_runtime(
    model: nn.Module, runtime: Runtime, images: torch.Tensor, targets: torch.Tensor
) -> tuple[Runtime, str | None]:
    """The runtime ``model`` trains with, and a one-line notice of what was turned off (``None``: nothing).

    ``model`` itself is left as it was (the probe trains a copy). When even the plain settings fail
    (a broken model, a batch too small for it) the probe cannot tell, and ``runtime`` is kept:
    training then reports the model's own error.
    """
    if not (runtime.channels_last or runtime.amp):
        return runtime, None
    failure = _train_step_error(model, runtime, images, targets)
    if failure is None:
        return runtime, None
    for fallback in _fallbacks(runtime):
        if _train_step_error(model, fallback, images, targets) is None:
            return fallback, _notice(model, runtime, fallback, failure)
    return runtime, None


def _fallbacks(runtime: Runtime) -> list[Runtime]:
    """Less and less of what ``runtime`` asks: channels-last off, then autocast off, then both."""
    no_cl = runtime.replace(channels_last=False)
    no_amp = runtime.replace(autocast_dtype=None, grad_scaler=False)
    plain = no_amp.replace(channels_last=False)
    candidates = [no_cl, no_amp, plain]
    return [c for i, c in enumerate(candidates) if c != runtime and c not in candidates[:i]]


def _train_step_error(model: nn.Module, runtime: Runtime, images: torch.Tensor, targets: torch.Tensor) -> str | None:
    """The first line of what one training step of a copy of ``model`` raises in ``runtime``, or ``None``."""
    try:
        trial = runtime.prepare(copy.deepcopy(model)).train()
        with runtime.autocast():
            loss = nn.functional.cross_entropy(trial(runtime.batch(images)), runtime.labels(targets))
        loss.backward()
    except Exception as exc:  # noqa: BLE001 - any failure of the model's own code counts
        return first_line(exc)  # not the exception: its traceback would keep the copy's tensors alive
    return None


def _notice(model: nn.Module, asked: Runtime, kept: Runtime, failure: str) -> str:
    off = []
    if asked.channels_last and not kept.channels_last:
        off.append("channels-last")
    if asked.amp and not kept.amp:
        off.append(f"autocast ({str(asked.autocast_dtype).removeprefix('torch.')})")
    what = " and ".join(off)
    pronoun = "them" if len(off) > 1 else "it"
    return f"{what} turned off for {type(model).__name__}: its training step fails with {pronoun} ({failure})"
