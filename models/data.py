"""Labelled fundus collections: one loader for CSV exports, EyePACS, APTOS and ImageFolder trees.

:func:`load_collection` takes a path and returns a :class:`Collection`: one table with an
absolute path, an integer label and a train/val/test split for every usable scan. The path may be

* a CSV file (any name);
* a folder holding a known CSV: ``labels.csv`` (our synthetic set: ``image,level``),
  ``trainLabels.csv`` (EyePACS 2015: ``image,level``, files ``<image>.jpeg``) or ``train.csv``
  (APTOS 2019: ``id_code,diagnosis``, files ``<id_code>.png`` in ``train_images/``);
* an ImageFolder tree: one sub-folder per class, images inside.

Image ids resolve against the CSV's folder (or ``images_dir``) and its ``images/``, ``train/``
and ``train_images/`` sub-folders, with or without an extension. Each folder is listed once, so
35,000 rows cost a handful of ``scandir`` calls, not 35,000 x 7 ``stat`` calls.

Every problem in the data (missing or unreadable scans, bad labels, duplicate ids, bad split
values, classes too small to split) is a :class:`DataError` naming the rows, unless
``skip_bad`` is set, in which case the bad rows are dropped with a warning on the
``drgrade.data`` logger and listed in :attr:`Collection.problems`.

This module must stay cheap to import (no torch, no scikit-learn): the dashboard uses it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from models.grades import DR_GRADE_NAMES
from models.preprocess import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, open_image

log = logging.getLogger("drgrade.data")


#: Known CSV names in a collection folder, in the order they are looked for, with the source tag.
KNOWN_CSVS = (("labels.csv", "labels.csv"), ("trainLabels.csv", "eyepacs"), ("train.csv", "aptos"))
#: Column names recognised (case-insensitively, in this order) when none is given.
IMAGE_COLUMNS = ("image", "id_code", "id", "filename", "file", "path")
LABEL_COLUMNS = ("level", "diagnosis", "label", "grade", "class")
#: Sub-folders of the CSV's folder (or ``images_dir``) searched for the scans.
IMAGE_SUBDIRS = ("images", "train", "train_images")
SPLITS = ("train", "val", "test")
_SPLIT_VALUES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
#: How many offending rows an error message lists before "...".
MAX_LISTED = 20

_EXT_RANK = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
# EyePACS ids are "<patient>_left" / "<patient>_right": both eyes of one person.
_EYE_ID = re.compile(r"^(?P<patient>.+?)[_-](?:left|right)$", re.IGNORECASE)


class DataError(Exception):
    """A collection that cannot be used as it is; the message says what is wrong and what to do."""


# --------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------


@dataclass
class Collection:
    """A labelled, split collection of scans.

    Attributes
    ----------
    root : Path
        The collection's folder (the CSV's folder, or the ImageFolder root).
    table : pandas.DataFrame
        One row per usable scan: ``image`` (id, str), ``path`` (absolute, str), ``label``
        (int in ``0..K-1``), ``split`` (``"train"``, ``"val"`` or ``"test"``), ``patient``
        (str, or None when unknown).
    class_names : list of str
        ``K`` names; ``label`` indexes this list.
    source : str
        ``"labels.csv"``, ``"eyepacs"``, ``"aptos"``, ``"csv"`` or ``"imagefolder"``.
    problems : list of str
        What was wrong with the data (one line per kind of problem); empty when nothing was.
    skipped : int
        Rows dropped because of those problems (``skip_bad``).
    """

    root: Path
    table: pd.DataFrame
    class_names: list[str]
    source: str
    problems: list[str] = field(default_factory=list)
    skipped: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def counts(self, split: str | None = None) -> np.ndarray:
        """Images per class (int array of length K), in one split or (None) in all."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        labels = self.table["label"] if split is None else self.table.loc[self.table["split"] == split, "label"]
        return np.bincount(labels.to_numpy(dtype=np.int64), minlength=self.num_classes)

    def imbalance_ratio(self, split: str | None = "train") -> float:
        """Largest over smallest class count (``inf`` when a class has no image there)."""
        c = self.counts(split)
        return float("inf") if c.min() == 0 else float(c.max() / c.min())

    def data_hash(self) -> str:
        """SHA-256 (hex) identifying the data a run trained and was judged on.

        Covers the class names and, for every row sorted by image id, the id, the label, the
        split and the file's size in bytes. It reads no pixels (fast on 35,000 scans) and
        ignores where the collection lies, so a moved copy hashes the same; a re-labelled,
        re-split, added, removed or re-encoded scan changes it. (A same-size in-place edit
        of a scan does not: that is the price of not reading the images.)
        """
        h = hashlib.sha256()
        h.update(json.dumps(list(self.class_names)).encode())
        t = self.table.sort_values("image", kind="stable")
        for image, path, label, split in zip(t["image"], t["path"], t["label"], t["split"]):
            try:
                size = os.stat(path).st_size
            except OSError:
                size = -1
            h.update(f"\n{image}\t{int(label)}\t{split}\t{size}".encode())
        return h.hexdigest()

    def summary(self) -> str:
        """Human-readable report (what ``python -m training --data PATH --check`` prints)."""
        K = self.num_classes
        per_split = {s: self.counts(s) for s in SPLITS}
        total = self.counts()
        name_w = max(12, *(len(f"{i} {n}") for i, n in enumerate(self.class_names))) + 2
        lines = [
            f"Collection: {self.root}",
            f"Source:     {self.source}",
            f"Images:     {len(self.table)}" + (f" ({self.skipped} bad rows skipped)" if self.skipped else ""),
        ]
        patients = self.table["patient"].dropna()
        if len(patients):
            lines.append(f"Patients:   {patients.nunique()} (all scans of a patient stay in one split)")
        lines.append(f"Classes:    {K}")
        lines.append("  " + "class".ljust(name_w) + "".join(s.rjust(8) for s in (*SPLITS, "total")))
        for i, name in enumerate(self.class_names):
            cells = [per_split[s][i] for s in SPLITS] + [total[i]]
            lines.append("  " + f"{i} {name}".ljust(name_w) + "".join(f"{c:8d}" for c in cells))
        cells = [per_split[s].sum() for s in SPLITS] + [total.sum()]
        lines.append("  " + "total".ljust(name_w) + "".join(f"{c:8d}" for c in cells))
        ratio = self.imbalance_ratio("train")
        lines.append(f"Imbalance:  {ratio:.1f} (train, largest / smallest class)" if math.isfinite(ratio) else "Imbalance:  inf (a class has no training image)")
        if self.problems:
            lines.append(f"Problems:   {len(self.problems)}")
            lines.extend(f"  - {p}" for p in self.problems)
        else:
            lines.append("Problems:   none")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def load_collection(
    path: str | os.PathLike,
    *,
    image_col: str | None = None,
    label_col: str | None = None,
    images_dir: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
    split_col: str | None = "split",
    patient_col: str | None = "patient",
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    skip_bad: bool = False,
    verify_images: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Collection:
    """Read, check and split a labelled collection of scans.

    Parameters
    ----------
    path : str or path
        A CSV file, a folder with ``labels.csv`` / ``trainLabels.csv`` / ``train.csv``, or an
        ImageFolder tree (one sub-folder per class).
    image_col, label_col : str, optional
        CSV columns of the image id and the label; found among :data:`IMAGE_COLUMNS` and
        :data:`LABEL_COLUMNS` when not given.
    images_dir : path, optional
        Where the scans are, when not next to the CSV (relative paths are taken from the
        working directory).
    class_names : list of str, optional
        The class set, in label order; labels must then be these names or indices into them.
        Default: ImageFolder folder names; for 5 integer grades :data:`DR_GRADE_NAMES`; else
        ``"0"``, ``"1"``, ...; string labels give their sorted distinct values.
    split_col : str or None
        Column with ``train``/``val``/``test`` per row, honoured when present (a missing val or
        test split is carved, stratified, out of train). None ignores any such column.
    patient_col : str or None
        Column naming the patient; all scans of a patient land in one split. Without it,
        ids that all look like ``<patient>_left`` / ``<patient>_right`` (EyePACS) give the
        patient. None turns grouping off.
    seed : int
        Seed of the random split (same data and seed give the same split).
    val_fraction, test_fraction : float
        Shares of the collection for the validation and test splits, stratified by class.
    skip_bad : bool
        Drop bad rows (and classes too small to split) with a warning instead of raising.
    verify_images : bool
        Decode every scan with :func:`models.preprocess.open_image` to find corrupt files.
    max_pixels : int
        Decompression-bomb limit passed to the decoder.

    Raises
    ------
    DataError
        A path, CSV or column that cannot be used, or (without ``skip_bad``) bad rows.

    Examples
    --------
    >>> c = load_collection("data/synth")                            # doctest: +SKIP
    >>> c.class_names[:2], c.counts("train")                         # doctest: +SKIP
    (['No DR', 'Mild'], array([1545,  147,  318,   52,   42]))
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must each lie between 0 and 1, and sum to less than 1")
    names = _check_class_names(class_names)
    raw = _read_source(Path(path), image_col, label_col, split_col, patient_col, images_dir)
    problems = _RowProblems(raw)

    labels, names, int_mode = _parse_labels(raw, names, problems)
    if names is None:  # integer grades without given names
        names = list(DR_GRADE_NAMES) if int_mode == 5 else [str(i) for i in range(int_mode)]

    if raw.paths is None:
        index = _ImageIndex(_search_dirs(raw.root, images_dir))
        raw.paths = [index.find(image) for image in raw.images]
    for i, p in enumerate(raw.paths):
        if p is None:
            problems.add(("image file not found", "image files not found"), i)

    _find_duplicates(raw, labels, problems)

    if verify_images:
        found = [i for i, p in enumerate(raw.paths) if p is not None]
        for i, reason in zip(found, _verify_images([raw.paths[i] for i in found], [raw.images[i] for i in found], max_pixels)):
            if reason is not None:
                problems.add(("unreadable image", "unreadable images"), i, reason)

    splits = None
    if raw.splits is not None:
        splits = [_SPLIT_VALUES.get(v.strip().lower()) for v in raw.splits]
        kind = ("invalid split value (valid: train, val, test)", "invalid split values (valid: train, val, test)")
        for i, s in enumerate(splits):
            if s is None:
                problems.add(kind, i, repr(raw.splits[i]))

    messages = problems.messages()
    bad = problems.rows()
    if messages and not skip_bad:
        raise DataError("\n".join(messages) + " Use --skip-bad to skip them.")
    keep = np.array([i not in bad for i in range(len(raw.images))], dtype=bool)
    if bad:
        log.warning("%s: skipped %d bad row%s (%s)", raw.where, len(bad), "" if len(bad) == 1 else "s", "; ".join(m.split(": ", 2)[1] for m in messages))
    if not keep.any():
        raise DataError(f"{raw.where}: no usable rows left ({len(bad)} bad rows skipped)")

    table = pd.DataFrame(
        {
            "image": [raw.images[i] for i in np.flatnonzero(keep)],
            "path": [os.path.abspath(raw.paths[i]) for i in np.flatnonzero(keep)],
            "label": np.asarray(labels, dtype=np.int64)[keep],
            "split": [splits[i] for i in np.flatnonzero(keep)] if splits is not None else None,
            "patient": [raw.patients[i] for i in np.flatnonzero(keep)] if raw.patients is not None else None,
        }
    )
    table["patient"] = table["patient"].astype(object).where(table["patient"].notna(), None)

    table, names, class_problems, class_skipped = _split(
        table, names, has_split_col=splits is not None, seed=seed, fractions={"val": val_fraction, "test": test_fraction},
        skip_bad=skip_bad, where=raw.where, split_col=split_col or "split",
    )
    table = table[["image", "path", "label", "split", "patient"]].reset_index(drop=True)
    return Collection(root=raw.root, table=table, class_names=names, source=raw.source, problems=messages + class_problems, skipped=len(bad) + class_skipped)


def check_collection(path: str | os.PathLike, **kw: Any) -> tuple[Collection | None, list[str]]:
    """Validate a collection for ``--check``: never raises for data problems.

    Loads with ``skip_bad=True`` so that the summary shows what a ``--skip-bad`` run would use,
    and returns ``(collection, problems)``; ``(None, [message])`` when the collection cannot be
    read at all (missing path, unknown column, empty CSV, ...).
    """
    kw["skip_bad"] = True
    try:
        collection = load_collection(path, **kw)
    except DataError as exc:
        return None, [str(exc)]
    return collection, list(collection.problems)


# --------------------------------------------------------------------------------------------
# Reading the source
# --------------------------------------------------------------------------------------------


@dataclass
class _Raw:
    """Rows as read, before any check: one entry per row in each list."""

    where: str  # what error messages call the collection (CSV file name or folder)
    root: Path
    source: str
    lines: list[int | None]  # CSV line numbers (None for ImageFolder)
    images: list[str]
    labels: list[str]
    splits: list[str] | None = None
    patients: list[str | None] | None = None
    paths: list[str | None] | None = None  # known up front for ImageFolder
    folder_classes: list[str] | None = None


def _check_class_names(class_names: Sequence[str] | None) -> list[str] | None:
    if class_names is None:
        return None
    if isinstance(class_names, str):
        class_names = [n.strip() for n in class_names.split(",")]
    names = [str(n).strip() for n in class_names]
    if len(names) < 2 or any(not n for n in names) or len(set(names)) != len(names):
        raise DataError(f"class names must be at least 2 distinct, non-empty names; got {names}")
    return names


def _read_source(path: Path, image_col, label_col, split_col, patient_col, images_dir) -> _Raw:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() in _EXT_RANK:
            raise DataError(f"{path}: is an image; give the labels CSV or the collection's folder")
        source = dict(KNOWN_CSVS).get(path.name, "csv")
        return _read_csv(path, source, image_col, label_col, split_col, patient_col)
    if not path.is_dir():
        raise DataError(f"{path}: neither a file nor a folder")
    for name, source in KNOWN_CSVS:
        if (path / name).is_file():
            return _read_csv(path / name, source, image_col, label_col, split_col, patient_col)
    raw = _scan_image_folder(path)
    if raw is None:
        csvs = sorted(p.name for p in path.glob("*.csv"))
        hint = f" It has {', '.join(csvs)}: pass that file itself." if csvs else ""
        raise DataError(
            f"{path}: not a collection: no {', '.join(n for n, _ in KNOWN_CSVS)}, and no ImageFolder layout "
            f"(at least 2 class sub-folders with images).{hint}"
        )
    if images_dir is not None:
        log.warning("%s: images_dir is ignored for an ImageFolder collection", path)
    for given, default in ((patient_col, "patient"), (split_col, "split"), (image_col, None), (label_col, None)):
        if given not in (None, default):
            raise DataError(f"{path}: an ImageFolder collection has no columns (asked for {given!r}); the class is the sub-folder")
    return raw


def _read_csv(csv_path: Path, source: str, image_col, label_col, split_col, patient_col) -> _Raw:
    where = csv_path.name
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{where}: not a text CSV (it is not UTF-8); save it as UTF-8 CSV") from None
    except OSError as exc:
        raise DataError(f"{where}: cannot read ({exc.strerror or exc})") from None
    if not text.strip():
        raise DataError(f"{where}: the CSV is empty")
    first = next(line for line in text.splitlines() if line.strip())
    delimiter = "," if "," in first else ";" if ";" in first else "\t" if "\t" in first else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue  # blank line
            if header is None:
                header = [cell.strip() for cell in row]
                continue
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise DataError(f"{where}: line {reader.line_num}: cannot parse the CSV ({exc})") from None
    assert header is not None
    if not rows:
        raise DataError(f"{where}: the CSV has a header ({', '.join(header)}) but no rows")

    img = _pick_column(header, image_col, IMAGE_COLUMNS, "image id", "--image-col", where)
    lab = _pick_column(header, label_col, LABEL_COLUMNS, "label", "--label-col", where)
    if img == lab:
        raise DataError(f"{where}: the image and label columns are both {header[img]!r}")
    spl = _optional_column(header, split_col, "split", "--split-col", where)
    pat = _optional_column(header, patient_col, "patient", "--patient-col", where)

    def column(j: int) -> list[str]:
        return [row[j].strip() if j < len(row) else "" for row in rows]

    raw = _Raw(where=where, root=csv_path.parent.resolve(), source=source, lines=lines, images=column(img), labels=column(lab))
    if spl is not None:
        raw.splits = column(spl)
    if pat is not None:
        raw.patients = [p or None for p in column(pat)]
    elif patient_col is not None:
        raw.patients = _patients_from_eye_ids(raw.images)
    return raw


def _pick_column(header: list[str], wanted: str | None, candidates: Sequence[str], role: str, flag: str, where: str) -> int:
    lower = {}
    for j, h in enumerate(header):
        lower.setdefault(h.lower(), j)
    columns = ", ".join(repr(h) for h in header)
    if wanted is not None:
        if wanted in header:
            return header.index(wanted)
        if wanted.lower() in lower:
            return lower[wanted.lower()]
        raise DataError(f"{where}: no column {wanted!r} for the {role}; the CSV's columns are {columns}")
    for c in candidates:
        if c in lower:
            return lower[c]
    raise DataError(f"{where}: cannot tell which column holds the {role} (looked for {', '.join(candidates)}); the CSV's columns are {columns}. Name it with {flag}.")


def _optional_column(header: list[str], wanted: str | None, default: str, flag: str, where: str) -> int | None:
    if wanted is None:
        return None
    lower = {h.lower(): j for j, h in reversed(list(enumerate(header)))}
    if wanted.lower() in lower:
        return lower[wanted.lower()]
    if wanted != default:  # asked for explicitly: it must be there
        raise DataError(f"{where}: no column {wanted!r} ({flag}); the CSV's columns are {', '.join(repr(h) for h in header)}")
    return None


def _patients_from_eye_ids(images: list[str]) -> list[str | None] | None:
    """EyePACS-style ids (``10_left``, ``10_right``) name the patient; else None."""
    stems = [Path(i).stem if Path(i).suffix.lower() in _EXT_RANK else i for i in images]
    matches = [_EYE_ID.match(Path(s).name) for s in stems]
    if not images or not all(matches):
        return None
    return [m.group("patient") for m in matches]  # type: ignore[union-attr]


def _is_image_file(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in _EXT_RANK


def _scan_image_folder(root: Path) -> _Raw | None:
    """One sub-folder per class (searched recursively for images); None when not that layout."""
    classes: list[tuple[str, list[str]]] = []
    for sub in sorted(root.iterdir()):
        if not sub.is_dir() or sub.name.startswith("."):
            continue
        files = []
        for dirpath, dirnames, filenames in os.walk(sub):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files += [os.path.join(dirpath, f) for f in sorted(filenames) if _is_image_file(f)]
        if files:
            classes.append((sub.name, files))
    if len(classes) < 2:
        return None
    if all(re.fullmatch(r"\d+", name) for name, _ in classes):  # "0".."12": numeric, not "10" < "2"
        classes.sort(key=lambda c: int(c[0]))
    raw = _Raw(where=f"{root.name}/", root=root.resolve(), source="imagefolder", lines=[], images=[], labels=[], paths=[],
               folder_classes=[name for name, _ in classes])
    for name, files in classes:
        for f in files:
            raw.lines.append(None)
            raw.images.append(Path(os.path.relpath(f, root)).as_posix())
            raw.labels.append(name)
            raw.paths.append(f)  # type: ignore[union-attr]
    raw.patients = _patients_from_eye_ids(raw.images)
    return raw


# --------------------------------------------------------------------------------------------
# Row checks
# --------------------------------------------------------------------------------------------


class _RowProblems:
    """Bad rows grouped by kind, turned into one message line per kind."""

    def __init__(self, raw: _Raw):
        self.raw = raw
        self.kinds: dict[tuple[str, str], dict[int, str | None]] = {}

    def add(self, kind: tuple[str, str], row: int, note: str | None = None) -> None:
        self.kinds.setdefault(kind, {}).setdefault(row, note)

    def rows(self) -> set[int]:
        return {i for rows in self.kinds.values() for i in rows}

    def describe_row(self, i: int, note: str | None) -> str:
        line = self.raw.lines[i]
        text = f"row {line} {self.raw.images[i]!r}" if line is not None else repr(self.raw.images[i])
        return f"{text} ({note})" if note else text

    def messages(self) -> list[str]:
        out = []
        for (singular, plural), rows in self.kinds.items():
            n = len(rows)
            listed = [self.describe_row(i, rows[i]) for i in sorted(rows)[:MAX_LISTED]]
            more = ", ..." if n > MAX_LISTED else ""
            out.append(f"{self.raw.where}: {n} {singular if n == 1 else plural}: {', '.join(listed)}{more} ({n} in total).")
        return out


def _parse_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def _parse_labels(raw: _Raw, names: list[str] | None, problems: _RowProblems) -> tuple[list[int], list[str] | None, int]:
    """Labels as class indices (-1 where bad), the class names, and K for integer grades (else 0)."""
    n = len(raw.labels)
    labels = [-1] * n
    empty = ("empty label", "empty labels")
    if names is not None or raw.folder_classes is not None:
        classes = names if names is not None else raw.folder_classes
        assert classes is not None
        index = {c: k for k, c in enumerate(classes)}
        folded = {c.lower(): k for k, c in enumerate(classes)}
        shown = ", ".join(repr(c) for c in classes[:10]) + (", ..." if len(classes) > 10 else "")
        outside = (f"label outside the class set ({shown})", f"labels outside the class set ({shown})")
        for i, text in enumerate(raw.labels):
            if not text:
                problems.add(empty, i)
                continue
            k = index.get(text, folded.get(text.lower()))
            if k is None and names is not None and raw.folder_classes is None:
                j = _parse_int(text)
                k = j if j is not None and 0 <= j < len(classes) else None
            if k is None:
                problems.add(outside, i, repr(text))
            else:
                labels[i] = k
        return labels, list(classes), 0

    ints = [_parse_int(t) if t else None for t in raw.labels]
    n_int = sum(v is not None for v in ints)
    n_str = sum(1 for t, v in zip(raw.labels, ints) if t and v is None)
    if n_int == 0 and n_str == 0:
        raise DataError(f"{raw.where}: every label is empty")
    if n_int >= n_str:  # integer grades; the few non-numeric labels are mistakes
        present = {v for v in ints if v is not None and v >= 0}
        K = 0
        while K in present:  # classes 0..K-1: the run of grades from 0 (a stray "9" stays outside)
            K += 1
        if K < 2:
            found = ", ".join(str(v) for v in sorted({v for v in ints if v is not None})[:10])
            raise DataError(
                f"{raw.where}: integer labels must be class indices 0, 1, ... (found {found}); relabel them from 0, or pass the class names (--class-names)"
            )
        non_numeric = ("non-numeric label where integer grades are expected", "non-numeric labels where integer grades are expected")
        outside = (f"label outside the class set (0..{K - 1}, inferred from the labels; pass the class names to declare more)",
                   f"labels outside the class set (0..{K - 1}, inferred from the labels; pass the class names to declare more)")
        for i, (text, v) in enumerate(zip(raw.labels, ints)):
            if not text:
                problems.add(empty, i)
            elif v is None:
                problems.add(non_numeric, i, repr(text))
            elif not 0 <= v < K:
                problems.add(outside, i, repr(text))
            else:
                labels[i] = v
        return labels, None, K

    classes = sorted({t for t, v in zip(raw.labels, ints) if t and v is None})
    index = {c: k for k, c in enumerate(classes)}
    numeric = ("numeric label among class names", "numeric labels among class names")
    for i, (text, v) in enumerate(zip(raw.labels, ints)):
        if not text:
            problems.add(empty, i)
        elif v is not None:
            problems.add(numeric, i, repr(text))
        else:
            labels[i] = index[text]
    if len(classes) < 2:
        raise DataError(f"{raw.where}: only one class ({classes[0]!r}); a classifier needs at least 2")
    return labels, classes, 0


def _find_duplicates(raw: _Raw, labels: list[int], problems: _RowProblems) -> None:
    """Rows naming the same scan twice: later copies are bad; all copies when the labels differ."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, (image, p) in enumerate(zip(raw.images, raw.paths or [None] * len(raw.images))):
        groups[os.path.abspath(p) if p is not None else image].append(i)
    kind = ("duplicate image id", "duplicate image ids")
    for rows in groups.values():
        if len(rows) < 2:
            continue
        conflict = len({labels[i] if labels[i] >= 0 else raw.labels[i] for i in rows}) > 1  # "1" and "1.0" agree
        first = problems.describe_row(rows[0], None)
        for i in rows if conflict else rows[1:]:
            if i == rows[0]:
                problems.add(kind, i, "labels differ between its copies")
            else:
                problems.add(kind, i, f"same scan as {first}" + (", different label" if conflict else ""))


class _ImageIndex:
    """Finds scans by id; every folder is listed once (stem -> best file) and then looked up."""

    def __init__(self, dirs: list[str]):
        self.dirs = dirs
        self._listings: dict[str, tuple[dict[str, str], dict[str, str], dict[str, tuple[int, str]]]] = {}

    def _listing(self, folder: str):
        cached = self._listings.get(folder)
        if cached is None:
            by_name: dict[str, str] = {}
            by_lower: dict[str, str] = {}
            by_stem: dict[str, tuple[int, str]] = {}
            try:
                with os.scandir(folder) as entries:
                    for e in entries:
                        if not e.is_file():
                            continue
                        by_name[e.name] = e.path
                        by_lower.setdefault(e.name.lower(), e.path)
                        stem, ext = os.path.splitext(e.name)
                        rank = _EXT_RANK.get(ext.lower())
                        if rank is not None and (stem not in by_stem or rank < by_stem[stem][0]):
                            by_stem[stem] = (rank, e.path)
            except OSError:
                pass
            cached = self._listings[folder] = (by_name, by_lower, by_stem)
        return cached

    def find(self, image_id: str) -> str | None:
        if not image_id:
            return None
        sub, name = os.path.split(image_id.replace("\\", "/"))
        has_ext = os.path.splitext(name)[1].lower() in _EXT_RANK
        bases = [""] if os.path.isabs(image_id) else self.dirs
        for base in bases:
            by_name, by_lower, by_stem = self._listing(os.path.normpath(os.path.join(base, sub)))
            if has_ext:
                hit = by_name.get(name) or by_lower.get(name.lower())
            else:
                hit = by_stem[name][1] if name in by_stem else None
            if hit is not None:
                return hit
        return None


def _search_dirs(root: Path, images_dir: str | os.PathLike | None) -> list[str]:
    base = Path(images_dir).resolve() if images_dir is not None else root
    if images_dir is not None and not base.is_dir():
        raise DataError(f"{images_dir}: images folder not found")
    return [str(base)] + [str(base / s) for s in IMAGE_SUBDIRS if (base / s).is_dir()]


def _verify_images(paths: list[str], names: list[str], max_pixels: int) -> list[str | None]:
    """Decode every scan (threads: Pillow releases the GIL); None where fine, else the reason."""

    def one(args: tuple[str, str]) -> str | None:
        path, name = args
        try:
            open_image(path, max_pixels=max_pixels, name=name)
        except ImageError as exc:
            msg = str(exc)
            return msg[len(name) + 2:] if msg.startswith(f"{name}: ") else msg
        except Exception as exc:  # noqa: BLE001 - any decoder failure makes the scan unusable
            return f"{type(exc).__name__}: {exc}"
        return None

    if not paths:
        return []
    with ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 4) + 4)) as pool:
        return list(pool.map(one, zip(paths, names)))


