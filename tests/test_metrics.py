"""Metrics: every number against a hand computation or a model whose answer is known."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from attnviz.data.shapes import make_sample
from attnviz.explain.cam import gradcam
from attnviz.explain.metrics import (
    channel_selectivity,
    class_selectivity,
    deletion_insertion,
    energy_pointing_game,
    energy_pointing_game_batch,
    gate_statistics,
    localisation_batch,
    map_agreement,
    pointing_game,
    pointing_game_batch,
    randomisation_sanity,
    spearman,
    top_region_iou,
)
from attnviz.io.inputs import preprocess
from attnviz.models import build_model
from attnviz.runtime.errors import CaptureError, UsageError

pytestmark = pytest.mark.usefixtures("one_thread")

# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def shapes_batch() -> tuple[torch.Tensor, np.ndarray]:
    """Eight ``shapes`` test images (cifar10 preset) and their target masks."""
    samples = [make_sample(i, split="test") for i in range(8)]
    images = torch.stack([preprocess(s.image, "cifar10") for s in samples])
    return images, np.stack([s.mask for s in samples])


class RegionSum(nn.Module):
    """Two classes: logit 0 is ``scale`` × the channel-weighted sum of the pixels in ``region``
    minus ``offset``; logit 1 is 0. So P(class 0) = sigmoid(scale · Σ_region Σ_c w_c x_c − offset)."""

    def __init__(self, region: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("region", torch.tensor(region, dtype=torch.float32))
        self.register_buffer("weights", torch.tensor(CHANNEL_WEIGHTS, dtype=torch.float32).view(3, 1, 1))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        s = SCALE * (x * self.weights * self.region).sum(dim=(1, 2, 3)) - OFFSET
        return torch.stack([s, torch.zeros_like(s)], dim=1)


SCALE, OFFSET, CHANNEL_WEIGHTS = 0.25, 3.5, (1.0, 0.6, 0.2)


def region_probability(image: np.ndarray, region: np.ndarray) -> float:
    """P(class 0) of :class:`RegionSum` by hand (image ``[C,H,W]``)."""
    logit = SCALE * sum(w * float((channel * region).sum()) for w, channel in zip(CHANNEL_WEIGHTS, image)) - OFFSET
    return 1.0 / (1.0 + math.exp(-logit))


def hand_curve(
    image: np.ndarray, saliency: np.ndarray, baseline: np.ndarray, region: np.ndarray, steps: int, insert: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The deletion/insertion curve built one step at a time with explicit loops."""
    height, width = saliency.shape
    pixels = height * width
    order = sorted(range(pixels), key=lambda p: (-saliency.flat[p], p))  # decreasing, ties row-major
    fractions, curve = [], []
    for k in range(steps + 1):
        count = int(round(k * pixels / steps))
        current = baseline.copy() if insert else image.copy()
        for p in order[:count]:
            y, x = divmod(p, width)
            current[:, y, x] = image[:, y, x] if insert else baseline[:, y, x]
        fractions.append(count / pixels)
        curve.append(region_probability(current, region))
    return np.array(fractions), np.array(curve)


def trapezoid_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    return sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2 for i in range(len(x) - 1))


def brute_force_hit(saliency: np.ndarray, mask: np.ndarray, tolerance: float) -> bool:
    """Every pixel holding the maximum is within ``tolerance`` of some mask pixel."""
    peaks = np.argwhere(saliency == saliency.max())
    objects = np.argwhere(mask)
    distances = np.sqrt(((peaks[:, None, :] - objects[None, :, :]) ** 2).sum(-1)).min(axis=1)
    return bool((distances <= tolerance + 1e-9).all())


# --------------------------------------------------------------------------- pointing game


def test_pointing_game_on_a_shapes_mask() -> None:
    mask = make_sample(0, split="test").mask
    inside, outside = np.argwhere(mask), np.argwhere(~mask)
    rng = np.random.default_rng(0)
    for y, x in inside[rng.choice(len(inside), 5, replace=False)]:
        saliency = rng.uniform(0, 0.5, mask.shape)
        saliency[y, x] = 1.0
        assert pointing_game(saliency, mask) is True
        assert pointing_game(torch.tensor(saliency), torch.tensor(mask)) is True
    for y, x in outside[rng.choice(len(outside), 5, replace=False)]:
        saliency = rng.uniform(0, 0.5, mask.shape)
        saliency[y, x] = 1.0
        assert pointing_game(saliency, mask) is False
        distance = np.sqrt(((inside - [y, x]) ** 2).sum(1)).min()
        assert pointing_game(saliency, mask, tolerance=distance) is True
        assert pointing_game(saliency, mask, tolerance=distance - 0.01) is False


