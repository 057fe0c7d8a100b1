"""The run registry: find, validate and compare trained variants under ``RUNS_DIR``.

A run is a directory ``RUNS_DIR/<name>/`` written by ``python -m training`` (and completed
by ``python -m export``), see DESIGN.md "The run directory". The dashboard and the zoo list
many of them, some half-written or damaged; so listing never raises for a bad run: it comes
back with ``ok=False`` and a readable ``problem``, and the pages show it instead of crashing.

Torch-free: reads JSON/CSV only (``model.pt`` is checked for presence, never unpickled).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from models.metrics import metric_is_better, selection_score

#: Environment variable that moves the runs root (default ``runs`` relative to the cwd).
RUNS_DIR_ENV = "RUNS_DIR"
DEFAULT_RUNS_DIR = "runs"

#: Files that make a directory a run (any one of them is enough to be listed).
RUN_FILES = (
    "config.json",
    "model.pt",
    "history.csv",
    "metrics.json",
    "predictions.csv",
    "split.csv",
    "model.onnx",
)

#: Scalar metrics every finished run's ``metrics.json`` holds.
REQUIRED_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "qwk",
    "gmean",
    "ece",
    "mae_macro",
)

#: Keys of ``config["strategy"]`` shown in the comparison table.
STRATEGY_PARTS = ("loss", "sampler", "stage2", "posthoc")

_BYTES_PER_MB = 1_000_000


def runs_dir() -> Path:
    """The runs root: ``$RUNS_DIR`` if set, else ``runs`` (relative to the cwd).

    Examples
    --------
    >>> isinstance(runs_dir(), Path)
    True
    """
    return Path(os.environ.get(RUNS_DIR_ENV) or DEFAULT_RUNS_DIR)


# --------------------------------------------------------------------------- reading files


class _Unreadable(Exception):
    """A run file that exists but cannot be used; the message is the ``problem`` text."""


def _read_json_object(path: Path) -> dict:
    """Parse ``path`` as a JSON object; raise :class:`_Unreadable` with a readable reason."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _Unreadable(f"{path.name}: cannot read ({exc})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Unreadable(
            f"{path.name}: invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg})"
        ) from None
    if not isinstance(value, dict):
        raise _Unreadable(f"{path.name}: expected a JSON object, got {type(value).__name__}")
    return value


def _optional_json(path: Path) -> dict | None:
    """An optional side file (bench.json, metrics.int8.json): ``None`` if absent or unreadable."""
    if not path.is_file():
        return None
    try:
        return _read_json_object(path)
    except _Unreadable:
        return None


