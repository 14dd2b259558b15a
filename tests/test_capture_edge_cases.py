"""Edge cases of capture: gates at another resolution than their module's input, Swish with a learnable
beta, in-place hard sigmoids, keyword arguments, modules named like a sigmoid that gate, ResNeSt, a
model that normalises its input in place."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnviz.capturing.capturer import Capturer, capture

timm = pytest.importorskip("timm")


class Net(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blk = block
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.blk(self.stem(x)).mean((2, 3)))


class StridedSpatialBlock(nn.Module):
    """A downsampling block that gates its (smaller) output with a functional spatial sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.sa = nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y * torch.sigmoid(self.sa(y))


def test_spatial_sigmoid_at_another_resolution_than_the_owner_input():
    torch.manual_seed(0)
    model = Net(StridedSpatialBlock()).eval()
    images = torch.randn(2, 3, 8, 8)
    cap = capture(model, images, layers=[])  # RuntimeError: shape '[2, 8, 8]' is invalid for input of size 32
    with torch.no_grad():
        y = model.blk.conv(model.stem(images))
        expected = torch.sigmoid(model.blk.sa(y))[:, 0]
    torch.testing.assert_close(cap.gates["blk"].values, expected)


class SwishBeta(nn.Module):
    """Swish with a learnable beta: x * sigmoid(beta * x) is an activation, like x * sigmoid(1.702 * x)."""

    def __init__(self) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * torch.sigmoid(self.beta * x)


def test_swish_with_a_learnable_beta_is_an_activation_not_a_gate():
    torch.manual_seed(0)
    model = Net(nn.Sequential(nn.Conv2d(4, 4, 1), SwishBeta())).eval()
    cap = capture(model, torch.randn(2, 3, 8, 8), layers=[])
    assert cap.gates == {}


class InPlaceHardSE(nn.Module):
    """SE whose gate is timm's HardSigmoid(inplace=True): x.add_(3).clamp_(0, 6).div_(6)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Conv2d(4, 4, 1)
        self.gate = timm.layers.activations.HardSigmoid(inplace=True)

    def forward(self, x):
        return x * self.gate(self.fc(x.mean((2, 3), keepdim=True)))


def test_in_place_hand_written_hard_sigmoid_is_a_gate():
    torch.manual_seed(0)
    model = Net(InPlaceHardSE()).eval()
    cap = capture(model, torch.randn(2, 3, 8, 8), layers=[])
    assert list(cap.gates) == ["blk"]


class KeywordSE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Conv2d(4, 4, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        return x * self.gate(self.fc(x.mean((2, 3), keepdim=True)))


class KeywordNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.att = KeywordSE()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.att(x=self.stem(x)).mean((2, 3)))


def test_attention_module_called_with_keyword_arguments_names_its_gate():
    torch.manual_seed(0)
    cap = capture(KeywordNet().eval(), torch.randn(2, 3, 8, 8), layers=[])
    assert list(cap.gates) == ["att"]  # reported as 'model'


class SigmoidAttention(nn.Module):
    """A parameter-free spatial attention module whose class name contains 'sigmoid'."""

    def forward(self, x):
        return x * torch.sigmoid(x.mean(1, keepdim=True))


def test_parameter_free_module_named_sigmoid_that_gates_is_not_a_sigmoid_leaf():
    torch.manual_seed(0)
    model = Net(SigmoidAttention()).eval()
    images = torch.randn(2, 3, 8, 8)
    capturer = Capturer(model, feature_images=0)
    first = capturer(images)
    assert list(first.gates) == ["blk"]  # reported as 'model'
    second = capturer(images)  # gates-only pass records the module's product as the gate: RuntimeError
    torch.testing.assert_close(second.gates["blk"].values, first.gates["blk"].values)


def test_resnest_split_attention_softmax_over_radix_branches_is_branch_attention():
    from timm.layers.split_attn import RadixSoftmax

    torch.manual_seed(0)
    model = timm.create_model("resnest14d", num_classes=10).eval()
    images = torch.randn(2, 3, 64, 64)
    radix = {name: m for name, m in model.named_modules() if isinstance(m, RadixSoftmax)}
    seen: dict[str, torch.Tensor] = {}
    handles = [
        m.register_forward_hook(lambda mod, a, o, name=name: seen.__setitem__(name, a[0].detach().clone()))
        for name, m in radix.items()
    ]
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    cap = capture(model, images, layers=[])
    branch = cap.gates_of_kind("branch")
    assert sorted(g.module for g in branch.values()) == sorted(name.rsplit(".", 1)[0] for name in radix)
    for name, module in radix.items():
        x = seen[name]
        expected = torch.softmax(x.view(2, module.cardinality, module.radix, -1).transpose(1, 2), dim=1)
        gate = next(g for g in branch.values() if g.module == name.rsplit(".", 1)[0])
        torch.testing.assert_close(gate.values, expected.reshape(2, module.radix, -1))
        torch.testing.assert_close(gate.values.sum(1), torch.ones_like(gate.values.sum(1)))


class NormalisesInPlace(nn.Module):
    """The course's CBAM CNN behind a normalisation that overwrites its input (``x.sub_().div_()``)."""

    def __init__(self) -> None:
        super().__init__()
        from attnviz.models import build_model

        self.net = build_model("cbam_cnn")

    def forward(self, x):
        return self.net(x.sub_(0.5).div_(0.25))


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU"))]
)
@pytest.mark.parametrize("feature_images", [0, 2])
def test_the_captured_images_are_the_input_as_given_when_the_model_changes_it_in_place(device, feature_images):
    torch.manual_seed(0)
    model = NormalisesInPlace().to(device).eval()
    images = torch.rand(3, 3, 32, 32, device=device)
    given = images.clone()
    capturer = Capturer(model, feature_images=feature_images)
    for _ in range(2):  # the first batch finds the gates, the second runs the plan
        batch = given.clone()
        captured = capturer(batch)
        assert captured.images.device.type == "cpu" and torch.equal(captured.images, given.cpu())
        assert not torch.equal(batch, given)  # the model did change it
        expected = model.net((given.clone() - 0.5) / 0.25)  # what the model computed on it
        torch.testing.assert_close(captured.logits, expected.cpu(), rtol=1e-5, atol=1e-5)
        assert set(captured.gates) >= {"net.cbam1.channel_attn", "net.cbam3.spatial_attn"}


