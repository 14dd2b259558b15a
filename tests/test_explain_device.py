"""Grad-CAM and the metrics on the model's device: no host round-trip inside the work, the per-call
overhead kept out, the CUDA-only paths (channels-last, bf16 autocast) checked on the CPU, and
CamResult's one-line repr. The CUDA tests run on a GPU machine only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

import attnviz
from attnviz.explain.cam import CamResult
from attnviz.explain.metrics import deletion_insertion, randomisation_sanity
from attnviz.runtime.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_thread")

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

#: Tensor calls that make the host wait for a CUDA device (or copy to the host).
HOST_CALLS = frozenset(
    {"__bool__", "__int__", "__float__", "__index__", "item", "tolist", "cpu", "numpy", "__array__", "nonzero"}
)


class HostCalls(TorchFunctionMode):
    """Records every tensor call that would wait for a GPU; on the CPU the same code takes the same path."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = getattr(func, "__name__", "")
        if name in HOST_CALLS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


class TinyNet(nn.Module):
    """Conv-BN-ReLU, conv-ReLU (the Grad-CAM layer ``features.3``), global pooling, linear: 4 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
        )
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


@pytest.fixture
def tiny() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = TinyNet().eval()
    with torch.no_grad():
        model.features[1].running_mean.uniform_(-0.2, 0.2)
        model.features[1].running_var.uniform_(0.5, 1.5)
    return model, torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def reference_gradcam(model: nn.Module, images: torch.Tensor, targets: list[int]) -> torch.Tensor:
    """Grad-CAM by hand at ``features.3`` (TinyNet changes nothing in place after it)."""
    kept = {}
    handle = model.features[3].register_forward_hook(lambda m, i, o: kept.setdefault("a", o))
    try:
        with torch.enable_grad():
            logits = model(images)
    finally:
        handle.remove()
    (grads,) = torch.autograd.grad(logits[torch.arange(len(images)), targets].sum(), kept["a"])
    return F.relu((grads.mean(dim=(2, 3), keepdim=True) * kept["a"].detach()).sum(dim=1))


# --------------------------------------------------------------------------- host round-trips


@pytest.mark.parametrize("target", [None, 2, [0, 3, 1]])
def test_gradcam_makes_no_host_round_trip(tiny, target) -> None:
    model, x = tiny
    attnviz.gradcam(model, x, target, layer="features.3")  # warm-up
    with HostCalls() as watch:
        result = attnviz.gradcam(model, x, target, layer="features.3")
    assert watch.calls == []
    targets = result.targets.tolist()
    torch.testing.assert_close(result.raw, reference_gradcam(model, x, targets))


def test_deletion_insertion_host_round_trips_do_not_grow_with_images_or_steps(tiny) -> None:
    model, x = tiny
    maps = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(2))
    counts = []
    for count, steps, targets in ((1, 2, None), (3, 16, None), (1, 2, 1), (3, 16, [0, 1, 2])):
        with HostCalls() as watch:
            deletion_insertion(model, x[:count], maps[:count], targets, steps=steps, batch_size=4)
        counts.append(len(watch.calls))
    assert counts[0] == counts[1] and counts[2] == counts[3]


def test_deletion_insertion_checks_targets_without_an_extra_pass(tiny) -> None:
    model, x = tiny
    calls = []
    model.register_forward_pre_hook(lambda m, i: calls.append(len(i[0])))
    deletion_insertion(model, x, torch.rand(3, 12, 12), [0, 1, 2], steps=2, batch_size=9)
    # the channels-last probe (4 images, both formats; CPU), then 3 images × 2·steps (the curves share
    # their ends), and no pass to count the classes
    assert calls == [4, 4, 9, 3]
    with pytest.raises(UsageError, match="out of range"):
        deletion_insertion(model, x, torch.rand(3, 12, 12), [0, 4, 2], steps=2)
    with pytest.raises(UsageError, match="NaN"):
        deletion_insertion(model, x, torch.full((3, 12, 12), float("nan")), 0, steps=2)


def test_sanity_check_host_round_trips_do_not_grow_with_steps(tiny) -> None:
    model, x = tiny
    counts = []
    for steps in (2, 4):
        with HostCalls() as watch:
            records = randomisation_sanity(model, x, layer="features.3", steps=steps)
        counts.append(len(watch.calls))
        assert len(records) == steps + 1
    assert counts[0] == counts[1]


# --------------------------------------------------------------------------- per-call overhead


class CountingTrain(nn.Sequential):
    """Counts calls of ``train``/``eval`` (each walks and sets every submodule)."""

    switches = 0

    def train(self, mode: bool = True) -> CountingTrain:
        type(self).switches += 1
        return super().train(mode)


def test_gradcam_leaves_an_eval_model_and_its_parameters_alone(tiny) -> None:
    model, x = tiny
    wrapped = CountingTrain(model).eval()
    CountingTrain.switches = 0
    seen = []
    model.features[0].register_forward_hook(
        lambda m, i, o: seen.append((torch.is_grad_enabled(), o.requires_grad, m.weight.requires_grad))
    )
    result = attnviz.gradcam(wrapped, x, layer="0.features.3")
    assert CountingTrain.switches == 0  # already in eval mode: nothing to switch or restore
    # Before the target layer no graph is recorded, and the parameters' flags are never touched.
    assert seen == [(False, False, True)]
    torch.testing.assert_close(result.raw, reference_gradcam(model, x, result.targets.tolist()))
    assert all(p.grad is None for p in model.parameters())


def test_gradcam_still_switches_a_training_model_to_eval_and_back(tiny) -> None:
    model, x = tiny
    model.train()
    model.features[1].eval()  # a frozen BN inside a training model
    with pytest.warns(UserWarning, match="train mode"):
        result = attnviz.gradcam(model, x, layer="features.3")
    assert model.training and model.features[0].training and not model.features[1].training
    model.eval()
    torch.testing.assert_close(result.raw, reference_gradcam(model, x, result.targets.tolist()))


# --------------------------------------------------------------------------- the CUDA-only paths, on the CPU


def test_channels_last_model_and_input_give_the_plain_maps(tiny) -> None:
    model, x = tiny
    plain = attnviz.gradcam(model, x, layer="features.3")
    formats = []
    model.features[0].register_forward_pre_hook(
        lambda m, i: formats.append(i[0].is_contiguous(memory_format=torch.channels_last))
    )
    fast = model.to(memory_format=torch.channels_last)
    result = attnviz.gradcam(fast, x.to(memory_format=torch.channels_last), layer="features.3")
    assert formats == [True]  # the input reaches the model as it was given
    torch.testing.assert_close(result.maps, plain.maps, atol=1e-5, rtol=1e-5)
    assert torch.equal(result.targets, plain.targets)


def test_bf16_autocast_gives_the_plain_maps_up_to_its_precision(tiny) -> None:
    model, x = tiny
    plain = attnviz.gradcam(model, x, [0, 1, 2], layer="features.3")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = attnviz.gradcam(model, x, [0, 1, 2], layer="features.3")
    assert low.maps.dtype == torch.float32 and low.maps.shape == plain.maps.shape
    assert float((low.maps - plain.maps).abs().max()) < 0.1
    for a, b in zip(low.maps, plain.maps):
        assert np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1] > 0.98


# --------------------------------------------------------------------------- CUDA


@pytest.fixture
def full_precision() -> object:
    """No TF32 in convolutions and matrix products for the call, so the GPU's numbers match the CPU's."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def same_everywhere(module: nn.Module) -> None:
    """A re-initialisation that draws nothing, so the CPU and the GPU randomise alike."""
    for parameter in module.parameters(recurse=False):
        ramp = torch.linspace(-0.5, 0.5, parameter.numel(), dtype=parameter.dtype)
        parameter.copy_(ramp.view_as(parameter).to(parameter.device))


