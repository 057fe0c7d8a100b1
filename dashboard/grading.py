"""The Grade page's work, without Streamlit: check uploads, grade them, tabulate results.

Grading itself is :class:`models.grade.Grader`; this module only adds what an upload form
needs: a per-file size limit, a thumbnail and quality warnings of the original scan, and
the results table / CSV in the exact columns of ``python -m models.grade``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from models.grade import Grader, ScanResult, csv_columns, referable_probability
from models.preprocess import ImageError, open_image
from models.quality import quality_warnings

#: Side of the thumbnails shown next to a grade (px).
THUMB_SIZE = 256


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its name and bytes (``key`` identifies it for caching)."""

    name: str
    data: bytes = field(repr=False)
    key: str = ""

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class Rejected:
    """An upload refused before grading (too big); ``reason`` is shown on its error card."""

    name: str
    reason: str


def split_by_size(uploads: Sequence[Upload], max_bytes: int) -> tuple[list[Upload], list[Rejected]]:
    """Uploads within the per-file limit, and the others as :class:`Rejected`.

    Examples
    --------
    >>> ok, bad = split_by_size([Upload("a.png", b"12"), Upload("b.png", b"12345")], 3)
    >>> [u.name for u in ok], bad[0].reason
    (['a.png'], 'file is 5 bytes (0.0 MB), above the upload limit of 3 bytes (0.0 MB)')
    """
    ok, bad = [], []
    for u in uploads:
        if u.size > max_bytes:
            bad.append(Rejected(u.name, f"file is {u.size:,} bytes ({u.size / 1e6:.1f} MB), above the upload limit of {max_bytes:,} bytes ({max_bytes / 1e6:.1f} MB)"))
        else:
            ok.append(u)
    return ok, bad


def rejected_results(rejected: Sequence[Rejected]) -> list[ScanResult]:
    """Refused uploads as failed results, so the table and CSV list every file."""
    return [ScanResult(name=r.name, ok=False, error=f"{r.name}: {r.reason}") for r in rejected]


def grade_uploads(grader: Grader, uploads: Sequence[Upload]) -> list[ScanResult]:
    """Grade uploads with one model: one result per upload, in order; bad files come back
    ``ok=False`` with the reason (the others are still graded)."""
    if not uploads:
        return []
    return grader.grade([u.data for u in uploads], names=[u.name for u in uploads])


@dataclass
class ScanView:
    """What the page shows about the original scan, whatever the model."""

    thumbnail: np.ndarray | None
    warnings: list[str]
    error: str | None = None


def inspect_upload(upload: Upload) -> ScanView:
    """Thumbnail and quality warnings of an uploaded scan (an unreadable file gives ``error``)."""
    try:
        img = open_image(upload.data, name=upload.name, draft=THUMB_SIZE)
    except ImageError as exc:
        return ScanView(None, [], str(exc))
    thumb = img.copy()
    thumb.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BILINEAR)
    try:
        warnings = quality_warnings(img)
    except (ImageError, ValueError) as exc:  # quality is advice: never block a grade on it
        warnings = [f"quality check failed ({exc})"]
    return ScanView(np.asarray(thumb), warnings)


def referable_flag(probs: np.ndarray | None, class_names: Sequence[str], threshold: float) -> tuple[float, bool] | None:
    """``(P(grade >= 2), refer?)`` for 5-grade DR models; ``None`` for other models or no probs.

    Examples
    --------
    >>> referable_flag(np.array([0.5, 0.2, 0.1, 0.1, 0.1]), list("01234"), 0.25)
    (0.3, True)
    """
    if probs is None:
        return None
    p = referable_probability(probs, class_names)
    return None if p is None else (p, p >= threshold)


def results_frame(results: Sequence[ScanResult], n_classes: int) -> pd.DataFrame:
    """Results in the CSV columns of ``python -m models.grade``: ``path,status,error,grade,grade_name,p0..``."""
    return pd.DataFrame([r.to_row(n_classes) for r in results], columns=csv_columns(n_classes))


def results_csv(results: Sequence[ScanResult], n_classes: int) -> bytes:
    """The same rows as CSV bytes (what ``python -m models.grade --csv`` writes)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=csv_columns(n_classes), lineterminator="\n")
    writer.writeheader()
    writer.writerows(r.to_row(n_classes) for r in results)
    return buf.getvalue().encode("utf-8")
