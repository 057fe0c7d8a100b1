"""The shared preprocessing: every Pillow mode, EXIF, field-of-view crop, Ben Graham, guards."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from models.preprocess import (
    ImageError,
    PreprocessSpec,
    ben_graham,
    crop_field_of_view,
    field_of_view_box,
    load_scan,
    normalize,
    open_image,
    preprocess,
)


def fundus_like(w: int = 120, h: int = 90, cx: float | None = None, r: float = 40) -> Image.Image:
    """An orange disc on black, off-centre if cx is given (a camera's field of view)."""
    yy, xx = np.mgrid[:h, :w]
    cx = w / 2 if cx is None else cx
    inside = (xx - cx) ** 2 + (yy - h / 2) ** 2 <= r * r
    arr = np.zeros((h, w, 3), np.uint8)
    arr[inside] = (200, 90, 40)
    return Image.fromarray(arr)


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def test_spec_round_trip_and_validation():
    spec = PreprocessSpec(mode="plain", size=48, ben_graham=True)
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="unknown preprocessing mode 'crop'; valid: fundus, plain"):
        PreprocessSpec(mode="crop")
    with pytest.raises(ValueError, match="at least 16 px"):
        PreprocessSpec(size=8)
    with pytest.raises(ValueError, match="unknown preprocessing fields"):
        PreprocessSpec.from_dict({"size": 32, "colour": 1})


def as_mode(img: Image.Image, mode: str) -> Image.Image:
    """``img`` in Pillow mode ``mode`` (integer and float modes built from the grey values)."""
    grey = np.asarray(img.convert("L"), np.float64)
    if mode == "I;16":
        return Image.fromarray((grey * 257).astype(np.uint16))
    if mode == "I":
        return Image.fromarray((grey * 257).astype(np.int32))
    if mode == "F":
        return Image.fromarray((grey / 255.0).astype(np.float32))
    return img.convert(mode)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F"])
def test_every_pillow_mode_becomes_rgb(mode):
    base = fundus_like()
    img = as_mode(base, mode)
    assert img.mode == mode
    fmt = "TIFF" if mode in ("CMYK", "I", "F") else "PNG"
    out = open_image(png_bytes(img, format=fmt))
    assert out.mode == "RGB" and out.size == base.size
    centre = np.asarray(out)[45, 60]
    assert centre.max() > 30, f"{mode}: the bright disc must stay bright, got {centre}"
    assert np.asarray(out)[2, 2].max() < 30  # the black border stays black


def test_sixteen_bit_png_is_rescaled_not_clipped():
    arr = np.full((20, 20), 32768, np.uint16)  # half of full scale
    out = np.asarray(open_image(png_bytes(Image.fromarray(arr))))
    assert abs(int(out[0, 0, 0]) - 128) <= 1


def test_rgba_composites_on_black():
    arr = np.zeros((10, 10, 4), np.uint8)
    arr[..., 0] = 255
    arr[:5, :, 3] = 255  # top half opaque red, bottom transparent
    out = np.asarray(open_image(png_bytes(Image.fromarray(arr, "RGBA"))))
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[9, 0]) == (0, 0, 0)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # white strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    data = png_bytes(img, format="JPEG", exif=exif.tobytes(), quality=95)
    out = open_image(data)
    assert out.size == (20, 40)  # turned upright
    arr = np.asarray(out.convert("L"))
    assert arr[:10].mean() > 200 and arr[-10:].mean() < 50  # the strip is now at the top


def test_arrays_of_any_depth():
    assert open_image(np.zeros((8, 9), np.uint8)).size == (9, 8)
    assert np.asarray(open_image(np.ones((4, 4, 3), np.float32)))[0, 0, 0] == 255
    assert np.asarray(open_image(np.full((4, 4, 3), 65535, np.uint16)))[0, 0, 0] == 255
    with pytest.raises(ImageError, match=r"shape \(4, 4, 2\)"):
        open_image(np.zeros((4, 4, 2), np.uint8))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty file"),
        (b"this is not an image at all", "not an image file"),
    ],
)
def test_bad_bytes(data, message):
    with pytest.raises(ImageError, match=message):
        open_image(data, name="scan.png")


