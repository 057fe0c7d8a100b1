"""One preprocessing path for training, export and inference (numpy + Pillow only).

A scan goes through exactly these steps everywhere in the project, so a model sees at
inference what it saw in training:

1. decode (path, bytes, file object, PIL image or array) with a decompression-bomb guard;
2. apply the EXIF orientation;
3. convert any Pillow mode (L, LA, P, RGBA, CMYK, I;16, I, F, 16-bit PNG) to 8-bit RGB;
4. ``fundus`` mode: crop to the circular field of view (the black border carries no
   information and its width varies between cameras), pad to a square, resize;
   ``plain`` mode: resize only (non-fundus data);
5. optionally Ben Graham's local-average-colour subtraction (Kaggle DR 2015 winner:
   ``4 * img - 4 * GaussianBlur(img, size/30) + 128``), which removes the camera's colour
   cast and illumination fall-off;
6. scale to [0, 1] and normalise with the spec's mean/std, giving float32 CHW.

Everything that controls these steps is a :class:`PreprocessSpec`, a small JSON-able record
that is stored in every run's ``config.json`` and every ONNX model card.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO, Union

import numpy as np
from PIL import Image, ImageFile, ImageFilter, ImageOps, UnidentifiedImageError

# Truncated files must fail loudly rather than decode as half-grey images.
ImageFile.LOAD_TRUNCATED_IMAGES = False

#: Image file extensions the project reads (lower case, with dot).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")

#: Default refusal limit: 60 megapixels is larger than any fundus camera (a 24 MP DSLR-based
#: camera gives 6000 x 4000) but far below what a decompression bomb claims.
DEFAULT_MAX_PIXELS = 60_000_000

PREPROCESS_MODES = ("fundus", "plain")

ImageSource = Union[str, os.PathLike, bytes, BinaryIO, Image.Image, np.ndarray]


class ImageError(ValueError):
    """A scan that cannot be used: unreadable, corrupt, truncated, empty or too large.

    The message names the scan (when known) and what is wrong with it.
    """


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything that turns a decoded scan into a network input.

    Parameters
    ----------
    mode : {"fundus", "plain"}
        ``fundus`` crops to the circular field of view before resizing; ``plain`` only resizes.
    size : int
        Output side in pixels (square).
    ben_graham : bool
        Subtract the local average colour (Graham 2015) after resizing.
    mean, std : tuple of float
        Per-channel normalisation applied to the [0, 1] image.
    max_pixels : int
        Decoded images larger than this are refused (decompression-bomb guard).

    Examples
    --------
    >>> spec = PreprocessSpec(size=64)
    >>> PreprocessSpec.from_dict(spec.to_dict()) == spec
    True
    """

    mode: str = "fundus"
    size: int = 128
    ben_graham: bool = False
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    max_pixels: int = DEFAULT_MAX_PIXELS
    version: int = field(default=1)  # bump when the maths changes, so old models can refuse

    def __post_init__(self) -> None:
        if self.mode not in PREPROCESS_MODES:
            raise ValueError(f"unknown preprocessing mode {self.mode!r}; valid: {', '.join(PREPROCESS_MODES)}")
        if int(self.size) < 16:
            raise ValueError(f"image size must be at least 16 px, got {self.size}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need 3 values each, std > 0")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown preprocessing fields {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**d)


def _describe(source: Any, name: str | None) -> str:
    if name:
        return str(name)
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return "<in-memory image>"


