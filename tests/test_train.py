"""Training recipes: the staged schedule, a real CPU run on shapes, resume, TensorBoard, the CLI."""

from __future__ import annotations

import io
import math
import shutil

import numpy as np
import pytest
import torch
import torchvision
from attnviz.cli.main import cli
from click.testing import CliRunner
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from attnviz.capturing.capturer import capture
from attnviz.data.specs import make_datasets
from attnviz.io.checkpoints import load_model
from attnviz.models import build_model
from attnviz.runtime.errors import AttnvizError, CheckpointError, UsageError
from attnviz.train import fit, stage_for_epoch, stage_param_groups
from attnviz.train.loop import Runtime, evaluate
from attnviz.train.recipes import make_optimizer, set_trainable
from attnviz.train.trainer import checkpoint_paths

SIZES = {"train_size": 512, "test_size": 256}
COMMON = {"batch_size": 32, "num_workers": 0, "progress": False, "seed": 0, **SIZES}

# --- the staged schedule of seed 003 --------------------------------------------------------


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return build_model("resnet18_cbam", num_classes=10)


def _expected(names: list[str], stage: int) -> set[str]:
    """Seed 003: stage 1 cbam_layer* + backbone.fc, stage 2 + backbone.layer3/4, stage 3 everything."""
    head = {n for n in names if n.startswith("cbam_layer") or n.startswith("backbone.fc.")}
    upper = {n for n in names if n.startswith(("backbone.layer3.", "backbone.layer4."))}
    return {1: head, 2: head | upper, 3: set(names)}[stage]


@pytest.mark.parametrize(
    ("epoch", "stage", "lr"),
    [(1, 1, 1e-3), (5, 1, 1e-3), (6, 2, 1e-4), (20, 2, 1e-4), (21, 3, 1e-5), (50, 3, 1e-5)],
)
def test_stage_groups_train_exactly_the_right_parameters(resnet, epoch, stage, lr):
    names = {id(p): n for n, p in resnet.named_parameters()}
    groups = stage_param_groups(resnet, epoch, (5, 20), lr=1e-3)
    trained = [names[id(p)] for g in groups for p in g["params"]]
    assert len(trained) == len(set(trained))
    assert set(trained) == _expected(list(names.values()), stage)
    assert all(math.isclose(g["lr"], lr) for g in groups)
    assert stage_for_epoch(epoch, (5, 20)) == stage
    # Frozen/unfrozen as the optimizer is built, and nothing else touched.
    optimizer = make_optimizer(resnet, "staged", epoch, 1e-3, (5, 20))
    requires = {n for n, p in resnet.named_parameters() if p.requires_grad}
    assert requires == _expected(list(names.values()), stage)
    assert {names[id(p)] for g in optimizer.param_groups for p in g["params"]} == requires
    assert all(math.isclose(g["lr"], lr) for g in optimizer.param_groups)
    set_trainable(resnet, [{"params": list(resnet.parameters())}])


def test_stage_group_names_and_custom_boundaries(resnet):
    assert [g["name"] for g in stage_param_groups(resnet, 1)] == ["attention+head"]
    assert [g["name"] for g in stage_param_groups(resnet, 6)] == ["attention+head", "layer3+layer4"]
    assert [g["name"] for g in stage_param_groups(resnet, 21)] == [
        "attention+head",
        "layer3+layer4",
        "stem+layer1+layer2",
    ]
    assert [stage_for_epoch(e, (2, 4)) for e in range(1, 7)] == [1, 1, 2, 2, 3, 3]
    assert [stage_for_epoch(e, (0, 0)) for e in (1, 2)] == [3, 3]
    assert all(math.isclose(g["lr"], 2e-5) for g in stage_param_groups(resnet, 3, (1, 2), lr=2e-3))
    with pytest.raises(UsageError):
        stage_for_epoch(1, (6, 5))


