"""Procedural colour fundus photographs graded on the international DR scale.

The built-in synthetic data set: with no scans of one's own, ``python -m training.synth``
writes an EyePACS-style collection (``labels.csv`` with ``image,level`` and
``images/<image>.png``) whose class balance follows the EyePACS training set, so every
imbalance strategy can be tried end to end on a laptop.

Each image is drawn with numpy and Pillow only (no torch: this module is imported by data
tools that must stay cheap):

* **anatomy** - circular field of view on black, orange-red retina with vignetting and
  choroidal texture, optic disc with cup, darker macula about 2.5 disc diameters temporal to
  the disc, branching vessel arcades (veins darker and wider than arteries);
* **lesions** following the International Clinical DR Severity Scale (Wilkinson et al.,
  *Ophthalmology* 110(9), 2003): microaneurysms from grade 1; dot/blot and flame
  haemorrhages, hard exudates and cotton-wool spots from grade 2; haemorrhages in all four
  quadrants, venous beading and IRMA at grade 3 (the "4-2-1 rule" of ETDRS report 12);
  neovascularisation at the disc or elsewhere and boat-shaped pre-retinal haemorrhage at
  grade 4;
* **nuisance** - camera colour cast, exposure and gamma, blur, sensor noise, rotation,
  off-centre field of view and left/right mirroring.

Lesion counts, sizes and contrasts are drawn from distributions that overlap between adjacent
grades (a grade-1 eye may show a single faint microaneurysm that blur hides, a grade-2 eye
as many haemorrhages as a mild grade-3 one, neovascularisation may be faint), so the grades
are genuinely confusable, as they are for graders of real photographs (Krause et al.,
*Ophthalmology* 125(8), 2018 report moderate inter-grader agreement).

Every image is seeded from ``(seed, index)`` through :class:`numpy.random.SeedSequence`, never
from a shared stream, so the same seed gives the same bytes whatever the number of workers.

Examples
--------
>>> import numpy as np
>>> img = generate_fundus(3, size=64, rng=np.random.default_rng(0))
>>> img.size, img.mode
((64, 64), 'RGB')
>>> draw_labels(6, (0.5, 0.5), np.random.default_rng(0)).tolist()
[1, 0, 0, 0, 1, 1]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import os
import pathlib
import sys
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "DR_PRIORS",
    "draw_labels",
    "draw_eye_pairs",
    "generate_fundus",
    "generate_dataset",
    "main",
]

#: Class priors of the EyePACS (Kaggle 2015) training set: 25,810 / 2,443 / 5,292 / 873 / 708
#: of 35,126 images for grades 0 (no DR) .. 4 (proliferative DR).
DR_PRIORS: tuple[float, ...] = tuple(c / 35126 for c in (25810, 2443, 5292, 873, 708))

MIN_SIZE = 32  # smallest image side in pixels; below it the disc is a handful of pixels
EYES = ("left", "right")

# Seed-stream tags: the labels and every image get their own SeedSequence entropy
# ``(seed, tag[, index])``, so no image depends on how many others were drawn before it.
_LABEL_STREAM = 0
_IMAGE_STREAM = 1

# Probability that the fellow eye's grade is proposed one step up (and, separately, one step
# down) in the Metropolis-Hastings kernel of :func:`draw_eye_pairs`.
_FELLOW_EYE_MOVE = 0.3

_MARKER = "synth.json"  # written first into DIR: marks it as ours, so a rerun may overwrite


# ----------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------


def _normalise_priors(priors: Sequence[float] | None) -> np.ndarray:
    """Return ``priors`` (default :data:`DR_PRIORS`) as a float array summing to one."""
    if priors is None:
        priors = DR_PRIORS
    try:
        p = np.asarray(priors, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"priors {priors!r} are not a sequence of numbers") from None
    if p.ndim != 1 or p.size < 2:
        raise ValueError(f"priors {priors!r} must list at least 2 class weights")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError(f"priors {priors!r} must be finite and non-negative")
    if p.sum() <= 0:
        raise ValueError(f"priors {priors!r} must sum to a positive number")
    return p / p.sum()


def draw_labels(n: int, priors: Sequence[float] | None, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` independent grades with class probabilities ``priors``.

    Parameters
    ----------
    n : int
        Number of labels, ``>= 0``.
    priors : sequence of float or None
        Non-negative class weights (normalised here); ``None`` means :data:`DR_PRIORS`.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        ``int64`` grades in ``[0, len(priors))``; the count of each class is
        Binomial(``n``, prior).

    Examples
    --------
    >>> import numpy as np
    >>> labels = draw_labels(1000, None, np.random.default_rng(0))
    >>> np.bincount(labels, minlength=5).tolist()
    [721, 72, 161, 24, 22]
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n={n!r} must be a non-negative integer")
    p = _normalise_priors(priors)
    return rng.choice(p.size, size=int(n), p=p).astype(np.int64)


def _fellow_eye_kernel(p: np.ndarray, move: float = _FELLOW_EYE_MOVE) -> np.ndarray:
    """Transition matrix from one eye's grade to the fellow eye's grade.

    A Metropolis-Hastings kernel (Hastings, *Biometrika* 57, 1970) whose proposals are the
    neighbouring grades: it satisfies detailed balance for ``p``, so when the first eye's
    grade follows ``p`` the fellow eye's does too, and the two eyes differ by at most one
    step, as DR is usually (not always) symmetric between the eyes.
    """
    k = p.size
    kernel = np.zeros((k, k))
    for i in range(k):
        for j in (i - 1, i + 1):
            if 0 <= j < k and p[i] > 0:
                kernel[i, j] = move * min(1.0, p[j] / p[i])
        kernel[i, i] = 1.0 - kernel[i].sum()
    return kernel


def draw_eye_pairs(
    n_patients: int, priors: Sequence[float] | None, rng: np.random.Generator
) -> np.ndarray:
    """Draw correlated grades for the two eyes of ``n_patients`` patients.

    The first eye's grade follows ``priors``; the fellow eye keeps it or moves one grade up
    or down through a Metropolis-Hastings kernel that leaves ``priors`` invariant, so both
    columns follow ``priors`` marginally while the eyes of one patient agree closely.

    Parameters
    ----------
    n_patients : int
        Number of patients, ``>= 0``.
    priors : sequence of float or None
        Class weights; ``None`` means :data:`DR_PRIORS`.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        ``(n_patients, 2)`` ``int64`` grades (first eye, fellow eye).

    Examples
    --------
    >>> import numpy as np
    >>> pairs = draw_eye_pairs(2000, None, np.random.default_rng(0))
    >>> bool(np.abs(pairs[:, 0] - pairs[:, 1]).max() <= 1)
    True
    """
    first = draw_labels(n_patients, priors, rng)
    kernel = _fellow_eye_kernel(_normalise_priors(priors))
    u = rng.random(first.size)
    # Inverse-CDF draw from the kernel row of each first eye, vectorised.
    fellow = (u[:, None] > np.cumsum(kernel, axis=1)[first]).sum(axis=1)
    fellow = np.minimum(fellow, kernel.shape[0] - 1)
    return np.stack([first, fellow], axis=1).astype(np.int64)


# ----------------------------------------------------------------------------------------
# Geometry helpers
# ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(ys, xs)``, each ``(size, size)`` float32."""
    c = np.arange(size, dtype=np.float32) + 0.5
    return np.meshgrid(c, c, indexing="ij")


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, roughly unit-variance noise smooth over ``size / cells`` pixels."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    up = Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(up, dtype=np.float32)


