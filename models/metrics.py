"""Imbalance-aware metrics for DR grading, shared by training, export and the dashboard.

Accuracy hides what matters on imbalanced DR data (EyePACS is ~73 % grade 0, ~2 % grade 4):
a model that never predicts a rare grade still scores well. So every run is judged by
class-balanced numbers (balanced accuracy, macro F1, the geometric mean of recalls, the
macro-averaged MAE of Baccianella et al. 2009), by the quadratic weighted kappa used by the
Kaggle DR challenges (grades are ordinal), by calibration (top-label ECE, Guo et al. 2017) and,
on the 5-grade scale, by the clinically used *referable DR* operating point (grade >= 2).

The arithmetic is scikit-learn's and imbalanced-learn's; this module only validates inputs,
handles degenerate cases (absent classes, a single class) without warnings or NaN, and returns
plain JSON-serialisable Python values (``metrics.json`` is written straight from
:func:`compute_metrics`).
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from typing import Any, Sequence

import numpy as np
from imblearn.metrics import geometric_mean_score, specificity_score
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    mean_absolute_error,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from models.grades import DR_GRADE_NAMES, REFERABLE_GRADE, referable_score  # noqa: F401 (re-exported)


#: Tolerance on probability rows summing to one (float16 / int8 models round a little).
_PROB_SUM_ATOL = 1e-2

#: Scalar metrics valid for checkpoint / run selection, and their direction.
HIGHER_IS_BETTER = {
    "accuracy": True,
    "balanced_accuracy": True,
    "macro_f1": True,
    "qwk": True,
    "gmean": True,
    "ece": False,  # a calibration error: lower is better
    "mae_macro": False,  # an ordinal distance: lower is better
}
SELECTION_METRICS = tuple(HIGHER_IS_BETTER)


# --------------------------------------------------------------------------- validation


def _as_probs(probs: Any) -> np.ndarray:
    """Return ``probs`` as a float [N, C] array after checking it is a probability matrix."""
    arr = np.asarray(probs, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"probs must be 2-D [N, C], got shape {arr.shape}")
    n, c = arr.shape
    if n == 0:
        raise ValueError("probs holds no samples (N = 0); metrics need at least one")
    if c < 2:
        raise ValueError(f"probs must have at least 2 classes (columns), got {c}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("probs contains NaN or inf")
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError(
            f"probs must lie in [0, 1], got values in [{arr.min():g}, {arr.max():g}]; "
            "pass softmax probabilities, not logits"
        )
    sums = arr.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > _PROB_SUM_ATOL)
    if bad.size:
        raise ValueError(
            f"probs rows must sum to 1, got row {int(bad[0])} summing to {sums[bad[0]]:g}; "
            "pass softmax probabilities, not logits"
        )
    return arr


def _as_labels(labels: Any, n: int, n_classes: int, what: str) -> np.ndarray:
    """Return ``labels`` as an int array of length ``n`` with values in ``range(n_classes)``."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{what} has {arr.shape[0]} labels but probs has {n} rows")
    if arr.dtype.kind not in "iub":
        if arr.dtype.kind != "f" or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(
                f"{what} must hold integer class indices, got dtype {arr.dtype} "
                f"(first values {arr[:3].tolist()})"
            )
    arr = arr.astype(int)
    outside = np.unique(arr[(arr < 0) | (arr >= n_classes)])
    if outside.size:
        raise ValueError(
            f"{what} holds labels {outside.tolist()} outside range({n_classes}); "
            f"valid labels are 0..{n_classes - 1}"
        )
    return arr


