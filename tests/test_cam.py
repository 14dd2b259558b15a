"""Grad-CAM: the maps equal Grad-CAM computed independently, on models with and without in-place ops."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import GuidedGradCam, LayerGradCam
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torchvision.models.resnet import BasicBlock

from attnviz.explain.cam import METHODS, CamResult, gradcam, normalise_maps, resolve_cam_layer
from attnviz.models import build_model, get_spec, list_architectures
from attnviz.runtime.errors import CaptureError, UsageError

# --------------------------------------------------------------------------- independent references


class OutOfPlaceBasicBlock(BasicBlock):
    """torchvision's BasicBlock with ``out = out + identity`` instead of ``out += identity``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


def out_of_place(model: nn.Module) -> nn.Module:
    """A copy of ``model`` that changes no tensor in place (same weights, same values)."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
        if type(module) is BasicBlock:
            module.__class__ = OutOfPlaceBasicBlock
    return twin


def manual_gradcam(model: nn.Module, layer: str, images: torch.Tensor, targets: list[int]) -> torch.Tensor:
    """Grad-CAM by hand: hook the layer's output, autograd.grad of the target logits, weight, ReLU.

    Only valid on models that never change the hooked output in place afterwards.
    """
    kept = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: kept.setdefault("a", o))
    try:
        with torch.enable_grad():
            logits = model(images.clone().requires_grad_(True))
    finally:
        handle.remove()
    (grads,) = torch.autograd.grad(logits[torch.arange(len(images)), targets].sum(), kept["a"])
    weights = grads.mean(dim=(2, 3))
    return F.relu(torch.einsum("bc,bchw->bhw", weights, kept["a"].detach()))


def library_gradcam(
    model: nn.Module, layer: str, images: torch.Tensor, targets: list[int]
) -> tuple[np.ndarray, torch.Tensor]:
    """pytorch-grad-cam's normalised maps and the raw map from the activations/gradients it stored."""
    cam = GradCAM(model=model, target_layers=[model.get_submodule(layer)])
    try:
        maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(t) for t in targets])
        activations = cam.activations_and_grads.activations[0]
        grads = cam.activations_and_grads.gradients[0]
        raw = F.relu((grads.mean(dim=(2, 3), keepdim=True) * activations).sum(dim=1))
    finally:
        cam.activations_and_grads.release()
    return maps, raw


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def assert_no_hooks(model: nn.Module) -> None:
    for name, module in model.named_modules():
        for attribute in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            assert not getattr(module, attribute), f"{name or 'model'} keeps {attribute}"
    assert not torch.nn.modules.module._global_forward_hooks


pytestmark = pytest.mark.usefixtures("one_thread")

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    """torchvision resnet18, random weights, 10 classes, with its in-place ReLUs (tests copy it to change it)."""
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