def _box(centre: np.ndarray, half: float, size: int) -> tuple[slice, slice]:
    """Row and column slices of the square of half-side ``half`` px round ``centre`` (x, y)."""
    x0, x1 = (int(np.clip(v, 0, size)) for v in (centre[0] - half, centre[0] + half + 1))
    y0, y1 = (int(np.clip(v, 0, size)) for v in (centre[1] - half, centre[1] + half + 1))
    return slice(y0, y1), slice(x0, x1)


def _supersampling(size: int) -> int:
    """Supersampling factor of the vector layers: about 384 px canvases, 1 to 4."""
    return max(1, min(4, round(384 / size)))


@dataclass
class _Frame:
    """Map from the eye's local frame to pixels.

    Local frame: origin at the centre of the field of view, unit = field-of-view radius,
    ``+u`` nasal for a right eye (the disc side), ``+v`` inferior (down the image). A left
    eye mirrors ``u``; the camera rotation ``theta`` then turns the whole fundus.
    """

    cx: float  # field-of-view centre, px
    cy: float
    radius: float  # field-of-view radius, px
    theta: float  # camera rotation, radians
    mirror: float  # +1 right eye, -1 left eye

    def to_px(self, uv: np.ndarray) -> np.ndarray:
        """``(N, 2)`` local points -> ``(N, 2)`` pixel ``(x, y)``."""
        uv = np.asarray(uv, dtype=float).reshape(-1, 2)
        u = uv[:, 0] * self.mirror
        v = uv[:, 1]
        c, s = math.cos(self.theta), math.sin(self.theta)
        x = self.cx + self.radius * (c * u - s * v)
        y = self.cy + self.radius * (s * u + c * v)
        return np.stack([x, y], axis=1)


class _Layer:
    """A supersampled 8-bit vector layer (a mask) drawn with ImageDraw, read back at size.

    The canvas is created on the first drawing call, so an unused layer costs nothing.
    """

    def __init__(self, size: int, frame: _Frame) -> None:
        self.size = size
        self.ss = _supersampling(size)
        self.frame = frame
        self.image: Image.Image | None = None
        self._draw: ImageDraw.ImageDraw | None = None

    @property
    def draw(self) -> ImageDraw.ImageDraw:
        if self._draw is None:
            self.image = Image.new("L", (self.size * self.ss, self.size * self.ss), 0)
            self._draw = ImageDraw.Draw(self.image)
        return self._draw

    def _pts(self, uv: np.ndarray) -> list[tuple[float, float]]:
        return [tuple(p) for p in (self.frame.to_px(uv) * self.ss).tolist()]

    def polyline(self, uv: np.ndarray, width: float, value: float) -> None:
        """Polyline through local points; ``width`` in field-of-view radii."""
        self.polyline_px(self.frame.to_px(uv), width, value)

    def polyline_px(self, xy: np.ndarray, width: float, value: float) -> None:
        """Polyline through output pixels ``xy`` ``(N, 2)``; ``width`` in field-of-view radii."""
        w = max(1, int(round(width * self.frame.radius * self.ss)))
        pts = [tuple(p) for p in (xy * self.ss).tolist()]
        self.draw.line(pts, fill=int(255 * value), width=w, joint="curve")

    def disc(self, uv: np.ndarray, radius: float, value: float) -> None:
        """Filled circles of ``radius`` (field-of-view radii) at each local point."""
        rad = max(0.5, radius * self.frame.radius * self.ss)
        fill = int(255 * value)
        draw = self.draw
        for x, y in (self.frame.to_px(uv) * self.ss).tolist():
            draw.ellipse((x - rad, y - rad, x + rad, y + rad), fill=fill)

    def ellipse(self, uv: Sequence[float], a: float, b: float, angle: float, value: float) -> None:
        """Filled rotated ellipse, semi-axes ``a, b`` in radii, ``angle`` in the local frame."""
        t = np.linspace(0, 2 * np.pi, 14, endpoint=False)
        ca, sa = math.cos(angle), math.sin(angle)
        ex, ey = a * np.cos(t), b * np.sin(t)
        pts = np.stack([uv[0] + ca * ex - sa * ey, uv[1] + sa * ex + ca * ey], axis=1)
        self.draw.polygon(self._pts(pts), fill=int(255 * value))

    def polygon_px(self, xy: np.ndarray, value: float) -> None:
        """Filled polygon given directly in output pixels (for gravity-aligned shapes)."""
        self.draw.polygon([tuple(p) for p in (xy * self.ss).tolist()], fill=int(255 * value))

    def array(self, blur_px: float = 0.0) -> np.ndarray | None:
        """The layer at output size, ``(size, size, 1)`` float32 in ``[0, 1]``; None if unused.

        ``blur_px`` (output pixels) softens the layer after the box downsampling.
        """
        if self.image is None:
            return None
        img = self.image.resize((self.size, self.size), Image.Resampling.BOX)
        if blur_px > 0.05:
            img = img.filter(ImageFilter.GaussianBlur(blur_px))
        return (np.asarray(img, dtype=np.float32) / 255.0)[..., None]


# ----------------------------------------------------------------------------------------
# Anatomy
# ----------------------------------------------------------------------------------------


@dataclass
class _Vessel:
    kind: str  # "vein" or "artery"
    points: np.ndarray  # (N, 2) local frame
    width: float  # at the start, field-of-view radii
    taper: float  # width at the end / width at the start


