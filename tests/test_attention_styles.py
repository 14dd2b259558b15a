"""Attention as the wild writes it: BAM's full-size gates, hand-written hard sigmoids, maps returned
to a residual block, reused layers, softmax attention (GC, SK), coordinate attention; and the
planned capture that later batches use. Every value is checked against an independent
computation in the test."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from attnviz.capturing.capturer import Capturer, capture
from attnviz.models import build_model

timm = pytest.importorskip("timm")


class Recorder:
    """Test-side forward hooks copying each watched module's input and output."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        modules = dict(model.named_modules())
        self.inputs: dict[str, list[torch.Tensor]] = {}
        self.outputs: dict[str, list[torch.Tensor]] = {}
        self.handles = [modules[name].register_forward_hook(self._hook(name)) for name in names]

    def _hook(self, name: str):
        def hook(module, args, output):
            self.inputs.setdefault(name, []).append(args[0].detach().clone())
            self.outputs.setdefault(name, []).append(output.detach().clone())

        return hook

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def run_watched(model: nn.Module, images: torch.Tensor, names: list[str]) -> Recorder:
    with Recorder(model, names) as seen, torch.no_grad():
        model(images)
    return seen


# --- BAM (official code's style): x * (1 + sigmoid(channel + spatial)), a [B,C,H,W] gate -------