def _prediction_columns(n_classes: int) -> list[str]:
    return ["image", "true", "pred"] + [f"p{k}" for k in range(n_classes)]


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{path}: not a readable CSV ({exc})") from None


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    """One run directory, loaded and checked.

    Parameters
    ----------
    name : str
        Directory name.
    path : pathlib.Path
    config : dict
        ``config.json`` (empty when missing or unreadable).
    metrics : dict
        ``metrics.json`` (empty when missing or unreadable).
    ok : bool
        Whether the run is complete and consistent (see :func:`load_run`).
    problem : str or None
        Why ``ok`` is False, readable by a person; several problems are joined by ``"; "``.
    onnx_path, int8_path : pathlib.Path or None
        ``model.onnx`` / ``model.int8.onnx`` when exported.

    Examples
    --------
    >>> run = Run(name="r", path=Path("runs/r"), config={"strategy": {"name": "focal"}})
    >>> run.strategy, run.ok
    ('focal', False)
    """

    name: str
    path: Path
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    ok: bool = False
    problem: str | None = None
    onnx_path: Path | None = None
    int8_path: Path | None = None
    # Lazily read tables (predictions.csv can hold tens of thousands of rows).
    _predictions: pd.DataFrame | None = field(default=None, init=False, repr=False, compare=False)
    _history: pd.DataFrame | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def strategy(self) -> str | None:
        """``config["strategy"]["name"]`` (or ``config["strategy"]`` when it is a string)."""
        strategy = self.config.get("strategy")
        if isinstance(strategy, dict):
            name = strategy.get("name")
            return None if name is None else str(name)
        return strategy if isinstance(strategy, str) else None

    @property
    def class_names(self) -> list[str]:
        """Class names from ``metrics.json``, else ``config.json``, else ``[]``."""
        for source in (self.metrics, self.config):
            names = source.get("class_names")
            if isinstance(names, list) and names:
                return [str(n) for n in names]
        return []

    @property
    def model_path(self) -> Path | None:
        """The model file to size or serve: ``model.onnx`` when exported, else ``model.pt``."""
        if self.onnx_path is not None:
            return self.onnx_path
        pt = self.path / "model.pt"
        return pt if pt.is_file() else None

    def predictions(self) -> pd.DataFrame:
        """``predictions.csv`` (``image,true,pred,p0..p{C-1}``), read once and cached.

        Raises
        ------
        FileNotFoundError
            If the run has no ``predictions.csv``.
        ValueError
            If it is unreadable or its columns are not the expected ones.
        """
        if self._predictions is None:
            path = self.path / "predictions.csv"
            if not path.is_file():
                raise FileNotFoundError(f"run {self.name!r} has no predictions.csv ({path})")
            frame = _read_csv(path)
            problem = _prediction_columns_problem(list(frame.columns), len(self.class_names))
            if problem:
                raise ValueError(f"run {self.name!r}: {problem}")
            self._predictions = frame
        return self._predictions

    def history(self) -> pd.DataFrame:
        """``history.csv`` (one row per epoch: ``epoch,train_loss,val_loss,...``), cached.

        Raises
        ------
        FileNotFoundError
            If the run has no ``history.csv``.
        ValueError
            If it is unreadable or lacks an ``epoch`` column.
        """
        if self._history is None:
            path = self.path / "history.csv"
            if not path.is_file():
                raise FileNotFoundError(f"run {self.name!r} has no history.csv ({path})")
            frame = _read_csv(path)
            if "epoch" not in frame.columns:
                raise ValueError(
                    f"run {self.name!r}: history.csv has no 'epoch' column "
                    f"(columns: {', '.join(map(str, frame.columns))})"
                )
            self._history = frame
        return self._history


def _prediction_columns_problem(columns: list[str], n_classes: int) -> str | None:
    """Describe how ``columns`` differ from ``image,true,pred,p0..``, or ``None`` if they match."""
    if n_classes:
        expected = _prediction_columns(n_classes)
        if columns == expected:
            return None
        return (
            f"predictions.csv: expected columns {','.join(expected)}, "
            f"got {','.join(map(str, columns))}"
        )
    # Class count unknown (no class_names): check the fixed part and the p-columns' shape.
    n_p = len(columns) - 3
    if n_p >= 2 and columns == _prediction_columns(n_p):
        return None
    return (
        f"predictions.csv: expected columns image,true,pred,p0,...,p{{C-1}}, "
        f"got {','.join(map(str, columns))}"
    )