def test_truncated_png_and_missing_file(tmp_path):
    good = png_bytes(fundus_like(200, 200))
    with pytest.raises(ImageError, match="scan.png: corrupt or truncated"):
        open_image(good[: len(good) // 2], name="scan.png")
    with pytest.raises(ImageError, match="file not found"):
        open_image(tmp_path / "nope.png")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png: empty file"):
        open_image(empty)


def test_decompression_bomb_refused_before_decoding():
    bomb = png_bytes(Image.new("1", (6000, 6000)))  # 36 MP of zeros compresses to a few KB
    assert len(bomb) < 100_000
    with pytest.raises(ImageError, match=r"bomb.png: image is 6000 x 6000 = 36,000,000 pixels, above the limit of 1,000,000"):
        open_image(bomb, max_pixels=1_000_000, name="bomb.png")


def test_field_of_view_crop_removes_border_and_centres():
    img = fundus_like(200, 120, cx=70, r=50)  # disc off-centre to the left
    box = field_of_view_box(img)
    assert box is not None
    left, top, right, bottom = box
    assert abs(left - 20) <= 3 and abs(right - 120) <= 3 and abs(top - 10) <= 3 and abs(bottom - 110) <= 3
    sq = crop_field_of_view(img)
    assert sq.width == sq.height
    arr = np.asarray(sq)
    assert arr[sq.height // 2, sq.width // 2].max() > 100  # the disc fills the centre
    assert field_of_view_box(Image.new("RGB", (50, 50))) is None  # all black: nothing to crop


def test_fundus_vs_plain_mode():
    img = fundus_like(200, 120, cx=70, r=50)
    fundus = load_scan(img, PreprocessSpec(mode="fundus", size=32))
    plain = load_scan(img, PreprocessSpec(mode="plain", size=32))
    assert fundus.shape == plain.shape == (32, 32, 3)
    # the crop makes the disc fill the frame: far more bright pixels than in the plain resize
    assert (fundus.max(axis=2) > 60).mean() > (plain.max(axis=2) > 60).mean() + 0.2


def test_ben_graham_removes_colour_cast():
    img = np.asarray(load_scan(fundus_like(128, 128, r=60), PreprocessSpec(size=64)))
    tinted = np.clip(img.astype(int) + (40, 0, -30), 0, 255).astype(np.uint8)
    a, b = ben_graham(img), ben_graham(tinted)
    centre = (slice(24, 40), slice(24, 40))
    # a uniform cast is local-average colour: it cancels
    assert np.abs(a[centre].astype(int) - b[centre].astype(int)).max() <= 2
    assert np.abs(a[centre].astype(int) - 128).mean() < 10
    assert tuple(a[0, 0]) == (128, 128, 128)  # outside the circle: mid grey


def test_normalize_and_preprocess_shapes():
    spec = PreprocessSpec(size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = normalize(np.full((32, 32, 3), 255, np.uint8), spec)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32 and np.allclose(x, 1.0)
    batch = normalize(np.zeros((2, 32, 32, 3), np.uint8), spec)
    assert batch.shape == (2, 3, 32, 32) and np.allclose(batch, -1.0)
    assert preprocess(png_bytes(fundus_like()), spec).shape == (3, 32, 32)


def test_large_jpeg_decodes_at_reduced_scale_same_as_everywhere(tmp_path):
    big = fundus_like(1500, 1500, r=700).resize((1500, 1500))
    path = tmp_path / "big.jpg"
    big.save(path, quality=90)
    spec = PreprocessSpec(size=64)
    a = load_scan(path, spec)
    b = load_scan(path.read_bytes(), spec)  # bytes and paths take the very same route
    assert a.shape == (64, 64, 3) and np.array_equal(a, b)
