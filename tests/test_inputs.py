"""Image decoding, presets, preprocessing and class names."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from attnviz.io.inputs import (
    CIFAR10_CLASSES,
    PRESETS,
    InputImage,
    Preset,
    denormalize,
    get_preset,
    load_class_names,
    load_input,
    load_rgb,
    preprocess,
)
from attnviz.runtime.errors import InputImageError, UsageError


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Straight-alpha compositing over white, written out independently of attnviz."""
    a = alpha.astype(float)[..., None] / 255
    return np.round(rgb.astype(float) * a + 255 * (1 - a)).astype(np.uint8)


def _save(img: Image.Image, tmp_path, name: str, **kwargs) -> str:
    path = tmp_path / name
    img.save(path, **kwargs)
    return str(path)


# ---------------------------------------------------------------- presets


def test_cifar10_preset_has_the_notebooks_normalisation():
    p = PRESETS["cifar10"]
    assert p.size == (32, 32)
    assert p.mean == (0.4914, 0.4822, 0.4465)
    assert p.std == (0.2023, 0.1994, 0.2010)
    # imagenet crops as torchvision's ImageNet evaluation does (224 of 256), so the preset says so
    imagenet = Preset("imagenet", (224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), crop=0.875)
    assert PRESETS["imagenet"] == imagenet and p.crop is None


def test_get_preset_size_override_and_round_trip():
    p = get_preset("imagenet", size=64)
    assert p.size == (64, 64) and p.mean == PRESETS["imagenet"].mean
    q = get_preset(p, size=(48, 40))
    assert q.size == (48, 40)
    assert Preset.from_dict(q.to_dict()) == q
    assert json.loads(json.dumps(q.to_dict())) == q.to_dict()


def test_unknown_preset_lists_known_ones():
    with pytest.raises(UsageError, match="cifar10.*imagenet"):
        get_preset("mnist")
    with pytest.raises(UsageError, match="positive"):
        get_preset("cifar10", size=(0, 32))
    with pytest.raises(UsageError, match="missing std"):
        Preset.from_dict({"name": "x", "size": [8, 8], "mean": [0, 0, 0]})


# ---------------------------------------------------------------- class names


def test_class_names_lines_json_and_errors(tmp_path):
    lines = tmp_path / "names.txt"
    lines.write_text("\ufeffcat\n\n  狗 \r\nbird\n\n", encoding="utf-8")
    assert load_class_names(lines) == ["cat", "狗", "bird"]
    js = tmp_path / "names.json"
    js.write_text(json.dumps(["a", "b c"]), encoding="utf-8")
    assert load_class_names(js) == ["a", "b c"]
    bad = tmp_path / "bad.json"
    bad.write_text('["a", 3]', encoding="utf-8")
    with pytest.raises(UsageError, match="list of strings"):
        load_class_names(bad)
    with pytest.raises(UsageError, match="does not exist"):
        load_class_names(tmp_path / "nope.txt")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(UsageError, match="not UTF-8"):
        load_class_names(latin)
    assert CIFAR10_CLASSES[0] == "airplane" and CIFAR10_CLASSES[-1] == "truck" and len(CIFAR10_CLASSES) == 10


# ---------------------------------------------------------------- decoding every mode


def test_rgb_and_gray_decode_exactly(tmp_path, rng):
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(load_rgb(_save(Image.fromarray(rgb), tmp_path, "rgb.png")), rgb)
    gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    out = load_rgb(_save(Image.fromarray(gray), tmp_path, "l.png"))
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    assert np.array_equal(out, np.stack([gray] * 3, axis=2))


def test_alpha_modes_composite_on_white(tmp_path, rng):
    rgba = rng.integers(0, 256, (4, 6, 4), dtype=np.uint8)
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255
    out = load_rgb(_save(Image.fromarray(rgba), tmp_path, "rgba.png"))
    assert np.array_equal(out, _over_white(rgba[..., :3], rgba[..., 3]))
    assert tuple(out[0, 0]) == (255, 255, 255) and np.array_equal(out[0, 1], rgba[0, 1, :3])

    la = rng.integers(0, 256, (4, 6, 2), dtype=np.uint8)
    out = load_rgb(_save(Image.fromarray(la), tmp_path, "la.png"))
    assert np.array_equal(out, _over_white(np.stack([la[..., 0]] * 3, axis=2), la[..., 1]))