@dataclass
class _Anatomy:
    disc: np.ndarray  # (2,) local
    disc_radius: float  # field-of-view radii
    macula: np.ndarray  # (2,) local
    vessels: list[_Vessel] = field(default_factory=list)  # every vessel, trunks and branches
    arcades: list[_Vessel] = field(default_factory=list)  # temporal arcade trunks


_STEP = 0.02  # vessel polyline step, field-of-view radii


def _walk(
    rng: np.random.Generator,
    start: np.ndarray,
    heading: float,
    length: float,
    tortuosity: float,
    curvature: float = 0.0,
    step: float = _STEP,
) -> np.ndarray:
    """A smooth random walk from ``start``: ``(N, 2)`` local points, ``N >= 2``.

    ``tortuosity`` is the s.d. of the heading change per step (radians), ``curvature`` its
    mean, ``step`` the step length (field-of-view radii)."""
    n = max(2, int(length / step))
    turn = rng.normal(curvature, tortuosity, n)
    turn = np.convolve(turn, np.ones(3) / 3, mode="same")  # smooth the heading noise
    h = heading + np.cumsum(turn)
    steps = step * np.stack([np.cos(h), np.sin(h)], axis=1)
    return np.vstack([start, start + np.cumsum(steps, axis=0)])


def _branch(
    rng: np.random.Generator,
    parent: _Vessel,
    anatomy: _Anatomy,
    min_width: float,
) -> None:
    """Append ``parent`` to ``anatomy.vessels`` and, recursively, side branches thinner than
    it (Murray's law: daughters of a symmetric split have ~0.8 of the parent's diameter,
    side branches less). No branch starts on the disc; none enters the foveal avascular
    zone (~0.5 disc diameter round the fovea)."""
    anatomy.vessels.append(parent)
    pts = parent.points
    child_width = parent.width * rng.uniform(0.5, 0.7)
    if child_width < min_width or len(pts) < 6:
        return
    off_disc = np.flatnonzero(np.linalg.norm(pts - anatomy.disc, axis=1) > 1.15 * anatomy.disc_radius)
    if off_disc.size == 0:
        return
    pos = int(off_disc[0] + rng.integers(0, 6))
    side = rng.choice((-1.0, 1.0))
    faz = 0.5 * anatomy.disc_radius
    while pos < len(pts) - 2:
        d = pts[pos + 1] - pts[pos - 1]
        heading = math.atan2(d[1], d[0]) + side * rng.uniform(0.45, 1.1)
        length = rng.uniform(0.2, 0.5) * (child_width / parent.width) * 1.8
        path = _walk(rng, pts[pos], heading, length, tortuosity=0.07)
        inside = np.flatnonzero(np.linalg.norm(path - anatomy.macula, axis=1) < faz)
        if inside.size:
            path = path[: max(2, inside[0])]
        _branch(rng, _Vessel(parent.kind, path, child_width, taper=0.6), anatomy, min_width)
        side = -side if rng.random() < 0.75 else side
        pos += int(rng.integers(9, 20))
        child_width = parent.width * rng.uniform(0.45, 0.7)


def _draw_anatomy(rng: np.random.Generator, size: int, radius_px: float) -> _Anatomy:
    """Disc, macula and the vessel tree of a right eye, in the local frame."""
    disc_radius = rng.uniform(0.105, 0.135)
    disc = np.array([rng.uniform(0.26, 0.36), rng.normal(0.0, 0.04)])
    # The fovea lies ~2.5 disc diameters temporal to the disc centre and slightly below it.
    dist = 5.0 * disc_radius * rng.uniform(0.9, 1.1)
    tilt = rng.uniform(0.0, 0.2)
    macula = disc + dist * np.array([-math.cos(tilt), math.sin(tilt)])
    anatomy = _Anatomy(disc, disc_radius, macula)

    # Thinnest vessel worth drawing: ~0.4 px at this size.
    min_width = 0.4 / radius_px
    vein_w = rng.uniform(0.017, 0.022)
    trunks: list[_Vessel] = []
    for kind, wscale, rscale in (("vein", 1.0, 1.0), ("artery", 0.75, 0.9)):
        # Temporal arcades: they leave the disc vertically and sweep round the macula on an
        # ellipse whose horizontal radius grows, ending beyond the macula temporally.
        for vsign in (-1.0, 1.0):
            phi_end = rng.uniform(2.1, 2.5)
            phi = np.arange(0.0, phi_end, _STEP / dist)
            grow = 1.0 + rng.uniform(0.2, 0.5) * (phi / math.pi) ** 1.5
            ru = dist * rscale * grow * (1.0 + rng.uniform(0.1, 0.3) * (phi / math.pi) ** 2)
            rv = dist * rscale * rng.uniform(0.8, 0.95) * grow
            wobble = _smooth_1d(rng, phi.size, 0.03)
            pts = np.stack(
                [macula[0] + ru * np.cos(phi) * (1 + wobble), macula[1] + vsign * rv * np.sin(phi)],
                axis=1,
            )
            # The trunk rises straight from the cup to the disc pole, then follows the arc.
            pole = disc + np.array([rng.normal(0, 0.2) * disc_radius, vsign * 0.85 * disc_radius])
            pts += pole - pts[0]
            stem = np.linspace(disc + np.array([rng.normal(0, 0.15) * disc_radius, 0.0]), pole, 5)
            pts = np.vstack([stem[:-1], pts])
            trunks.append(_Vessel(kind, pts, vein_w * wscale, taper=0.45))
            anatomy.arcades.append(trunks[-1])
        # Nasal vessels: up-nasal and down-nasal, radially outwards.
        for vsign in (-1.0, 1.0):
            heading = vsign * rng.uniform(0.7, 1.2)
            pts = _walk(rng, disc, heading, rng.uniform(0.6, 0.8), 0.05, -vsign * 0.02)
            trunks.append(_Vessel(kind, pts, vein_w * wscale * 0.7, taper=0.5))
        # A small nasal-horizontal and a macular branch.
        for heading, length in ((rng.normal(0, 0.25), 0.6), (math.pi + rng.normal(0, 0.3), 0.3)):
            pts = _walk(rng, disc, heading, length, 0.08)
            trunks.append(_Vessel(kind, pts, vein_w * wscale * 0.45, taper=0.5))
    for trunk in trunks:
        _branch(rng, trunk, anatomy, min_width)
    return anatomy


def _smooth_1d(rng: np.random.Generator, n: int, amplitude: float) -> np.ndarray:
    """Smooth 1-D noise of length ``n``."""
    knots = rng.normal(0, amplitude, 6)
    return np.interp(np.linspace(0, 5, n), np.arange(6), knots)