def test_pointing_game_tolerance_by_hand() -> None:
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True
    saliency = np.zeros((4, 4))
    saliency[2, 1] = 3.0  # sqrt(2² + 1²) = 2.236 pixels from the object
    assert pointing_game(saliency, mask) is False
    assert pointing_game(saliency, mask, tolerance=2) is False
    assert pointing_game(saliency, mask, tolerance=math.sqrt(5)) is True  # the radius is inclusive
    assert pointing_game(saliency, mask, tolerance=2.3) is True


def test_pointing_game_ties_need_every_maximum_on_the_object() -> None:
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    saliency = np.zeros((4, 4))
    saliency[1, 1] = saliency[2, 2] = 1.0
    assert pointing_game(saliency, mask) is True
    saliency[0, 3] = 1.0  # a third, equal maximum off the object
    assert pointing_game(saliency, mask) is False
    assert pointing_game(np.ones((4, 4)), mask) is False  # a flat map never wins
    assert pointing_game(np.ones((4, 4)), np.ones((4, 4), bool)) is True


def test_pointing_game_upsamples_a_low_resolution_map() -> None:
    mask = make_sample(0, split="test").mask
    # A peak in cell (r, c) of an 8×8 map becomes, bilinearly at 32×32, four equal maxima at
    # rows and columns 4r+1 and 4r+2 (source coordinates r ∓ 0.125, weight 0.875 each).
    cells = [(r, c) for r in range(8) for c in range(8)]
    full = [cell for cell in cells if mask[4 * cell[0] : 4 * cell[0] + 4, 4 * cell[1] : 4 * cell[1] + 4].all()]
    empty = [cell for cell in cells if not mask[4 * cell[0] : 4 * cell[0] + 4, 4 * cell[1] : 4 * cell[1] + 4].any()]
    assert full and empty
    for (r, c), expected in [(full[0], True), (empty[0], False)]:
        low = np.zeros((8, 8))
        low[r, c] = 1.0
        assert pointing_game(low, mask) is expected
    upsampled = cv2.resize(np.eye(8)[2:3].T @ np.eye(8)[5:6], (32, 32), interpolation=cv2.INTER_LINEAR)
    assert {tuple(p) for p in np.argwhere(upsampled == upsampled.max())} == {(9, 21), (9, 22), (10, 21), (10, 22)}
    low = np.zeros((8, 8))
    low[2, 5] = 1.0
    tight = np.zeros((32, 32), bool)
    tight[9:11, 21:23] = True
    assert pointing_game(low, tight) is True
    tight[9, 21] = False
    assert pointing_game(low, tight) is False
    assert pointing_game(low, tight, tolerance=1) is True


def test_pointing_game_batch_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    maps = rng.integers(0, 4, size=(12, 16, 16)).astype(float)  # many tied maxima
    masks = rng.random((12, 16, 16)) < 0.15
    masks[:, 0, 0] = True
    for tolerance in (0, 1, 1.5, 3):
        expected = [brute_force_hit(m, k, tolerance) for m, k in zip(maps, masks)]
        hits = pointing_game_batch(maps, masks, tolerance=tolerance)
        assert hits.dtype == bool and hits.tolist() == expected
    assert pointing_game_batch(torch.tensor(maps), torch.tensor(masks)).tolist() == [
        pointing_game(m, k) for m, k in zip(maps, masks)
    ]


def test_pointing_game_rejects_what_it_cannot_score() -> None:
    with pytest.raises(UsageError, match="empty"):
        pointing_game(np.ones((4, 4)), np.zeros((4, 4), bool))
    with pytest.raises(UsageError, match="tolerance"):
        pointing_game(np.ones((4, 4)), np.ones((4, 4), bool), tolerance=-1)
    with pytest.raises(UsageError, match="NaN"):
        pointing_game(np.full((4, 4), np.nan), np.ones((4, 4), bool))
    with pytest.raises(UsageError, match=r"\[H,W\]"):
        pointing_game(np.ones((2, 4, 4)), np.ones((4, 4), bool))
    with pytest.raises(UsageError, match="3 saliency map"):
        pointing_game_batch(np.ones((2, 4, 4)), np.ones((3, 4, 4), bool))


