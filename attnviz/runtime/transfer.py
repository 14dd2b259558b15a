"""Moving results between the model's device and the host with as few waits as possible.

On CUDA a plain ``tensor.cpu()`` (or ``torch.tensor(values, device="cuda")``) makes the host wait
for the device each time. Here copies to the host are non-blocking into pinned memory and the host
waits once for all of them; copies to the device go through pinned memory without waiting. On the
CPU every function returns its tensors as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["HostCopy", "start_to_host", "to_device", "to_host", "wait_for"]


def to_host(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The tensors on the CPU, with one copy per device and dtype and one wait.

    On CUDA the copy is non-blocking into pinned memory followed by a single stream
    synchronisation; CPU tensors are returned as they are.
    """
    moved = dict(tensors)
    groups: dict[tuple[torch.device, torch.dtype], list[str]] = {}
    for name, tensor in tensors.items():
        if tensor.device.type != "cpu":
            groups.setdefault((tensor.device, tensor.dtype), []).append(name)
    for (_, _), names in groups.items():
        flat = start_to_host(torch.cat([tensors[name].detach().reshape(-1) for name in names]))
        for name, part in zip(names, flat.split([tensors[name].numel() for name in names])):
            moved[name] = part.view(tensors[name].shape)
    wait_for(device for device, _ in groups)
    return moved


def start_to_host(tensor: Tensor) -> Tensor:
    """Begin copying ``tensor`` to the CPU; on CUDA read the copy only after :func:`wait_for` its device.

    A CPU tensor is returned as it is; a CUDA tensor is copied non-blocking into pinned memory.
    """
    if tensor.device.type == "cpu":
        return tensor
    return tensor.detach().to("cpu", non_blocking=tensor.device.type == "cuda")


def wait_for(devices: Iterable[torch.device]) -> None:
    """Wait once for each CUDA device's current stream (copies started by :func:`start_to_host`)."""
    for device in {torch.device(device) for device in devices}:
        if device.type == "cuda":  # an event: the one wait is explicit, not a synchronising copy
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(device))
            done.synchronize()


class HostCopy:
    """A copy of ``tensor`` on the host as it is now: later changes to ``tensor`` do not reach it.

    On CUDA the copy runs on a side stream into pinned memory, so it overlaps the work queued after
    it on the current stream (a forward pass) instead of following it; :meth:`join` makes a device's
    current stream wait for it without the host waiting, and :attr:`tensor` may be read once a
    :func:`wait_for` of that device has returned. Other devices copy at :meth:`join`. On the CPU
    :attr:`tensor` is a clone, or ``tensor`` itself when ``snapshot`` is false.

    Args:
        tensor: What to copy.
        snapshot: Copy from a clone taken now, on the current stream (``tensor`` may change while
            the copy runs, as an input that a model changes in place). False: nothing writes
            ``tensor`` until :meth:`join`.
    """

    def __init__(self, tensor: Tensor, *, snapshot: bool = True) -> None:
        source = tensor.detach().clone() if snapshot else tensor.detach()
        self.tensor = source if snapshot else tensor
        self._source: Tensor | None = None
        self._side: torch.cuda.Stream | None = None
        if source.device.type == "cuda":
            self._side = torch.cuda.Stream(source.device)
            self._side.wait_stream(torch.cuda.current_stream(source.device))  # after the clone
            with torch.cuda.stream(self._side):
                self.tensor = source.to("cpu", non_blocking=True)  # into pinned memory
            self._source = source  # alive until the copy is joined: its memory is not reused before
        elif source.device.type != "cpu":
            self._source = source

    def fresh(self) -> Tensor:
        """A new copy of the tensor as it was: on its device before :meth:`join`, on the host after."""
        kept = self._source if self._source is not None else self.tensor
        return kept.clone()

    def join(self, device: torch.device) -> Tensor:
        """Order the copy before the work queued next on ``device``'s current stream; returns
        :attr:`tensor` (on CUDA: read it after :func:`wait_for` ``device``)."""
        if self._side is not None:
            if device.type == "cuda":
                torch.cuda.current_stream(device).wait_stream(self._side)
            else:
                self._side.synchronize()
            self._side = None
        elif self._source is not None:
            self.tensor = self._source.to("cpu")
        self._source = None
        return self.tensor


def to_device(values: Tensor | Sequence[int], device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
    """``values`` (a tensor or a list of numbers) on ``device``, in ``dtype`` when given, without
    making the host wait.

    From the host to CUDA the data goes through pinned memory with a non-blocking copy (a plain copy
    from pageable memory would synchronise), converted to ``dtype`` on the host first; anything else
    is one ordinary ``.to(device, dtype)`` (the tensor itself when nothing changes).
    """
    tensor = values if isinstance(values, Tensor) else torch.tensor(values, dtype=dtype)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return (tensor if dtype is None else tensor.to(dtype)).pin_memory().to(device, non_blocking=True)
    return tensor.to(device=device, dtype=dtype)
