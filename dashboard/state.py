"""Cached loaders shared by the pages.

- ``st.cache_resource`` holds ONNX Runtime graders: one per *model id* (resolved path,
  modification time, size, precision), shared by every user and thread (``Grader`` is
  thread-safe). Re-exporting a run changes its mtime and so loads the new file.
- ``st.cache_data`` holds tables (runs, predictions, histories, collections, thumbnails),
  keyed on the files' modification times so a finished training shows up on the next rerun.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from dashboard import grading
from dashboard.settings import runs_root
from models.data import Collection, load_collection
from models.grade import Grader, ScanResult
from models.preprocess import ImageError, open_image
from models.registry import Run, list_runs

RUN_FILE_NAMES = ("config.json", "metrics.json", "predictions.csv", "history.csv", "split.csv", "model.onnx",
                  "model.int8.onnx", "metrics.int8.json", "bench.json", "export_report.json", "model.pt")


def _mtime(path: str | os.PathLike) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def runs_signature(root: Path) -> tuple:
    """Names and file mtimes of every run folder under ``root`` (cheap: a few stats per run)."""
    if not root.is_dir():
        return ()
    sig = []
    for sub in sorted(root.iterdir()):
        if sub.is_dir():
            sig.append((sub.name, tuple(_mtime(sub / f) for f in RUN_FILE_NAMES)))
    return tuple(sig)


@st.cache_data(show_spinner=False, max_entries=8)
def _list_runs(root: str, signature: tuple) -> list[Run]:
    return list_runs(root)


def load_runs() -> tuple[Path, list[Run]]:
    """``(runs root, every run under it)``; damaged runs come back with ``ok=False``."""
    root = runs_root()
    return root, _list_runs(str(root), runs_signature(root))


def exported(runs: Sequence[Run]) -> list[Run]:
    """The complete runs that have a ``model.onnx`` (gradable in the dashboard)."""
    return [r for r in runs if r.ok and r.onnx_path is not None]


@st.cache_data(show_spinner=False, max_entries=64)
def _predictions(path: str, stamp: tuple, _metrics: dict) -> pd.DataFrame:
    return Run(name=Path(path).name, path=Path(path), metrics=_metrics).predictions()


def predictions(run: Run) -> pd.DataFrame:
    """``predictions.csv`` of a run (cached on its mtime)."""
    stamp = (_mtime(run.path / "predictions.csv"), _mtime(run.path / "metrics.json"))
    return _predictions(str(run.path), stamp, run.metrics)


@st.cache_data(show_spinner=False, max_entries=64)
def _history(path: str, stamp: int) -> pd.DataFrame:
    return Run(name=Path(path).name, path=Path(path)).history()


def history(run: Run) -> pd.DataFrame:
    return _history(str(run.path), _mtime(run.path / "history.csv"))


@st.cache_data(show_spinner=False, max_entries=64)
def _csv(path: str, stamp: int) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError):
        return None


def split_table(run: Run) -> pd.DataFrame | None:
    """``split.csv`` (``image,split,path``) of a run, or None when missing/unreadable."""
    path = run.path / "split.csv"
    return _csv(str(path), _mtime(path)) if path.is_file() else None


def read_json(path: Path) -> dict | None:
    """A JSON object file, or None when missing or unreadable (optional run files)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


# --------------------------------------------------------------------------- graders


def model_id(run: Run, precision: str = "fp32") -> str:
    """The cache key of a run's model file: path, mtime, size and precision."""
    path = run.int8_path if precision == "int8" and run.int8_path is not None else run.onnx_path
    try:
        st_ = os.stat(path)
        return f"{Path(path).resolve()}|{st_.st_mtime_ns}|{st_.st_size}|{precision}"
    except (OSError, TypeError):
        return f"{path}|missing|{precision}"


@st.cache_resource(show_spinner="Loading the model ...", max_entries=16)
def _grader(model_key: str, run_dir: str, precision: str) -> Grader:
    return Grader.from_path(run_dir, precision=precision)


def grader(run: Run, precision: str = "fp32") -> Grader:
    """A cached :class:`Grader` for a run (``precision="int8"`` when the run has one)."""
    precision = "int8" if precision == "int8" and run.int8_path is not None else "fp32"
    return _grader(model_id(run, precision), str(run.path), precision)


@st.cache_data(show_spinner=False, max_entries=32)
def _graded(model_key: str, upload_keys: tuple[str, ...], run_dir: str, precision: str, _uploads: tuple[grading.Upload, ...]) -> list[ScanResult]:
    return grading.grade_uploads(_grader(model_key, run_dir, precision), list(_uploads))


def graded(run: Run, precision: str, uploads: Sequence[grading.Upload]) -> list[ScanResult]:
    """Grade uploads with a run's model; cached on (model id, upload ids) so moving a slider
    does not grade again."""
    precision = "int8" if precision == "int8" and run.int8_path is not None else "fp32"
    return _graded(model_id(run, precision), tuple(u.key for u in uploads), str(run.path), precision, tuple(uploads))


@st.cache_data(show_spinner=False, max_entries=256)
def _inspect(key: str, _upload: grading.Upload) -> grading.ScanView:
    return grading.inspect_upload(_upload)


def inspect(upload: grading.Upload) -> grading.ScanView:
    return _inspect(upload.key, upload)


# --------------------------------------------------------------------------- data


@st.cache_data(show_spinner="Reading the collection ...", max_entries=4)
def _collection(path: str, stamp: tuple) -> Collection:
    # verify_images=False: decoding every scan takes minutes on EyePACS; bad rows found
    # otherwise (missing files, bad labels) are skipped and listed in ``problems``.
    return load_collection(path, skip_bad=True, verify_images=False)


def collection(path: str) -> Collection:
    p = Path(path)
    stamp = (_mtime(p), *(_mtime(p / n) for n in ("labels.csv", "trainLabels.csv", "train.csv")))
    return _collection(str(p), stamp)


@st.cache_data(show_spinner=False, max_entries=512)
def thumbnail(path: str, size: int = 160) -> np.ndarray | None:
    """A small RGB copy of a scan file, or None when it cannot be read."""
    try:
        img = open_image(path, draft=size)
    except ImageError:
        return None
    img.thumbnail((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img)


@st.cache_data(show_spinner=False, max_entries=64)
def decoded(path_or_key: str, _source: Any = None) -> Image.Image:
    """A full decoded scan (file path, or uploaded bytes passed as ``_source``)."""
    return open_image(path_or_key if _source is None else _source, name=path_or_key)