class BamChannel(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Flatten(), nn.Linear(channels, channels // 2), nn.ReLU(), nn.Linear(channels // 2, channels)
        )

    def forward(self, x):
        pooled = F.avg_pool2d(x, x.size(2), stride=x.size(2))
        return self.mlp(pooled).unsqueeze(2).unsqueeze(3).expand_as(x)


class BamSpatial(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // 2, 1)
        self.dilated = nn.Conv2d(channels // 2, channels // 2, 3, padding=2, dilation=2)
        self.final = nn.Conv2d(channels // 2, 1, 1)

    def forward(self, x):
        return self.final(F.relu(self.dilated(F.relu(self.reduce(x))))).expand_as(x)


class BAM(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channel_att = BamChannel(channels)
        self.spatial_att = BamSpatial(channels)

    def forward(self, in_tensor):
        att = 1 + F.sigmoid(self.channel_att(in_tensor) + self.spatial_att(in_tensor))
        return att * in_tensor


class SwishByHand(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class ScaledSwish(nn.Module):
    """GELU's sigmoid approximation: the sigmoid's input is a scaled copy of what it multiplies."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class BamNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.act = SwishByHand()
        self.gelu = ScaledSwish()
        self.bam = BAM(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.gelu(self.act(self.stem(x)))
        return self.head(self.bam(x).mean((2, 3)))


def test_bam_full_size_gate_is_found_with_its_operands_and_product():
    torch.manual_seed(0)
    model = BamNet().eval()
    images = torch.randn(3, 3, 10, 12)
    seen = run_watched(model, images, ["bam", "bam.channel_att", "bam.spatial_att"])
    cap = capture(model, images, layers=[])
    assert list(cap.gates) == ["bam"]  # the two SiLU-style sigmoids are activations
    gate = cap.gates["bam"]
    assert gate.kind == "full" and gate.values.shape == (3, 8, 10, 12)
    expected = torch.sigmoid(seen.outputs["bam.channel_att"][0] + seen.outputs["bam.spatial_att"][0])
    torch.testing.assert_close(gate.values, expected)
    torch.testing.assert_close(cap.inputs["bam"], seen.inputs["bam"][0])
    torch.testing.assert_close(cap.outputs["bam"], seen.outputs["bam"][0])
    assert cap.findings, "the activations are counted"


def test_timm_gather_excite_with_extent_gives_full_size_gates():
    from timm.layers.gather_excite import GatherExcite

    torch.manual_seed(0)
    attn = partial(GatherExcite, extent=2, use_mlp=False)
    model = timm.create_model("resnet18", num_classes=10, block_args=dict(attn_layer=attn)).eval()
    images = torch.randn(2, 3, 64, 64)
    names = [name for name, m in model.named_modules() if isinstance(m, GatherExcite)]
    seen = run_watched(model, images, names)
    cap = capture(model, images, layers=[])
    assert sorted(g.module for g in cap.gates.values()) == sorted(names)
    assert len(cap.gates_of_kind("full")) == 6  # the last stage's 2x2 maps pool to one value: channel gates
    for name in names:
        x = seen.inputs[name][0]
        pooled = F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)
        if pooled.shape[-2:] != (1, 1):
            pooled = F.interpolate(pooled, size=x.shape[-2:])
        expected = torch.sigmoid(pooled)
        gate = cap.gates[name]
        assert gate.kind == ("full" if expected.shape[-1] > 1 else "channel")
        torch.testing.assert_close(gate.values.reshape(expected.shape), expected)
        torch.testing.assert_close(cap.outputs[name], seen.outputs[name][0])


# --- hand-written hard sigmoids: relu6(x + 3) / 6 ----------------------------------------------


class HSigmoidModule(nn.Module):
    """mobilenetv3.pytorch's h_sigmoid."""

    def __init__(self, inplace: bool = True) -> None:
        super().__init__()
        self.relu = nn.ReLU6(inplace=inplace)

    def forward(self, x):
        return self.relu(x + 3) / 6


class HSwish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.sigmoid = HSigmoidModule()

    def forward(self, x):
        return x * self.sigmoid(x)


class HardSE(nn.Module):
    def __init__(self, channels: int, style: str) -> None:
        super().__init__()
        self.style = style
        self.fc1 = nn.Linear(channels, channels // 2)
        self.fc2 = nn.Linear(channels // 2, channels)
        self.gate = HSigmoidModule()

    def hard_sigmoid(self, y):
        if self.style == "module":
            return self.gate(y)
        if self.style == "relu6":
            return F.relu6(y + 3.0) / 6.0
        return torch.clamp(3 + y, 0, 6) * (1 / 6)

    def forward(self, x):
        b, c, _, _ = x.shape
        y = self.fc2(F.relu(self.fc1(x.mean((2, 3)))))
        return x * self.hard_sigmoid(y).view(b, c, 1, 1)


class HardNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.act = HSwish()
        self.se_module = HardSE(8, "module")
        self.se_relu6 = HardSE(8, "relu6")
        self.se_clamp = HardSE(8, "clamp")
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.act(self.stem(x))
        x = self.se_clamp(self.se_relu6(self.se_module(x)))
        return self.head(x.mean((2, 3)))


def test_hand_written_hard_sigmoids_are_gates_and_hard_swish_is_not():
    torch.manual_seed(0)
    model = HardNet().eval()
    images = torch.randn(2, 3, 9, 9)
    names = ["se_module", "se_relu6", "se_clamp"]
    seen = run_watched(model, images, names)
    cap = capture(model, images, layers=[])
    assert list(cap.gates) == names
    for name in names:
        module, x = getattr(model, name), seen.inputs[name][0]
        expected = F.hardsigmoid(module.fc2(F.relu(module.fc1(x.mean((2, 3))))))
        gate = cap.gates[name]
        assert gate.kind == "channel" and gate.function == "hard sigmoid: relu6(x + 3) / 6"
        torch.testing.assert_close(gate.values, expected)
        torch.testing.assert_close(cap.outputs[name], seen.outputs[name][0])


# --- a module returning its map, applied by a downsampling residual block (CBAM.PyTorch) ------


class ChannelMap(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // 2, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // 2, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        avg = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        mx = self.fc2(F.relu(self.fc1(F.adaptive_max_pool2d(x, 1))))
        return self.sigmoid(avg + mx)


class SpatialMapOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, 7, padding=3, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        pooled = torch.cat([torch.mean(x, dim=1, keepdim=True), torch.max(x, dim=1, keepdim=True)[0]], dim=1)
        return self.sigmoid(self.conv1(pooled))


class DownBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.ca = ChannelMap(planes)
        self.sa = SpatialMapOnly()
        self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=2, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.ca(out) * out
        out = self.sa(out) * out
        residual = self.downsample(x)
        out += residual
        return self.relu(out)


class DownNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layer1 = DownBlock(8, 16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.layer1(self.stem(x)).mean((2, 3)))


def test_map_returning_modules_in_a_downsampling_block_record_the_multiplications():
    torch.manual_seed(0)
    model = DownNet().eval()
    images = torch.randn(2, 3, 16, 16)
    seen = run_watched(model, images, ["layer1.bn2", "layer1.ca", "layer1.sa"])
    cap = capture(model, images, layers=[])
    assert list(cap.gates) == ["layer1.ca", "layer1.sa"]
    bn2 = seen.outputs["layer1.bn2"][0]
    channel = seen.outputs["layer1.ca"][0]
    gated = bn2 * channel
    torch.testing.assert_close(cap.gates["layer1.ca"].values, channel.flatten(1))
    torch.testing.assert_close(cap.inputs["layer1.ca"], bn2)
    torch.testing.assert_close(cap.outputs["layer1.ca"], gated)
    torch.testing.assert_close(cap.inputs["layer1.sa"], gated)
    torch.testing.assert_close(cap.outputs["layer1.sa"], gated * seen.outputs["layer1.sa"][0])
    assert cap.outputs["layer1.sa"].shape == (2, 16, 8, 8)


# --- a layer called twice ------------------------------------------------------------------------


def test_a_reused_layer_is_recorded_per_call_keeping_the_feature_maps():
    from attnviz.models import build_model

    torch.manual_seed(0)
    model = build_model("se_cnn").eval()  # the course's SE code applies relu3 to conv3 and to fc1
    images = torch.randn(2, 3, 32, 32)
    seen = run_watched(model, images, ["relu3"])
    assert len(seen.outputs["relu3"]) == 2
    cap = capture(model, images, layers=["relu3"])
    assert list(cap.features) == ["relu3#0"]
    torch.testing.assert_close(cap.features["relu3#0"], seen.outputs["relu3"][0])


# --- nothing found, said plainly -----------------------------------------------------------------


class PlainNet(nn.Module):
    def __init__(self, softmax_head: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = SwishByHand()
        self.fc = nn.Linear(4, 3)
        self.softmax_head = softmax_head

    def forward(self, x):
        logits = self.fc(self.act(self.conv(x)).mean((2, 3)))
        return logits.softmax(1) if self.softmax_head else logits


def test_nothing_found_says_what_was_seen():
    images = torch.randn(2, 3, 8, 8)
    cap = capture(PlainNet().eval(), images)
    assert not cap.gates
    assert "1 sigmoid(s) treated as activations" in cap.nothing_found()
    cap = capture(PlainNet(softmax_head=True).eval(), images)
    assert "1 softmax call(s) that weight neither" in cap.nothing_found()
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    assert capture(plain.eval(), images).nothing_found() == (
        "no attention gates found: the model calls no sigmoid or softmax"
    )
    with_gates = capture(BamNet().eval(), torch.randn(1, 3, 8, 8))
    assert with_gates.nothing_found() is None


# --- softmax attention: global context (positions) and selective kernel (branches) ---------------


class GCBlock(nn.Module):
    """The official GCNet code's attention pooling: softmax over the H*W positions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_mask = nn.Conv2d(channels, 1, 1)
        self.softmax = nn.Softmax(dim=2)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, channels // 2, 1), nn.ReLU(), nn.Conv2d(channels // 2, channels, 1)
        )

    def forward(self, x):
        batch, channel, height, width = x.size()
        content = x.view(batch, channel, height * width).unsqueeze(1)
        mask = self.softmax(self.conv_mask(x).view(batch, 1, height * width)).unsqueeze(-1)
        context = torch.matmul(content, mask).view(batch, channel, 1, 1)
        return x + self.transform(context)


class SKBlock(nn.Module):
    """Selective kernel: two branches weighted per channel by a softmax over branches."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList([nn.Conv2d(channels, channels, k, padding=k // 2) for k in (3, 5)])
        self.fc = nn.Linear(channels, channels // 2)
        self.fcs = nn.ModuleList([nn.Linear(channels // 2, channels) for _ in range(2)])
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        feats = torch.stack([branch(x) for branch in self.branches], dim=1)
        z = F.relu(self.fc(feats.sum(1).mean((2, 3))))
        weights = self.softmax(torch.stack([fc(z) for fc in self.fcs], dim=1))
        return (feats * weights[..., None, None]).sum(1)


class SoftmaxNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.gc = GCBlock(8)
        self.sk = SKBlock(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.sk(self.gc(self.stem(x))).mean((2, 3)))


def test_gc_and_sk_softmax_attention_are_captured_with_their_values():
    torch.manual_seed(0)
    model = SoftmaxNet().eval()
    images = torch.randn(2, 3, 6, 7)
    seen = run_watched(model, images, ["gc", "sk"])
    cap = capture(model, images, layers=[])
    assert {name: gate.kind for name, gate in cap.gates.items()} == {"gc": "spatial", "sk": "branch"}
    x = seen.inputs["gc"][0]
    expected = torch.softmax(model.gc.conv_mask(x).flatten(1), dim=1).view(2, 6, 7)
    torch.testing.assert_close(cap.gates["gc"].values, expected)
    assert cap.gates["gc"].gated_module is None
    x = seen.inputs["sk"][0]
    feats = torch.stack([branch(x) for branch in model.sk.branches], dim=1)
    z = F.relu(model.sk.fc(feats.sum(1).mean((2, 3))))
    expected = torch.softmax(torch.stack([fc(z) for fc in model.sk.fcs], dim=1), dim=1)
    torch.testing.assert_close(cap.gates["sk"].values, expected)
    torch.testing.assert_close(cap.gates["sk"].values.sum(1), torch.ones(2, 8))


@pytest.mark.parametrize("name", ["gcresnet33ts", "skresnet18"])
def test_timm_gc_and_sk_models(name):
    from timm.layers.global_context import GlobalContext
    from timm.layers.selective_kernel import SelectiveKernel

    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).eval()
    images = torch.randn(2, 3, 64, 64)
    cls = GlobalContext if name.startswith("gc") else SelectiveKernel
    names = [n for n, m in model.named_modules() if isinstance(m, cls)]
    seen = run_watched(model, images, names)
    cap = capture(model, images, layers=[])
    attention = {g.module: g for g in cap.gates.values() if g.kind in ("spatial", "branch")}
    assert sorted(attention) == sorted(names)
    for module_name in names:
        module, x = dict(model.named_modules())[module_name], seen.inputs[module_name][0]
        if cls is GlobalContext:
            expected = torch.softmax(module.conv_attn(x).flatten(1), dim=1).view(x.shape[0], *x.shape[-2:])
        else:
            inputs = torch.split(x, x.shape[1] // len(module.paths), 1) if module.split_input else [x] * 2
            paths = torch.stack([path(part) for path, part in zip(module.paths, inputs)], dim=1)
            expected = module.attn(paths).flatten(2)
        torch.testing.assert_close(attention[module_name].values, expected)
    torch.testing.assert_close(cap.logits, model(images).detach())


# --- coordinate attention (the official CoordAttention code) -------------------------------------


class CoordAtt(nn.Module):
    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        mip = max(4, channels // reduction)
        self.pool_h = nn.AdaptiveAvgPool2d((None, 1))
        self.pool_w = nn.AdaptiveAvgPool2d((1, None))
        self.conv1 = nn.Conv2d(channels, mip, 1)
        self.bn1 = nn.BatchNorm2d(mip)
        self.act = HSwish()
        self.conv_h = nn.Conv2d(mip, channels, 1)
        self.conv_w = nn.Conv2d(mip, channels, 1)

    def forward(self, x):
        identity = x
        n, c, h, w = x.size()
        x_h = self.pool_h(x)
        x_w = self.pool_w(x).permute(0, 1, 3, 2)
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        x_h, x_w = torch.split(y, [h, w], dim=2)
        a_h = self.conv_h(x_h).sigmoid()
        a_w = self.conv_w(x_w.permute(0, 1, 3, 2)).sigmoid()
        return identity * a_w * a_h


def test_coordinate_attention_gates_are_axis_gates_with_the_right_features():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), CoordAtt(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)
    )
    model.eval()
    images = torch.randn(2, 3, 6, 5)
    seen = run_watched(model, images, ["1", "1.act"])
    cap = capture(model, images, layers=[])
    assert {n: g.kind for n, g in cap.gates.items()} == {"1#0": "axis", "1#1": "axis"}
    coord, y = model[1], seen.outputs["1.act"][0]
    a_h = torch.sigmoid(coord.conv_h(y[:, :, :6]))
    a_w = torch.sigmoid(coord.conv_w(y[:, :, 6:].permute(0, 1, 3, 2)))
    torch.testing.assert_close(cap.gates["1#0"].values, a_h)
    torch.testing.assert_close(cap.gates["1#1"].values, a_w)
    x = seen.inputs["1"][0]
    # the code multiplies by a_w first: the gate computed second is applied first
    torch.testing.assert_close(cap.inputs["1#1"], x)
    torch.testing.assert_close(cap.outputs["1#1"], x * a_w)
    torch.testing.assert_close(cap.outputs["1#0"], x * a_w * a_h)


class CoordAttGrouped(CoordAtt):
    """The same gates applied as one product: ``x * (a_h * a_w)``."""

    def forward(self, x):
        n, c, h, w = x.size()
        y = self.act(self.bn1(self.conv1(torch.cat([self.pool_h(x), self.pool_w(x).permute(0, 1, 3, 2)], dim=2))))
        x_h, x_w = torch.split(y, [h, w], dim=2)
        return x * (self.conv_h(x_h).sigmoid() * self.conv_w(x_w.permute(0, 1, 3, 2)).sigmoid())


def test_gates_multiplied_together_before_gating_are_both_gates():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), CoordAttGrouped(8), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model.eval()
    images = torch.randn(2, 3, 6, 5)
    seen = run_watched(model, images, ["1"])
    cap = capture(model, images, layers=[])
    assert {n: g.kind for n, g in cap.gates.items()} == {"1#0": "axis", "1#1": "axis"}
    for name in ("1#0", "1#1"):
        torch.testing.assert_close(cap.inputs[name], seen.inputs["1"][0])
        torch.testing.assert_close(cap.outputs[name], seen.outputs["1"][0])
    torch.testing.assert_close(
        cap.outputs["1#0"], seen.inputs["1"][0] * cap.gates["1#0"].values * cap.gates["1#1"].values
    )


# --- planned passes: later batches hook the attention modules alone ------------------------------


def _same_capture(first, second) -> None:
    assert list(first.gates) == list(second.gates)
    for name, gate in first.gates.items():
        other = second.gates[name]
        assert (gate.kind, gate.module, gate.function, gate.gated_module) == (
            other.kind,
            other.module,
            other.function,
            other.gated_module,
        )
        torch.testing.assert_close(gate.values, other.values)
    for group in ("inputs", "outputs", "features"):
        assert list(getattr(first, group)) == list(getattr(second, group))
        for key, tensor in getattr(first, group).items():
            torch.testing.assert_close(tensor, getattr(second, group)[key])
    torch.testing.assert_close(first.logits, second.logits)


@pytest.mark.parametrize("factory", [BamNet, HardNet, DownNet, SoftmaxNet], ids=lambda f: f.__name__)
def test_later_batches_use_the_plan_and_capture_the_same_values(factory):
    torch.manual_seed(0)
    model = factory().eval()
    capturer = Capturer(model, layers=None)
    capturer(torch.randn(2, 3, 12, 12))
    assert capturer.last_pass == "discovery"
    images = torch.randn(3, 3, 12, 12)
    planned = capturer(images)
    assert capturer.last_pass == "planned"
    _same_capture(planned, capture(model, images))


def test_the_plan_hooks_only_the_attention_modules_of_a_timm_cbam_resnet():
    torch.manual_seed(0)
    model = timm.create_model("resnet26", num_classes=10, block_args=dict(attn_layer="cbam")).eval()
    capturer = Capturer(model, layers=[])
    capturer(torch.randn(1, 3, 64, 64))
    attention = {n for n, m in model.named_modules() if type(m).__name__ in ("ChannelAttn", "SpatialAttn")}
    assert set(capturer._plan.roots) == attention
    images = torch.randn(2, 3, 64, 64)
    planned = capturer(images)
    assert capturer.last_pass == "planned"
    _same_capture(planned, capture(model, images, layers=[]))


GATES_ONLY_MODELS = {  # (model, input side)
    "timm:resnet26-cbam": (
        lambda: timm.create_model("resnet26", num_classes=10, block_args=dict(attn_layer="cbam")),
        64,
    ),
    "torchvision:efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(num_classes=10), 64),
    "se_cnn": (lambda: build_model("se_cnn"), 32),
}


@pytest.mark.parametrize("key", list(GATES_ONLY_MODELS))
def test_gates_only_batches_hook_the_sigmoid_modules_alone(key):
    torch.manual_seed(0)
    factory, side = GATES_ONLY_MODELS[key]
    model = factory().eval()
    capturer = Capturer(model, feature_images=0)
    capturer(torch.randn(1, 3, side, side))
    sigmoids = {n for n, m in model.named_modules() if type(m).__name__ in ("Sigmoid", "Hardsigmoid")}
    assert set(capturer._plan.leaf_calls) == sigmoids
    images = torch.randn(3, 3, side, side)
    fast = capturer(images)
    assert capturer.last_pass == "gates"
    assert not fast.inputs and not fast.features
    _same_capture(fast, capture(model, images, feature_images=0))


def test_gates_only_falls_back_when_a_gate_has_no_sigmoid_module():
    torch.manual_seed(0)
    model = HardNet().eval()
    capturer = Capturer(model, feature_images=0)
    capturer(torch.randn(1, 3, 9, 9))
    assert capturer._plan.leaf_calls is None
    images = torch.randn(2, 3, 9, 9)
    cap = capturer(images)
    assert capturer.last_pass == "planned"
    _same_capture(cap, capture(model, images, feature_images=0))


class Branchy(nn.Module):
    """Data-dependent control flow: a second gate only for batches of more than two images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 4, 1), nn.Sigmoid())
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = self.conv(x)
        x = x * self.se(x)
        if x.shape[0] > 2:
            x = x * self.se(x)
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("feature_images", [8, 0])
def test_a_pass_that_differs_from_the_plan_is_captured_by_discovery(feature_images):
    model = Branchy().eval()
    capturer = Capturer(model, layers=[], feature_images=feature_images)
    assert list(capturer(torch.randn(2, 3, 6, 6)).gates) == ["se"]
    images = torch.randn(3, 3, 6, 6)
    cap = capturer(images)
    assert capturer.last_pass == "discovery"
    assert list(cap.gates) == ["se#0", "se#1"]
    _same_capture(cap, capture(model, images, layers=[], feature_images=feature_images))


def test_features_are_recorded_for_the_first_images_and_gates_for_all():
    torch.manual_seed(0)
    model = DownNet().eval()
    images = torch.randn(5, 3, 16, 16)
    full = capture(model, images, feature_images=None)
    for limited in (capture(model, images, feature_images=2), Capturer(model, feature_images=2)(images)):
        assert limited.gates["layer1.ca"].values.shape[0] == 5
        assert limited.inputs["layer1.ca"].shape[0] == 2
        torch.testing.assert_close(limited.inputs["layer1.ca"], full.inputs["layer1.ca"][:2])
        torch.testing.assert_close(limited.features["layer1"], full.features["layer1"][:2])
        assert "in/layer1.ca" in limited.arrays(1) and "in/layer1.ca" not in limited.arrays(3)
        assert "gate/layer1.ca" in limited.arrays(3)
        assert not limited[4].inputs and limited[1].inputs["layer1.ca"].shape[0] == 1
    assert capture(model, images).inputs["layer1.ca"].shape[0] == 5  # the default records up to 8


# --- the paths a GPU takes, on the CPU: channels-last and bfloat16 autocast ----------------------


def test_channels_last_models_and_inputs_capture_the_same_values():
    torch.manual_seed(0)
    model = timm.create_model("resnet26", num_classes=10, block_args=dict(attn_layer="cbam")).eval()
    images = torch.randn(2, 3, 64, 64)
    reference = capture(model, images, layers=[])
    model = model.to(memory_format=torch.channels_last)
    capturer = Capturer(model, layers=[])
    for _ in range(2):  # discovery, then planned
        cap = capturer(images.to(memory_format=torch.channels_last))
        _same_capture(cap, reference)
    assert capturer.last_pass == "planned"


def test_bfloat16_autocast_capture_holds_what_the_model_computed():
    torch.manual_seed(0)
    model = DownNet().eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        seen = run_watched(model, images, ["layer1.ca", "layer1.sa"])
        capturer = Capturer(model, layers=[])
        caps = [capturer(images), capturer(images)]
    assert capturer.last_pass == "planned"
    for cap in caps:
        gate = cap.gates["layer1.ca"]
        assert gate.values.dtype == seen.outputs["layer1.ca"][0].dtype
        torch.testing.assert_close(gate.values, seen.outputs["layer1.ca"][0].flatten(1))
        torch.testing.assert_close(cap.gates["layer1.sa"].values, seen.outputs["layer1.sa"][0][:, 0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the device check runs it)")
@pytest.mark.parametrize("feature_images", [8, 0])
def test_cuda_capture_waits_for_the_device_at_most_once(feature_images):
    import warnings

    torch.manual_seed(0)
    model = timm.create_model("resnet26", num_classes=10, block_args=dict(attn_layer="cbam")).cuda().eval()
    images = torch.randn(4, 3, 64, 64, device="cuda")
    capturer = Capturer(model, feature_images=feature_images)
    reference = capturer(images)  # discovery (finds the stage outputs with a probe forward)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            planned = capturer(images)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 1, [str(w.message) for w in syncs]  # one wait for the one transfer, none per gate
    assert capturer.last_pass == ("planned" if feature_images else "gates")
    _same_capture(planned, reference)