def open_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None, draft: int | None = None) -> Image.Image:
    """Decode a scan into an 8-bit RGB image, upright per its EXIF orientation.

    Parameters
    ----------
    source : path, bytes, binary file, PIL image or array
        Arrays may be HxW (grey), HxWx3 or HxWx4, of uint8, uint16 or float in [0, 1].
    max_pixels : int
        Refuse images with more pixels than this (decompression bombs) *before* decoding.
    name : str, optional
        How to call the scan in error messages (defaults to the path).
    draft : int, optional
        JPEGs only: let the decoder scale down by 1/2, 1/4 or 1/8 while decoding, keeping
        both sides at least ``draft`` px. A 1,500 px scan graded at 128 px then decodes at
        375 px, four to ten times faster and with a sixteenth of the memory.

    Raises
    ------
    ImageError
        Empty, truncated, corrupt, non-image or oversized input; the message names the scan.
    """
    label = _describe(source, name)
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, label, max_pixels)
    if isinstance(source, Image.Image):
        img = source
        if img.width * img.height > max_pixels:
            raise ImageError(f"{label}: image has {img.width * img.height:,} pixels, above the limit of {max_pixels:,}")
    else:
        if isinstance(source, (bytes, bytearray)):
            if len(source) == 0:
                raise ImageError(f"{label}: empty file (0 bytes)")
            fp: Any = io.BytesIO(source)
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise ImageError(f"{label}: file not found")
            if path.stat().st_size == 0:
                raise ImageError(f"{label}: empty file (0 bytes)")
            fp = path
        else:
            fp = source
        try:
            # Pillow's own bomb check only warns below 2x its limit; we check the header
            # ourselves, before any pixel is decoded.
            with warnings.catch_warnings():
                # Pillow warns about large images; we refuse them ourselves, with a clearer message.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                opened = Image.open(fp)
            with opened as probe:
                w, h = probe.size
                if w * h > max_pixels:
                    raise ImageError(f"{label}: image is {w} x {h} = {w * h:,} pixels, above the limit of {max_pixels:,} (decompression bomb?)")
                if w == 0 or h == 0:
                    raise ImageError(f"{label}: image has zero size")
                if draft and probe.format == "JPEG":
                    probe.draft("RGB", (draft, draft))
                probe.load()
                img = _exif_upright(probe)
        except ImageError:
            raise
        except UnidentifiedImageError:
            raise ImageError(f"{label}: not an image file Pillow can read") from None
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{label}: refused as a decompression bomb ({exc})") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"{label}: corrupt or truncated image ({exc})") from None
    return _to_rgb(img, label)


_EXIF_OPS = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}


