"""Image-quality warnings for an uploaded scan (numpy + Pillow only).

The dashboard shows these next to a grade: a model still grades a dark, blurred or
non-fundus image, but the user should know the grade is less trustworthy. Ungradable
images are a known failure mode of DR screening (in EyePACS about 10-20 % of images are
graded "insufficient quality"), so the checks are cheap heuristics on a 256 px copy:

- exposure: mean brightness inside the field of view (too dark / over-exposed);
- focus: variance of the Laplacian on a grey copy (Pech-Pacheco et al. 2000), low = blurred;
- field of view: a roughly circular bright region on a dark border, as fundus cameras give.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from models.preprocess import field_of_view_box, open_image

#: Side of the grey working copy (px): all thresholds below are calibrated at this size.
WORK_SIZE = 256

#: Grey level above which a pixel belongs to the field of view (same as field_of_view_box).
FOV_THRESHOLD = 20

#: Mean grey level (0-255) of the field of view below which the scan is "too dark". Well-exposed
#: fundus photographs average ~60-130 inside the disc; below 35 lesions are hard to see.
DARK_MEAN = 35.0

#: Mean grey level of the field of view above which the scan is "over-exposed" (washed out)...
BRIGHT_MEAN = 215.0
#: ...or fraction of field-of-view pixels saturated (>= 250 in every channel) above which it is.
SATURATED_FRACTION = 0.25

#: Variance of the 4-neighbour Laplacian (grey, 0-255, at WORK_SIZE) inside the field of view
#: below which the scan is "blurred". Synthetic fundus scans (training.synth, with their own mild
#: nuisance blur) score 8-1100 at 256 px; a Gaussian blur of radius 4 px at 256 px brings
#: them to 2-2.5 (radius 2 at 128 px: ~4), whatever the grade.
BLUR_VARIANCE = 5.0

#: Plausible share of the frame covered by the field of view (a disc inscribed in the frame
#: covers pi/4 = 0.785 of a square; wide-angle crops cut it; tiny discs are not fundus photos).
FOV_MIN_FRACTION = 0.15
FOV_MAX_FRACTION = 0.97

#: The field of view's fill of its own bounding box: a disc fills pi/4 = 0.785, a disc cut at
#: top and bottom fills more, a full rectangle fills 1.0. Above this it is not circular.
FOV_MAX_BOX_FILL = 0.93
#: ...and the corners of the bounding box (outside the inscribed circle) must be mostly dark.
FOV_MAX_CORNER_FILL = 0.35

MESSAGES = {
    "dark": "too dark: the field of view is under-exposed (mean brightness {mean:.0f}/255); lesions may be missed",
    "bright": "over-exposed: the field of view is washed out (mean brightness {mean:.0f}/255, {sat:.0%} saturated)",
    "blur": "blurred: little fine detail (Laplacian variance {var:.1f} < {thr:.0f}); the scan may be out of focus",
    "fov": "no circular field of view found: this may not be a fundus photograph",
}


def _grey_copy(img: Image.Image) -> tuple[Image.Image, np.ndarray]:
    scale = WORK_SIZE / max(img.width, img.height)
    small = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BILINEAR) if scale < 1 else img
    return small, np.asarray(small.convert("L"), dtype=np.float32)


def laplacian_variance(grey: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Variance of the 4-neighbour Laplacian of a 2-D grey image (optionally within a mask)."""
    g = np.asarray(grey, dtype=np.float32)
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]
    if mask is not None:
        # Only pixels whose whole neighbourhood lies inside the mask: the disc edge is sharp
        # in every scan, blurred or not, and must not count as detail.
        m = mask[1:-1, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:] & mask[:-2, 1:-1] & mask[2:, 1:-1]
        if m.sum() < 16:
            return float(lap.var())
        lap = lap[m]
    return float(lap.var())


def _circular_fov(mask: np.ndarray, box: tuple[int, int, int, int] | None) -> bool:
    """A roughly circular bright region covering a plausible share of the frame."""
    if box is None:
        return False
    h, w = mask.shape
    frac = float(mask.mean())
    if not FOV_MIN_FRACTION <= frac <= FOV_MAX_FRACTION:
        return False
    left, top, right, bottom = box
    sub = mask[top:bottom, left:right]
    if sub.size == 0 or float(sub.mean()) > FOV_MAX_BOX_FILL:
        return False
    # Corners of the box outside the inscribed ellipse should be dark.
    bh, bw = sub.shape
    yy, xx = np.ogrid[:bh, :bw]
    r = max(bh, bw) / 2.0  # a disc cut at top/bottom: use the larger side as the diameter
    outside = (yy - (bh - 1) / 2.0) ** 2 + (xx - (bw - 1) / 2.0) ** 2 > (1.02 * r) ** 2
    if outside.sum() < 0.02 * sub.size:  # box is a strip: no corners to judge
        return False
    return float(sub[outside].mean()) <= FOV_MAX_CORNER_FILL


def quality_warnings(image: np.ndarray | Image.Image) -> list[str]:
    """Human-readable warnings about a scan's quality; an empty list means none found.

    Parameters
    ----------
    image : ndarray (H, W, 3) uint8, or any PIL image (converted to RGB)

    Returns
    -------
    list of str
        Any of: too dark, over-exposed, blurred, no circular field of view.

    Examples
    --------
    >>> quality_warnings(np.zeros((64, 64, 3), np.uint8))[0][:8]
    'too dark'
    """
    img = open_image(image, name="scan") if not isinstance(image, Image.Image) else image
    if img.mode != "RGB":
        img = open_image(img, name="scan")
    small, grey = _grey_copy(img)
    mask = grey > FOV_THRESHOLD
    warnings: list[str] = []

    # Exposure, inside the field of view when there is one (the black border would drag the
    # mean down for every fundus photograph).
    region = grey[mask] if mask.mean() >= FOV_MIN_FRACTION else grey.reshape(-1)
    mean = float(region.mean()) if region.size else 0.0
    rgb = np.asarray(small.convert("RGB"))
    sat_mask = mask if mask.any() else np.ones_like(mask)
    saturated = float((rgb.min(axis=2)[sat_mask] >= 250).mean())
    if mean < DARK_MEAN:
        warnings.append(MESSAGES["dark"].format(mean=mean))
    elif mean > BRIGHT_MEAN or saturated > SATURATED_FRACTION:
        warnings.append(MESSAGES["bright"].format(mean=mean, sat=saturated))

    if not warnings:  # focus is meaningless on a black or white frame: exposure says it all
        var = laplacian_variance(grey, mask if mask.mean() >= FOV_MIN_FRACTION else None)
        if var < BLUR_VARIANCE:
            warnings.append(MESSAGES["blur"].format(var=var, thr=BLUR_VARIANCE))

    box = field_of_view_box(small, threshold=FOV_THRESHOLD)
    if not _circular_fov(mask, box):
        warnings.append(MESSAGES["fov"])
    return warnings
