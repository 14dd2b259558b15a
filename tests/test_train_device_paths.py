"""The training paths only CUDA takes by default, each run on the CPU.

Channels-last tensors, autocast (bfloat16 on the CPU), the GradScaler, pinned memory and
non-blocking copies are explicit settings (:class:`attnviz.train.TrainSettings`), so every one of
them is switched on here and checked by what it computes. A model whose ``forward`` cannot take
what was asked for (``.view`` on a channels-last feature map) trains without it, with one warning.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from attnviz.data.specs import make_datasets
from attnviz.io.checkpoints import load_model
from attnviz.models import build_model, list_architectures
from attnviz.train import TrainSettings, fit
from attnviz.train.loop import Runtime, train_epoch
from attnviz.train.probe import settle_runtime

CHANNELS_LAST_BF16 = TrainSettings(channels_last=True, autocast_dtype=torch.bfloat16)
PIN_WARNING = "ignore:'pin_memory' argument is set as true"  # torch without an accelerator: no pinning


class ViewNet(nn.Module):
    """A user's model as many are written: ``x.view(-1, C*H*W)`` on the last feature map."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(4 * 8 * 8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn(self.conv(x))))
        return self.fc(x.view(-1, 4 * 8 * 8))


class Float32Only(nn.Module):
    """A model that refuses reduced precision after its first layer (as some custom ops do)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if h.dtype != torch.float32:
            raise RuntimeError(f"custom op needs float32, got {h.dtype}\nsecond line of the message")
        return self.fc(h.mean((2, 3)))


@pytest.fixture(scope="module")
def shapes() -> tuple[torch.Tensor, torch.Tensor]:
    """16 generated shapes images (32x32, normalised) and their labels."""
    train, _, _ = make_datasets("shapes", train_size=16, test_size=8, seed=0)
    images = torch.stack([train[i][0] for i in range(16)])
    return images, torch.tensor([int(train[i][1]) for i in range(16)]) % 3


def _loader(images: torch.Tensor, targets: torch.Tensor, batch_size: int) -> DataLoader:
    return DataLoader(TensorDataset(images, targets), batch_size=batch_size)


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- (1) a user's .view model asked to run channels-last ---------------------------------------


def test_a_view_model_trains_with_channels_last_turned_off_and_one_line_saying_so(shapes):
    images, targets = shapes
    torch.manual_seed(0)
    model = ViewNet()
    before = _state(model)
    requested = Runtime.for_device("cpu", TrainSettings(channels_last=True))
    with pytest.warns(UserWarning) as notices:
        runtime = settle_runtime(model, requested, images[:2], targets[:2])
    assert len(notices) == 1
    text = str(notices[0].message)
    assert "\n" not in text and text.startswith("channels-last turned off for ViewNet")
    assert "view size is not compatible with input tensor's size and stride" in text
    assert runtime == Runtime.for_device("cpu")  # nothing else changed
    # The probe ran on a copy: weights and BatchNorm statistics are untouched.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    model = runtime.prepare(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    initial = _params(model)
    losses = [
        train_epoch(model, _loader(images, targets, 8), optimizer, runtime, runtime.scaler()).loss for _ in range(8)
    ]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert all(not torch.equal(a, b) for a, b in zip(initial, model.parameters()))


def test_autocast_is_turned_off_for_a_model_that_needs_float32(shapes):
    images, targets = shapes
    requested = Runtime.for_device("cpu", TrainSettings(autocast_dtype=torch.bfloat16, grad_scaler=True))
    with pytest.warns(UserWarning) as notices:
        runtime = settle_runtime(Float32Only(), requested, images[:2], targets[:2])
    assert [str(n.message) for n in notices] == [
        "autocast (bfloat16) turned off for Float32Only: its training step fails with it "
        "(custom op needs float32, got torch.bfloat16)"
    ]
    assert runtime.autocast_dtype is None and not runtime.grad_scaler and not runtime.channels_last


def test_both_are_turned_off_for_a_view_model_that_needs_float32(shapes):
    class Both(ViewNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.conv(x).dtype != torch.float32:
                raise RuntimeError("needs float32")
            return super().forward(x)

    images, targets = shapes
    with pytest.warns(UserWarning, match=r"^channels-last and autocast \(bfloat16\) turned off for Both: .*float32"):
        runtime = settle_runtime(Both(), Runtime.for_device("cpu", CHANNELS_LAST_BF16), images[:2], targets[:2])
    assert runtime == Runtime.for_device("cpu")


def test_a_model_that_fails_anyway_keeps_the_settings_and_is_not_blamed_on_them(shapes):
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("broken model")

    images, targets = shapes
    requested = Runtime.for_device("cpu", CHANNELS_LAST_BF16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert settle_runtime(Broken(), requested, images[:2], targets[:2]) == requested


# --- (2) every registry architecture: channels-last + bfloat16 autocast ------------------------


@pytest.mark.parametrize("arch", list_architectures())
def test_every_registry_architecture_trains_a_step_channels_last_under_bf16_autocast(arch, shapes):
    images, targets = shapes[0][:2], shapes[1][:2]
    torch.manual_seed(0)
    model = build_model(arch, num_classes=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is turned off for attnviz's own architectures
        runtime = settle_runtime(model, Runtime.for_device("cpu", CHANNELS_LAST_BF16), images, targets)
    assert runtime.channels_last and runtime.autocast_dtype == torch.bfloat16
    model = runtime.prepare(model)
    seen: list[tuple[bool, torch.dtype]] = []
    model.register_forward_hook(
        lambda m, args, out: seen.append((args[0].is_contiguous(memory_format=torch.channels_last), out.dtype))
    )
    initial = _params(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    stats = train_epoch(model, _loader(images, targets, 2), optimizer, runtime, runtime.scaler())
    assert seen == [(True, torch.bfloat16)]  # the step ran on channels-last input, in bfloat16
    assert stats.samples == 2 and torch.isfinite(torch.tensor(stats.loss))
    changed = [not torch.equal(a, b) for a, b in zip(initial, model.parameters())]
    assert any(changed) and all(torch.isfinite(p).all() for p in model.parameters())


# --- (3) the GradScaler on the CPU -------------------------------------------------------------


def test_grad_scaler_scales_the_backward_pass_and_steps_like_an_unscaled_run(shapes):
    images, targets = shapes
    torch.manual_seed(0)
    plain_model = ViewNet()
    scaled_model = copy.deepcopy(plain_model)
    results = []
    for model, settings in ((plain_model, TrainSettings()), (scaled_model, TrainSettings(grad_scaler=True))):
        runtime = Runtime.for_device("cpu", settings)
        grads: list[torch.Tensor] = []
        model.fc.bias.register_hook(lambda g, grads=grads: grads.append(g.clone()))
        scaler = runtime.scaler()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        train_epoch(model, _loader(images, targets, 8), optimizer, runtime, scaler)
        results.append((grads, scaler))
    (plain_grads, plain_scaler), (scaled_grads, scaler) = results
    assert not plain_scaler.is_enabled() and scaler.is_enabled()
    # backward ran on loss * scale, and step() divided it out again
    for plain, scaled in zip(plain_grads, scaled_grads, strict=True):
        torch.testing.assert_close(scaled, plain * 65536.0)
    assert scaler.get_scale() == 65536.0  # no inf/NaN step was skipped
    for a, b in zip(plain_model.parameters(), scaled_model.parameters()):
        assert torch.isfinite(b).all()
        torch.testing.assert_close(b, a)


# --- (4) pinned memory and non-blocking copies ---------------------------------------------------


@pytest.mark.filterwarnings(PIN_WARNING)
def test_pinned_loader_and_non_blocking_copies_give_the_same_batches(shapes):
    images, targets = shapes
    dataset = TensorDataset(images, targets)
    pinned = Runtime.for_device("cpu", TrainSettings(pin_memory=True, non_blocking=True, channels_last=True))
    plain = Runtime.for_device("cpu")
    pinned_loader, plain_loader = pinned.loader(dataset, batch_size=5), plain.loader(dataset, batch_size=5)
    assert pinned_loader.pin_memory and not plain_loader.pin_memory
    count = 0
    for (a, ta), (b, tb) in zip(pinned_loader, plain_loader, strict=True):
        if torch.cuda.is_available():
            assert a.is_pinned()
        moved, labels = pinned.batch(a), pinned.labels(ta)
        assert moved.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(moved, plain.batch(b)) and torch.equal(labels, plain.labels(tb))
        count += len(labels)
    assert count == 16


# --- the defaults and the whole of fit -----------------------------------------------------------


def test_auto_settings_follow_the_device():
    assert Runtime.for_device("cpu") == Runtime(torch.device("cpu"))
    cuda = TrainSettings().resolve(torch.device("cuda", 0))
    assert cuda == Runtime(torch.device("cuda", 0), True, torch.float16, True, True, True)
    bf16 = TrainSettings(autocast_dtype=torch.bfloat16).resolve(torch.device("cuda", 0))
    assert bf16.autocast_dtype == torch.bfloat16 and not bf16.grad_scaler  # bfloat16 needs no loss scaling
    off = TrainSettings(channels_last=False, autocast_dtype=None).resolve(torch.device("cuda"))
    assert not off.channels_last and off.autocast_dtype is None and not off.grad_scaler and off.pin_memory


@pytest.mark.filterwarnings(PIN_WARNING)
def test_fit_runs_every_cuda_path_on_the_cpu_and_records_it(tmp_path):
    settings = TrainSettings(
        channels_last=True, autocast_dtype=torch.bfloat16, grad_scaler=True, pin_memory=True, non_blocking=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message="'pin_memory' argument")
        result = fit(
            "cnn",  # the course's 3-block CNN, the one that crashed on CUDA
            "shapes",
            epochs=1,
            out=tmp_path / "cnn.pth",
            device="cpu",
            settings=settings,
            batch_size=16,
            train_size=32,
            test_size=16,
            num_workers=0,
            progress=False,
        )
    record = result.record
    assert (record["channels_last"], record["autocast"], record["grad_scaler"]) == (True, "bfloat16", True)
    assert record["amp"] and "turned_off" not in record
    entry = result.history[0]
    assert all(torch.isfinite(torch.tensor(entry[k])) for k in ("train_loss", "test_loss"))
    loaded = load_model(result.best_path)
    assert all(t.is_contiguous() for t in loaded.model.state_dict().values())


@pytest.mark.filterwarnings(PIN_WARNING)
def test_fit_trains_a_view_model_without_channels_last_and_records_why(tmp_path, monkeypatch):
    import attnviz.train.trainer as trainer

    monkeypatch.setattr(trainer, "build_model", lambda arch, num_classes: ViewNet(num_classes))
    with pytest.warns(UserWarning, match="^channels-last turned off for ViewNet") as notices:
        result = fit(
            "cnn",
            "shapes",
            epochs=1,
            out=tmp_path / "view.pth",
            device="cpu",
            settings=TrainSettings(channels_last=True, autocast_dtype=torch.bfloat16),
            batch_size=16,
            train_size=32,
            test_size=16,
            num_workers=0,
            progress=False,
        )
    assert len([n for n in notices if "turned off" in str(n.message)]) == 1
    record = result.record
    assert record["turned_off"] == str(notices[0].message)
    assert (record["channels_last"], record["autocast"]) == (False, "bfloat16")
    assert torch.isfinite(torch.tensor(result.history[0]["train_loss"]))


@pytest.mark.parametrize(("device", "expected"), [("cpu", []), ("cuda", [3]), ("cuda:1", [1])])
def test_training_gives_back_the_random_state_of_the_gpu_it_runs_on(monkeypatch, device, expected):
    from attnviz.train import trainer

    forked: list[list[int]] = []
    real_fork = torch.random.fork_rng

    def fork_rng(devices=None, **kwargs):
        forked.append(list(devices))
        return real_fork(devices=[], **kwargs)  # no GPU here: the CPU state only

    monkeypatch.setattr(torch.random, "fork_rng", fork_rng)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)  # a bare "cuda" is the current device
    runtime = Runtime(torch.device(device))
    with trainer._forked_rng(runtime):
        pass
    assert forked == [expected]