def load_run(path: str | os.PathLike) -> Run:
    """Load and check one run directory; a damaged run comes back with ``ok=False``.

    A run is ``ok`` when ``config.json`` and ``metrics.json`` parse as JSON objects,
    ``metrics.json`` holds the scalar metrics and ``class_names``, a model exists
    (``model.pt`` or ``model.onnx``) and ``predictions.csv`` has the columns
    ``image,true,pred,p0..p{C-1}``. Otherwise ``problem`` says what is wrong, e.g.
    ``"missing metrics.json (training did not finish?)"`` or
    ``"metrics.json: invalid JSON at line 1 column 5 (...)"``.

    Parameters
    ----------
    path : str or os.PathLike
        The run directory.

    Returns
    -------
    Run

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    NotADirectoryError
        If ``path`` is not a directory.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()) / "r1"
    >>> d.mkdir()
    >>> _ = (d / "config.json").write_text("{}")
    >>> run = load_run(d)
    >>> run.ok, run.problem.split("; ")[0]
    (False, 'missing metrics.json (training did not finish?)')
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"run directory not found: {path}")
    if not path.is_dir():
        raise NotADirectoryError(f"not a run directory (it is a file): {path}")

    problems: list[str] = []
    parsed: set[str] = set()
    run = Run(name=path.name, path=path)
    if not any((path / f).is_file() for f in RUN_FILES):
        run.problem = f"not a run directory: none of {', '.join(RUN_FILES)} found"
        return run

    for filename, attr, missing in (
        ("config.json", "config", "missing config.json"),
        ("metrics.json", "metrics", "missing metrics.json (training did not finish?)"),
    ):
        file = path / filename
        if not file.is_file():
            problems.append(missing)
            continue
        try:
            setattr(run, attr, _read_json_object(file))
            parsed.add(filename)
        except _Unreadable as exc:
            problems.append(str(exc))

    if "metrics.json" in parsed:
        absent = [k for k in REQUIRED_METRICS if not _is_number(run.metrics.get(k))]
        if absent:
            problems.append(f"metrics.json: missing or non-numeric {', '.join(absent)}")
        if not run.metrics.get("class_names"):
            problems.append("metrics.json: missing class_names")

    onnx, int8 = path / "model.onnx", path / "model.int8.onnx"
    run.onnx_path = onnx if onnx.is_file() else None
    run.int8_path = int8 if int8.is_file() else None
    if run.onnx_path is None and not (path / "model.pt").is_file():
        problems.append("missing model (neither model.pt nor model.onnx)")

    preds = path / "predictions.csv"
    if not preds.is_file():
        problems.append("missing predictions.csv")
    else:
        try:
            header = list(pd.read_csv(preds, nrows=0).columns)
        except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError):
            problems.append("predictions.csv: not a readable CSV")
        else:
            problem = _prediction_columns_problem(header, len(run.class_names))
            if problem:
                problems.append(problem)

    run.ok = not problems
    run.problem = "; ".join(problems) or None
    return run


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def list_runs(root: str | os.PathLike | None = None) -> list[Run]:
    """Every run under ``root`` (default :func:`runs_dir`), sorted by name.

    A sub-directory is a run when it holds at least one of :data:`RUN_FILES`. Names starting
    with ``.`` or ending with ``.tmp`` (a training still writing) are skipped. Damaged runs
    are returned with ``ok=False`` (see :func:`load_run`); a missing ``root`` gives ``[]``.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ("b", "a", "c.tmp", ".hidden", "empty"):
    ...     (root / name).mkdir()
    ...     if name != "empty":
    ...         _ = (root / name / "config.json").write_text("{}")
    >>> [run.name for run in list_runs(root)]
    ['a', 'b']
    """
    root = runs_dir() if root is None else Path(root)
    if not root.is_dir():
        return []
    runs = []
    for sub in sorted(root.iterdir(), key=lambda p: p.name):
        if sub.name.startswith(".") or sub.name.endswith(".tmp") or not sub.is_dir():
            continue
        if not any((sub / f).is_file() for f in RUN_FILES):
            continue
        try:
            runs.append(load_run(sub))
        except OSError as exc:  # vanished or unreadable between listing and loading
            runs.append(Run(name=sub.name, path=sub, problem=f"cannot read run: {exc}"))
    return runs


def best_run(runs: Iterable[Run], metric: str = "macro_f1") -> Run | None:
    """The ok run with the best ``metric`` (direction from :func:`models.metrics.metric_is_better`).

    Ties keep the first run in the given order. Runs lacking the metric are skipped;
    ``None`` when no ok run has it.

    Raises
    ------
    ValueError
        If ``metric`` is not one of :data:`models.metrics.SELECTION_METRICS`.

    Examples
    --------
    >>> a = Run("a", Path("a"), metrics={"ece": 0.1}, ok=True)
    >>> b = Run("b", Path("b"), metrics={"ece": 0.05}, ok=True)
    >>> best_run([a, b], "ece").name
    'b'
    """
    best, best_value = None, None
    metric_is_better(metric, 0.0, None)  # validates the name even when there are no runs
    for run in runs:
        if not run.ok:
            continue
        try:
            value = selection_score(run.metrics, metric)
        except ValueError:
            continue
        if metric_is_better(metric, value, best_value):
            best, best_value = run, value
    return best


# --------------------------------------------------------------------------- comparison


def _referable(run: Run, key: str) -> float | None:
    referable = run.metrics.get("referable")
    value = referable.get(key) if isinstance(referable, dict) else None
    return float(value) if _is_number(value) else None


def _int8_macro_f1_delta(run: Run) -> float | None:
    int8 = _optional_json(run.path / "metrics.int8.json")
    new, old = (int8 or {}).get("macro_f1"), run.metrics.get("macro_f1")
    return float(new) - float(old) if _is_number(new) and _is_number(old) else None


def _latency_ms(run: Run) -> float | None:
    bench = _optional_json(run.path / "bench.json")
    fp32 = (bench or {}).get("ort_fp32")
    value = fp32.get("b1_ms") if isinstance(fp32, dict) else None
    return float(value) if _is_number(value) else None


def comparison_table(runs: Iterable[Run]) -> pd.DataFrame:
    """One row per ok run, for the dashboard's comparison page and the zoo's summary.

    Columns: ``name, strategy, loss, sampler, stage2, posthoc`` (from ``config["strategy"]``),
    the scalar metrics ``accuracy, balanced_accuracy, macro_f1, qwk, gmean, ece, mae_macro``,
    ``recall_<class name>`` per class (union over runs, in order of first appearance),
    ``referable_sensitivity, referable_specificity, referable_auc``, ``model_size_mb``
    (``model.onnx`` when exported else ``model.pt``; 1 MB = 10**6 bytes),
    ``int8_macro_f1_delta`` (``metrics.int8.json`` minus ``metrics.json`` macro F1) and
    ``latency_ms`` (``bench.json["ort_fp32"]["b1_ms"]``). Values that do not apply are
    ``None``/NaN.

    Examples
    --------
    >>> run = Run("r", Path("r"), config={"strategy": {"name": "ce", "loss": "ce"}},
    ...           metrics={"macro_f1": 0.5, "class_names": ["a"],
    ...                    "per_class": {"a": {"recall": 1.0}}}, ok=True)
    >>> table = comparison_table([run])
    >>> print(table[["name", "strategy", "loss", "macro_f1", "recall_a"]].to_string(index=False))
    name strategy loss  macro_f1  recall_a
       r       ce   ce       0.5       1.0
    """
    rows: list[dict[str, Any]] = []
    recall_columns: list[str] = []
    for run in runs:
        if not run.ok:
            continue
        strategy = run.config.get("strategy")
        parts = strategy if isinstance(strategy, dict) else {}
        row: dict[str, Any] = {"name": run.name, "strategy": run.strategy}
        row.update({part: parts.get(part) for part in STRATEGY_PARTS})
        row.update(
            {k: float(run.metrics[k]) if _is_number(run.metrics.get(k)) else None
             for k in REQUIRED_METRICS}
        )
        per_class = run.metrics.get("per_class") or {}
        for name in run.class_names:
            column = f"recall_{name}"
            if column not in recall_columns:
                recall_columns.append(column)
            recall = (per_class.get(name) or {}).get("recall")
            row[column] = float(recall) if _is_number(recall) else None
        for key in ("sensitivity", "specificity", "auc"):
            row[f"referable_{key}"] = _referable(run, key)
        model = run.model_path
        row["model_size_mb"] = model.stat().st_size / _BYTES_PER_MB if model else None
        row["int8_macro_f1_delta"] = _int8_macro_f1_delta(run)
        row["latency_ms"] = _latency_ms(run)
        rows.append(row)

    columns = (
        ["name", "strategy", *STRATEGY_PARTS, *REQUIRED_METRICS, *recall_columns]
        + ["referable_sensitivity", "referable_specificity", "referable_auc"]
        + ["model_size_mb", "int8_macro_f1_delta", "latency_ms"]
    )
    return pd.DataFrame(rows, columns=columns)
