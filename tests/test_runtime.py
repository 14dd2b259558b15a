"""The bottom floor for running a user's model (attnviz.runtime.model), and its adoption above.

Each helper is checked against an independent computation; the last tests check that every
layer which runs a model in eval mode gives back a frozen (eval) BatchNorm of a training model
still frozen, which restoring only the top-level flag did not.
"""

from __future__ import annotations

import os
import re
import warnings

import pytest
import torch
from torch import nn

from attnviz.runtime.errors import AttnvizError, CaptureError, UsageError, describe, did_you_mean, first_line
from attnviz.runtime.model import (
    eval_mode,
    find_module,
    first_tensor,
    model_device,
    parse_device,
    run_forward,
    to_model,
)
from attnviz.runtime.text import file_slug


class Net(nn.Module):
    """A conv, a BatchNorm and a head: small enough for every layer's entry point."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def _frozen_bn_in_training_model() -> Net:
    model = Net().train()
    model.features[1].eval()  # the usual fine-tuning trick: a frozen BatchNorm
    return model


def _modes(model: nn.Module) -> dict[str, bool]:
    return {name: module.training for name, module in model.named_modules()}


# --------------------------------------------------------------------------- exception text


def test_first_line_and_describe() -> None:
    error = ValueError("  first\nsecond\n")
    assert first_line(error) == "first"
    assert describe(error) == "ValueError: first"
    assert first_line(KeyError()) == "KeyError" and describe(RuntimeError("")) == "RuntimeError"


def test_did_you_mean_names_the_close_choices_only() -> None:
    choices = ["features.3", "features.30", "head"]
    assert did_you_mean("feature.3", choices) == "; did you mean 'features.3' or 'features.30'?"
    assert did_you_mean("feature.3", choices, n=1) == "; did you mean 'features.3'?"
    assert did_you_mean("feature.3", choices, quote=False, n=1) == "; did you mean features.3?"
    assert did_you_mean("zzz", choices) == ""


# --------------------------------------------------------------------------- eval mode


def test_eval_mode_restores_every_submodules_mode() -> None:
    model = _frozen_bn_in_training_model()
    before = _modes(model)
    assert before["features.1"] is False and before[""] is True
    with eval_mode(model) as inside:
        assert inside is model
        assert not any(_modes(model).values())
    assert _modes(model) == before


def test_eval_mode_restores_modes_when_the_block_raises() -> None:
    model = _frozen_bn_in_training_model()
    before = _modes(model)
    with pytest.raises(ZeroDivisionError), eval_mode(model):
        assert not model.training
        _ = 1 / 0
    assert _modes(model) == before


def test_eval_mode_reaches_shared_modules_and_skips_empty_slots() -> None:
    shared = nn.Dropout(0.5)
    model = nn.Sequential(nn.Linear(4, 4), shared, nn.Sequential(shared, nn.Identity())).train()
    model.register_module("unused", None)  # an empty slot, as an optional submodule left unset
    model[0].eval()
    before = _modes(model)
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
        model[2][1].train()  # switched inside the block: put back too
    assert _modes(model) == before
    model.eval()
    with eval_mode(model):
        model[0].train()  # a model that was in eval mode throughout is left as the block leaves it
    assert model[0].training


# --------------------------------------------------------------------------- device and dtype


def test_to_model_follows_the_models_device_and_floating_dtype() -> None:
    images = torch.rand(2, 3, 4, 4)
    double = Net().double()
    moved = to_model(images, double)
    assert moved.dtype == torch.float64 and moved.device == torch.device("cpu")
    torch.testing.assert_close(moved, images.double())
    assert to_model(images, nn.ReLU()) is images  # no parameter or buffer: unchanged
    counter = nn.Module()
    counter.register_buffer("steps", torch.zeros((), dtype=torch.long))
    assert to_model(images, counter).dtype == torch.float32  # an integer buffer keeps the images' dtype
    assert model_device(Net()) == torch.device("cpu") and model_device(nn.ReLU()) == torch.device("cpu")
    meta = Net().to("meta")
    assert model_device(meta).type == "meta" and to_model(images, meta).device.type == "meta"


def test_parse_device() -> None:
    assert parse_device("cpu") == torch.device("cpu")
    auto = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert parse_device("auto") == auto and parse_device(None) == auto
    with pytest.raises(UsageError, match=r"^unknown device 'gpu0'; use auto, cpu, cuda or cuda:N$"):
        parse_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match=r"device 'cuda:1' asked for, but no CUDA GPU is available; use --gpu cpu"):
            parse_device("cuda:1", flag="--gpu")


def test_parse_device_is_what_training_and_the_command_line_use(monkeypatch: pytest.MonkeyPatch) -> None:
    from attnviz.cli.options import check_device

    from attnviz.train.loop import Runtime

    assert Runtime.for_device("cpu").device == torch.device("cpu") and check_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for parse in (Runtime.for_device, check_device):
        with pytest.raises(UsageError) as info:
            parse("cuda")
        assert str(info.value) == "device 'cuda' asked for, but no CUDA GPU is available; use --device cpu"
        with pytest.raises(UsageError, match="^unknown device 'gpu0'"):
            parse("gpu0")


# --------------------------------------------------------------------------- forward and lookup


def test_run_forward_returns_the_output_and_makes_failures_one_line() -> None:
    model = Net().eval()
    images = torch.rand(2, 3, 5, 5)
    torch.testing.assert_close(run_forward(model, images), model(images))
    with pytest.raises(CaptureError) as info:
        run_forward(model, torch.rand(2, 4, 5, 5), "the probe")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("the probe failed on input (2, 4, 5, 5): RuntimeError: ")
    assert isinstance(info.value.__cause__, RuntimeError)


def test_run_forward_lets_attnviz_errors_and_interrupts_through() -> None:
    class Raises(nn.Module):
        def __init__(self, error: BaseException) -> None:
            super().__init__()
            self.error = error

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise self.error

    own = UsageError("said already")
    with pytest.raises(UsageError) as info:
        run_forward(Raises(own), torch.zeros(1))
    assert info.value is own
    with pytest.raises(KeyboardInterrupt):
        run_forward(Raises(KeyboardInterrupt()), torch.zeros(1))


def test_find_module_and_did_you_mean() -> None:
    model = Net()
    assert find_module(model, "features.1") is model.features[1]
    assert find_module(model, "") is model
    with pytest.raises(UsageError) as info:
        find_module(model, "feature.1")
    message = str(info.value)
    assert message.startswith("the model has no layer 'feature.1'; did you mean 'features.1'") and message.endswith("?")
    assert "'head'" not in message and "\n" not in message
    with pytest.raises(UsageError, match=r"^the model has no layer 'xyz'$"):
        find_module(model, "xyz")


def test_first_tensor_searches_tuples_lists_and_dicts_in_order() -> None:
    a, b = torch.zeros(1), torch.ones(1)
    assert first_tensor(a) is a
    assert first_tensor((None, [1, {"x": "no", "y": b}], a)) is b
    assert first_tensor({"logits": a, "features": b}) is a
    assert first_tensor(([], (), {})) is None and first_tensor(3) is None


# --------------------------------------------------------------------------- file names


@pytest.mark.parametrize(
    "name", ["", ".", "..", "...", "a/b", "../../etc/passwd", "a\\b", ".hidden", "x\x00y", "é ü", "con:1", "--"]
)
@pytest.mark.parametrize("fill", ["-", "_"])
def test_file_slug_never_yields_dots_or_separators(name: str, fill: str) -> None:
    slug = file_slug(name, fill=fill)
    assert slug and slug not in {".", ".."}
    assert not slug.startswith(".") and not slug.endswith(".")
    assert "/" not in slug and "\\" not in slug and "\x00" not in slug and os.sep not in slug
    assert re.fullmatch(r"[\w.-]+", slug)


def test_file_slug_keeps_safe_names_and_fills_the_rest() -> None:
    assert file_slug("layer4.1.conv") == "layer4.1.conv"
    assert file_slug("a b/c", fill="_") == "a_b_c"
    assert file_slug("...", default="x") == "x"
    assert file_slug("abcdef", max_length=3) == "abc"


# --------------------------------------------------------------------------- adoption: a frozen BatchNorm stays frozen


def _assert_modes_kept(run) -> None:
    model = _frozen_bn_in_training_model()
    before = _modes(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the model was in training mode" warnings
        run(model)
    assert _modes(model) == before
    assert model.training and not model.features[1].training


def test_capture_keeps_a_frozen_batchnorm_frozen() -> None:
    from attnviz.capturing.capturer import capture

    _assert_modes_kept(lambda model: capture(model, torch.rand(2, 3, 8, 8)))


def test_gradcam_keeps_a_frozen_batchnorm_frozen() -> None:
    from attnviz.explain.cam import gradcam

    _assert_modes_kept(lambda model: gradcam(model, torch.rand(2, 3, 8, 8), layer="features.0"))


def test_compare_logits_keep_a_frozen_batchnorm_frozen() -> None:
    from attnviz.jobs.compare import _eval_logits

    def run(model: nn.Module) -> None:
        images = torch.rand(2, 3, 8, 8)
        with eval_mode(model), torch.no_grad():
            expected = model(images)
        torch.testing.assert_close(_eval_logits(model, images), expected.detach())

    _assert_modes_kept(run)


def test_compare_forward_failure_is_one_line() -> None:
    from attnviz.jobs.compare import _eval_logits

    with pytest.raises(CaptureError, match=r"failed on input \(1, 4, 8, 8\)"):
        _eval_logits(Net(), torch.rand(1, 4, 8, 8))


def test_train_loop_evaluation_keeps_a_frozen_batchnorm_frozen() -> None:
    from attnviz.train.loop import Runtime, evaluate

    images, targets = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    loader = [(images[:2], targets[:2]), (images[2:], targets[2:])]

    def run(model: nn.Module) -> None:
        stats = evaluate(model, loader, Runtime.for_device("cpu"))  # type: ignore[arg-type]
        with eval_mode(model), torch.no_grad():
            expected = nn.functional.cross_entropy(model(images), targets)
        assert stats.samples == 4 and stats.loss == pytest.approx(float(expected), rel=1e-5)

    _assert_modes_kept(run)


def test_attnviz_errors_are_not_wrapped_by_capture() -> None:
    from attnviz.capturing.capturer import capture

    class Refuses(Net):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise UsageError("no")

    with pytest.raises(AttnvizError, match="^no$"):
        capture(Refuses().eval(), torch.rand(1, 3, 8, 8), layers=[])