def test_stage_one_step_moves_only_the_trained_parameters(resnet):
    before = {n: p.detach().clone() for n, p in resnet.named_parameters()}
    optimizer = make_optimizer(resnet, "staged", 1, 1e-3, (5, 20))
    try:
        resnet.train()
        loss = torch.nn.functional.cross_entropy(resnet(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
        loss.backward()
        optimizer.step()
        changed = {n for n, p in resnet.named_parameters() if not torch.equal(p, before[n])}
        assert changed == _expected(list(before), 1)
    finally:
        with torch.no_grad():
            for n, p in resnet.named_parameters():
                p.copy_(before[n])
        set_trainable(resnet, [{"params": list(resnet.parameters())}])
        resnet.eval()


# --- a real run on shapes -------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "se.pth"
    return fit("se_cnn", "shapes", epochs=2, out=out, device="cpu", **COMMON)


def _test_loader():
    _, test, _ = make_datasets("shapes", seed=0, **SIZES)
    return DataLoader(test, batch_size=64)


def test_fit_lowers_the_loss(run):
    torch.manual_seed(0)  # fit initialises the model from the same seed
    initial = evaluate(build_model("se_cnn", num_classes=10), _test_loader(), Runtime.for_device("cpu"))
    history = run.history
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["test_loss"] < initial.loss
    assert run.final_test_acc == history[-1]["test_acc"]
    assert run.best_test_acc == max(h["test_acc"] for h in history)


def test_checkpoints_load_with_the_record_filled_in(run):
    best, last = checkpoint_paths(run.best_path)
    assert (run.best_path, run.last_path) == (best, last) and last.name == "se.last.pth"
    loaded = load_model(best)
    record = loaded.record
    assert loaded.arch == "se_cnn" and loaded.class_names == record["class_names"]
    assert loaded.class_names[:3] == ["circle", "square", "triangle"] and loaded.preset.name == "cifar10"
    assert record["epochs"] == 2 and record["data"] == "shapes" and record["seed"] == 0
    assert (record["train_size"], record["test_size"]) == (512, 256)
    assert (
        record["recipe"] == "plateau"
        and record["device"] == "cpu"
        and record["torch_version"] == str(torch.__version__)
    )
    assert record["checkpoint"] == "best" and record["wall_time_s"] > 0
    assert [h["lr"] for h in record["history"]] == [1e-3, 1e-3]
    # The stored accuracy is what the stored weights score on the test set.
    stats = evaluate(loaded.model, _test_loader(), Runtime.for_device("cpu"))
    assert stats.acc == pytest.approx(record["history"][record["best_epoch"] - 1]["test_acc"])
    assert stats.loss == pytest.approx(record["history"][record["best_epoch"] - 1]["test_loss"], rel=1e-5)
    last_loaded = load_model(last)
    assert last_loaded.record["checkpoint"] == "last" and last_loaded.record["epochs"] == 2
    payload = torch.load(last, weights_only=True)
    assert payload["train_state"]["epoch"] == 2 and payload["train_state"]["optimizer"]["state"]


def test_resume_continues_from_the_saved_epoch_like_an_uninterrupted_run(run, tmp_path):
    best, last = tmp_path / "se.pth", tmp_path / "se.last.pth"
    shutil.copy(run.best_path, best)
    shutil.copy(run.last_path, last)
    straight = fit("se_cnn", "shapes", epochs=3, out=tmp_path / "straight.pth", device="cpu", **COMMON)
    resumed = fit("se_cnn", "shapes", epochs=3, out=best, resume=last, device="cpu", **COMMON)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert resumed.history[:2] == run.history
    assert resumed.record["resumed_from"] == str(last) and load_model(last).record["epochs"] == 3
    # Same seeds per epoch and the optimizer/scheduler state restored: the same third epoch.
    for a, b in zip(straight.history, resumed.history):
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-4)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    with pytest.raises(UsageError, match="already ran 3 epochs"):
        fit("se_cnn", "shapes", epochs=3, out=best, resume=last, **COMMON)
    with pytest.raises(UsageError, match="--arch se_cnn"):
        fit("cnn", "shapes", epochs=5, out=tmp_path / "x.pth", resume=run.last_path, **COMMON)
    with pytest.raises(CheckpointError, match="no training state"):
        fit("se_cnn", "shapes", epochs=5, out=tmp_path / "x.pth", resume=run.best_path, **COMMON)


# --- TensorBoard ----------------------------------------------------------------------------


def test_tensorboard_holds_the_scalars_and_the_true_attention(tmp_path):
    result = fit(
        "cbam_cnn",
        "shapes",
        epochs=1,
        out=tmp_path / "cbam.pth",
        tensorboard=tmp_path / "tb",
        device="cpu",
        train_size=64,
        test_size=32,
        batch_size=32,
        num_workers=0,
        progress=False,
    )
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    entry = result.history[0]
    for tag, key in [
        ("Train/Epoch Loss", "train_loss"),
        ("Train/Epoch Accuracy", "train_acc"),
        ("Test/Epoch Loss", "test_loss"),
        ("Test/Epoch Accuracy", "test_acc"),
        ("Train/Learning Rate", "lr"),
    ]:
        (event,) = events.Scalars(tag)
        assert event.step == 1 and event.value == pytest.approx(entry[key], rel=1e-6)
    assert len(events.Scalars("Train/Iteration Loss")) == 2

    # The logged gates are the gates the saved model computes on the first 8 test images.
    _, test, _ = make_datasets("shapes", test_size=32)
    images = torch.stack([test[i][0] for i in range(8)])
    gates = capture(load_model(result.last_path).model, images, layers=[]).gates
    spatial = [g for g in gates.values() if g.kind == "spatial"]
    channel = [g for g in gates.values() if g.kind == "channel"]
    assert len(spatial) == 3 and len(channel) == 3
    assert "Attention/inputs" in tags["images"]
    for gate in spatial:
        grid = _decode(events.Images(f"Attention/{gate.name}")[0].encoded_image_string)
        expected = np.concatenate(list(gate.values.numpy().astype(np.float32)), axis=1)  # 8 maps side by side
        assert grid.shape[:2] == expected.shape
        assert np.abs(grid[..., 0].astype(int) - (expected * 255).astype(np.uint8)).max() <= 1
    for gate in channel:
        strip = _decode(events.Images(f"Channels/{gate.name}")[0].encoded_image_string)
        assert strip.shape[:2] == tuple(gate.values.shape)  # a row per image, a column per channel
        assert np.abs(strip[..., 0].astype(int) - (gate.values.numpy() * 255).astype(np.uint8)).max() <= 1
        assert f"Channels/{gate.name}" in tags["histograms"]


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


# --- ImageNet weights and the staged recipe in a run --------------------------------------


def test_resnet18_cbam_starts_from_imagenet_weights_and_keeps_frozen_layers(tmp_path):
    torch.manual_seed(1)
    imagenet = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(imagenet, tmp_path / "resnet18.pth")
    result = fit(
        "resnet18_cbam",
        "shapes",
        epochs=1,
        out=tmp_path / "r18.pth",
        weights=tmp_path / "resnet18.pth",
        device="cpu",
        train_size=32,
        test_size=16,
        batch_size=16,
        num_workers=0,
        progress=False,
    )
    state = load_model(result.best_path).model.state_dict()
    torch.manual_seed(0)  # fit builds the model right after seeding with its seed
    initial = build_model("resnet18_cbam", num_classes=10, weights=tmp_path / "resnet18.pth").state_dict()
    assert result.record["recipe"] == "staged" and result.history[0]["stage"] == 1
    assert result.record["weights"] == str(tmp_path / "resnet18.pth")
    for key in ("layer1.0.conv1.weight", "layer3.1.conv2.weight", "layer4.0.bn1.weight", "bn1.bias"):
        assert torch.equal(state[f"backbone.{key}"], imagenet[key])  # loaded, and frozen in stage 1
    assert not torch.equal(state["backbone.fc.weight"], initial["backbone.fc.weight"])
    assert not torch.equal(
        state["cbam_layer2.spatial_attn.conv.weight"], initial["cbam_layer2.spatial_attn.conv.weight"]
    )
    assert torch.equal(state["backbone.conv1.weight"], initial["backbone.conv1.weight"])  # new 3x3 stem, frozen


# --- arguments and the command line ---------------------------------------------------------


def test_bad_arguments_are_attnviz_errors(tmp_path):
    with pytest.raises(UsageError, match="ImageNet backbone"):
        fit("cnn", epochs=1, out=tmp_path / "a.pth", weights=tmp_path / "w.pth", **COMMON)
    with pytest.raises(UsageError, match="epochs"):
        fit("cnn", epochs=0, out=tmp_path / "a.pth")
    with pytest.raises(UsageError, match="unknown device"):
        fit("cnn", epochs=1, out=tmp_path / "a.pth", device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA GPU"):
            fit("cnn", epochs=1, out=tmp_path / "a.pth", device="cuda")
    with pytest.raises(UsageError, match="data spec"):
        fit("cnn", "imagenet", epochs=1, out=tmp_path / "a.pth")
    with pytest.raises(AttnvizError, match="unknown architecture"):
        fit("vgg", epochs=1, out=tmp_path / "a.pth")


def test_cli_trains_and_reports(tmp_path):
    runner = CliRunner()
    help_text = runner.invoke(cli, ["train", "--help"]).output
    assert "--stage-epochs" in help_text and "Examples:" in help_text
    out = tmp_path / "cnn.pth"
    result = runner.invoke(
        cli,
        [
            "train",
            "--arch",
            "cnn",
            "--epochs",
            "1",
            "--out",
            str(out),
            "--train-size",
            "64",
            "--test-size",
            "32",
            "--batch-size",
            "32",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    record = load_model(out).record
    assert f"best test accuracy {record['best_test_acc']:.2f}%" in result.output
    assert out.with_name("cnn.last.pth").is_file()
    bad = runner.invoke(cli, ["train", "--arch", "cnn", "--epochs", "1", "--out", str(out), "--data", "mnist"])
    assert bad.exit_code == 2 and "attnviz: error: unknown data spec" in bad.output


# --- progress in logs -------------------------------------------------------------------------


def test_train_prints_plain_progress_lines_when_stderr_is_not_a_terminal(tmp_path, capsys):
    result = fit(
        "cnn",
        "shapes",
        epochs=2,
        out=tmp_path / "cnn.pth",
        device="cpu",
        train_size=40,
        test_size=16,
        batch_size=10,
        num_workers=0,
        progress=True,
    )
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert not any("\x1b" in line or "\r" in line for line in err)  # no terminal control characters
    for epoch in (1, 2):
        train = [line for line in err if line.startswith(f"epoch {epoch}/2 train: ")]
        assert train[0] == f"epoch {epoch}/2 train: 4 of 4 step(s) to process"
        assert [line.split(",")[0] for line in train[1:-1]] == [
            f"epoch {epoch}/2 train: {n}/4 steps" for n in (1, 2, 3)
        ]
        assert train[-1].startswith(f"epoch {epoch}/2 train: 4/4 steps, done in ")
        test = [line for line in err if line.startswith(f"epoch {epoch}/2 test: ")]
        assert test[0] == f"epoch {epoch}/2 test: 2 of 2 step(s) to process"
        assert test[-1].startswith(f"epoch {epoch}/2 test: 2/2 steps, done in ")
        entry = result.history[epoch - 1]
        summary = next(line for line in err if line.startswith(f"epoch {epoch}/2: "))
        assert f"test loss {entry['test_loss']:.4f} acc {entry['test_acc']:.2f}%" in summary
        assert err.index(summary) > err.index(test[-1])  # the epoch's line follows its test pass


def test_train_prints_nothing_when_progress_is_off(tmp_path, capsys):
    fit(
        "cnn",
        "shapes",
        epochs=1,
        out=tmp_path / "cnn.pth",
        device="cpu",
        train_size=20,
        test_size=10,
        batch_size=10,
        num_workers=0,
        progress=False,
    )
    assert capsys.readouterr().err == ""