# --------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------


def _units(table: pd.DataFrame) -> np.ndarray:
    """Grouping key per row: the patient when known, else the row's own image."""
    return np.array([f"p:{p}" if p is not None else f"i:{i}" for i, p in zip(table["image"], table["patient"])], dtype=object)


def _allocate(strata: np.ndarray, parts: list[tuple[str, float]], rng: np.random.Generator) -> np.ndarray:
    """Stratified assignment of units to ``parts`` (name, fraction); the rest go to train.

    Per stratum, each part gets round(fraction * n) units but at least one, while at least one
    unit stays in train (fewer when the stratum is too small: train first, then val, then test).
    """
    out = np.full(len(strata), "train", dtype=object)
    for c in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == c))
        n = len(members)
        ks = [max(1, int(math.floor(f * n + 0.5))) for _, f in parts]
        while sum(ks) > n - 1 and any(ks):
            ks[max(range(len(ks)), key=lambda j: (ks[j], -j))] -= 1  # largest part; ties: the first (test)
        pos = 0
        for (name, _), k in zip(parts, ks):
            out[members[pos:pos + k]] = name
            pos += k
    return out


def _assign_by_unit(table: pd.DataFrame, rows: np.ndarray, parts: list[tuple[str, float]], seed: int) -> None:
    """Split ``rows`` of ``table`` in place, by patient, stratified by each patient's highest grade."""
    units = _units(table)[rows]
    labels = table["label"].to_numpy()[rows]
    keys = sorted(set(units))  # sorted: the split does not depend on the CSV's row order
    pos = {k: j for j, k in enumerate(keys)}
    unit_of_row = np.array([pos[u] for u in units], dtype=np.int64)
    strata = np.full(len(keys), -1, dtype=np.int64)
    np.maximum.at(strata, unit_of_row, labels)
    assigned = _allocate(strata, parts, np.random.default_rng(seed))
    col = table["split"].to_numpy(dtype=object).copy()
    col[rows] = assigned[unit_of_row]
    table["split"] = col


