"""Capture: every gate found, named after its attention module, with the values the model computed."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from attnviz.capturing.capturer import Capture, Capturer, capture
from attnviz.models import build_model
from attnviz.runtime.errors import CaptureError, UsageError

timm = pytest.importorskip("timm")


# --- small models written the ways the wild writes attention ----------------------------------


class NotebookSE(nn.Module):
    """Seed 000's SE: the sigmoid lives inside an MLP ``fc``; returns ``x * weights``."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x):
        b, c, _, _ = x.shape
        weights = self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)
        return x * weights


class FunctionalChannelGate(nn.Module):
    """The official CBAM code's style: ``F.sigmoid`` on the summed MLP outputs."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Flatten(), nn.Linear(channels, channels // 2), nn.ReLU(), nn.Linear(channels // 2, channels)
        )

    def forward(self, x):
        avg = self.mlp(F.avg_pool2d(x, x.shape[2:]))
        mx = self.mlp(F.max_pool2d(x, x.shape[2:]))
        scale = F.sigmoid(avg + mx).unsqueeze(2).unsqueeze(3)
        return x * scale


class FunctionalSpatialGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x):
        pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class FunctionalCBAM(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.ChannelGate = FunctionalChannelGate(channels)
        self.SpatialGate = FunctionalSpatialGate()

    def forward(self, x):
        return self.SpatialGate(self.ChannelGate(x))


class SpatialMap(nn.Module):
    """Returns the attention map; its caller multiplies."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x):
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return self.conv(pooled).sigmoid()