def test_palette_with_transparency(tmp_path, rng):
    palette = rng.integers(0, 256, (4, 3), dtype=np.uint8)
    alphas = np.array([255, 0, 128, 30], dtype=np.uint8)
    index = rng.integers(0, 4, (5, 5), dtype=np.uint8)
    img = Image.new("P", (5, 5))
    img.putpalette(palette.ravel().tolist())
    img.putdata(index.ravel().tolist())
    path = _save(img, tmp_path, "p.png", transparency=alphas.tobytes())
    assert Image.open(path).mode == "P"
    assert np.array_equal(load_rgb(path), _over_white(palette[index], alphas[index]))

    opaque = _save(img, tmp_path, "p_opaque.png")
    assert np.array_equal(load_rgb(opaque), palette[index])


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 300, 1000], [32768, 40000, 65534, 65535]], dtype=np.uint16)
    expected = np.round(values.astype(float) * 255 / 65535).astype(np.uint8)
    path = _save(Image.fromarray(values), tmp_path, "i16.png")
    assert Image.open(path).mode == "I;16"
    out = load_rgb(path)
    assert np.array_equal(out, np.stack([expected] * 3, axis=2))
    assert out[0, 2, 0] == 1  # clipping would have given 255

    path32 = _save(Image.fromarray(values.astype(np.int32)), tmp_path, "i32.tif")
    assert Image.open(path32).mode == "I"
    assert np.array_equal(load_rgb(path32)[..., 0], expected)


def test_cmyk_and_bilevel(tmp_path, rng):
    cmyk = rng.integers(0, 256, (3, 4, 4), dtype=np.uint8)
    path = _save(Image.frombytes("CMYK", (4, 3), cmyk.tobytes()), tmp_path, "cmyk.tif")
    c, k = cmyk[..., :3].astype(float), cmyk[..., 3:].astype(float)
    expected = (255 - c) * (255 - k) / 255
    assert np.abs(load_rgb(path).astype(float) - expected).max() <= 0.5 + 1e-9

    bits = rng.integers(0, 2, (6, 9)).astype(bool)
    out = load_rgb(_save(Image.fromarray(bits), tmp_path, "bits.png"))
    assert np.array_equal(out, np.stack([bits * 255] * 3, axis=2).astype(np.uint8))


@pytest.mark.parametrize(("orientation", "turns"), [(6, -1), (8, 1), (3, 2), (1, 0)])
def test_exif_orientation_is_applied(tmp_path, rng, orientation, turns):
    rgb = rng.integers(0, 256, (2, 3, 3), dtype=np.uint8)
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = orientation
    out = load_rgb(_save(img, tmp_path, f"o{orientation}.png", exif=exif))
    assert np.array_equal(out, np.rot90(rgb, k=turns))  # k=-1: 90 degrees clockwise


# ---------------------------------------------------------------- broken files


def _encoded(fmt: str, rng) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_images_are_detected(tmp_path, rng, fmt):
    data = _encoded(fmt, rng)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputImageError, match="truncated") as info:
        load_rgb(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unreadable_files_raise_one_line_errors(tmp_path, monkeypatch, rng):
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    cases = {
        text: "not an image",
        empty: "empty",
        tmp_path / "missing.png": "does not exist",
        tmp_path: "directory",
    }
    for path, reason in cases.items():
        with pytest.raises(InputImageError, match=reason) as info:
            load_rgb(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)

    bomb = _save(Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)), tmp_path, "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(InputImageError, match="decompression bomb"):
        load_rgb(bomb)


# ---------------------------------------------------------------- preprocessing


@pytest.mark.parametrize(
    ("preset", "shape"),
    [
        (get_preset("cifar10"), (45, 37)),
        (get_preset("cifar10", size=(48, 40)), (30, 70)),
        (PRESETS["cifar10"], (32, 32)),
    ],
)
@pytest.mark.filterwarnings("ignore:.*squashed:UserWarning")
def test_preprocess_matches_torchvision(rng, preset, shape):
    rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    reference = transforms.Compose(
        [transforms.Resize(preset.size), transforms.ToTensor(), transforms.Normalize(preset.mean, preset.std)]
    )(Image.fromarray(rgb))
    out = preprocess(rgb, preset)
    assert out.dtype == torch.float32 and out.shape == (3, *preset.size)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=0)


def test_denormalize_recovers_what_the_model_saw(rng):
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    tensor = preprocess(rgb, "cifar10")
    assert np.array_equal(denormalize(tensor, "cifar10"), rgb)
    assert np.array_equal(denormalize(tensor[None], "cifar10"), rgb)
    with pytest.raises(UsageError, match=r"\[3, H, W\]"):
        denormalize(torch.zeros(1, 32, 32), "cifar10")


def test_preprocess_rejects_non_rgb_arrays():
    with pytest.raises(UsageError, match="HxWx3 uint8"):
        preprocess(np.zeros((8, 8), np.uint8), "cifar10")
    with pytest.raises(UsageError, match="HxWx3 uint8"):
        preprocess(np.zeros((8, 8, 3), np.float32), "cifar10")


def test_load_input_keeps_original_and_tensor(tmp_path, rng):
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    path = _save(Image.fromarray(rgb), tmp_path, "x.png")
    item = load_input(path, "cifar10")
    assert isinstance(item, InputImage) and item.path == path
    assert np.array_equal(item.original, rgb)
    torch.testing.assert_close(item.tensor, preprocess(rgb, "cifar10"), atol=0, rtol=0)


# ---------------------------------------------------------------- which resize: crop or squash