def _check_inputs(y_true: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _as_probs(probs)
    return _as_labels(y_true, p.shape[0], p.shape[1], "y_true"), p


# --------------------------------------------------------------------------- binary pieces


def _sens_spec(y_bin: np.ndarray, pred_bin: np.ndarray) -> tuple[float, float, list[int]]:
    """Sensitivity, specificity (0 when undefined) and ``[tn, fp, fn, tp]``."""
    tn, fp, fn, tp = confusion_matrix(y_bin, pred_bin, labels=[False, True]).ravel()
    sens = tp / (tp + fn) if tp + fn else 0.0
    spec = tn / (tn + fp) if tn + fp else 0.0
    return float(sens), float(spec), [int(tn), int(fp), int(fn), int(tp)]


def _binary_auc(y_bin: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC, or ``None`` when ``y_bin`` holds a single class (AUC undefined)."""
    if y_bin.all() or not y_bin.any():
        return None
    return float(roc_auc_score(y_bin, score))


def roc_points(y_true_binary: Any, score: Any) -> dict[str, list]:
    """ROC curve points of a binary problem, as plain lists.

    Parameters
    ----------
    y_true_binary : array-like of bool or {0, 1}, shape (N,)
        Positive-class indicator.
    score : array-like of float, shape (N,)
        Higher means more likely positive.

    Returns
    -------
    dict
        ``fpr``, ``tpr``, ``thresholds`` (lists of equal length). sklearn's first threshold
        (``inf``: "call nothing positive") is reported as ``None`` so the dict stays valid JSON.

    Raises
    ------
    ValueError
        If the lengths differ, a label is not 0/1, or only one class is present.

    Examples
    --------
    >>> roc_points([0, 1, 1], [0.1, 0.5, 0.7])
    {'fpr': [0.0, 0.0, 0.0, 1.0], 'tpr': [0.0, 0.5, 1.0, 1.0], 'thresholds': [None, 0.7, 0.5, 0.1]}
    """
    y = np.asarray(y_true_binary)
    s = np.asarray(score, dtype=float)
    if y.ndim != 1 or s.ndim != 1 or y.shape != s.shape:
        raise ValueError(
            "y_true_binary and score must be 1-D of equal length, "
            f"got shapes {y.shape} and {s.shape}"
        )
    if not np.isin(y, [0, 1]).all():
        raise ValueError(f"y_true_binary must hold 0/1 or bool, got values {np.unique(y).tolist()}")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise ValueError(
            f"a ROC curve needs positive and negative samples, got only "
            f"{'positives' if y.any() else 'negatives'} ({y.size} samples)"
        )
    fpr, tpr, thr = roc_curve(y, s)
    return {
        "fpr": fpr.tolist(),
        "tpr": tpr.tolist(),
        "thresholds": [None if math.isinf(t) else float(t) for t in thr],
    }


def one_vs_rest_curves(y_true: Any, probs: Any, class_index: int) -> dict[str, dict | None]:
    """ROC and precision-recall curves of one class against the rest.

    Parameters
    ----------
    y_true : array-like of int, shape (N,)
    probs : array-like of float, shape (N, C)
    class_index : int
        The positive class, in ``range(C)``.

    Returns
    -------
    dict
        ``roc``: ``{fpr, tpr, thresholds, auc}`` or ``None`` when the class is absent from
        ``y_true`` or is its only class; ``pr``: ``{precision, recall, thresholds,
        average_precision}`` or ``None`` when the class is absent from ``y_true``.

    Examples
    --------
    >>> curves = one_vs_rest_curves([0, 1, 1], [[0.9, 0.1], [0.5, 0.5], [0.3, 0.7]], 1)
    >>> curves["roc"]["auc"], curves["pr"]["average_precision"]
    (1.0, 1.0)
    >>> one_vs_rest_curves([0, 0], [[0.9, 0.1], [0.6, 0.4]], 1)["pr"] is None
    True
    """
    y, p = _check_inputs(y_true, probs)
    n_classes = p.shape[1]
    if not isinstance(class_index, (int, np.integer)) or not 0 <= class_index < n_classes:
        raise ValueError(f"class_index must be an int in range({n_classes}), got {class_index!r}")
    y_bin = y == class_index
    score = p[:, class_index]
    roc = None
    if y_bin.any() and not y_bin.all():
        roc = roc_points(y_bin, score)
        roc["auc"] = float(roc_auc_score(y_bin, score))
    pr = None
    if y_bin.any():
        precision, recall, thr = precision_recall_curve(y_bin, score)
        pr = {
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "thresholds": thr.tolist(),
            "average_precision": float(average_precision_score(y_bin, score)),
        }
    return {"roc": roc, "pr": pr}


def referable_operating_point(y_true: Any, probs: Any, threshold: float) -> dict[str, float | int]:
    """Sensitivity/specificity of "refer when P(grade >= 2) >= threshold".

    Parameters
    ----------
    y_true : array-like of int, shape (N,)
        DR grades 0..4.
    probs : array-like of float, shape (N, 5)
    threshold : float in [0, 1]

    Returns
    -------
    dict
        ``sensitivity``, ``specificity`` (0.0 when undefined), ``tp``, ``fp``, ``tn``, ``fn``.

    Examples
    --------
    >>> probs = [[0.7, 0.2, 0.1, 0, 0], [0.2, 0.3, 0.5, 0, 0], [0, 0, 0.4, 0.3, 0.3]]
    >>> referable_operating_point([0, 1, 3], probs, 0.5)
    {'sensitivity': 1.0, 'specificity': 0.5, 'tp': 1, 'fp': 1, 'tn': 1, 'fn': 0}
    """
    y, p = _check_inputs(y_true, probs)
    score = referable_score(p)
    if not isinstance(threshold, (int, float, np.floating)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    sens, spec, (tn, fp, fn, tp) = _sens_spec(y >= REFERABLE_GRADE, score >= threshold)
    return {"sensitivity": sens, "specificity": spec, "tp": tp, "fp": fp, "tn": tn, "fn": fn}


# --------------------------------------------------------------------------- calibration


def _top_label_bins(y: np.ndarray, p: np.ndarray, n_bins: int):
    """Per-bin sample count, accuracy sum and confidence sum of the top label.

    Bins are equal-width on the confidence, ``((m-1)/M, m/M]`` as in Guo et al. 2017, eq. 3.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # side="left": a confidence equal to an edge belongs to the bin that edge closes.
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    return edges, count, acc_sum, conf_sum


def expected_calibration_error(y_true: Any, probs: Any, n_bins: int = 15) -> float:
    """Top-label expected calibration error (Guo et al. 2017, eq. 3).

    ``ECE = sum_m |B_m| / N * |acc(B_m) - conf(B_m)|`` over equal-width confidence bins.

    Parameters
    ----------
    y_true : array-like of int, shape (N,)
    probs : array-like of float, shape (N, C)
    n_bins : int, default 15

    Returns
    -------
    float

    Examples
    --------
    Two samples at confidence 0.9 (one right, one wrong) share a bin: |0.5 - 0.9| = 0.4.

    >>> round(expected_calibration_error([0, 1], [[0.9, 0.1], [0.9, 0.1]], n_bins=10), 6)
    0.4
    """
    y, p = _check_inputs(y_true, probs)
    _, count, acc_sum, conf_sum = _top_label_bins(y, p, n_bins)
    return float(np.abs(acc_sum - conf_sum).sum() / count.sum())


def reliability_curve(y_true: Any, probs: Any, n_bins: int = 15) -> dict[str, list]:
    """Per-bin accuracy and confidence of the top label, for a reliability diagram.

    Parameters
    ----------
    y_true : array-like of int, shape (N,)
    probs : array-like of float, shape (N, C)
    n_bins : int, default 15

    Returns
    -------
    dict
        ``bin_centers``, ``accuracy``, ``confidence``, ``count``: lists of length ``n_bins``;
        accuracy and confidence are ``None`` for empty bins (plotly leaves a gap).

    Examples
    --------
    >>> curve = reliability_curve([0, 1], [[0.9, 0.1], [0.9, 0.1]], n_bins=2)
    >>> curve["count"], curve["accuracy"], curve["confidence"]
    ([0, 2], [None, 0.5], [None, 0.9])
    """
    y, p = _check_inputs(y_true, probs)
    edges, count, acc_sum, conf_sum = _top_label_bins(y, p, n_bins)
    nonempty = count > 0
    safe = np.where(nonempty, count, 1)
    acc = acc_sum / safe
    conf = conf_sum / safe
    return {
        "bin_centers": ((edges[:-1] + edges[1:]) / 2).tolist(),
        "accuracy": [float(a) if k else None for a, k in zip(acc, nonempty)],
        "confidence": [float(c) if k else None for c, k in zip(conf, nonempty)],
        "count": count.astype(int).tolist(),
    }


# --------------------------------------------------------------------------- decisions


def bayes_decision(probs: Any, cost_matrix: Any) -> np.ndarray:
    """Bayes-optimal labels: the prediction of least expected cost under ``probs``.

    ``expected_cost[n, j] = sum_i probs[n, i] * cost_matrix[i, j]``, then argmin over ``j``.

    Parameters
    ----------
    probs : array-like of float, shape (N, C)
    cost_matrix : array-like of float, shape (C, C)
        ``cost_matrix[true, pred]``: the cost of predicting ``pred`` when the truth is ``true``.

    Returns
    -------
    numpy.ndarray of int, shape (N,)

    Examples
    --------
    Missing a grade-1 case costs 5, a false alarm costs 1: refer from P(1) > 1/6.

    >>> bayes_decision([[0.8, 0.2], [0.9, 0.1]], [[0, 1], [5, 0]]).tolist()
    [1, 0]
    """
    p = _as_probs(probs)
    cost = np.asarray(cost_matrix, dtype=float)
    c = p.shape[1]
    if cost.shape != (c, c):
        raise ValueError(f"cost_matrix must have shape ({c}, {c}) to match probs, got {cost.shape}")
    if not np.all(np.isfinite(cost)):
        raise ValueError("cost_matrix contains NaN or inf")
    return np.argmin(p @ cost, axis=1)  # (N, C) @ (C, C) -> (N, C) expected costs


# --------------------------------------------------------------------------- selection


def metric_is_better(name: str, new: float, old: float | None) -> bool:
    """Whether ``new`` improves on ``old`` for metric ``name`` (``old=None``: always True).

    Examples
    --------
    >>> metric_is_better("macro_f1", 0.6, 0.5), metric_is_better("ece", 0.06, 0.05)
    (True, False)
    """
    _check_metric_name(name)
    if old is None:
        return True
    return new > old if HIGHER_IS_BETTER[name] else new < old


def _check_metric_name(name: str) -> None:
    if name not in HIGHER_IS_BETTER:
        raise ValueError(
            f"unknown selection metric {name!r}; valid: {', '.join(SELECTION_METRICS)}"
        )


def selection_score(metrics: dict, name: str) -> float:
    """The value of selection metric ``name`` in a :func:`compute_metrics` dict.

    The value is returned as reported (not negated); use :func:`metric_is_better` or
    :data:`HIGHER_IS_BETTER` for the direction.

    Raises
    ------
    ValueError
        If ``name`` is not in :data:`SELECTION_METRICS` or ``metrics`` lacks a number for it.

    Examples
    --------
    >>> selection_score({"macro_f1": 0.5}, "macro_f1")
    0.5
    """
    _check_metric_name(name)
    value = metrics.get(name) if isinstance(metrics, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"metrics has no number for {name!r} (got {value!r})")
    return float(value)


# --------------------------------------------------------------------------- the report


@contextmanager
def _degenerate_cases_quiet():
    """Silence the warnings sklearn/imblearn raise on degenerate but valid evaluation sets.

    A small test split can lack a rare grade, hold a single grade, or a model can predict a
    grade that never occurs; the values are then defined by ``zero_division=0`` /
    ``replace_undefined_by=0.0`` (documented in :func:`compute_metrics`), and the warnings
    would only flood training logs. imblearn's ``specificity_score`` has no ``zero_division``
    switch, hence the category filter.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        warnings.filterwarnings("ignore", message="A single label was found")
        yield


def _macro_mae(y: np.ndarray, pred: np.ndarray) -> float:
    """Macro-averaged MAE (Baccianella et al. 2009) over the classes present in ``y``.

    imblearn's ``macro_averaged_mean_absolute_error`` (0.14) averages over the union of true
    and predicted labels and raises "Found array with 0 sample(s)" as soon as a grade is
    predicted that never occurs in ``y``, which is routine on small rare-grade test splits;
    so the per-class loop is done here, over true classes only (identical result otherwise).
    """
    return float(np.mean([mean_absolute_error(y[y == k], pred[y == k]) for k in np.unique(y)]))


def compute_metrics(
    y_true: Any,
    probs: Any,
    class_names: Sequence[str],
    *,
    y_pred: Any = None,
) -> dict[str, Any]:
    """Every test/validation metric of a run, as a JSON-serialisable dict.

    Parameters
    ----------
    y_true : array-like of int, shape (N,)
        True class indices in ``range(C)``.
    probs : array-like of float, shape (N, C)
        Predicted class probabilities (rows sum to 1).
    class_names : sequence of str, length C
    y_pred : array-like of int, shape (N,), optional
        Predicted labels; defaults to ``argmax(probs)``. Ordinal and post-hoc decision rules
        (thresholds, Bayes costs) pass their own.

    Returns
    -------
    dict
        ``accuracy, balanced_accuracy, macro_f1, qwk, gmean, ece, mae_macro`` (floats);
        ``class_names`` (list); ``per_class`` ``{name: {precision, recall, f1, specificity,
        support, roc_auc, pr_auc}}``; ``confusion_matrix`` (rows = true class, every class
        has a row); ``n``; and for C == 5 ``referable`` ``{sensitivity, specificity, auc,
        threshold_grade}`` (referable = grade >= 2, score = P(grade >= 2)).

        Undefined ratios are 0 (sklearn's ``zero_division=0``; kappa when both label vectors
        hold the same single class); undefined AUCs are ``None`` (absent class, single class).
        ``balanced_accuracy``, ``gmean`` and ``mae_macro`` average over the classes present
        in ``y_true``; ``macro_f1`` over the classes present in ``y_true`` or the predictions.

    Raises
    ------
    ValueError
        On a malformed ``probs``, mismatched lengths, labels outside ``range(C)`` or
        ``len(class_names) != C``.

    Examples
    --------
    >>> m = compute_metrics([0, 1, 1], [[0.8, 0.2], [0.6, 0.4], [0.1, 0.9]], ["a", "b"])
    >>> m["accuracy"], m["balanced_accuracy"], m["confusion_matrix"]
    (0.6666666666666666, 0.75, [[1, 0], [1, 1]])
    """
    y, p = _check_inputs(y_true, probs)
    n, c = p.shape
    names = list(class_names)
    if len(names) != c:
        raise ValueError(f"class_names has {len(names)} names but probs has {c} classes: {names}")
    pred = p.argmax(axis=1) if y_pred is None else _as_labels(y_pred, n, c, "y_pred")
    labels = list(range(c))
    present = np.unique(y).tolist()

    with _degenerate_cases_quiet():
        precision, recall, f1, support = precision_recall_fscore_support(
            y, pred, labels=labels, zero_division=0
        )
        specificity = specificity_score(y, pred, labels=labels, average=None)
        per_class = {}
        for k, name in enumerate(names):
            y_bin = y == k
            per_class[name] = {
                "precision": float(precision[k]),
                "recall": float(recall[k]),
                "f1": float(f1[k]),
                "specificity": float(specificity[k]),
                "support": int(support[k]),
                "roc_auc": _binary_auc(y_bin, p[:, k]),
                "pr_auc": float(average_precision_score(y_bin, p[:, k])) if y_bin.any() else None,
            }
        result: dict[str, Any] = {
            "accuracy": float(accuracy_score(y, pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            # sklearn's default label set (true or predicted classes): a grade absent from a
            # small test split and never predicted is no evidence against the model.
            "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
            # Kaggle DR metric; labels=range(C) so the weights see the full ordinal scale.
            "qwk": float(
                cohen_kappa_score(
                    y, pred, labels=labels, weights="quadratic", replace_undefined_by=0.0
                )
            ),
            # Over present classes only: an absent class has no recall, and counting it as 0
            # would zero the geometric mean whatever the model does.
            "gmean": float(geometric_mean_score(y, pred, labels=present, average="multiclass")),
            "ece": expected_calibration_error(y, p),
            "mae_macro": _macro_mae(y, pred),
            "class_names": names,
            "per_class": per_class,
            "confusion_matrix": confusion_matrix(y, pred, labels=labels).astype(int).tolist(),
            "n": int(n),
        }
    if c == len(DR_GRADE_NAMES):
        y_ref = y >= REFERABLE_GRADE
        sens, spec, _ = _sens_spec(y_ref, pred >= REFERABLE_GRADE)
        result["referable"] = {
            "sensitivity": sens,
            "specificity": spec,
            "auc": _binary_auc(y_ref, referable_score(p)),
            "threshold_grade": REFERABLE_GRADE,
        }
    return result