# Arteries carry oxygenated, brighter blood: drawn at this fraction of a vein's darkness.
_ARTERY_SHADE = 0.68


def _draw_vessels(vessels: Sequence[_Vessel], layer: _Layer) -> None:
    """Draw tapered polylines, each vessel in chunks of decreasing width; veins first, so
    arteries cross over them as they usually do."""
    for v in sorted(vessels, key=lambda v: v.kind != "vein"):
        n = len(v.points)
        chunk = 8
        shade = 1.0 if v.kind == "vein" else _ARTERY_SHADE
        xy = layer.frame.to_px(v.points)
        for start in range(0, n - 1, chunk):
            t = start / max(1, n - 1)
            w = v.width * (1.0 - (1.0 - v.taper) * t)
            # thin vessels hold less blood: paler as well as narrower
            layer.polyline_px(xy[start : start + chunk + 1], w, shade * min(1.0, 0.3 + w / 0.016))


# ----------------------------------------------------------------------------------------
# Lesions: every feature is data over the grade axis, interpolated at the eye's severity
# ----------------------------------------------------------------------------------------

# Anchors at grades 0..4 of the 5-grade scale; an eye of severity s in [0, 4] takes
# np.interp(s, [0, 1, 2, 3, 4], anchors), which is how K != 5 classes map linearly onto it.
# The wide ranges drawn around these means make adjacent grades overlap.
_LESION_TABLE: dict[str, tuple[float, float, float, float, float]] = {
    # mean microaneurysm count (grade 1: often 1-3, sometimes faint)
    "microaneurysms": (0.0, 2.5, 6.0, 9.0, 8.0),
    # probability of dot/blot haemorrhages, and their mean total count
    "haemorrhage_p": (0.0, 0.0, 0.92, 1.0, 0.95),
    "haemorrhages": (0.0, 0.0, 4.0, 22.0, 14.0),
    # mean number of retinal quadrants holding haemorrhages (ETDRS 4-2-1 rule: 4 at grade 3)
    "quadrants": (0.0, 0.0, 1.8, 4.0, 3.4),
    # haemorrhage radius, fraction of the field-of-view radius
    "haemorrhage_size": (0.025, 0.025, 0.028, 0.034, 0.032),
    "exudate_p": (0.0, 0.0, 0.55, 0.65, 0.6),
    "cotton_wool_p": (0.0, 0.0, 0.25, 0.55, 0.45),
    "venous_beading_p": (0.0, 0.0, 0.0, 0.6, 0.45),
    "irma_p": (0.0, 0.0, 0.0, 0.45, 0.35),
    "neovascularisation_p": (0.0, 0.0, 0.0, 0.0, 1.0),
    "preretinal_p": (0.0, 0.0, 0.0, 0.0, 0.2),
}


def _lesion(name: str, severity: float) -> float:
    return float(np.interp(severity, np.arange(5), _LESION_TABLE[name]))


def _quadrant_points(
    rng: np.random.Generator, n: int, quadrants: Sequence[int], anatomy: _Anatomy, r_max: float
) -> np.ndarray:
    """``n`` local points spread over the given quadrants (0 sup-temp, 1 sup-nasal,
    2 inf-nasal, 3 inf-temp, around the field centre), outside the disc."""
    if n == 0:
        return np.zeros((0, 2))
    pts = []
    need = n
    while need > 0:
        q = rng.choice(np.asarray(quadrants), size=2 * need + 4)
        ang = (q + rng.random(q.size)) * (np.pi / 2)  # quadrant q spans [q, q+1] * 90 deg
        rad = r_max * np.sqrt(rng.uniform(0.02, 1.0, q.size))
        # quadrant 0 = up-left in a right eye (superior-temporal): angle measured from -u
        cand = np.stack([-rad * np.cos(ang), -rad * np.sin(ang)], axis=1)
        ok = np.linalg.norm(cand - anatomy.disc, axis=1) > 1.4 * anatomy.disc_radius
        cand = cand[ok][:need]
        pts.append(cand)
        need -= len(cand)
    return np.vstack(pts)


def _pole_points(
    rng: np.random.Generator, n: int, anatomy: _Anatomy, spread: float
) -> np.ndarray:
    """``n`` local points clustered round the macula (the posterior pole), outside the disc."""
    pts = []
    need = n
    while need > 0:
        cand = anatomy.macula + rng.normal(0, spread, (2 * need + 4, 2))
        ok = (np.linalg.norm(cand, axis=1) < 0.88) & (
            np.linalg.norm(cand - anatomy.disc, axis=1) > 1.4 * anatomy.disc_radius
        )
        cand = cand[ok][:need]
        pts.append(cand)
        need -= len(cand)
    return np.vstack(pts) if pts else np.zeros((0, 2))


@dataclass
class _LesionLayers:
    red: _Layer  # microaneurysms, haemorrhages, IRMA: multiplicative dark red
    exudate: _Layer  # hard exudates: opaque waxy yellow
    cotton: _Layer  # cotton-wool spots: soft white
    neovessels: _Layer  # new vessels: thin dark red
    fibrous: _Layer  # fibrovascular tissue around new vessels: faint white haze
    preretinal: _Layer  # pre-retinal haemorrhage: opaque dark red