# --------------------------------------------------------------------------- energy pointing game


def test_energy_pointing_game_by_hand() -> None:
    saliency = np.array([[1.0, 2.0], [3.0, -4.0]])
    mask = np.array([[True, False], [False, True]])
    assert energy_pointing_game(saliency, mask) == pytest.approx(1.0 / (1.0 + 2.0 + 3.0))
    assert energy_pointing_game(np.zeros((2, 2)), mask) == 0.0
    assert energy_pointing_game(-np.ones((2, 2)), mask) == 0.0
    assert energy_pointing_game(np.ones((2, 2)), mask) == pytest.approx(0.5)  # a flat map scores the mask's area


def test_energy_pointing_game_upsamples_and_batches() -> None:
    rng = np.random.default_rng(2)
    masks = np.stack([make_sample(i, split="test").mask for i in range(4)])
    low = rng.random((4, 8, 8)).astype(np.float32)
    expected = []
    for m, k in zip(low, masks):
        up = cv2.resize(m, (32, 32), interpolation=cv2.INTER_LINEAR).astype(np.float64)  # half-pixel centres
        expected.append(up[k].sum() / up.sum())
    assert energy_pointing_game_batch(low, masks) == pytest.approx(expected, rel=1e-5)
    assert energy_pointing_game(low[1], masks[1]) == pytest.approx(expected[1], rel=1e-5)


def test_localisation_batch_gives_both_games_of_the_same_maps() -> None:
    rng = np.random.default_rng(3)
    masks = np.stack([make_sample(i, split="test").mask for i in range(6)])
    low = rng.integers(-2, 4, size=(6, 8, 8)).astype(np.float32)  # ties, negative values
    low[0] = 1.0  # a flat map: every pixel a maximum
    low[1] = -1.0  # no energy
    expected_hits = [
        brute_force_hit(cv2.resize(m, (32, 32), interpolation=cv2.INTER_LINEAR), k, 0) for m, k in zip(low, masks)
    ]
    expected_shares = []
    for m, k in zip(low, masks):
        up = np.clip(cv2.resize(m, (32, 32), interpolation=cv2.INTER_LINEAR).astype(np.float64), 0, None)
        expected_shares.append(up[k].sum() / up.sum() if up.sum() > 0 else 0.0)
    flipped = masks[:, ::-1].copy()[:, ::-1]  # the same masks through negative strides
    for given in (masks, masks.astype(np.uint8) * 255, torch.from_numpy(masks), flipped):  # nonzero: the object
        hits, shares = localisation_batch(low, given)
        assert hits.dtype == bool and hits.tolist() == expected_hits
        assert shares == pytest.approx(expected_shares, rel=1e-5, abs=1e-12)
        assert hits.tolist() == pointing_game_batch(low, given).tolist()
        assert shares.tolist() == energy_pointing_game_batch(low, given).tolist()
    assert expected_hits[0] is False and expected_shares[1] == 0.0
    empty = masks.copy()
    empty[2] = False
    with pytest.raises(UsageError, match="mask 2 is empty"):
        localisation_batch(low, empty)


# --------------------------------------------------------------------------- deletion / insertion


@pytest.fixture(scope="module")
def region_case() -> tuple[RegionSum, torch.Tensor, np.ndarray]:
    region = np.zeros((8, 8))
    region[2:6, 3:7] = 1.0
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 0.5 + 0.5
    return RegionSum(region), images, region


def test_deletion_insertion_ranks_a_perfect_map_above_others(region_case) -> None:
    model, images, region = region_case
    rng = np.random.default_rng(4)
    perfect = np.repeat(region[None], 3, axis=0) + rng.random((3, 8, 8)) * 0.01
    inverse = 1.0 - perfect
    shuffled = rng.random((3, 8, 8))
    results = {
        name: deletion_insertion(model, images, maps, 0, steps=16, baseline="zero")
        for name, maps in [("perfect", perfect), ("inverse", inverse), ("random", shuffled)]
    }
    deletion = {name: r["deletion_auc"] for name, r in results.items()}
    insertion = {name: r["insertion_auc"] for name, r in results.items()}
    assert (deletion["perfect"] < deletion["random"]).all() and (deletion["random"] < deletion["inverse"]).all()
    assert (insertion["perfect"] > insertion["random"]).all() and (insertion["random"] > insertion["inverse"]).all()
    # Deleting the 16 region pixels first leaves nothing of the evidence after 16/64 = 1/4 of the pixels.
    perfect_curve = results["perfect"]["deletion_curve"]
    assert perfect_curve[:, 4:] == pytest.approx(np.full((3, 13), 1 / (1 + math.exp(OFFSET))))
    assert (perfect_curve[:, 0] > 0.75).all()  # the evidence is far from saturating the softmax