@needs_cuda
@pytest.mark.usefixtures("full_precision")
@pytest.mark.parametrize("target", [None, [0, 3, 1]])
def test_gradcam_on_cuda_does_not_synchronise_and_equals_the_cpu(tiny, target) -> None:
    model, x = tiny
    expected = attnviz.gradcam(model, x, target, layer="features.3")
    gpu, images = model.cuda(), x.cuda()
    attnviz.gradcam(gpu, images, target, layer="features.3")  # warm-up: kernels and allocator
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        result = attnviz.gradcam(gpu, images, target, layer="features.3")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert result.maps.device.type == "cuda"
    torch.testing.assert_close(result.maps.cpu(), expected.maps, atol=1e-4, rtol=1e-4)
    assert torch.equal(result.targets.cpu(), expected.targets)


@needs_cuda
@pytest.mark.usefixtures("full_precision")
def test_metrics_on_cuda_equal_the_cpu(tiny) -> None:
    model, x = tiny
    maps = torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(3))
    expected = deletion_insertion(model, x, maps, [0, 1, 2], steps=8, batch_size=5)
    sanity = randomisation_sanity(model, x, layer="features.3", steps=2, initializer=same_everywhere)
    gpu = model.cuda()
    for given in (maps, maps.cuda()):  # maps from the host, and maps already on the device
        result = deletion_insertion(gpu, x.cuda(), given, [0, 1, 2], steps=8, batch_size=5)
        for key in ("deletion_curve", "insertion_curve", "deletion_auc", "insertion_auc", "fractions", "targets"):
            np.testing.assert_allclose(result[key], expected[key], atol=1e-5)
    with pytest.raises(UsageError, match="NaN"):
        deletion_insertion(gpu, x.cuda(), torch.full((3, 12, 12), float("nan"), device="cuda"), 0, steps=2)
    ours = randomisation_sanity(gpu, x.cuda(), layer="features.3", steps=2, initializer=same_everywhere)
    assert [r["layers"] for r in ours] == [r["layers"] for r in sanity]
    for mine, theirs in zip(ours, sanity):
        np.testing.assert_allclose(mine["maps"], theirs["maps"], atol=1e-4)
        np.testing.assert_array_equal(mine["targets"], theirs["targets"])


# --------------------------------------------------------------------------- repr


def test_cam_result_repr_is_one_short_line(tiny) -> None:
    model, x = tiny
    result = attnviz.gradcam(model, x, [0, 3, 1], layer="features.3")
    text = repr(result)
    assert "\n" not in text and len(text) < 200
    assert text.startswith("CamResult(") and "gradcam" in text and "'features.3'" in text
    assert "3 image" in text and "12×12" in text and "[0, 3, 1]" in text and "tensor(" not in text
    many = CamResult(
        maps=torch.zeros(40, 5, 6),
        raw=torch.zeros(40, 2, 3),
        targets=torch.arange(40) % 3,
        scores=torch.full((40,), 0.5),
        logits=torch.zeros(40, 3),
        layer="x",
        method="gradcam",
    )
    text = repr(many)
    assert "\n" not in text and len(text) < 200 and "40 image" in text and "5×6" in text and "…" in text
