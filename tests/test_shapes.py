"""The shapes data set: deterministic, balanced, and its mask is exactly the target object."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from attnviz.data.shapes import NOISE, SHAPES_CLASSES, ShapesDataset, make_sample
from attnviz.data.specs import eval_transform, make_datasets, parse_data_spec
from attnviz.runtime.errors import UsageError

N = 200


@pytest.fixture(scope="module")
def samples():
    return [make_sample(i, seed=3, split="train") for i in range(N)]


def test_same_seed_and_index_give_identical_arrays_in_any_order(samples):
    reversed_order = [make_sample(i, seed=3, split="train") for i in reversed(range(N))][::-1]
    with ThreadPoolExecutor(max_workers=2) as pool:
        threaded = list(pool.map(lambda i: make_sample(i, seed=3, split="train"), range(N)))
    for a, b, c in zip(samples, reversed_order, threaded):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.image, c.image)
        assert np.array_equal(a.mask, b.mask) and np.array_equal(a.mask, c.mask)
        assert a.label == b.label == c.label


def test_seeds_and_splits_give_different_images():
    base = [make_sample(i, seed=0, split="train").image for i in range(20)]
    other_seed = [make_sample(i, seed=1, split="train").image for i in range(20)]
    other_split = [make_sample(i, seed=0, split="test").image for i in range(20)]
    assert all(not np.array_equal(a, b) for a, b in zip(base, other_seed))
    assert all(not np.array_equal(a, b) for a, b in zip(base, other_split))


def test_labels_are_balanced(samples):
    counts = Counter(s.label for s in samples)
    assert sorted(counts) == list(range(10))
    assert max(counts.values()) - min(counts.values()) <= 1
    assert ShapesDataset("train", size=N, seed=3).targets == [s.label for s in samples]


def test_images_are_32x32_rgb_uint8_and_not_flat(samples):
    for s in samples:
        assert s.image.shape == (32, 32, 3) and s.image.dtype == np.uint8
        assert s.mask.shape == (32, 32) and s.mask.dtype == bool
        assert s.image.std() > 10


def test_mask_is_one_blob_with_the_target_colour(samples):
    for s in samples:
        assert s.mask.sum() >= 20, s.class_name
        _, blobs = ndimage.label(s.mask)
        assert blobs == 1, s.class_name
        diff = np.abs(s.image[s.mask].astype(int) - np.array(s.colour))
        assert diff.max() <= NOISE


def test_mask_geometry_matches_the_class(samples):
    """The mask's bounding box sits on the recorded centre and spans the recorded scale."""
    fill_ratio = {  # area / bounding-box area of the ideal shape
        "circle": np.pi / 4,
        "square": 1.0,
        "diamond": 0.5,
        "triangle": 0.5,
        "ring": np.pi / 4 * (1 - 0.55**2),
        "cross": (2 * 0.6 * 2 - 0.6**2) / 4,
        "bar": 1.0,
        "star": None,
        "heart": None,
        "arrow": None,
    }
    for s in samples:
        ys, xs = np.nonzero(s.mask)
        x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
        assert x0 - 1 <= s.center[0] <= x1 + 1 and y0 - 1 <= s.center[1] <= y1 + 1
        extent = max(x1 - x0, y1 - y0) + 1
        assert 1.4 * s.scale - 2 <= extent <= 2 * s.scale + 2, (s.class_name, extent, s.scale)
        expected = fill_ratio[s.class_name]
        if expected is not None:
            ratio = s.mask.sum() / ((x1 - x0 + 1) * (y1 - y0 + 1))
            assert abs(ratio - expected) < 0.2, (s.class_name, ratio)


def test_ring_has_a_hole_and_circle_does_not(samples):
    for s in samples:
        if s.class_name in ("ring", "circle"):
            filled = ndimage.binary_fill_holes(s.mask)
            holes = (filled & ~s.mask).sum()
            assert (holes > 0) == (s.class_name == "ring")


def test_distractors_are_smaller_and_outside_the_mask(samples):
    drawn, target_areas, distractor_areas = 0, [], []
    for s in samples:
        assert not (s.distractor_mask & s.mask).any()
        # Not even touching: at least one pixel of gap around the target.
        assert not (ndimage.binary_dilation(s.mask) & s.distractor_mask).any()
        blobs, count = ndimage.label(s.distractor_mask, structure=np.ones((3, 3)))
        assert count >= len(s.distractors)  # kept apart, so blobs never merge (thin tips may split)
        distractor_areas += list(ndimage.sum(s.distractor_mask, blobs, range(1, count + 1)))
        target_areas.append(s.mask.sum())
        drawn += count
    assert drawn >= 2 * N  # two to four per image; placement rarely fails
    assert max(distractor_areas) <= 60  # an L or T of scale 4.5 covers about 41 px
    assert np.median(target_areas) > 3 * np.median(distractor_areas)


def test_dataset_items_match_samples_and_masks():
    ds = ShapesDataset("test", size=12, seed=5, return_mask=True)
    image, label, mask = ds[7]
    sample = make_sample(7, seed=5, split="test")
    assert isinstance(image, Image.Image) and image.size == (32, 32)
    assert np.array_equal(np.asarray(image), sample.image)
    assert label == sample.label == 7
    assert mask.dtype == torch.bool and torch.equal(mask, torch.from_numpy(sample.mask))
    assert len(ds) == 12 and ds[-1][1] == ds[11][1]
    with pytest.raises(IndexError):
        ds[12]


def test_transform_is_applied_to_the_image():
    ds = ShapesDataset("test", size=3, seed=0, transform=eval_transform())
    tensor, _ = ds[0]
    mean = torch.tensor([0.4914, 0.4822, 0.4465])[:, None, None]
    std = torch.tensor([0.2023, 0.1994, 0.2010])[:, None, None]
    expected = (torch.from_numpy(make_sample(0, split="test").image).permute(2, 0, 1).float() / 255 - mean) / std
    assert tensor.shape == (3, 32, 32)
    assert torch.allclose(tensor, expected, atol=1e-5)


def test_make_datasets_shapes_sizes_and_names():
    train, test, names = make_datasets("shapes", train_size=30, test_size=10, seed=2)
    assert names == list(SHAPES_CLASSES) and len(set(names)) == 10
    assert (len(train), len(test)) == (30, 10)
    image, label = train[4]
    assert image.shape == (3, 32, 32) and label == 4


@pytest.mark.parametrize("spec", ["mnist", "folder:", "", "cifar"])
def test_unknown_data_spec_is_a_usage_error(spec):
    with pytest.raises(UsageError, match="data spec"):
        parse_data_spec(spec)


def test_bad_arguments_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="split"):
        ShapesDataset("val")
    with pytest.raises(UsageError, match="size"):
        ShapesDataset("train", size=0)
    with pytest.raises(UsageError, match="CIFAR-10 not found"):
        make_datasets("cifar10", data_dir=tmp_path)
    with pytest.raises(UsageError, match="not found"):
        make_datasets(f"folder:{tmp_path / 'nope'}")


def test_folder_spec_reads_train_and_test_folders(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
                    tmp_path / split / name / f"{i}.png"
                )
    train, test, names = make_datasets(f"folder:{tmp_path}")
    assert names == ["cat", "dog"] and len(train) == len(test) == 4
    image, label = test[3]
    assert image.shape == (3, 32, 32) and label == 1