@pytest.mark.parametrize("baseline", ["zero", "mean", "blur"])
def test_deletion_insertion_curves_equal_a_hand_computation(region_case, baseline: str) -> None:
    model, images, region = region_case
    saliency = np.random.default_rng(5).random((3, 4, 4))  # a low-resolution map, upsampled to 8×8
    result = deletion_insertion(model, images, saliency, [0, 0, 0], steps=10, baseline=baseline, blur_sigma=1.5)
    for i in range(3):
        image = images[i].numpy().astype(np.float64)
        if baseline == "zero":
            substrate = np.zeros_like(image)
        elif baseline == "mean":
            substrate = np.broadcast_to(image.mean(axis=(1, 2), keepdims=True), image.shape).copy()
        else:
            substrate = np.stack(
                [cv2.GaussianBlur(c, (11, 11), 1.5, borderType=cv2.BORDER_REPLICATE) for c in image]
            )  # radius ceil(3σ) = 5
        upsampled = cv2.resize(saliency[i], (8, 8), interpolation=cv2.INTER_LINEAR)
        for insert, key in ((False, "deletion"), (True, "insertion")):
            fractions, curve = hand_curve(image, upsampled, substrate, region, 10, insert)
            assert result["fractions"] == pytest.approx(fractions)
            assert result[f"{key}_curve"][i] == pytest.approx(curve, abs=1e-5)
            assert result[f"{key}_auc"][i] == pytest.approx(trapezoid_by_hand(fractions, curve), abs=1e-5)
    # (The hand curves above check both ends of each path: the untouched image and the baseline.)


def test_deletion_insertion_batches_targets_and_model_state(region_case) -> None:
    model, images, region = region_case
    saliency = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(6))
    model.train()
    model.calls = 0
    small = deletion_insertion(model, images, saliency, None, steps=8, batch_size=5)
    assert model.training  # restored
    # one pass for the predictions, two probes of the channels-last format (CPU), then 2·steps images
    # per image (the curves share their ends) in batches of 5
    assert model.calls == 1 + 2 + math.ceil(3 * 2 * 8 / 5)
    model.eval()
    large = deletion_insertion(model, images, saliency, None, steps=8, batch_size=64)
    assert small["deletion_curve"] == pytest.approx(large["deletion_curve"])
    assert small["targets"].tolist() == [0, 0, 0]  # every image's region sum is large: class 0 wins
    other = deletion_insertion(model, images, saliency, 1, steps=8)
    assert other["deletion_curve"] == pytest.approx(1.0 - large["deletion_curve"])
    single = deletion_insertion(model, images[0], saliency[0], 0, steps=8)
    assert single["deletion_curve"][0] == pytest.approx(large["deletion_curve"][0])
    assert deletion_insertion(model, images, saliency, 0, steps=1000)["fractions"].size == 65  # at most H·W steps


