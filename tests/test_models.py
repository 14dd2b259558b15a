"""The model zoo: notebook parameter names, forward semantics, registry and inference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from attnviz.models import (
    CBAM,
    ResNet18_CBAM,
    build_model,
    compare_state_dict,
    get_spec,
    infer_architecture,
    list_architectures,
    nearest_architectures,
)
from attnviz.models.cifar_cnn import ChannelAttention as SEChannelAttention
from attnviz.models.densenet_se import SE_Block
from attnviz.models.resnet_se import ResidualBlock, SEModule
from attnviz.runtime.errors import ArchitectureError, CheckpointError

NAMES = ["cnn", "se_cnn", "cbam_cnn", "densenet_se", "resnet18_cbam", "resnet_se"]


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Give BatchNorm non-trivial statistics and affine values so eval outputs depend on them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                module.num_batches_tracked.fill_(seed)
    return model.eval()


@pytest.fixture(scope="module")
def zoo() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: _randomise(build_model(name), seed=i + 1) for i, name in enumerate(NAMES)}


@pytest.fixture(scope="module")
def batch() -> Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------- keys the notebooks produce


def _bn(prefix: str) -> set[str]:
    names = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    return {f"{prefix}.{s}" for s in names}


def _cnn_keys() -> set[str]:
    keys = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    for i in (1, 2, 3):
        keys |= {f"conv{i}.weight", f"conv{i}.bias"} | _bn(f"bn{i}")
    return keys


def _cbam_keys(prefix: str) -> set[str]:
    return {
        f"{prefix}.channel_attn.fc.0.weight",
        f"{prefix}.channel_attn.fc.2.weight",
        f"{prefix}.spatial_attn.conv.weight",
    }


def _resnet_se_keys() -> set[str]:
    keys = {"conv1.weight", "fc.weight", "fc.bias"} | _bn("bn1")
    for layer in (1, 2, 3, 4):
        for block in (0, 1):
            p = f"layer{layer}.{block}"
            keys |= {f"{p}.conv1.weight", f"{p}.conv2.weight"}
            keys |= {f"{p}.se.fc.0.weight", f"{p}.se.fc.2.weight"}
            keys |= _bn(f"{p}.bn1") | _bn(f"{p}.bn2")
            if layer > 1 and block == 0:  # stride 2 or a channel change: projection shortcut
                keys |= {f"{p}.shortcut.0.weight"} | _bn(f"{p}.shortcut.1")
    return keys


def _densenet_keys(block_config: tuple[int, ...] = (6, 12, 24, 16)) -> set[str]:
    keys = {"features.conv0.weight", "classifier.weight", "classifier.bias"}
    keys |= _bn("features.norm_final")
    for b, layers in enumerate(block_config, start=1):
        for n in range(1, layers + 1):
            p = f"features.denseblock{b}.denselayer{n}"
            keys |= _bn(f"{p}.norm1") | _bn(f"{p}.norm2")
            keys |= {f"{p}.conv1.weight", f"{p}.conv2.weight"}
            keys |= {f"{p}.SE_Block.fc.0.weight", f"{p}.SE_Block.fc.2.weight"}
        if b < len(block_config):
            keys |= _bn(f"features.transition{b}.norm") | {f"features.transition{b}.conv.weight"}
    return keys


def _resnet18_cbam_keys() -> set[str]:
    backbone = {f"backbone.{k}" for k in torchvision.models.resnet18(weights=None).state_dict()}
    return backbone | set().union(*(_cbam_keys(f"cbam_layer{i}") for i in (1, 2, 3, 4)))


EXPECTED_KEYS = {
    "cnn": _cnn_keys,
    "se_cnn": lambda: _cnn_keys() | {f"ca{i}.fc.{j}.weight" for i in (1, 2, 3) for j in (0, 2)},
    "cbam_cnn": lambda: _cnn_keys() | set().union(*(_cbam_keys(f"cbam{i}") for i in (1, 2, 3))),
    "densenet_se": _densenet_keys,
    "resnet18_cbam": _resnet18_cbam_keys,
    "resnet_se": _resnet_se_keys,
}


def test_registry_lists_the_course_architectures() -> None:
    assert list_architectures() == NAMES
    assert all(get_spec(name).preset == "cifar10" for name in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_are_the_notebooks(zoo: dict[str, nn.Module], name: str) -> None:
    assert set(zoo[name].state_dict()) == EXPECTED_KEYS[name]()


def test_notebook_shapes_of_telling_parameters(zoo: dict[str, nn.Module]) -> None:
    shapes = {n: {k: tuple(v.shape) for k, v in m.state_dict().items()} for n, m in zoo.items()}
    assert shapes["cbam_cnn"]["cbam1.channel_attn.fc.0.weight"] == (32 // 16, 32)
    assert shapes["cbam_cnn"]["cbam3.spatial_attn.conv.weight"] == (1, 2, 7, 7)
    assert shapes["cbam_cnn"]["fc1.weight"] == (512, 128 * 4 * 4)
    assert shapes["se_cnn"]["ca3.fc.2.weight"] == (128, 128 // 16)
    assert shapes["resnet18_cbam"]["backbone.conv1.weight"] == (64, 3, 3, 3)
    assert shapes["resnet18_cbam"]["backbone.fc.weight"] == (10, 512)
    assert shapes["resnet18_cbam"]["cbam_layer4.channel_attn.fc.0.weight"] == (512 // 16, 512)
    assert shapes["resnet_se"]["layer4.1.se.fc.0.weight"] == (512 // 16, 512)
    assert shapes["densenet_se"]["features.conv0.weight"] == (24, 3, 3, 3)
    assert shapes["densenet_se"]["features.denseblock2.denselayer3.SE_Block.fc.0.weight"] == (2, 32)
    assert not isinstance(zoo["resnet18_cbam"].backbone.maxpool, nn.MaxPool2d)


def test_cbam_cnn_has_the_parameter_count_the_notebook_prints(zoo: dict[str, nn.Module]) -> None:
    def conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
        return cin * cout * k * k + (cout if bias else 0)

    def cbam(c: int) -> int:
        return 2 * c * (c // 16) + conv(2, 1, 7, bias=False)

    by_hand = sum(conv(a, b, 3) + 2 * b + cbam(b) for a, b in ((3, 32), (32, 64), (64, 128)))
    by_hand += (2048 * 512 + 512) + (512 * 10 + 10)
    counted = sum(p.numel() for p in zoo["cbam_cnn"].parameters())
    assert by_hand == counted == 1_150_896


# ---------------------------------------------------------------- forward and round trip


@pytest.mark.parametrize("name", NAMES)
def test_forward_gives_one_logit_row_per_image(zoo: dict[str, nn.Module], batch: Tensor, name: str) -> None:
    with torch.no_grad():
        out = zoo[name](batch)
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_notebook_style_save_round_trips_strict(
    zoo: dict[str, nn.Module], batch: Tensor, name: str, tmp_path: Path
) -> None:
    path = tmp_path / f"{name}.pth"
    torch.save(zoo[name].state_dict(), path)
    loaded = torch.load(path, weights_only=True)
    assert infer_architecture(loaded) == (name, infer_architecture(zoo[name].state_dict())[1])
    fresh = build_model(name).eval()
    fresh.load_state_dict(loaded, strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(batch), zoo[name](batch))


# ---------------------------------------------------------------- attention modules by hand


def _se_gate(x: Tensor, w1: Tensor, w2: Tensor) -> Tensor:
    return torch.sigmoid(F.relu(x.mean(dim=(2, 3)) @ w1.T) @ w2.T)[:, :, None, None]


@pytest.mark.parametrize("cls", [SEChannelAttention, SE_Block, SEModule])
def test_se_modules_return_input_times_gate(cls: type[nn.Module]) -> None:
    torch.manual_seed(3)
    module = cls(64, 16).eval()
    x = torch.randn(2, 64, 5, 6)
    expected = x * _se_gate(x, module.fc[0].weight, module.fc[2].weight)
    with torch.no_grad():
        torch.testing.assert_close(module(x), expected)


def test_cbam_is_channel_then_spatial_gate() -> None:
    torch.manual_seed(4)
    module = CBAM(32, ratio=8, kernel_size=7).eval()
    x = torch.randn(2, 32, 9, 9)
    w1, w2 = module.channel_attn.fc[0].weight, module.channel_attn.fc[2].weight

    def mlp(v: Tensor) -> Tensor:
        return F.relu(v @ w1.T) @ w2.T

    y = x * torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.amax(dim=(2, 3))))[:, :, None, None]
    pooled = torch.stack([y.mean(dim=1), y.amax(dim=1)], dim=1)
    spatial = torch.sigmoid(F.conv2d(pooled, module.spatial_attn.conv.weight, padding=3))
    with torch.no_grad():
        torch.testing.assert_close(module(x), y * spatial)


def test_residual_block_adds_shortcut_after_se() -> None:
    torch.manual_seed(5)
    block = _randomise(ResidualBlock(16, 32, stride=2), seed=7)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        main = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
        main = main * _se_gate(main, block.se.fc[0].weight, block.se.fc[2].weight)
        expected = F.relu(main + block.shortcut[1](block.shortcut[0](x)))
        torch.testing.assert_close(block(x), expected)


def _first_shapes(model: nn.Module, names: list[str], batch: Tensor, of: str) -> dict[str, tuple[int, ...]]:
    """Shapes of each named module's first input (``of="input"``) or output in one forward."""
    modules = dict(model.named_modules())
    seen: dict[str, tuple[int, ...]] = {}

    def recorder(name: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            seen.setdefault(name, tuple((inputs[0] if of == "input" else output).shape))

        return hook

    handles = [modules[n].register_forward_hook(recorder(n)) for n in names]
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _input_shapes(model: nn.Module, names: list[str], batch: Tensor) -> dict[str, tuple[int, ...]]:
    return _first_shapes(model, names, batch, of="input")


def test_gates_sit_where_the_notebooks_put_them(zoo: dict[str, nn.Module], batch: Tensor) -> None:
    # CBAM_CNN: after each pool; ResNet18_CBAM: after each stage (shapes as the notebook notes).
    assert _input_shapes(zoo["cbam_cnn"], ["cbam1", "cbam3"], batch) == {
        "cbam1": (2, 32, 16, 16),
        "cbam3": (2, 128, 4, 4),
    }
    assert _input_shapes(zoo["resnet18_cbam"], ["cbam_layer1", "cbam_layer4"], batch) == {
        "cbam_layer1": (2, 64, 32, 32),
        "cbam_layer4": (2, 512, 4, 4),
    }
    # SE_CNN: between relu and pool by default, after the pool on request.
    assert _input_shapes(zoo["se_cnn"], ["ca1"], batch) == {"ca1": (2, 32, 32, 32)}
    after = build_model("se_cnn", attention_after_pool=True).eval()
    assert _input_shapes(after, ["ca1"], batch) == {"ca1": (2, 32, 16, 16)}


def test_se_cnn_placements_share_keys_but_not_outputs(zoo: dict[str, nn.Module], batch: Tensor) -> None:
    after = build_model("se_cnn", attention_after_pool=True).eval()
    after.load_state_dict(zoo["se_cnn"].state_dict(), strict=True)
    with torch.no_grad():
        assert not torch.allclose(after(batch), zoo["se_cnn"](batch))


# ---------------------------------------------------------------- feature layers and CAM layer


@pytest.mark.parametrize("name", NAMES)
def test_feature_and_cam_layers_are_4d_maps(zoo: dict[str, nn.Module], batch: Tensor, name: str) -> None:
    spec = get_spec(name)
    model = zoo[name]
    modules = dict(model.named_modules())
    wanted = [*spec.feature_layers, spec.cam_layer]
    assert all(layer in modules for layer in wanted)
    assert spec.feature_layers_in(model) == spec.feature_layers
    outputs = _first_shapes(model, wanted, batch, of="output")
    assert all(len(outputs[n]) == 4 and outputs[n][0] == 2 for n in wanted)
    assert outputs[spec.cam_layer][2:] == (4, 4)  # the last map before global pooling / flatten


def test_feature_layers_follow_densenet_block_config() -> None:
    model = build_model("densenet_se", growth_rate=16, block_config=(2, 2, 2), num_init_features=16)
    expected = ("features.denseblock1", "features.denseblock2", "features.denseblock3")
    assert get_spec("densenet_se").feature_layers_in(model) == expected


# ---------------------------------------------------------------- inference


NON_DEFAULT = {
    "cnn": {"num_classes": 7},
    "se_cnn": {"num_classes": 7, "reduction_ratio": 8},
    "cbam_cnn": {"num_classes": 7, "ratio": 8, "kernel_size": 3},
    "densenet_se": {
        "num_classes": 7,
        "growth_rate": 16,
        "block_config": (2, 3, 2),
        "num_init_features": 16,
        "compression": 0.6,
        "bn_size": 2,
        "small_inputs": False,
        "reduction": 4,
        "se_after_transition": True,
    },
    "resnet18_cbam": {"num_classes": 7, "cbam_ratio": 8, "cbam_kernel": 5},
    "resnet_se": {"num_classes": 7, "reduction": 8},
}


@pytest.mark.parametrize("name", NAMES)
def test_infer_architecture_reads_non_default_hyper_parameters(name: str) -> None:
    torch.manual_seed(6)
    kwargs = NON_DEFAULT[name]
    state_dict = dict(build_model(name, **kwargs).state_dict())
    keys_before = list(state_dict)
    inferred_name, inferred = infer_architecture(state_dict)
    assert inferred_name == name
    assert {k: inferred[k] for k in kwargs} == kwargs
    build_model(inferred_name, **inferred).load_state_dict(state_dict, strict=True)
    assert list(state_dict) == keys_before
    assert nearest_architectures(state_dict, k=1) == [(name, 1.0)]


def test_infer_architecture_names_the_nearest_when_a_layer_is_renamed(
    zoo: dict[str, nn.Module],
) -> None:
    renamed = {k.replace("cbam2.", "cbam_2."): v for k, v in zoo["cbam_cnn"].state_dict().items()}
    with pytest.raises(ArchitectureError) as info:
        infer_architecture(renamed)
    message = str(info.value)
    assert "\n" not in message
    assert "nearest: cbam_cnn" in message
    assert "missing cbam2.channel_attn.fc.0.weight" in message
    assert "unexpected cbam_2.channel_attn.fc.0.weight" in message
    ranked = nearest_architectures(renamed)
    assert len(ranked) == 3 and ranked[0][0] == "cbam_cnn"
    assert 0.0 < ranked[0][1] < 1.0
    assert all(0.0 <= score <= 1.0 for _, score in ranked)


def test_infer_architecture_hints_at_a_wrapper_prefix(zoo: dict[str, nn.Module]) -> None:
    wrapped = {f"module.{k}": v for k, v in zoo["cnn"].state_dict().items()}
    with pytest.raises(ArchitectureError, match="starts with 'module.'"):
        infer_architecture(wrapped)


@pytest.mark.parametrize("bad", [{}, ["conv1.weight"], {"conv1.weight": "not a tensor"}])
def test_infer_architecture_rejects_non_state_dicts(bad: object) -> None:
    with pytest.raises(ArchitectureError):
        infer_architecture(bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------- compare, registry errors


def test_compare_state_dict_agrees_with_a_strict_load(zoo: dict[str, nn.Module]) -> None:
    model = build_model("cnn")
    other = dict(build_model("cnn", num_classes=5).state_dict())
    del other["bn1.running_var"]
    other["extra.weight"] = torch.zeros(1)
    other["conv1.bias"] = "not a tensor"
    diff = compare_state_dict(model, other)
    assert diff.missing == ("bn1.running_var",)
    assert diff.unexpected == ("extra.weight",)
    assert set(diff.wrong_shape) == {
        ("conv1.bias", (32,), None),
        ("fc2.weight", (10, 512), (5, 512)),
        ("fc2.bias", (10,), (5,)),
    }
    assert not diff.ok
    assert len(diff.describe().splitlines()) == 5
    assert diff.describe(limit=2).splitlines()[-1] == "... and 3 more"
    with pytest.raises(RuntimeError):
        model.load_state_dict(other, strict=True)
    assert compare_state_dict(model, zoo["cnn"].state_dict()).ok


def test_unknown_architecture_suggests_close_names() -> None:
    pattern = r"unknown architecture 'cbamcnn'; known: cnn, .*did you mean 'cbam_cnn'"
    with pytest.raises(ArchitectureError, match=pattern):
        get_spec("cbamcnn")


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("nope", {}),
        ("cnn", {"ratio": 16}),
        ("cnn", {"num_classes": 0}),
        ("densenet_se", {"compression": 1.5}),
    ],
)
def test_build_model_rejects_bad_requests(name: str, kwargs: dict) -> None:
    with pytest.raises(ArchitectureError):
        build_model(name, **kwargs)


# ---------------------------------------------------------------- ResNet18_CBAM ImageNet weights


def test_resnet18_cbam_loads_local_imagenet_weights(tmp_path: Path) -> None:
    torch.manual_seed(8)
    imagenet = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(imagenet, path)
    model = ResNet18_CBAM(num_classes=10, weights=str(path))
    own = model.state_dict()
    assert torch.equal(own["backbone.layer3.1.conv2.weight"], imagenet["layer3.1.conv2.weight"])
    assert torch.equal(own["backbone.bn1.running_var"], imagenet["bn1.running_var"])
    assert own["backbone.conv1.weight"].shape == (64, 3, 3, 3)  # replaced after loading
    assert own["backbone.fc.weight"].shape == (10, 512)


def test_resnet18_cbam_weights_errors(tmp_path: Path, zoo: dict[str, nn.Module]) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        ResNet18_CBAM(weights=tmp_path / "missing.pth")
    wrong = tmp_path / "cnn.pth"
    torch.save(zoo["cnn"].state_dict(), wrong)
    with pytest.raises(ArchitectureError, match="not a torchvision resnet18 state_dict"):
        ResNet18_CBAM(weights=wrong)
