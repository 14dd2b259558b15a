"""runtime/transfer.py: results to the host with one wait, values to the device without one."""

from __future__ import annotations

import pytest
import torch

from attnviz.runtime.transfer import HostCopy, start_to_host, to_device, to_host, wait_for

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_cpu_tensors_stay_as_they_are() -> None:
    a, b = torch.arange(6).view(2, 3), torch.rand(4)
    moved = to_host({"a": a, "b": b})
    assert moved["a"] is a and moved["b"] is b
    assert start_to_host(a) is a
    wait_for([torch.device("cpu")])  # nothing to wait for


def test_to_device_makes_tensors_of_lists_with_the_dtype() -> None:
    values = to_device([3, 1, 2], torch.device("cpu"), torch.long)
    assert values.dtype == torch.long and values.tolist() == [3, 1, 2]
    same = torch.rand(3)
    assert to_device(same, torch.device("cpu")) is same
    assert to_device(same, torch.device("cpu"), torch.float64).dtype == torch.float64


def test_a_host_copy_is_the_tensor_as_it_was() -> None:
    tensor = torch.rand(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    before = tensor.clone()
    copy = HostCopy(tensor)
    tensor.mul_(0)  # as a model that changes its input in place
    kept = copy.join(torch.device("cpu"))
    assert torch.equal(kept, before) and kept.is_contiguous(memory_format=torch.channels_last)
    assert HostCopy(tensor, snapshot=False).join(torch.device("cpu")) is tensor  # nothing will write it


@needs_cuda
def test_a_cuda_host_copy_overlaps_later_work_and_needs_the_one_wait() -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    tensor = torch.rand(64, 3, 224, 224, device=device)
    before = tensor.cpu()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
    try:
        copy = HostCopy(tensor)
        tensor.mul_(0)  # queued right after the copy started: it must not reach the copy
        for _ in range(20):
            tensor.add_(1)  # work on the current stream while the side stream copies
        copy.join(device)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    wait_for([device])
    assert copy.tensor.is_pinned() and torch.equal(copy.tensor, before)
    assert torch.equal(tensor[0, 0, 0, :3].cpu(), torch.full((3,), 20.0, device="cpu"))


@needs_cuda
def test_cuda_round_trip_keeps_values_shapes_and_dtypes() -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    tensors = {"f": torch.rand(2, 3), "g": torch.rand(5), "i": torch.arange(4), "h": torch.rand(3).half()}
    on_device = {name: to_device(t, device) for name, t in tensors.items()}
    moved = to_host(on_device)
    for name, tensor in tensors.items():
        assert moved[name].device.type == "cpu" and moved[name].dtype == tensor.dtype
        assert torch.equal(moved[name], tensor)
    late = start_to_host(on_device["f"] * 2)
    wait_for([device])
    assert torch.equal(late, tensors["f"] * 2)


@needs_cuda
def test_cuda_batch_for_a_model_and_agreements_on_the_device_equal_the_cpu() -> None:
    from attnviz.report.analysis import _agreements, agreement_batch
    from attnviz.runtime.model import to_model

    model = torch.nn.Conv2d(3, 2, 1).cuda().half()
    images = torch.rand(4, 3, 8, 8)
    moved = to_model(images, model)
    assert moved.is_cuda and moved.dtype == torch.float16 and torch.equal(moved.cpu(), images.half())
    first, second = torch.rand(6, 16, 16), torch.relu(torch.randn(6, 16, 16))
    on_cpu = agreement_batch(first, second)
    on_gpu = agreement_batch(first.cuda(), second.cuda())
    assert on_gpu[0] == on_cpu[0] and on_gpu[1] == pytest.approx(on_cpu[1], rel=1e-12)
    big = torch.rand(3, 224, 224), torch.relu(torch.randn(3, 224, 224))  # the sort at Grad-CAM's full size
    assert agreement_batch(*(m.cuda() for m in big))[0] == agreement_batch(*big)[0]
    mixed = _agreements(first.cuda(), second)  # a report's models on different devices
    assert [a.top20_iou for a in mixed] == on_cpu[0]


# --- the CUDA branches on the CPU: tensors that say they are on CUDA, streams and events that log ---

CUDA = torch.device("cuda", 0)


class _OnCuda(torch.Tensor):
    """A CPU tensor that says it is on CUDA (so do the tensors made from it); logs its copies."""

    log: list[tuple] = []

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return CUDA

    def to(self, *args, **kwargs):  # type: ignore[override]
        _OnCuda.log.append(("to", str(args[0]) if args else kwargs.get("device"), kwargs.get("non_blocking", False)))
        return super().to(*[a for a in args if not isinstance(a, (str, torch.device))], **kwargs)

    def pin_memory(self, *args, **kwargs):  # type: ignore[override]
        _OnCuda.log.append(("pin",))
        return self


class _OnHost(_OnCuda):
    """A host tensor that logs its copies."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return torch.device("cpu")


class _Stream:
    def __init__(self, name: str) -> None:
        self.name = name

    def wait_stream(self, other: _Stream) -> None:
        _OnCuda.log.append(("wait_stream", self.name, other.name))

    def synchronize(self) -> None:
        _OnCuda.log.append(("host waits for", self.name))


class _Event:
    def record(self, stream: _Stream) -> None:
        _OnCuda.log.append(("record", stream.name))

    def synchronize(self) -> None:
        _OnCuda.log.append(("host waits for", "event"))


@pytest.fixture
def fake_cuda(monkeypatch):
    import contextlib

    current = _Stream("current")
    _OnCuda.log = []

    @contextlib.contextmanager
    def on(stream: _Stream):
        _OnCuda.log.append(("enter", stream.name))
        yield
        _OnCuda.log.append(("leave", stream.name))

    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: _Stream("side"))
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current)
    monkeypatch.setattr(torch.cuda, "stream", on)
    return _OnCuda.log


def test_cuda_results_go_to_the_host_in_one_copy_per_dtype_and_one_wait(fake_cuda) -> None:
    a, b, c = torch.rand(2, 3), torch.rand(4), torch.arange(5)
    host = torch.rand(2)
    moved = to_host({"a": a.as_subclass(_OnCuda), "b": b.as_subclass(_OnCuda), "c": c.as_subclass(_OnCuda), "h": host})
    for name, expected in (("a", a), ("b", b), ("c", c)):
        assert torch.equal(moved[name].as_subclass(torch.Tensor), expected) and moved[name].shape == expected.shape
    assert moved["h"] is host
    copies = [entry for entry in fake_cuda if entry[0] == "to"]
    assert copies == [("to", "cpu", True), ("to", "cpu", True)]  # float32 and int64: non-blocking, into pinned memory
    assert fake_cuda[-2:] == [("record", "current"), ("host waits for", "event")]  # then the one wait
    assert sum(entry[0] == "host waits for" for entry in fake_cuda) == 1


def test_a_cuda_host_copy_runs_on_a_side_stream_that_the_current_one_waits_for(fake_cuda) -> None:
    tensor = torch.rand(2, 3).as_subclass(_OnCuda)
    before = tensor.as_subclass(torch.Tensor).clone()
    copy = HostCopy(tensor)
    tensor.mul_(0)  # the model changes its input in place after the copy was queued
    assert torch.equal(copy.fresh().as_subclass(torch.Tensor), before)  # a retried pass gets it as it was
    kept = copy.join(CUDA)
    assert torch.equal(kept.as_subclass(torch.Tensor), before)
    assert fake_cuda == [
        ("wait_stream", "side", "current"),  # the side stream starts after the snapshot was taken
        ("enter", "side"),
        ("to", "cpu", True),  # non-blocking, into pinned memory, on the side stream
        ("leave", "side"),
        ("wait_stream", "current", "side"),  # work queued next (the one wait) comes after the copy
    ]
    assert not any(entry[0] == "host waits for" for entry in fake_cuda)  # join itself does not wait


def test_a_cuda_host_copy_joined_on_the_cpu_waits_for_its_stream(fake_cuda) -> None:
    copy = HostCopy(torch.rand(3).as_subclass(_OnCuda), snapshot=False)
    copy.join(torch.device("cpu"))
    assert fake_cuda[-1] == ("host waits for", "side")


def test_host_values_go_to_cuda_through_pinned_memory_without_a_wait(fake_cuda) -> None:
    moved = to_device(torch.tensor([1, 2, 3]).as_subclass(_OnHost), CUDA, torch.float32)
    assert fake_cuda == [
        ("to", "torch.float32", False),
        ("pin",),
        ("to", "cuda:0", True),
    ]  # converted on the host first
    assert moved.as_subclass(torch.Tensor).tolist() == [1.0, 2.0, 3.0]