class FormatLog(nn.Module):
    """Runs ``model`` and logs whether each batch came channels-last."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.formats: list[str] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        self.formats.append("channels_last" if last else "contiguous")
        return self.model(x)


class NotebookCNN(nn.Module):
    """A course-notebook CNN: ``x.view(-1, C*H*W)`` on a feature map, which a channels-last batch
    refuses; with ``spoil``, it zeroes such a batch in place first (as a careless model might)."""

    def __init__(self, spoil: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 10)
        self.spoil = spoil

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spoil and not x.is_contiguous():
            x.mul_(0.0)  # then fails: what is run again must be the batch as built
        return self.fc(torch.relu(self.conv(x)).view(-1, 8 * 8 * 8))


@pytest.mark.parametrize("arch", ["cnn", "se_cnn", "cbam_cnn", "resnet18_cbam"])
def test_deletion_insertion_is_the_same_with_channels_last_batches(arch: str, shapes_batch) -> None:
    torch.manual_seed(0)
    images = shapes_batch[0][:4]
    model = FormatLog(build_model(arch, num_classes=10).eval())
    maps = torch.rand(4, 8, 8, generator=torch.Generator().manual_seed(1))
    runs = {}
    for setting in (False, True, None):
        model.formats.clear()
        runs[setting] = deletion_insertion(model, images, maps, None, steps=6, batch_size=16, channels_last=setting)
        # the first pass predicts the classes on the images as given; None: channels-last on the CPU,
        # after a probe in both formats
        if setting is False:
            assert model.formats[1:] == ["contiguous"] * 3  # 4 images × 12 columns in batches of 16
        else:
            assert model.formats[1:] == ["contiguous", "channels_last"] + ["channels_last"] * 3
    for setting in (True, None):
        for key in ("deletion_curve", "insertion_curve", "deletion_auc", "insertion_auc"):
            np.testing.assert_allclose(runs[setting][key], runs[False][key], rtol=0, atol=1e-6)
        assert runs[setting]["targets"].tolist() == runs[False]["targets"].tolist()


class RawMemoryNet(nn.Module):
    """Reads its input's memory as if it were contiguous (as code handing ``data_ptr()`` to a C
    library might): no error on a channels-last batch, other numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.as_strided((x.shape[0], 3 * 8 * 8), (3 * 8 * 8, 1))
        return self.fc(flat)


def test_a_model_whose_numbers_change_with_the_format_gets_contiguous_batches() -> None:
    torch.manual_seed(0)
    model = FormatLog(RawMemoryNet().eval())
    images = torch.randn(3, 3, 8, 8)
    maps = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(2))
    expected = deletion_insertion(model, images, maps, [1, 4, 7], steps=4, batch_size=5, channels_last=False)
    model.formats.clear()
    result = deletion_insertion(model, images, maps, [1, 4, 7], steps=4, batch_size=5)
    assert model.formats == ["contiguous", "channels_last"] + ["contiguous"] * math.ceil(3 * 2 * 4 / 5)
    for key in ("deletion_curve", "insertion_curve"):
        np.testing.assert_array_equal(result[key], expected[key])


@pytest.mark.parametrize("spoil", [False, True])
def test_a_model_that_refuses_channels_last_batches_gets_contiguous_ones(spoil: bool) -> None:
    torch.manual_seed(0)
    model = FormatLog(NotebookCNN(spoil=spoil).eval())
    images = torch.randn(3, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    maps = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(2))
    targets = [1, 4, 7]
    expected = deletion_insertion(model, images.clone(), maps, targets, steps=4, batch_size=5, channels_last=False)
    model.formats.clear()
    result = deletion_insertion(model, images.clone(), maps, targets, steps=4, batch_size=5, channels_last=True)
    # (targets given: no prediction pass) the probe runs contiguous, then fails channels-last: every
    # batch is contiguous
    batches = math.ceil(3 * 2 * 4 / 5)
    assert model.formats == ["contiguous", "channels_last"] + ["contiguous"] * batches
    for key in ("deletion_curve", "insertion_curve"):
        np.testing.assert_array_equal(result[key], expected[key])  # the retry saw the batch as it was built


def test_a_model_that_fails_in_both_formats_raises_its_own_error() -> None:
    class Broken(NotebookCNN):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] != 3:  # the first pass (three images) works; every perturbed batch fails
                raise ValueError("broken on purpose")
            return super().forward(x.contiguous())

    with pytest.raises(CaptureError, match="broken on purpose"):
        deletion_insertion(Broken().eval(), torch.randn(3, 3, 8, 8), torch.rand(3, 8, 8), None, steps=2, batch_size=4)


def test_deletion_insertion_rejects_bad_arguments(region_case) -> None:
    model, images, _ = region_case
    maps = np.ones((3, 8, 8))
    with pytest.raises(UsageError, match="baseline"):
        deletion_insertion(model, images, maps, 0, baseline="noise")
    with pytest.raises(UsageError, match="out of range"):
        deletion_insertion(model, images, maps, 2)
    with pytest.raises(UsageError, match="one per image"):
        deletion_insertion(model, images, maps, [0, 1])
    with pytest.raises(UsageError, match="steps"):
        deletion_insertion(model, images, maps, 0, steps=0)
    with pytest.raises(UsageError, match="saliency map"):
        deletion_insertion(model, images, np.ones((2, 8, 8)), 0)
    with pytest.raises(UsageError, match="floating point"):
        deletion_insertion(model, images.to(torch.uint8), maps, 0)

    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    with pytest.raises(CaptureError, match="boom"):
        deletion_insertion(Broken(), images, maps, None)