class GatesTwiceEveryOtherCall(nn.Module):
    """Normalises its input in place, and applies its gate once or twice by turns, so that the plan
    of one batch does not fit the next and the capture runs the model again."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        h = self.conv(x.sub_(0.5).div_(0.25))
        for _ in range(1 + self.calls % 2):
            h = h * torch.sigmoid(h.mean((2, 3), keepdim=True))
        return self.fc(h.mean((2, 3)))


_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU")


@pytest.mark.parametrize(
    "model_device, batch_device, dtype",
    [
        ("cpu", "cpu", torch.float32),  # the model is given the batch itself
        ("cpu", "cpu", torch.float64),  # the model is given a converted copy
        pytest.param("cuda", "cuda", torch.float32, marks=_CUDA),  # a clone on the device, copied on a side stream
        pytest.param("cuda", "cpu", torch.float32, marks=_CUDA),  # the batch moves to the model's device
    ],
)
@pytest.mark.parametrize("feature_images", [0, 2])
def test_a_pass_tried_again_gets_the_input_as_given(feature_images, model_device, batch_device, dtype):
    torch.manual_seed(0)
    model = GatesTwiceEveryOtherCall().to(model_device).eval()
    given = torch.rand(2, 3, 8, 8, dtype=dtype, device=batch_device)
    capturer = Capturer(model, feature_images=feature_images)
    for _ in range(3):
        calls = model.calls
        captured = capturer(given.clone())
        tried = model.calls - calls
        model.calls -= 1  # the last forward's parity: what a single forward on the input computes
        with torch.no_grad():
            expected = model(given.to(model_device, torch.float32, copy=True))
        assert captured.images.dtype == dtype and torch.equal(captured.images, given.cpu())
        torch.testing.assert_close(captured.logits, expected.cpu(), rtol=1e-5, atol=1e-5)
    assert tried > 1  # the plan did not fit: the model ran more than once