def _smooth_photo(height: int, width: int) -> np.ndarray:
    """A landscape-like picture with structure everywhere: gradients plus a few discs."""
    y, x = np.mgrid[0:height, 0:width].astype(float)
    rgb = np.stack([255 * x / width, 255 * y / height, 128 + 100 * np.sin(x / 23) * np.cos(y / 17)], axis=2)
    for cy, cx, r in ((0.3, 0.2, 0.1), (0.5, 0.5, 0.15), (0.7, 0.85, 0.08)):
        rgb[(y - cy * height) ** 2 + (x - cx * width) ** 2 < (r * width) ** 2] = (250, 20, 40)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("size", "shape", "resize"),
    [(224, (480, 640), 256), (224, (640, 480), 256), ((48, 40), (30, 70), 54), (64, (50, 50), 73)],
)
def test_imagenet_preset_resizes_the_shorter_side_then_centre_crops_like_torchvision(rng, size, shape, resize):
    preset = get_preset("imagenet", size=size)
    rgb = _smooth_photo(*shape)
    rgb = np.clip(rgb.astype(int) + rng.integers(-30, 31, rgb.shape), 0, 255).astype(np.uint8)
    reference = transforms.Compose(
        [
            transforms.Resize(resize),  # the shorter side to size / 0.875 (256 for 224), aspect kept
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(preset.mean, preset.std),
        ]
    )(Image.fromarray(rgb))
    out = preprocess(rgb, preset)
    assert out.shape == (3, *preset.size)
    assert (out - reference).abs().max().item() <= 1e-6


def test_presets_say_which_resize_they_use():
    assert PRESETS["imagenet"].resize_description() == "resize shorter side to 256, centre crop 224×224"
    assert PRESETS["cifar10"].resize_description() == "resize to 32×32"
    assert get_preset("imagenet", size=(48, 40)).resize_description() == "resize shorter side to 54, centre crop 40×48"
    assert get_preset("cifar10", size=(48, 40)).resize_description() == "resize to 40×48"


def test_crop_round_trips_and_old_imagenet_presets_crop(rng):
    q = get_preset("imagenet", size=(48, 40))
    assert q.crop == 0.875 and Preset.from_dict(q.to_dict()) == q
    assert json.loads(json.dumps(q.to_dict())) == q.to_dict()
    squash = Preset("mine", (8, 8), (0.5,) * 3, (0.5,) * 3)
    assert Preset.from_dict(squash.to_dict()) == squash and squash.crop is None
    # a checkpoint written before presets named their crop: the imagenet preset still crops
    old = {"name": "imagenet", "size": [224, 224], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert Preset.from_dict(old) == PRESETS["imagenet"]
    # report keys hash the repr: a preset that resizes the whole image keeps the one it had before crops
    old_repr = "Preset(name='cifar10', size=(32, 32), mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.201))"
    assert repr(PRESETS["cifar10"]) == old_repr and "crop=0.875" in repr(PRESETS["imagenet"])
    for bad in (0, 1.5, "half", True):
        with pytest.raises(UsageError, match="crop"):
            Preset.from_dict({**old, "crop": bad})


def test_load_input_keeps_the_centre_crop_the_model_saw(tmp_path, recwarn):
    rgb = _smooth_photo(480, 640)
    path = _save(Image.fromarray(rgb), tmp_path, "09_x.png")
    item = load_input(path, "imagenet")
    assert item.size == (480, 640) and item.tensor.shape == (3, 224, 224)
    assert item.resize == "resize shorter side to 256, centre crop 224×224"
    # the model saw the middle 224/256 of the shorter side: a 420×420 square in the middle of the photo
    height, width = item.original.shape[:2]
    assert abs(height - 420) <= 1 and abs(width - 420) <= 1
    offsets = [
        (dy, dx)
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
        if np.array_equal(item.original, rgb[30 + dy : 30 + dy + height, 110 + dx : 110 + dx + width])
    ]
    assert offsets, "original is not the centre of the photo"
    # and it lines up with what the model saw: the same picture at 224×224, within a grey level or two
    seen = denormalize(item.tensor, "imagenet").astype(float)
    shown = np.asarray(Image.fromarray(item.original).resize((224, 224), Image.Resampling.BILINEAR)).astype(float)
    assert np.abs(seen - shown).mean() < 2.0
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]  # a crop squashes nothing


def test_squashing_a_photo_to_a_square_warns_once(tmp_path):
    path = _save(Image.fromarray(_smooth_photo(480, 640)), tmp_path, "09_x.png")
    with pytest.warns(UserWarning) as caught:
        item = load_input(path, "cifar10")
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message == (
        f"{path} is 640×480; resized to 32×32 (aspect 1.33 → 1.00, the image is squashed); "
        "crop it first or use a preset that crops"
    )
    assert item.resize == "resize to 32×32" and item.original.shape == (480, 640, 3)  # the whole photo
    with pytest.warns(UserWarning, match=r"^image is 480×640; resized to 32×32 \(aspect 0.75 → 1.00"):
        preprocess(_smooth_photo(640, 480), "cifar10")


@pytest.mark.parametrize("shape", [(40, 40), (100, 120), (120, 100)])
def test_square_inputs_and_small_aspect_changes_do_not_warn(recwarn, shape):
    preprocess(_smooth_photo(*shape), "cifar10")
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]