class SmallNet(nn.Module):
    """Conv-BN-ReLU(in place)-conv-ReLU, global pooling, linear head: 5 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


# --------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("layer", ["layer4", "layer3.1.conv2", "layer4.0.bn1"])
def test_matches_pytorch_grad_cam_without_in_place_ops(resnet: nn.Module, images: torch.Tensor, layer: str) -> None:
    model = out_of_place(resnet)
    result = gradcam(model, images, target=[1, 4, 7], layer=layer)
    maps, raw = library_gradcam(model, layer, images, [1, 4, 7])
    assert result.maps.shape == (3, 64, 64)
    assert rel_diff(result.raw, raw) < 1e-5
    assert np.abs(result.maps.numpy() - maps).max() < 1e-4
    assert rel_diff(result.raw, manual_gradcam(model, layer, images, [1, 4, 7])) < 1e-5


def test_predicted_class_is_the_default_target(resnet: nn.Module, images: torch.Tensor) -> None:
    model = out_of_place(resnet)
    with torch.no_grad():
        logits = model(images)
    result = gradcam(model, images, layer="layer4")
    predicted = logits.argmax(dim=1)
    assert torch.equal(result.targets, predicted)
    torch.testing.assert_close(result.logits, logits)
    torch.testing.assert_close(result.scores, logits.softmax(dim=1)[torch.arange(3), predicted])
    assert rel_diff(result.raw, manual_gradcam(model, "layer4", images, predicted.tolist())) < 1e-5


def test_matches_captum_layer_gradcam(resnet: nn.Module, images: torch.Tensor) -> None:
    model = out_of_place(resnet)
    result = gradcam(model, images, target=2, layer="layer3")
    expected = LayerGradCam(model, model.layer3).attribute(images, target=2, relu_attributions=True)
    assert rel_diff(result.raw, expected[:, 0].detach()) < 1e-5


@pytest.mark.parametrize("layer", ["layer4.1.bn2", "layer3.0.conv1"])
def test_true_gradcam_when_the_model_changes_the_activation_in_place(
    resnet: nn.Module, images: torch.Tensor, layer: str
) -> None:
    # layer4.1.bn2's output is then changed by ``out += identity`` and ``relu(inplace=True)``;
    # layer3.0.conv1's output by nothing (its bn1 makes a new tensor), as a control.
    twin = out_of_place(resnet)
    truth = manual_gradcam(twin, layer, images, [0, 3, 5])
    result = gradcam(resnet, images, target=[0, 3, 5], layer=layer)
    assert rel_diff(result.raw, truth) < 1e-5
    _, library_raw = library_gradcam(resnet, layer, images, [0, 3, 5])
    if layer == "layer4.1.bn2":  # pytorch-grad-cam stores the tensor the model then overwrites
        assert rel_diff(library_raw, truth) > 0.05
    else:
        assert rel_diff(library_raw, truth) < 1e-5


def test_true_gradcam_on_zoo_se_block_followed_by_in_place_add(seeded: None) -> None:
    # resnet_se's ResidualBlock: out = se(bn2(conv2(...))); out += shortcut(x); relu(inplace).
    model = build_model("resnet_se", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    block = model.layer4[1]
    kept = {}
    handle = block.register_forward_pre_hook(lambda m, i: kept.setdefault("x", i[0].clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    # The block's second half, written out of place from its input, to get the true gradient.
    with torch.enable_grad():
        hidden = block.relu(block.bn1(block.conv1(kept["x"])))
        activation = block.se(block.bn2(block.conv2(hidden))).detach().requires_grad_(True)
        out = F.relu(activation + block.shortcut(kept["x"]))
        logits = model.fc(model.avg_pool(out).flatten(1))
        (grads,) = torch.autograd.grad(logits[[0, 1], [2, 8]].sum(), activation)
    truth = F.relu((grads.mean(dim=(2, 3), keepdim=True) * activation.detach()).sum(dim=1))

    result = gradcam(model, x, target=[2, 8], layer="layer4.1.se")
    assert rel_diff(result.raw, truth) < 1e-5
    _, library_raw = library_gradcam(model, "layer4.1.se", x, [2, 8])
    assert rel_diff(library_raw, truth) > 0.05


def test_zoo_model_uses_its_spec_layer_and_matches_the_library(seeded: None) -> None:
    model = build_model("resnet18_cbam", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    result = gradcam(model, x, target=[3, 9])
    assert result.layer == get_spec("resnet18_cbam").cam_layer
    maps, raw = library_gradcam(model, result.layer, x, [3, 9])
    assert rel_diff(result.raw, raw) < 1e-5
    assert np.abs(result.maps.numpy() - maps).max() < 1e-4


class QuadrantNet(nn.Module):
    """Finds red, green and blue blobs; the classifier reads only one quadrant of the feature map.

    ``conv`` maps each colour to its own channel, minus 0.5 (positive on a blob, negative on the
    black background); the head takes the ReLU of the chosen quadrant, averages it and sums it.
    """

    def __init__(self, rows: slice, cols: slice) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3)[:, :, None, None])
            self.conv.bias.fill_(-0.5)
            self.fc.weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]))
            self.fc.bias.zero_()
        self.rows, self.cols = rows, cols

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv(x)
        return self.fc(F.relu(features[:, :, self.rows, self.cols]).mean(dim=(2, 3)))


QUADRANTS = {
    "top-left": (slice(0, 16), slice(0, 16)),
    "top-right": (slice(0, 16), slice(16, 32)),
    "bottom-left": (slice(16, 32), slice(0, 16)),
}


@pytest.mark.parametrize("quadrant", QUADRANTS)
def test_cam_peaks_in_the_quadrant_the_classifier_reads(quadrant: str) -> None:
    image = torch.zeros(1, 3, 32, 32)
    image[0, 0, 4:12, 4:12] = 1.0  # red blob, top left
    image[0, 1, 4:12, 20:28] = 1.0  # green blob, top right
    image[0, 2, 20:28, 4:12] = 1.0  # blue blob, bottom left
    rows, cols = QUADRANTS[quadrant]
    result = gradcam(QuadrantNet(rows, cols).eval(), image, target=0)
    assert result.layer == "conv"
    peak_row, peak_col = divmod(int(result.maps[0].argmax()), 32)
    assert rows.start <= peak_row < rows.stop and cols.start <= peak_col < cols.stop
    inside = result.maps[0, rows, cols]
    outside = result.maps[0].clone()
    outside[rows, cols] = 0
    assert float(inside.max()) == 1.0 and float(outside.max()) == 0.0


# --------------------------------------------------------------------------- targets and layers


def test_targets_by_name_and_by_index_agree(seeded: None) -> None:
    model = SmallNet().eval()
    x = torch.randn(2, 3, 16, 16)
    names = ["cat", "dog", "ship", "frog", "car"]
    by_index = gradcam(model, x, target=[2, 4])
    by_name = gradcam(model, x, target=["ship", "car"], class_names=names)
    single = gradcam(model, x, target="dog", class_names=names)
    assert by_name.targets.tolist() == [2, 4] and single.targets.tolist() == [1, 1]
    torch.testing.assert_close(by_name.maps, by_index.maps)
    torch.testing.assert_close(single.raw, gradcam(model, x, target=1).raw)
    assert rel_diff(single.raw, manual_gradcam(model, by_index.layer, x, [1, 1])) < 1e-5


def test_target_errors() -> None:
    model = SmallNet().eval()
    x = torch.randn(4, 3, 16, 16)
    with pytest.raises(UsageError, match=r"per-sample targets must match the batch size \(got 3 for 4 images\)"):
        gradcam(model, x, target=[0, 1, 2])
    with pytest.raises(UsageError, match="class_names"):
        gradcam(model, x, target="cat")
    with pytest.raises(UsageError, match="did you mean 'ship'"):
        gradcam(model, x, target="shp", class_names=["cat", "dog", "ship", "frog", "car"])
    with pytest.raises(UsageError, match="out of range"):
        gradcam(model, x, target=5)


def test_unknown_layer_and_method_are_usage_errors() -> None:
    model = SmallNet().eval()
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(UsageError, match=r"no layer 'feature\.3'.*'features\.3'"):
        gradcam(model, x, layer="feature.3")
    with pytest.raises(UsageError, match="fc.*\\[B,C,H,W\\]"):
        gradcam(model, x, layer="fc")
    with pytest.raises(UsageError, match="known: gradcam, gradcam\\+\\+"):
        gradcam(model, x, method="gradcamm")


def test_chunks_give_the_same_maps(seeded: None) -> None:
    model = SmallNet().eval()
    x = torch.randn(5, 3, 16, 16)
    whole = gradcam(model, x, target=[0, 1, 2, 3, 4])
    chunked = gradcam(model, x, target=[0, 1, 2, 3, 4], batch_size=2)
    torch.testing.assert_close(chunked.raw, whole.raw)
    torch.testing.assert_close(chunked.maps, whole.maps)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("resnet18", "layer4"), ("efficientnet_b0", "features.8"), ("mobilenet_v3_small", "features.12")],
)
def test_automatic_layer_on_torchvision_models(name: str, expected: str) -> None:
    model = getattr(torchvision.models, name)(num_classes=10)
    assert resolve_cam_layer(model, torch.randn(1, 3, 64, 64)) == expected
    assert resolve_cam_layer(model) == expected
    assert model.training  # the probe restores the mode
    assert_no_hooks(model)


def test_automatic_layer_of_every_zoo_model_is_its_spec_layer() -> None:
    for name in list_architectures():
        assert resolve_cam_layer(build_model(name, num_classes=10)) == get_spec(name).cam_layer


def test_automatic_layer_skips_activations_inside_a_block() -> None:
    model = SmallNet().eval()
    # features ends with a ReLU that makes a new tensor: that ReLU is the last feature map.
    assert resolve_cam_layer(model, torch.randn(1, 3, 16, 16)) == "features.4"
    # with nothing after the trunk's last block but the pool, the block is named, not its ReLU
    blocks = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True)),
        nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    assert resolve_cam_layer(blocks, torch.randn(1, 3, 8, 8)) == "1"


# --------------------------------------------------------------------------- model state


def _state(model: nn.Module) -> list[tuple[str, bool, bool, object]]:
    return [(n, m.training, False, None) for n, m in model.named_modules()] + [
        (n, True, p.requires_grad, p.grad) for n, p in model.named_parameters()
    ]


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "guided_gradcam"])
def test_model_state_is_restored(method: str) -> None:
    model = SmallNet().train()
    model.features[1].eval()  # a frozen BN inside a training model
    model.features[0].weight.requires_grad_(False)
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    before = _state(model)
    grad = model.fc.weight.grad
    with pytest.warns(UserWarning, match="train mode"):
        result = gradcam(model, torch.randn(2, 3, 16, 16), layer="features.3", method=method)
    assert isinstance(result, CamResult)
    assert _state(model) == before
    assert model.fc.weight.grad is grad and bool((grad == 1).all())
    assert model.fc.bias.grad is None
    assert_no_hooks(model)


def test_model_state_is_restored_when_forward_raises() -> None:
    model = SmallNet().train()
    model.fc.bias.requires_grad_(False)
    before = _state(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CaptureError, match="forward pass failed"):
            gradcam(model, torch.randn(2, 4, 16, 16), layer="features.3")  # 4 channels, conv wants 3
        with pytest.raises(CaptureError):
            gradcam(model, torch.randn(2, 4, 16, 16), layer="features.3", method="layercam")
    assert _state(model) == before
    assert_no_hooks(model)


def test_does_not_touch_the_input_or_parameter_gradients(seeded: None) -> None:
    model = SmallNet().eval()
    x = torch.randn(2, 3, 16, 16)
    gradcam(model, x)
    assert not x.requires_grad and x.grad is None
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_works_under_no_grad(seeded: None) -> None:
    model = SmallNet().eval()
    x = torch.randn(2, 3, 16, 16)
    expected = gradcam(model, x, target=1).raw
    with torch.no_grad():
        torch.testing.assert_close(gradcam(model, x, target=1).raw, expected)


def test_normalise_maps_matches_numpy_on_spread_constant_and_nan_maps() -> None:
    rng = np.random.default_rng(3)
    maps = rng.normal(size=(6, 5, 7)).astype(np.float32)
    maps[1] = 0.0  # no spread, zero: zeros
    maps[2] = 0.25  # no spread, positive: ones
    maps[3] = -1.0  # no spread, negative: zeros
    maps[4, 2, 3] = np.nan  # NaN anywhere: no spread, so the map's positive pixels become ones
    expected = np.empty_like(maps)
    for i, m in enumerate(maps):
        low, high = np.min(m), np.max(m)  # NaN when the map holds one
        expected[i] = (m - low) / (high - low) if high - low > 0 else (m > 0).astype(np.float32)
    result = normalise_maps(torch.from_numpy(maps.copy()))
    assert result.dtype == torch.float32
    np.testing.assert_allclose(result.numpy(), expected, rtol=0, atol=1e-6)
    assert result[0].min() == 0.0 and result[0].max() == 1.0
    assert result[2].eq(1.0).all() and result[1].eq(0.0).all() and result[3].eq(0.0).all()
    assert torch.equal(result[4], torch.from_numpy(maps[4] > 0).float())
    assert torch.equal(normalise_maps(torch.from_numpy(maps).double()), result)  # float32 out, whatever comes in
    given = torch.from_numpy(maps[:4].copy()).requires_grad_(True)  # without the NaN map
    normalise_maps(given).sum().backward()
    assert given.grad is not None and bool(torch.isfinite(given.grad).all())  # constant maps included


# --------------------------------------------------------------------------- other methods


@pytest.mark.parametrize("method", [m for m in METHODS if m != "gradcam"])
def test_every_method_gives_unit_range_maps(seeded: None, method: str) -> None:
    model = SmallNet().eval()
    x = torch.randn(2, 3, 16, 16)
    result = gradcam(model, x, target=[0, 3], method=method)
    assert result.method == method
    assert result.maps.shape == (2, 16, 16) and result.maps.dtype == torch.float32
    assert float(result.maps.min()) >= 0.0 and float(result.maps.max()) <= 1.0
    assert bool(torch.isfinite(result.raw).all()) and float(result.raw.min()) >= 0.0
    assert result.targets.tolist() == [0, 3]
    expected_raw = (2, 16, 16)  # SmallNet's feature maps keep the input's size
    assert tuple(result.raw.shape) == expected_raw
    assert result.layer == ("" if method in {"fullgrad", "integrated_gradients", "occlusion"} else "features.4")


def test_guided_gradcam_matches_captum(resnet: nn.Module, seeded: None) -> None:
    model = out_of_place(resnet)
    x = torch.randn(2, 3, 32, 32)
    result = gradcam(model, x, target=[1, 2], layer="layer3", method="guided_gradcam")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = GuidedGradCam(model, model.layer3).attribute(x, target=[1, 2], interpolate_mode="bilinear")
    assert rel_diff(result.raw, expected.sum(dim=1).abs().detach()) < 1e-4


def test_library_methods_see_the_true_activation(resnet: nn.Module, images: torch.Tensor) -> None:
    # gradcam++ through pytorch-grad-cam, on a layer the model then changes in place.
    twin = out_of_place(resnet)
    result = gradcam(resnet, images, target=[0, 1, 2], layer="layer4.1.bn2", method="gradcam++")
    expected = gradcam(twin, images, target=[0, 1, 2], layer="layer4.1.bn2", method="gradcam++")
    torch.testing.assert_close(result.raw, expected.raw)


class ChangesThroughAlias(nn.Module):
    """Changes the output of ``act`` (eval-mode in-place dropout: returns its input) through ``y``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.Dropout(0.5, inplace=True)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = self.act(y)  # z is y
        y.add_(1)
        return self.fc((z + y).mean(dim=(2, 3)))


def test_output_changed_through_another_reference_is_refused() -> None:
    model = ChangesThroughAlias().eval()
    with pytest.raises(CaptureError, match="'act' in place through another reference"):
        gradcam(model, torch.randn(1, 3, 8, 8), layer="act")
    assert_no_hooks(model)
    assert gradcam(model, torch.randn(1, 3, 8, 8), layer="conv").maps.shape == (1, 8, 8)