class MapCaller(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = SpatialMap()

    def forward(self, x):
        return x * self.attention(x)


class InPlaceSE(nn.Module):
    """Computes its gate in place (like timm's ``Sigmoid(inplace=True)``) and then zeroes it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        weights = self.fc(x.mean((2, 3), keepdim=True)).sigmoid_()
        out = x * weights
        weights.zero_()  # anything reading `weights` by reference now sees zeros
        return out


class ResidualSEBlock(nn.Module):
    """Seed 004's pattern: SE, then ``out += shortcut`` in place, then an in-place ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.se = InPlaceSE(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.se(self.conv(x))
        out += x
        return self.relu(out)


class CoordAttention(nn.Module):
    """Coordinate attention: two gates per forward, ``[B,C,H,1]`` and ``[B,C,1,W]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_h = nn.Conv2d(channels, channels, 1)
        self.conv_w = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        a_h = torch.sigmoid(self.conv_h(x.mean(3, keepdim=True)))
        a_w = torch.sigmoid(self.conv_w(x.mean(2, keepdim=True)))
        return x * a_h * a_w


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class Zoo(nn.Module):
    """One model holding every pattern above."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), Swish(), nn.SiLU())
        self.se = NotebookSE(16)
        self.cbam = FunctionalCBAM(16)
        self.block = ResidualSEBlock(16)
        self.map_caller = MapCaller()
        self.coord = CoordAttention(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        x = self.se(x)
        x = self.cbam(x)
        x = self.block(x)
        x = self.map_caller(x)
        x = self.coord(x)
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module")
def zoo_model() -> Zoo:
    torch.manual_seed(0)
    return Zoo().eval()


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(3, 3, 12, 10)


class InputsOf:
    """Test-side forward hooks that copy each watched module's input and output."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        modules = dict(model.named_modules())
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [modules[name].register_forward_hook(self._hook(name)) for name in names]

    def _hook(self, name: str):
        def hook(module, args, output):
            self.inputs[name] = args[0].detach().clone()
            self.outputs[name] = output.detach().clone()

        return hook

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


# --- gate discovery and naming -----------------------------------------------------------------


def test_finds_every_gate_named_after_its_attention_module(zoo_model, batch):
    cap = capture(zoo_model, batch, layers=[])
    assert list(cap.gates) == [
        "se",
        "cbam.ChannelGate",
        "cbam.SpatialGate",
        "block.se",
        "map_caller.attention",
        "coord#0",
        "coord#1",
    ]
    kinds = {name: gate.kind for name, gate in cap.gates.items()}
    assert kinds == {
        "se": "channel",
        "cbam.ChannelGate": "channel",
        "cbam.SpatialGate": "spatial",
        "block.se": "channel",
        "map_caller.attention": "spatial",
        "coord#0": "axis",
        "coord#1": "axis",
    }
    assert cap.gates["se"].function == "nn.Sigmoid"
    assert cap.gates["cbam.ChannelGate"].function in {"F.sigmoid", "Tensor.sigmoid"}
    assert cap.gates["cbam.SpatialGate"].function == "torch.sigmoid"
    assert cap.gates["coord#0"].shape == (3, 16, 12, 1)
    assert cap.gates["coord#1"].shape == (3, 16, 1, 10)


def test_silu_style_sigmoids_are_not_gates(zoo_model, batch):
    cap = capture(zoo_model, batch, layers=[])
    assert not any(name.startswith("stem") for name in cap.gates)


def test_gate_values_equal_an_independent_computation(zoo_model, batch):
    with InputsOf(zoo_model, ["se", "cbam.ChannelGate", "cbam.SpatialGate", "block.se", "map_caller", "coord"]) as seen:
        with torch.no_grad():
            zoo_model(batch)
    cap = capture(zoo_model, batch, layers=[])
    se, x = zoo_model.se, seen.inputs["se"]
    expected_se = se.fc(x.mean((2, 3)))
    torch.testing.assert_close(cap.gates["se"].values, expected_se)

    cg, x = zoo_model.cbam.ChannelGate, seen.inputs["cbam.ChannelGate"]
    expected_channel = torch.sigmoid(cg.mlp(x.mean((2, 3), keepdim=True)) + cg.mlp(x.amax((2, 3), keepdim=True)))
    torch.testing.assert_close(cap.gates["cbam.ChannelGate"].values, expected_channel)

    sg, x = zoo_model.cbam.SpatialGate, seen.inputs["cbam.SpatialGate"]
    expected_spatial = torch.sigmoid(sg.conv(torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1)))[:, 0]
    torch.testing.assert_close(cap.gates["cbam.SpatialGate"].values, expected_spatial)

    block_se, x = zoo_model.block.se, seen.inputs["block.se"]
    expected_block = torch.sigmoid(block_se.fc(x.mean((2, 3), keepdim=True))).flatten(1)
    torch.testing.assert_close(cap.gates["block.se"].values, expected_block)

    att, x = zoo_model.map_caller.attention, seen.inputs["map_caller"]
    expected_map = torch.sigmoid(att.conv(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))[:, 0]
    torch.testing.assert_close(cap.gates["map_caller.attention"].values, expected_map)

    coord, x = zoo_model.coord, seen.inputs["coord"]
    torch.testing.assert_close(cap.gates["coord#0"].values, torch.sigmoid(coord.conv_h(x.mean(3, keepdim=True))))
    torch.testing.assert_close(cap.gates["coord#1"].values, torch.sigmoid(coord.conv_w(x.mean(2, keepdim=True))))


def test_values_survive_in_place_operations_after_the_gate(zoo_model, batch):
    """The SE output is changed in place by `out += x` and ReLU(inplace); its gate is zeroed in place."""
    cap = capture(zoo_model, batch, layers=[])
    gate = cap.gates["block.se"]
    assert gate.gated_module == "block.se"
    assert gate.values.abs().min() > 0  # not the zeroed tensor
    before, after = cap.inputs["block.se"], cap.outputs["block.se"]
    torch.testing.assert_close(after, before * gate.values[:, :, None, None])
    with InputsOf(zoo_model, ["block.conv"]) as seen:
        with torch.no_grad():
            zoo_model(batch)
    torch.testing.assert_close(before, seen.outputs["block.conv"])


def test_map_returning_module_records_the_operands_and_product_of_the_multiplication(zoo_model, batch):
    """``x * self.attention(x)``: before/after are the multiplication's operand and product,
    whichever module performs it."""
    with InputsOf(zoo_model, ["map_caller"]) as seen:
        with torch.no_grad():
            zoo_model(batch)
    cap = capture(zoo_model, batch, layers=[])
    gate = cap.gates["map_caller.attention"]
    assert gate.gated_module == "map_caller.attention"
    torch.testing.assert_close(cap.inputs["map_caller.attention"], seen.inputs["map_caller"])
    torch.testing.assert_close(cap.outputs["map_caller.attention"], seen.outputs["map_caller"])


def test_features_before_and_after_every_gate(zoo_model, batch):
    cap = capture(zoo_model, batch, layers=[])
    for name in ("se", "cbam.ChannelGate", "block.se"):
        gate = cap.gates[name]
        torch.testing.assert_close(cap.outputs[name], cap.inputs[name] * gate.values[:, :, None, None])
    spatial = cap.gates["cbam.SpatialGate"]
    torch.testing.assert_close(
        cap.outputs["cbam.SpatialGate"], cap.inputs["cbam.SpatialGate"] * spatial.values[:, None]
    )


def test_predictions_match_the_model(zoo_model, batch):
    names = ["a", "b", "c", "d", "e"]
    cap = capture(zoo_model, batch, class_names=names)
    with torch.no_grad():
        logits = zoo_model(batch)
    torch.testing.assert_close(cap.logits, logits)
    probs = torch.softmax(logits, 1)
    top = cap.topk(1, k=3)
    assert [p.index for p in top] == probs[1].argsort(descending=True)[:3].tolist()
    assert top[0].label == names[top[0].index]
    assert top[0].prob == pytest.approx(float(probs[1].max()))


def test_chosen_feature_layers_hold_the_true_outputs(zoo_model, batch):
    cap = capture(zoo_model, batch, layers=["stem", "block"])
    with InputsOf(zoo_model, ["stem", "block"]) as seen:
        with torch.no_grad():
            zoo_model(batch)
    assert list(cap.features) == ["stem", "block"]
    torch.testing.assert_close(cap.features["block"], seen.outputs["block"])
    assert all(t.device.type == "cpu" for t in cap.features.values())


def test_default_feature_layers_are_stage_outputs_for_foreign_models():
    model = torchvision.models.resnet18(num_classes=3).eval()
    cap = capture(model, torch.randn(1, 3, 64, 64))
    assert list(cap.features) == ["relu", "layer1", "layer2", "layer3", "layer4"]
    assert cap.features["layer4"].shape == (1, 512, 2, 2)


def test_capture_can_be_limited_to_some_modules(zoo_model, batch):
    cap = capture(zoo_model, batch, layers=[], modules=["cbam"])
    assert list(cap.gates) == ["cbam.ChannelGate", "cbam.SpatialGate"]
    assert set(cap.inputs) == {"cbam.ChannelGate", "cbam.SpatialGate"}


def test_unknown_layer_is_a_usage_error_with_suggestions(zoo_model, batch):
    with pytest.raises(UsageError, match="did you mean block"):
        capture(zoo_model, batch, layers=["blok"])


# --- the model is left as it was ---------------------------------------------------------------


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_model_state_is_restored(batch):
    model = Zoo().train()
    model.head.weight.requires_grad_(False)
    with pytest.warns(UserWarning, match="training mode"):
        cap = capture(model, batch)
    assert model.training and all(m.training for m in model.modules())
    assert _hook_count(model) == 0
    assert not model.head.weight.requires_grad and model.head.bias.requires_grad
    assert len(cap.gates) == 7


def test_a_reused_capturer_follows_the_models_mode_between_batches():
    torch.manual_seed(0)
    model = build_model("se_cnn").eval()  # BatchNorm and dropout: training mode changes the logits
    images = torch.randn(4, 3, 32, 32)
    capturer = Capturer(model)
    reference = capturer(images)
    model.train()
    model.bn2.eval()  # a frozen BatchNorm of a model being fine-tuned
    before = {name: m.training for name, m in model.named_modules()}
    with pytest.warns(UserWarning, match="training mode"):
        again = capturer(images)
    assert {name: m.training for name, m in model.named_modules()} == before
    torch.testing.assert_close(again.logits, reference.logits)  # captured in eval mode
    with torch.no_grad():
        assert not torch.allclose(model(images), reference.logits)  # which the model's own mode is not


def test_a_reused_capturer_runs_a_module_added_later_in_eval_mode():
    torch.manual_seed(0)
    model = build_model("se_cnn").eval()
    images = torch.randn(4, 3, 32, 32)
    capturer = Capturer(model)
    capturer(images)
    model.fc2 = nn.Sequential(nn.Dropout(0.5), model.fc2)  # new modules start in training mode
    first, second = capturer(images), capturer(images)
    torch.testing.assert_close(first.logits, second.logits)  # no dropout: eval mode reached the new module
    assert model.fc2[0].training  # and its own mode is back


def test_model_state_is_restored_when_forward_raises():
    class Broken(Zoo):
        def forward(self, x):
            x = self.se(self.stem(x))
            raise RuntimeError("boom")

    model = Broken().train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CaptureError, match="boom"):
            capture(model, torch.randn(1, 3, 8, 8))
    assert model.training
    assert _hook_count(model) == 0
    # torch functions are plain again: no mode left active
    assert torch.overrides._get_current_function_mode_stack() == []


def test_capture_object_round_trip(zoo_model, batch, tmp_path):
    cap = capture(zoo_model, batch, layers=["block"])
    one = cap[2]
    assert one.batch_size == 1
    torch.testing.assert_close(one.gates["se"].values[0], cap.gates["se"].values[2])
    cap.save(tmp_path / "all.npz", image=2)
    import numpy as np

    arrays = np.load(tmp_path / "all.npz")
    np.testing.assert_allclose(arrays["gate/cbam.SpatialGate"], cap.gates["cbam.SpatialGate"].values[2].numpy())
    np.testing.assert_allclose(arrays["feature/block"], cap.features["block"][2].numpy())
    assert "in/block.se" in arrays and "out/block.se" in arrays
    assert "7 gates" in repr(cap) and "<table>" in cap._repr_html_()


# --- real models: torchvision and timm ---------------------------------------------------------


def _gate_from_features(before: torch.Tensor, after: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares estimate of g in ``after = before * g``: an independent way to read a gate.

    Returns the estimate and a mask of where it is defined (the features are not all zero).
    """
    dims = (2, 3) if kind == "channel" else 1
    before, after = before.double(), after.double()
    energy = (before * before).sum(dims)
    defined = energy > 1e-8 * energy.max()
    return ((after * before).sum(dims) / energy.clamp_min(1e-300)).float(), defined


def _with_live_batchnorm(model: nn.Module) -> nn.Module:
    """timm zero-initialises the last BN of each block; give every BN non-zero weights."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
    return model


REAL_MODELS = {
    "torchvision:efficientnet_b0": (
        lambda: torchvision.models.efficientnet_b0(num_classes=10),
        16,
        0,
        "SqueezeExcitation",
    ),
    "torchvision:mobilenet_v3_small": (
        lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
        9,
        0,
        "SqueezeExcitation",
    ),
    "torchvision:regnet_y_400mf": (
        lambda: torchvision.models.regnet_y_400mf(num_classes=10),
        16,
        0,
        "SqueezeExcitation",
    ),
    "timm:seresnet18": (lambda: timm.create_model("seresnet18", num_classes=10), 8, 0, "SEModule"),
    "timm:legacy_seresnet18": (lambda: timm.create_model("legacy_seresnet18", num_classes=10), 8, 0, "SEModule"),
    "timm:ecaresnet26t": (lambda: timm.create_model("ecaresnet26t", num_classes=10), 8, 0, "EcaModule"),
    "timm:resnet50-cbam": (
        lambda: timm.create_model("resnet50", num_classes=10, block_args=dict(attn_layer="cbam")),
        16,
        16,
        ("ChannelAttn", "SpatialAttn"),
    ),
}


@pytest.mark.parametrize("key", list(REAL_MODELS))
def test_real_models_gate_counts_names_and_values(key):
    factory, n_channel, n_spatial, attention_class = REAL_MODELS[key]
    torch.manual_seed(0)
    model = _with_live_batchnorm(factory()).eval()
    images = torch.randn(2, 3, 64, 64)
    classes = attention_class if isinstance(attention_class, tuple) else (attention_class,)
    attention_names = [name for name, m in model.named_modules() if type(m).__name__ in classes]
    with InputsOf(model, attention_names) as seen:
        with torch.no_grad():
            model(images)
    cap = capture(model, images, layers=[])
    assert len(cap.gates_of_kind("channel")) == n_channel
    assert len(cap.gates_of_kind("spatial")) == n_spatial
    assert not cap.gates_of_kind("other")
    # every gate is named after an attention module, never after the activation inside it
    assert sorted(gate.module for gate in cap.gates.values()) == sorted(attention_names)
    for gate in cap.gates.values():
        expected, defined = _gate_from_features(seen.inputs[gate.module], seen.outputs[gate.module], gate.kind)
        assert defined.float().mean() > 0.2
        torch.testing.assert_close(gate.values[defined], expected[defined], rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(cap.outputs[gate.gated_module], seen.outputs[gate.module])
    if key == "timm:ecaresnet26t":
        assert all(gate.shape[1] == 1 and len(gate.shape) == 3 for gate in cap.gates.values())
    if key == "torchvision:mobilenet_v3_small":
        assert {gate.function for gate in cap.gates.values()} == {"nn.Hardsigmoid"}
    torch.testing.assert_close(cap.logits, model(images).detach())


ZOO_ATTENTION = {
    "cnn": ((), 0, 0),
    "se_cnn": (("ChannelAttention",), 3, 0),
    "cbam_cnn": (("ChannelAttention", "SpatialAttention"), 3, 3),
    "densenet_se": (("SE_Block",), 58, 0),
    "resnet18_cbam": (("ChannelAttention", "SpatialAttention"), 4, 4),
    "resnet_se": (("SEModule",), 8, 0),
}


@pytest.mark.parametrize("arch", list(ZOO_ATTENTION))
def test_course_models_gates_and_features(arch):
    from attnviz.models import build_model, get_spec

    classes, n_channel, n_spatial = ZOO_ATTENTION[arch]
    torch.manual_seed(0)
    model = _with_live_batchnorm(build_model(arch)).eval()
    images = torch.randn(2, 3, 32, 32)
    attention_names = [name for name, m in model.named_modules() if type(m).__name__ in classes]
    layers = list(get_spec(arch).feature_layers)
    with InputsOf(model, attention_names + layers) as seen:
        with torch.no_grad():
            logits = model(images)
    cap = capture(model, images)
    assert len(cap.gates_of_kind("channel")) == n_channel
    assert len(cap.gates_of_kind("spatial")) == n_spatial
    assert sorted(g.module for g in cap.gates.values()) == sorted(attention_names)
    for gate in cap.gates.values():
        assert gate.gated_module == gate.module  # every zoo attention module returns x * gate
        expected, defined = _gate_from_features(seen.inputs[gate.module], seen.outputs[gate.module], gate.kind)
        assert defined.float().mean() > 0.2
        torch.testing.assert_close(gate.values[defined], expected[defined], rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(cap.inputs[gate.module], seen.inputs[gate.module])
        torch.testing.assert_close(cap.outputs[gate.module], seen.outputs[gate.module])
    assert list(cap.features) == layers
    for layer in layers:
        torch.testing.assert_close(cap.features[layer], seen.outputs[layer])
    torch.testing.assert_close(cap.logits, logits)


def test_capturer_is_reusable_across_batches(zoo_model):
    capturer = Capturer(zoo_model, layers=["block"])
    first = capturer(torch.randn(2, 3, 8, 8))
    second = capturer(torch.randn(4, 3, 8, 8))
    assert isinstance(first, Capture) and second.batch_size == 4
    assert second.gates["se"].values.shape == (4, 16)


def test_non_contiguous_images_capture_like_contiguous_ones():
    from attnviz.models import build_model

    torch.manual_seed(0)
    model = build_model("cbam_cnn").eval()  # the notebook's forward uses x.view(...)
    channels_last = torch.randn(2, 32, 32, 3).permute(0, 3, 1, 2)
    assert not channels_last.is_contiguous()
    first, second = capture(model, channels_last), capture(model, channels_last.contiguous())
    torch.testing.assert_close(first.logits, second.logits)
    torch.testing.assert_close(first.gates["cbam2.spatial_attn"].values, second.gates["cbam2.spatial_attn"].values)