def _draw_lesions(
    rng: np.random.Generator,
    severity: float,
    anatomy: _Anatomy,
    layers: _LesionLayers,
    vein_layer: _Layer,
    size: int,
) -> None:
    """Draw the lesions of an eye of ``severity`` (0..4 on the 5-grade scale)."""
    if severity <= 0:
        return
    r_px = layers.red.frame.radius
    # Lesions must stay visible at 64-128 px: a microaneurysm is >= ~1.5 px across at 128 px
    # (its true size, <125 um, would be ~1 px), and everything scales with the image.
    ma_min = max(0.75 / r_px * (size / 128), 0.55 / r_px)
    contrast = rng.uniform(0.35, 1.0)  # one eye's lesions share a visibility (media, focus)

    # Microaneurysms: tiny round dark-red dots, most round the posterior pole.
    n_ma = rng.poisson(_lesion("microaneurysms", severity) * rng.uniform(0.3, 1.7))
    n_ma = max(n_ma, 1 if severity >= 1 else 0)
    if severity < 1:  # below grade 1 on a fine scale: microaneurysms with probability s
        n_ma = n_ma if rng.random() < severity else 0
    if n_ma:
        pts = _pole_points(rng, n_ma, anatomy, 0.35)
        radii = ma_min * rng.uniform(1.0, 1.6, n_ma)
        values = contrast * rng.uniform(0.55, 1.0, n_ma)
        for p, rad, val in zip(pts, radii, values):
            layers.red.disc(p[None], rad, val)

    # Dot/blot and flame haemorrhages over a number of quadrants.
    if rng.random() < _lesion("haemorrhage_p", severity):
        if severity >= 3:
            n_quad = 4
        else:
            n_quad = int(np.clip(round(_lesion("quadrants", severity) + rng.uniform(-1.2, 1.2)), 1, 4))
        if severity >= 4 and rng.random() < 0.35:
            n_quad = int(rng.integers(1, 4))  # PDR without severe background retinopathy
        quads = rng.permutation(4)[:n_quad]
        n_h = rng.poisson(_lesion("haemorrhages", severity) * rng.uniform(0.25, 1.8))
        n_h = max(n_h, n_quad)
        pts = _quadrant_points(rng, n_h, quads, anatomy, 0.82)
        if severity >= 3:  # guarantee the 4-2-1 rule: each quadrant holds some
            pts = np.vstack([pts, _quadrant_points(rng, 2, [0], anatomy, 0.8),
                             _quadrant_points(rng, 2, [1], anatomy, 0.8),
                             _quadrant_points(rng, 2, [2], anatomy, 0.8),
                             _quadrant_points(rng, 2, [3], anatomy, 0.8)])
        size_mean = _lesion("haemorrhage_size", severity)
        for p in pts:
            val = contrast * rng.uniform(0.6, 1.0)
            rad = size_mean * rng.lognormal(0.0, 0.35)
            if rng.random() < 0.25:  # flame: elongated along the nerve fibres (radial to disc)
                d = p - anatomy.disc
                ang = math.atan2(d[1], d[0])
                layers.red.ellipse(p, 1.6 * rad, 0.45 * rad, ang, val)
            else:  # dot/blot: a few overlapping ellipses
                for _ in range(int(rng.integers(1, 4))):
                    q = p + rng.normal(0, 0.35 * rad, 2)
                    layers.red.ellipse(q, rad * rng.uniform(0.6, 1.0), rad * rng.uniform(0.5, 0.9),
                                       rng.uniform(0, np.pi), val)

    # Hard exudates: clusters of small waxy yellow spots, often in a ring (circinate).
    if rng.random() < _lesion("exudate_p", severity):
        for _ in range(int(rng.integers(1, 4))):
            centre = _pole_points(rng, 1, anatomy, 0.3)[0]
            n_ex = int(rng.integers(2, 16))
            if rng.random() < 0.4:
                ring = rng.uniform(0.04, 0.1)
                ang = rng.uniform(0, 2 * np.pi, n_ex)
                spots = centre + ring * np.stack([np.cos(ang), np.sin(ang)], 1)
            else:
                spots = centre + rng.normal(0, 0.04, (n_ex, 2))
            spots = spots[np.linalg.norm(spots, axis=1) < 0.9]
            radii = ma_min * rng.uniform(0.8, 2.2, len(spots))
            for p, rad in zip(spots, radii):
                layers.exudate.disc(p[None], rad, contrast * rng.uniform(0.55, 1.0))

    # Cotton-wool spots: fluffy white patches near the arcades.
    if rng.random() < _lesion("cotton_wool_p", severity):
        for _ in range(int(rng.integers(1, 4))):
            vessel = anatomy.arcades[int(rng.integers(0, 4))]  # a temporal arcade trunk
            p = vessel.points[int(rng.integers(len(vessel.points) // 5, len(vessel.points)))]
            p = p + rng.normal(0, 0.04, 2)
            rad = rng.uniform(0.025, 0.045)
            layers.cotton.ellipse(p, rad, rad * rng.uniform(0.5, 0.9), rng.uniform(0, np.pi),
                                  contrast * rng.uniform(0.6, 1.0))

    # Venous beading: sausage-like dilatations along a stretch of a major vein.
    if rng.random() < _lesion("venous_beading_p", severity):
        veins = [v for v in anatomy.arcades if v.kind == "vein"]
        for vein in veins[: int(rng.integers(1, len(veins) + 1))]:
            a = int(rng.integers(len(vein.points) // 6, len(vein.points) // 2))
            stretch = vein.points[a : a + int(rng.integers(10, 25)) : 2]
            layer_r = vein.width * rng.uniform(0.9, 1.3)
            for p in stretch:
                vein_layer.disc(p[None], layer_r, 1.0)

    # IRMA: short tortuous intraretinal vessels in the mid-periphery (grade 3 sign that
    # mimics neovascularisation, a classic 3-vs-4 confusion).
    if rng.random() < _lesion("irma_p", severity):
        for _ in range(int(rng.integers(1, 4))):
            p = _quadrant_points(rng, 1, [int(rng.integers(0, 4))], anatomy, 0.7)[0]
            path = _walk(rng, p, rng.uniform(0, 2 * np.pi), rng.uniform(0.08, 0.16), 0.35,
                         step=0.008)
            layers.red.polyline(path, 0.007, contrast * 0.8)

    # Neovascularisation at the disc (NVD) or elsewhere (NVE): fine tortuous tufts.
    if rng.random() < _lesion("neovascularisation_p", severity):
        nv_contrast = rng.uniform(0.25, 1.0)
        sites = []
        if rng.random() < 0.6:
            sites.append(anatomy.disc + rng.normal(0, 0.5 * anatomy.disc_radius, 2))
        if not sites or rng.random() < 0.5:
            for _ in range(int(rng.integers(1, 3))):
                vessel = anatomy.arcades[int(rng.integers(0, 4))]
                sites.append(vessel.points[int(rng.integers(len(vessel.points) // 5, len(vessel.points) * 3 // 4))])
        for site in sites:
            spread = rng.uniform(0.05, 0.11)
            for _ in range(int(rng.integers(4, 10))):
                # loops and curls: many short steps with large, smoothed heading changes
                path = _walk(rng, site + rng.normal(0, spread / 3, 2), rng.uniform(0, 2 * np.pi),
                             rng.uniform(1.5, 3.0) * spread, 0.55, rng.choice((-0.25, 0.25)),
                             step=0.006)
                layers.neovessels.polyline(path, 0.009, nv_contrast * rng.uniform(0.6, 1.0))
            if rng.random() < 0.5:
                layers.fibrous.disc(site[None], spread * 0.9, nv_contrast * 0.5)

    # Pre-retinal (sub-hyaloid) haemorrhage: boat-shaped, flat fluid level on top (gravity
    # acts in the image frame, whatever the camera roll).
    if rng.random() < _lesion("preretinal_p", severity):
        vessel = anatomy.arcades[int(rng.integers(0, 4))]
        p = vessel.points[int(rng.integers(len(vessel.points) // 6, len(vessel.points) // 2))]
        cx, cy = layers.red.frame.to_px(p)[0]
        half_w = rng.uniform(1.0, 2.2) * anatomy.disc_radius * r_px
        depth = half_w * rng.uniform(0.5, 0.9)
        t = np.linspace(0, np.pi, 16)
        xy = np.stack([cx + half_w * np.cos(t), cy + depth * np.sin(t)], axis=1)
        layers.preretinal.polygon_px(xy, contrast * rng.uniform(0.8, 1.0))


# ----------------------------------------------------------------------------------------
# One image
# ----------------------------------------------------------------------------------------


def _check_grade(grade: int, n_classes: int) -> None:
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
        raise ValueError(f"n_classes={n_classes!r} must be an integer >= 2")
    if isinstance(grade, bool) or not isinstance(grade, (int, np.integer)) or not 0 <= grade < n_classes:
        raise ValueError(f"grade={grade!r} must be an integer in [0, {n_classes - 1}]")


def generate_fundus(
    grade: int,
    *,
    size: int,
    rng: np.random.Generator,
    n_classes: int = 5,
    eye: str = "left",
) -> Image.Image:
    """Draw one colour fundus photograph of DR ``grade``.

    The generator spawns three independent streams from ``rng`` (nuisance, anatomy,
    lesions), so two calls with equally seeded ``rng`` and different grades give the same
    camera, the same eye, and differ only by their lesions.

    Parameters
    ----------
    grade : int
        Class in ``[0, n_classes)``. With ``n_classes == 5`` it is the international DR
        grade; otherwise lesion severity is mapped linearly: ``4 * grade / (n_classes - 1)``.
    size : int
        Side of the square image in pixels, ``>= 32``.
    rng : numpy.random.Generator
        Source of randomness (seed it from ``(seed, index)`` for reproducible data sets).
    n_classes : int, default 5
        Number of grades of the scale.
    eye : {"left", "right"}, default "left"
        Which eye: a right eye has its optic disc on the right of the image.

    Returns
    -------
    PIL.Image.Image
        ``RGB`` image of ``size x size`` with the field of view on black.

    Examples
    --------
    >>> import numpy as np
    >>> img = generate_fundus(4, size=128, rng=np.random.default_rng(7), eye="right")
    >>> img.mode, img.size, img.getpixel((0, 0))
    ('RGB', (128, 128), (0, 0, 0))
    """
    _check_grade(grade, n_classes)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ValueError(f"size={size!r} must be an integer >= {MIN_SIZE}")
    if eye not in EYES:
        raise ValueError(f"eye={eye!r} is not one of {list(EYES)}")
    size = int(size)
    severity = 4.0 * grade / (n_classes - 1)
    nuis, anat, les = (np.random.default_rng(s) for s in rng.integers(0, 2**63 - 1, 3))
    ys, xs = _pixel_grid(size)

    # -- camera / nuisance (drawn first and in a fixed order: independent of the grade) --
    frame = _Frame(
        cx=size * (0.5 + nuis.uniform(-0.04, 0.04)),
        cy=size * (0.5 + nuis.uniform(-0.04, 0.04)),
        radius=size * nuis.uniform(0.43, 0.485),
        theta=float(np.clip(nuis.normal(0, 0.12), -0.35, 0.35)),
        mirror=1.0 if eye == "right" else -1.0,
    )
    cast = np.exp(nuis.normal(0, [0.06, 0.1, 0.14])).astype(np.float32)
    gain = float(np.exp(nuis.normal(0.0, 0.18)))
    gamma = nuis.uniform(0.8, 1.25)
    blur = (size / 128) * 1.1 * nuis.random() ** 2  # often sharp, sometimes soft
    noise_sd = nuis.uniform(0.004, 0.03)
    vignette = nuis.uniform(0.35, 0.75)
    tilt_dir = nuis.uniform(0, 2 * np.pi)
    tilt_amp = nuis.uniform(0.0, 0.18)
    noise = nuis.standard_normal((size, size, 3), dtype=np.float32)
    noise = 0.6 * noise + 0.4 * noise.mean(axis=2, keepdims=True)  # partly luminance noise

    # -- anatomy --
    anatomy = _draw_anatomy(anat, size, frame.radius)
    dx = (xs - frame.cx) / frame.radius
    dy = (ys - frame.cy) / frame.radius
    rho2 = dx * dx + dy * dy
    illum = (1.0 - vignette * rho2 * np.sqrt(rho2)) * (1.0 + tilt_amp * (dx * math.cos(tilt_dir) + dy * math.sin(tilt_dir)))
    illum = np.clip(illum, 0.05, None)

    # Pigmentation: from lightly pigmented orange to darker brown-red fundi.
    pigment = anat.uniform(0.0, 1.0)
    base = np.array([0.86 - 0.18 * pigment, 0.36 - 0.12 * pigment, 0.14 - 0.05 * pigment], np.float32)
    texture = 0.05 * _smooth_noise(anat, size, 6) + 0.03 * _smooth_noise(anat, size, 18)
    img = base * illum[..., None] * (1.0 + texture[..., None] * np.array([1.0, 1.4, 1.8], np.float32))
    if anat.random() < 0.25:  # tessellated (tigroid) fundus: choroidal vessels show through
        ridge = np.exp(-((_smooth_noise(anat, size, max(8, size // 12)) / 0.3) ** 2))
        img *= 1.0 - (anat.uniform(0.04, 0.12) * ridge * np.clip(rho2, 0, 1))[..., None] * np.array([0.6, 1.0, 1.0], np.float32)

    # Macula: darker, browner; tiny foveal reflex sometimes. (Computed in a box round it.)
    m_px = frame.to_px(anatomy.macula)[0]
    m_sigma = 1.4 * anatomy.disc_radius * frame.radius
    box = _box(m_px, 3.0 * m_sigma, size)
    dm2 = ((xs[box] - m_px[0]) ** 2 + (ys[box] - m_px[1]) ** 2) / m_sigma**2
    depth = anat.uniform(0.5, 1.0) * np.array([0.3, 0.45, 0.4], np.float32)
    img[box] *= 1.0 - np.exp(-dm2)[..., None] * depth
    if anat.random() < 0.5:
        img[box] += (0.25 * np.exp(-dm2 / 0.004))[..., None] * np.array([1.0, 1.0, 0.9], np.float32)

    # Optic disc: vertically oval, yellow-pink rim, pale cup slightly temporal.
    d_px = frame.to_px(anatomy.disc)[0]
    rd = anatomy.disc_radius * frame.radius
    box = _box(d_px, 3.5 * rd, size)
    dd2 = ((xs[box] - d_px[0]) / (0.93 * rd)) ** 2 + ((ys[box] - d_px[1]) / (1.05 * rd)) ** 2
    dd4 = dd2 * dd2
    rim = np.zeros((size, size), np.float32)
    rim[box] = 1.0 / (1.0 + dd4 * dd4 * dd2)  # flat top, sharp edge at dd = 1
    cup_px = frame.to_px(anatomy.disc + np.array([-0.25 * anatomy.disc_radius, 0.0]))[0]
    cup_r = anat.uniform(0.3, 0.6) * rd
    cup = np.exp(-(((xs[box] - cup_px[0]) ** 2 + (ys[box] - cup_px[1]) ** 2) / cup_r**2) ** 2)
    disc_col = np.array([0.97, 0.6, 0.34], np.float32) * anat.uniform(0.9, 1.08)
    cup_col = np.array([1.0, 0.84, 0.6], np.float32)
    peri = np.exp(-dd2 / 3.0) * 0.12  # peripapillary glow
    disc_light = (0.75 + 0.25 * illum[box])[..., None]
    cup_alpha = anat.uniform(0.5, 0.85) * cup[..., None]
    r_box = rim[box][..., None]
    patch = img[box] * (1 + peri[..., None])
    patch = patch * (1 - r_box) + disc_col * disc_light * r_box
    img[box] = patch * (1 - cup_alpha) + cup_col * disc_light * cup_alpha

    # -- vessels and lesions, as supersampled vector layers --
    vessel_layer = _Layer(size, frame)
    _draw_vessels(anatomy.vessels, vessel_layer)
    lesions = _LesionLayers(*(_Layer(size, frame) for _ in range(6)))
    _draw_lesions(les, severity, anatomy, lesions, vessel_layer, size)
    vessel_dark = anat.uniform(0.8, 1.0)

    on_disc = 1.0 - 0.45 * rim[..., None]  # vessels look paler against the bright disc
    vessels = vessel_layer.array()
    img *= 1.0 - vessel_dark * np.array([0.5, 0.72, 0.62], np.float32) * vessels * on_disc
    # Lesion layers: (layer, blur in px at 256, how it is blended). "absorb" darkens like
    # blood (per-channel absorption), "cover" paints an opaque/translucent colour over.
    light = illum[..., None]
    for layer, blur256, blend, alpha, colour in (
        (lesions.red, 0.0, "absorb", 1.0, (0.6, 0.82, 0.75)),
        (lesions.neovessels, 0.0, "absorb", 1.0, (0.45, 0.7, 0.62)),
        (lesions.fibrous, 2.0, "cover", 0.35, (0.95, 0.85, 0.75)),
        (lesions.cotton, 3.0, "cover", 0.85, (0.98, 0.9, 0.78)),
        (lesions.exudate, 0.0, "cover", 1.0, (1.0, 0.9, 0.45)),
        (lesions.preretinal, 0.3, "cover", 1.0, (0.4, 0.05, 0.03)),
    ):
        mask = layer.array(blur256 * size / 256)
        if mask is None:
            continue
        if blend == "absorb":  # blood absorbs green and blue more than red
            img *= 1.0 - np.array(colour, np.float32) * mask
        else:
            img += alpha * mask * (np.array(colour, np.float32) * (0.5 + 0.5 * light) - img)

    # -- camera: colour cast, exposure, gamma, field-of-view edge, blur, noise --
    fov = np.clip((1.0 - np.sqrt(rho2)) * frame.radius + 0.5, 0.0, 1.0)[..., None]
    img = np.clip(img * (cast * gain) * fov, 0.0, 1.0)
    out = Image.fromarray((img * 255.0 + 0.5).astype(np.uint8), mode="RGB")
    gamma_lut = (255.0 * (np.arange(256) / 255.0) ** gamma + 0.5).astype(np.uint8).tolist()
    out = out.point(gamma_lut * 3)
    if blur > 0.05:
        out = out.filter(ImageFilter.GaussianBlur(blur))
    arr = np.asarray(out, dtype=np.float32) + (255.0 * noise_sd) * noise * (fov > 0.99)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), mode="RGB")


# ----------------------------------------------------------------------------------------
# Data set
# ----------------------------------------------------------------------------------------


def _image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of image ``index``: depends on ``(seed, index)`` only."""
    return np.random.default_rng([seed, _IMAGE_STREAM, index])


def _render_job(job: tuple) -> str:
    """Worker: render one image and write it atomically; returns its stem."""
    index, stem, grade, eye, size, seed, n_classes, images_dir = job
    img = generate_fundus(grade, size=size, rng=_image_rng(seed, index), n_classes=n_classes, eye=eye)
    final = os.path.join(images_dir, stem + ".png")
    tmp = os.path.join(images_dir, f".{stem}.png.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, final)
    return stem


def _plan(n: int, seed: int, priors: np.ndarray, patients: bool) -> list[dict]:
    """Rows of labels.csv, in order: ``{"image", "level", "eye"[, "patient"]}``."""
    rng = np.random.default_rng([seed, _LABEL_STREAM])
    width = max(5, len(str(max(n - 1, 0))))
    rows = []
    if patients:
        pairs = draw_eye_pairs((n + 1) // 2, priors, rng)
        first_eye = rng.integers(0, 2, len(pairs))  # which eye carries the first grade
        for pid, ((g_first, g_fellow), fe) in enumerate(zip(pairs.tolist(), first_eye.tolist())):
            grades = {EYES[fe]: g_first, EYES[1 - fe]: g_fellow}
            for eye in EYES:
                if len(rows) < n:  # an odd n leaves the last patient with one eye
                    rows.append({"image": f"{pid:0{width}d}_{eye}", "level": grades[eye],
                                 "eye": eye, "patient": pid})
    else:
        levels = draw_labels(n, priors, rng)
        eyes = rng.integers(0, 2, n)
        for i, (g, e) in enumerate(zip(levels.tolist(), eyes.tolist())):
            rows.append({"image": f"{i:0{width}d}_{EYES[e]}", "level": g, "eye": EYES[e]})
    return rows


def _prepare_out_dir(out: pathlib.Path) -> None:
    """Accept a missing or empty DIR or a previous synth output; refuse anything else."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not ((out / "labels.csv").exists() or (out / _MARKER).exists()):
            raise FileExistsError(
                f"output directory {out} is not empty and holds no labels.csv or {_MARKER} "
                "of a previous synthetic set; choose an empty or new directory"
            )
    (out / "images").mkdir(parents=True, exist_ok=True)


def _write_atomic(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8", newline="")
    os.replace(tmp, path)


def generate_dataset(
    out_dir: str | os.PathLike,
    *,
    n: int,
    size: int = 128,
    seed: int = 0,
    priors: Sequence[float] | None = None,
    patients: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> pathlib.Path:
    """Write an EyePACS-style synthetic collection and return the path of its labels.csv.

    Layout: ``out_dir/labels.csv`` (``image,level``, plus ``patient`` with ``patients``),
    ``out_dir/images/<image>.png`` and ``out_dir/synth.json`` (the generation parameters).
    Images are written under a temporary name and renamed; ``labels.csv`` is written last
    (also via a rename) and an existing one is removed first, so an interrupted run never
    leaves a ``labels.csv`` that names missing or stale images.

    Parameters
    ----------
    out_dir : path
        Target directory: missing, empty, or a previous synthetic set (regenerated over).
    n : int
        Number of images, ``>= 1``.
    size : int, default 128
        Image side in pixels, ``>= 32``.
    seed : int, default 0
        Non-negative seed; the same seed gives byte-identical files for any ``workers``.
    priors : sequence of float, optional
        Class weights (any number >= 2, normalised); default :data:`DR_PRIORS`.
    patients : bool, default False
        Two eyes per patient (``<patient>_left``, ``<patient>_right``) with correlated
        grades (see :func:`draw_eye_pairs`); an odd ``n`` gives the last patient one eye.
    workers : int, optional
        Processes; default ``os.cpu_count()``. ``1`` renders in this process.
    progress : bool, default True
        Show a tqdm progress bar.

    Returns
    -------
    pathlib.Path
        ``out_dir/labels.csv``.

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> with tempfile.TemporaryDirectory() as d:
    ...     csv_path = generate_dataset(d, n=4, size=32, workers=1, progress=False)
    ...     pd.read_csv(csv_path).columns.tolist()
    ['image', 'level']
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n={n!r} must be a positive integer")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ValueError(f"size={size!r} must be an integer >= {MIN_SIZE}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1):
        raise ValueError(f"workers={workers!r} must be a positive integer or None")
    p = _normalise_priors(priors)
    n, size, seed = int(n), int(size), int(seed)
    workers = int(workers or os.cpu_count() or 1)

    out = pathlib.Path(out_dir)
    _prepare_out_dir(out)
    labels_csv = out / "labels.csv"
    labels_csv.unlink(missing_ok=True)  # never leave an old index over half-new images
    params = {"generator": "drgrade.training.synth", "version": 1, "n": n, "size": size,
              "seed": seed, "priors": [round(float(x), 10) for x in p], "patients": bool(patients)}
    _write_atomic(out / _MARKER, json.dumps(params, indent=2) + "\n")

    rows = _plan(n, seed, p, patients)
    images_dir = str(out / "images")
    jobs = [(i, r["image"], r["level"], r["eye"], size, seed, int(p.size), images_dir)
            for i, r in enumerate(rows)]
    _run_jobs(jobs, workers, progress)

    # Drop images of a previous, larger run so the folder matches the index exactly.
    keep = {r["image"] + ".png" for r in rows}
    for f in pathlib.Path(images_dir).iterdir():
        if f.suffix == ".png" and f.name not in keep:
            f.unlink()

    columns = ["image", "level"] + (["patient"] if patients else [])
    lines = [",".join(columns)] + [",".join(str(r[c]) for c in columns) for r in rows]
    _write_atomic(labels_csv, "\n".join(lines) + "\n")
    return labels_csv


def _run_jobs(jobs: list[tuple], workers: int, progress: bool) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit="img", desc="synth", disable=not progress)
    try:
        if workers == 1 or len(jobs) < 2:
            for job in jobs:
                _render_job(job)
                bar.update()
        else:
            # spawn, not fork: callers may hold threads (torch, a web server) that fork breaks
            ctx = multiprocessing.get_context("spawn")
            chunk = max(1, min(64, len(jobs) // (workers * 8)))
            with ctx.Pool(min(workers, len(jobs))) as pool:
                for _ in pool.imap_unordered(_render_job, jobs, chunksize=chunk):
                    bar.update()
    finally:
        bar.close()


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_at_least(lo: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"{value} is too small: {what} must be >= {lo}")
        return value

    return parse


def _parse_priors(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of numbers (e.g. 0.7,0.1,0.2)") from None
    try:
        _normalise_priors(values)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return values


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m training.synth",
        description="Write a synthetic, EyePACS-style DR fundus collection: DIR/labels.csv "
                    "(image,level[,patient]) and DIR/images/<image>.png.",
    )
    parser.add_argument("--out", required=True, type=pathlib.Path, metavar="DIR",
                        help="output directory (new, empty, or a previous synthetic set)")
    parser.add_argument("--n", required=True, type=_int_at_least(1, "--n"), help="number of images")
    parser.add_argument("--size", type=_int_at_least(MIN_SIZE, "--size"), default=128,
                        help="image side in pixels (default 128)")
    parser.add_argument("--seed", type=_int_at_least(0, "--seed"), default=0, help="seed (default 0)")
    parser.add_argument("--priors", type=_parse_priors, default=None, metavar="P0,P1,...",
                        help="class weights, >= 2 of them, normalised (default: EyePACS "
                             "73.5/7.0/15.1/2.5/2.0 %%)")
    parser.add_argument("--patients", action="store_true",
                        help="two eyes per patient with correlated grades; adds a patient column")
    parser.add_argument("--workers", type=_int_at_least(1, "--workers"), default=None,
                        help="processes (default: all CPU cores)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (0 ok, 2 usage error, 1 I/O error).

    Examples
    --------
    >>> main(["--out", "/tmp/x", "--n", "-3"])  # doctest: +SKIP
    python -m training.synth: error: argument --n: -3 is too small: --n must be >= 1
    2
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse exits on errors and --help
        return int(stop.code or 0)
    try:
        labels = generate_dataset(args.out, n=args.n, size=args.size, seed=args.seed,
                                  priors=args.priors, patients=args.patients,
                                  workers=args.workers, progress=not args.no_progress)
    except (ValueError, FileExistsError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"{parser.prog}: error: cannot write {args.out}: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.n} images and {labels}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