def test_deletion_insertion_on_a_zoo_model(shapes_batch) -> None:
    torch.manual_seed(0)
    model = build_model("cbam_cnn").eval()
    images, _ = shapes_batch
    cam = gradcam(model, images[:2])
    result = deletion_insertion(model, images[:2], cam.maps, cam.targets, steps=4)
    with torch.no_grad():
        expected = model(images[:2]).softmax(1).gather(1, cam.targets[:, None])[:, 0]
    assert result["deletion_curve"][:, 0] == pytest.approx(expected.numpy(), rel=1e-5)
    assert result["targets"].tolist() == cam.targets.tolist()


# --------------------------------------------------------------------------- randomisation sanity check


CNN_TOP_DOWN = ["fc2", "fc1", "bn3", "conv3", "bn2", "conv2", "bn1", "conv1"]


def test_cascading_randomisation_decorrelates_a_zoo_cnn(shapes_batch) -> None:
    torch.manual_seed(0)
    model = build_model("cnn").eval()
    images, _ = shapes_batch
    before = {key: value.clone() for key, value in model.state_dict().items()}
    rng_state = torch.get_rng_state()
    records = randomisation_sanity(model, images)
    assert [r["layers"] for r in records] == [[]] + [[name] for name in CNN_TOP_DOWN]
    assert records[-1]["randomised"] == CNN_TOP_DOWN
    assert records[0]["spearman"].tolist() == [1.0] * 8
    original = gradcam(model, images)
    assert np.array_equal(records[0]["maps"], original.maps.numpy())
    last = records[-1]
    assert last["n"] == 8 and last["spearman_mean"] < 0.5  # every original map has ranks: ρ defined for all
    assert last["top20_iou_mean"] < 0.5
    # a map the randomisation made constant has no rank information left: ρ = 0, not left out
    expected = [
        0.0 if np.ptp(b) == 0 else stats.spearmanr(a.ravel(), b.ravel()).statistic
        for a, b in zip(original.maps.numpy(), last["maps"])
    ]
    assert np.allclose(last["spearman"], expected)
    assert np.array_equal(last["constant"], [np.ptp(b) == 0 for b in last["maps"]])
    assert last["spearman_mean"] == pytest.approx(np.mean(expected))
    # A freshly built model's batch norms are at their initial state: resetting them changes nothing.
    for index, name in enumerate(CNN_TOP_DOWN, start=1):
        if name.startswith("bn"):
            assert np.array_equal(records[index]["maps"], records[index - 1]["maps"])
    # The user's model and random state are untouched.
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    assert not model.training and torch.equal(torch.get_rng_state(), rng_state)
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_randomising_to_the_same_weights_keeps_the_maps(shapes_batch) -> None:
    torch.manual_seed(0)
    model = build_model("cnn").train()
    images, _ = shapes_batch
    seen: list[nn.Module] = []
    records = randomisation_sanity(model, images[:4], initializer=seen.append, order="independent")
    assert len(seen) == 8
    for record in records:
        assert record["spearman"].tolist() == [1.0] * 4 and record["top20_iou"].tolist() == [1.0] * 4
        assert record["randomised"] == record["layers"]  # independent: one step's modules only
    assert model.training


def test_independent_randomisation_restores_the_other_layers(shapes_batch) -> None:
    torch.manual_seed(0)
    model = build_model("cnn").eval()
    images, _ = shapes_batch
    records = randomisation_sanity(model, images[:4], order="independent")
    assert [r["layers"] for r in records[1:]] == [[name] for name in CNN_TOP_DOWN]
    for record in records[1:]:
        # Alone, a reset batch norm of a fresh model is no change; a re-drawn conv or linear layer is.
        unchanged = np.array_equal(record["maps"], records[0]["maps"])
        assert unchanged == record["layers"][0].startswith("bn")


