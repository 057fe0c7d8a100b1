"""Pure table helpers of the dashboard (pandas only; no Streamlit, no metric arithmetic).

They join what runs wrote (``predictions.csv``, ``split.csv``, ``config.json``) so a page can
show the scans behind a number.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from models.grade import referable_probability


def prob_columns(predictions: pd.DataFrame) -> list[str]:
    """The ``p0..p{C-1}`` columns of a predictions table, in class order."""
    cols = [c for c in predictions.columns if c.startswith("p") and c[1:].isdigit()]
    return sorted(cols, key=lambda c: int(c[1:]))


def probs_of(predictions: pd.DataFrame) -> np.ndarray:
    """The [N, C] probability matrix of a predictions table."""
    return predictions[prob_columns(predictions)].to_numpy(dtype=float)


def referable_scores(probs: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """P(grade >= 2) per row, through :func:`models.grade.referable_probability`."""
    return np.array([referable_probability(p, class_names) for p in probs], dtype=float)


def with_paths(frame: pd.DataFrame, split: pd.DataFrame | None) -> pd.DataFrame:
    """``frame`` with a ``path`` column joined from a run's ``split.csv`` on ``image``."""
    out = frame.copy()
    if split is None or "path" not in split.columns:
        out["path"] = None
        return out
    lookup = split.drop_duplicates("image").set_index("image")["path"]
    out["path"] = out["image"].map(lookup)
    return out


def cell_scans(predictions: pd.DataFrame, true: int, pred: int, split: pd.DataFrame | None = None) -> pd.DataFrame:
    """Test scans in one confusion-matrix cell (true class ``true``, predicted ``pred``).

    Examples
    --------
    >>> p = pd.DataFrame({"image": ["a", "b"], "true": [1, 1], "pred": [0, 1], "p0": [.6, .2], "p1": [.4, .8]})
    >>> cell_scans(p, 1, 0)["image"].tolist()
    ['a']
    """
    rows = predictions[(predictions["true"] == true) & (predictions["pred"] == pred)]
    return with_paths(rows, split).reset_index(drop=True)


def most_confused_cell(matrix: Sequence[Sequence[int]]) -> tuple[int, int]:
    """The off-diagonal cell with the most scans (``(0, 0)`` when there is none).

    Examples
    --------
    >>> most_confused_cell([[5, 1], [3, 2]])
    (1, 0)
    """
    m = np.asarray(matrix, dtype=float).copy()
    if m.ndim != 2 or m.size == 0:
        return 0, 0
    np.fill_diagonal(m, -1)
    if m.max() <= 0:
        return 0, 0
    t, p = np.unravel_index(int(np.argmax(m)), m.shape)
    return int(t), int(p)


def disagreements(predictions: Mapping[str, pd.DataFrame], split: pd.DataFrame | None = None) -> pd.DataFrame:
    """Test scans on which the given variants predict different grades.

    Columns: ``image, true``, one prediction column per variant, ``path``. Only images
    present in every variant's predictions are compared.

    Examples
    --------
    >>> a = pd.DataFrame({"image": ["x", "y"], "true": [0, 1], "pred": [0, 1]})
    >>> b = pd.DataFrame({"image": ["x", "y"], "true": [0, 1], "pred": [0, 0]})
    >>> disagreements({"a": a, "b": b})[["image", "a", "b"]].values.tolist()
    [['y', 1, 0]]
    """
    names = list(predictions)
    if not names:
        return pd.DataFrame(columns=["image", "true", "path"])
    merged = predictions[names[0]][["image", "true", "pred"]].rename(columns={"pred": names[0]})
    for name in names[1:]:
        merged = merged.merge(predictions[name][["image", "pred"]].rename(columns={"pred": name}), on="image", how="inner")
    differ = merged[names].nunique(axis=1) > 1 if len(names) > 1 else pd.Series(False, index=merged.index)
    return with_paths(merged[differ], split).reset_index(drop=True)


def sample_per_class(table: pd.DataFrame, n: int = 6, seed: int = 0) -> dict[int, pd.DataFrame]:
    """Up to ``n`` random rows per label of a collection table (same seed, same gallery)."""
    out = {}
    for label, group in table.groupby("label", sort=True):
        out[int(label)] = group.sample(n=min(n, len(group)), random_state=seed)
    return out


def _same_folder(a: Any, b: Any) -> bool:
    try:
        return Path(str(a)).expanduser().resolve() == Path(str(b)).expanduser().resolve()
    except (OSError, RuntimeError):
        return False


def runs_on_data(runs: Sequence[Any], data_path: str | os.PathLike, data_hash: str | None = None) -> list[Any]:
    """The runs trained on this collection: same ``config["data"]`` folder or same data hash."""
    out = []
    for run in runs:
        cfg = run.config or {}
        if (data_hash and cfg.get("data_hash") == data_hash) or (cfg.get("data") and _same_folder(cfg["data"], data_path)):
            out.append(run)
    return out


def flat_items(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """A nested dict as ``(dotted key, value)`` rows, for a key/value table.

    Examples
    --------
    >>> flat_items({"a": {"b": 1}, "c": [1, 2]})
    [('a.b', '1'), ('c', '[1, 2]')]
    """
    rows: list[tuple[str, str]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            rows.extend(flat_items(v, key + "."))
        else:
            rows.append((key, "" if v is None else str(v)))
    return rows


def ordinal_costs(class_names: Sequence[str]) -> pd.DataFrame:
    """The default cost matrix of an ordinal scale: ``|true - predicted|`` (zero diagonal).

    Examples
    --------
    >>> ordinal_costs(["a", "b", "c"]).to_numpy().tolist()
    [[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]]
    """
    k = np.arange(len(class_names))
    return pd.DataFrame(np.abs(np.subtract.outer(k, k)).astype(float), index=list(class_names), columns=list(class_names))