def _exif_upright(img: Image.Image) -> Image.Image:
    """A copy of ``img`` turned upright per its EXIF orientation tag."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # malformed EXIF block: apply the orientation tag alone
        try:
            orientation = int(img.getexif().get(0x0112, 1))
        except Exception:
            orientation = 1
        out = img.copy()
        for op in _EXIF_OPS.get(orientation, ()):
            out = out.transpose(op)
        return out


def _to_rgb(img: Image.Image, label: str) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; 16-bit and float modes are rescaled, not clipped."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        return _array_to_rgb(arr if mode == "F" else arr / (65535.0 if mode.startswith("I;16") else max(arr.max(), 1.0)), label, 1 << 62)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Composite on black: the background of a fundus photograph.
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageError(f"{label}: cannot convert image mode {mode!r} to RGB ({exc})") from None


def _array_to_rgb(arr: np.ndarray, label: str, max_pixels: int) -> Image.Image:
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or a.size == 0:
        raise ImageError(f"{label}: array of shape {a.shape} is not an HxW, HxWx3 or HxWx4 image")
    if a.shape[0] * a.shape[1] > max_pixels:
        raise ImageError(f"{label}: image has {a.shape[0] * a.shape[1]:,} pixels, above the limit of {max_pixels:,}")
    if a.dtype == np.uint8:
        u8 = a
    elif a.dtype == np.uint16:
        u8 = (a.astype(np.float64) / 257.0).round().astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        u8 = (np.clip(np.nan_to_num(a), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    else:
        u8 = np.clip(a, 0, 255).astype(np.uint8)
    if u8.ndim == 2:
        u8 = np.repeat(u8[..., None], 3, axis=2)
    if u8.shape[2] == 4:
        alpha = u8[..., 3:4].astype(np.float32) / 255.0
        u8 = (u8[..., :3].astype(np.float32) * alpha).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(u8), "RGB")


def field_of_view_box(img: Image.Image, *, threshold: int = 20) -> tuple[int, int, int, int] | None:
    """Bounding box (left, top, right, bottom) of the bright circular field of view.

    Pixels brighter than ``threshold`` (on a small grey copy, so it costs little on a
    4000 px scan) form the field of view; rows/columns with under 1 % of such pixels are
    treated as border. Returns None when no field of view is found (e.g. an all-black image).
    """
    small = img.convert("L")
    scale = max(small.width, small.height) / 256.0
    if scale > 1:
        small = small.resize((max(1, round(small.width / scale)), max(1, round(small.height / scale))), Image.Resampling.BILINEAR)
    else:
        scale = 1.0
    mask = np.asarray(small) > threshold
    if mask.mean() < 0.01:
        return None
    rows = np.flatnonzero(mask.mean(axis=1) > 0.01)
    cols = np.flatnonzero(mask.mean(axis=0) > 0.01)
    if rows.size == 0 or cols.size == 0:
        return None
    left, right = int(cols[0] * scale), int(min(img.width, round((cols[-1] + 1) * scale)))
    top, bottom = int(rows[0] * scale), int(min(img.height, round((rows[-1] + 1) * scale)))
    if right - left < 8 or bottom - top < 8:
        return None
    return left, top, right, bottom


def crop_field_of_view(img: Image.Image) -> Image.Image:
    """Crop to the field of view and pad to a centred square on black.

    A field of view cut off at the top and bottom (common on wide-angle cameras) stays
    centred because the square side is the larger box side.
    """
    box = field_of_view_box(img)
    if box is not None:
        img = img.crop(box)
    side = max(img.width, img.height)
    if img.width == img.height:
        return img
    canvas = Image.new("RGB", (side, side), (0, 0, 0))
    canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return canvas


def ben_graham(arr: np.ndarray) -> np.ndarray:
    """Ben Graham's local-average-colour subtraction on a uint8 HxWx3 image.

    ``4 * img - 4 * blur(img, sigma = side / 30) + 128``, then the area outside the
    field-of-view circle (90 % of the side) is set to mid-grey so the border does not turn
    into a bright ring (Graham, Kaggle DR 2015 competition report).
    """
    img = Image.fromarray(arr)
    blurred = np.asarray(img.filter(ImageFilter.GaussianBlur(radius=max(1.0, arr.shape[0] / 30.0))), dtype=np.float32)
    out = 4.0 * arr.astype(np.float32) - 4.0 * blurred + 128.0
    h, w = arr.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    outside = (yy - (h - 1) / 2.0) ** 2 + (xx - (w - 1) / 2.0) ** 2 > (0.45 * min(h, w)) ** 2
    out[outside] = 128.0
    return np.clip(out, 0, 255).astype(np.uint8)


def prepare_rgb(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Geometry and colour steps (4-5) on an RGB image: uint8 array (size, size, 3)."""
    if spec.mode == "fundus":
        img = crop_field_of_view(img)
    img = img.resize((spec.size, spec.size), Image.Resampling.BICUBIC if img.width < spec.size else Image.Resampling.BOX)
    arr = np.asarray(img, dtype=np.uint8)
    if spec.ben_graham:
        arr = ben_graham(arr)
    return arr


def normalize(arr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 HxWx3 (or NxHxWx3) -> float32 CHW (or NCHW), scaled to [0, 1] and normalised."""
    x = arr.astype(np.float32) / 255.0
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def load_scan(source: ImageSource, spec: PreprocessSpec, *, name: str | None = None) -> np.ndarray:
    """Decode and prepare one scan: uint8 array (size, size, 3), before normalisation.

    This is *the* path from a file to network pixels; training caches its output, inference
    normalises it. JPEGs decode at reduced scale (never below twice the network input), which
    is part of the recipe, so training and inference see identical pixels.
    """
    return prepare_rgb(open_image(source, max_pixels=spec.max_pixels, name=name, draft=2 * spec.size), spec)


def preprocess(source: ImageSource, spec: PreprocessSpec, *, name: str | None = None) -> np.ndarray:
    """Decode and prepare one scan: float32 array (3, size, size), ready for the network.

    Examples
    --------
    >>> import numpy as np
    >>> x = preprocess(np.full((50, 40, 3), 200, np.uint8), PreprocessSpec(mode="plain", size=32))
    >>> x.shape, x.dtype
    ((3, 32, 32), dtype('float32'))
    """
    return normalize(load_scan(source, spec, name=name), spec)