def _class_label(names: list[str], k: int) -> str:
    return f"class {names[k]!r} ({k})"


def _split(table: pd.DataFrame, names: list[str], *, has_split_col: bool, seed: int, fractions: dict[str, float],
           skip_bad: bool, where: str, split_col: str) -> tuple[pd.DataFrame, list[str], list[str], int]:
    """Give every row a split; drop (skip_bad) or refuse classes that cannot be trained and judged."""
    problems: list[str] = []
    skipped = 0
    table = table.copy()
    if not has_split_col:
        table["split"] = "train"

    def drop_classes(bad: dict[int, str]) -> None:
        nonlocal table, names, skipped
        if not skip_bad:
            raise DataError("\n".join(bad.values()))
        problems.extend(bad.values())
        n_before = len(table)
        table = table[~table["label"].isin(list(bad))].copy()
        skipped += n_before - len(table)
        kept = [k for k in range(len(names)) if k not in bad]
        remap = np.full(len(names), -1, dtype=np.int64)
        remap[kept] = np.arange(len(kept))
        table["label"] = remap[table["label"].to_numpy()]
        log.warning("%s: left out %d class%s: %s", where, len(bad), "" if len(bad) == 1 else "es", ", ".join(names[k] for k in bad))
        names = [names[k] for k in kept]
        if len(names) < 2:
            raise DataError("\n".join(problems) + f"\n{where}: fewer than 2 classes left; a classifier needs at least 2")

    def drop_untrained() -> None:
        train_counts = np.bincount(table.loc[table["split"] == "train", "label"].to_numpy(), minlength=len(names))
        all_counts = np.bincount(table["label"].to_numpy(), minlength=len(names))
        untrained = {
            k: f"{where}: {_class_label(names, k)} has no training example: its {all_counts[k]} image{'s are' if all_counts[k] != 1 else ' is'} "
               f"all in val/test. Move some to train, or use --skip-bad to leave the class out."
            for k in np.flatnonzero(train_counts == 0)
        }
        if untrained:
            drop_classes(untrained)

    counts = np.bincount(table["label"].to_numpy(), minlength=len(names))
    empty = {k: f"{where}: {_class_label(names, k)} has no images, so no training example. Add images of this class, "
                f"leave it out of the class names, or use --skip-bad to leave it out." for k in np.flatnonzero(counts == 0)}
    if empty:
        drop_classes(empty)

    grouped = table["patient"].notna().any()
    if not has_split_col:
        # Every class needs one unit (patient or image) in each of train, val and test.
        units = _units(table)
        too_few = {}
        for k in range(len(names)):
            mask = table["label"].to_numpy() == k
            n_units = len(set(units[mask]))
            if n_units < 3:
                n_img = int(mask.sum())
                who = f"{n_img} image{'s' if n_img != 1 else ''}" + (f" from {n_units} patient{'s' if n_units != 1 else ''}" if grouped else "")
                too_few[k] = (
                    f"{where}: {_class_label(names, k)} has {who}, too few for a train/val/test split: each split needs "
                    f"at least one {'patient' if grouped else 'image'} of every class, so 3 in all. Add images of this class, "
                    f"merge it with a neighbouring class, give a '{split_col}' column, or use --skip-bad to leave the class out."
                )
        if too_few:
            drop_classes(too_few)
        _assign_by_unit(table, np.arange(len(table)), [("test", fractions["test"]), ("val", fractions["val"])], seed)
    else:
        present = set(table["split"])
        if "train" not in present:
            raise DataError(f"{where}: no row has split 'train' in the '{split_col}' column; the training split would be empty")
        drop_untrained()  # before carving: a dropped class may take the whole val or test split with it
        missing = [s for s in ("test", "val") if s not in set(table["split"])]
        if missing:
            train_rows = np.flatnonzero(table["split"].to_numpy() == "train")
            # Carve the same share of the whole collection as an automatic split would.
            parts = [(s, min(0.45, fractions[s] * len(table) / len(train_rows))) for s in missing]
            log.info("%s: no %s rows in the '%s' column; carving them, stratified, out of train", where, " or ".join(missing), split_col)
            _assign_by_unit(table, train_rows, parts, seed)
        if grouped:
            per_patient = table.dropna(subset=["patient"]).groupby("patient")["split"].nunique()
            crossing = int((per_patient > 1).sum())
            if crossing:
                log.warning("%s: %d patients have scans in more than one split of the '%s' column (leakage between splits)", where, crossing, split_col)

    drop_untrained()  # grouped splits: a class seen only beside rarer grades may miss train
    for s in ("val", "test"):
        if not (table["split"] == s).any():
            raise DataError(f"{where}: the {s} split is empty")
    return table, names, problems, skipped