def test_randomisation_groups_and_seeds(shapes_batch) -> None:
    torch.manual_seed(1)
    model = build_model("cbam_cnn").eval()
    images, _ = shapes_batch
    records = randomisation_sanity(model, images[:2], depth=1, steps=4, seed=3)
    groups = [r["layers"] for r in records[1:]]
    assert len(groups) == 4 and sum(groups, []) == records[-1]["randomised"]
    assert groups[0][:2] == ["fc2", "fc1"]
    cbam3 = ["cbam3.spatial_attn.conv", "cbam3.channel_attn.fc.2", "cbam3.channel_attn.fc.0"]
    assert any(group[i : i + 3] == cbam3 for group in groups for i in range(len(group)))
    again = randomisation_sanity(model, images[:2], depth=1, steps=4, seed=3)
    assert np.array_equal(again[-1]["maps"], records[-1]["maps"])
    with pytest.raises(UsageError, match="order"):
        randomisation_sanity(model, images[:2], order="reverse")


# --------------------------------------------------------------------------- gate statistics


def test_gate_statistics_by_hand() -> None:
    values = np.array([[0.2, 0.8], [0.4, 0.6]])
    result = gate_statistics(torch.tensor(values))
    assert result["images"] == 2 and result["channels"] == 2
    assert result["mean"] == pytest.approx(0.5)
    assert result["channel_mean"] == pytest.approx([0.3, 0.7])
    assert result["channel_std"] == pytest.approx([0.1, 0.1])
    assert result["spread"] == pytest.approx(0.2)
    assert result["within_image_spread"] == pytest.approx((0.3 + 0.1) / 2)
    assert result["entropy"] == pytest.approx(-(0.3 * math.log(0.3) + 0.7 * math.log(0.7)) / math.log(2))
    assert result["fraction_open"] == 0.5
    flat = gate_statistics(np.full((5, 8), 0.5))
    assert flat["entropy"] == pytest.approx(1.0) and flat["spread"] == 0.0 and flat["fraction_open"] == 0.0
    selective = gate_statistics(np.eye(4)[[0, 0, 0]])
    assert selective["entropy"] == pytest.approx(0.0) and selective["fraction_open"] == 0.25
    with pytest.raises(UsageError, match=r"\[N,C\]"):
        gate_statistics(np.ones((2, 3, 4)))
    with pytest.raises(UsageError, match=">= 0"):
        gate_statistics(-np.ones((2, 3)))


def test_class_selectivity_of_known_gates() -> None:
    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(5), 200)
    agnostic = rng.uniform(0.2, 0.8, size=(1000, 16))
    assert class_selectivity(agnostic, labels) < 0.02
    same_per_class = np.tile(rng.uniform(size=(200, 16)), (5, 1))  # every class sees the same values
    assert class_selectivity(same_per_class, labels) == pytest.approx(0.0, abs=1e-12)
    by_class = rng.uniform(size=(5, 16))[labels]  # the gate is a function of the class alone
    assert class_selectivity(by_class, labels) == pytest.approx(1.0)
    assert class_selectivity(np.full((10, 3), 0.5), labels[::100]) == 0.0  # constant gates carry no class


def test_channel_selectivity_equals_anova_eta_squared() -> None:
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 3, size=40)
    values = rng.random((40, 6)) + 0.3 * labels[:, None] * rng.random(6)
    result = channel_selectivity(values, torch.tensor(labels))
    k, n = 3, 40
    for c in range(6):
        f = stats.f_oneway(*[values[labels == j, c] for j in range(k)]).statistic
        assert result[c] == pytest.approx(f * (k - 1) / (f * (k - 1) + (n - k)))
    with pytest.raises(UsageError, match="two classes"):
        channel_selectivity(values, np.zeros(40))
    with pytest.raises(UsageError, match="labels"):
        channel_selectivity(values, labels[:10])


# --------------------------------------------------------------------------- agreement


def test_map_agreement_is_the_compare_numbers() -> None:
    rng = np.random.default_rng(9)
    a, b = rng.random((6, 6)), rng.random((6, 6))
    result = map_agreement(a, torch.tensor(b))
    assert result == {"top20_iou": top_region_iou(a, b, 0.2), "spearman": spearman(a, b)}
    assert result["spearman"] == pytest.approx(stats.spearmanr(a.ravel(), b.ravel()).statistic)
    assert map_agreement(a, a) == {"top20_iou": 1.0, "spearman": 1.0}
    with pytest.raises(UsageError, match="same shape"):
        map_agreement(a, b[:5])
    with pytest.raises(UsageError, match="same shape"):
        top_region_iou(a, b[:5])
    with pytest.raises(UsageError, match="same number of pixels"):
        spearman(a, b[:5])
