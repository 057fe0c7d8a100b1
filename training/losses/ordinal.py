"""Ordinal regression: a single severity score per image, trained with a regression loss and
decoded to a grade with cut points tuned on validation data.

This is the standard recipe of the 2015 Kaggle EyePACS and 2019 APTOS competitions: regress
the grade, then move the thresholds ``0.5, 1.5, ...`` to maximise quadratic weighted kappa.

The decoding helpers (:func:`default_cut_points`, :func:`optimise_cut_points`,
:func:`apply_cut_points`) use numpy only. The deployed per-class probabilities of an ordinal
model are computed inside the network (``training.networks.GradingModel``, rule "ordinal"),
so that their argmax is exactly the cut-point grade, in PyTorch and in ONNX alike.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ORDINAL_KINDS",
    "OrdinalRegressionLoss",
    "apply_cut_points",
    "default_cut_points",
    "optimise_cut_points",
]

#: Regression losses for :class:`OrdinalRegressionLoss`, by ``kind``.
ORDINAL_KINDS: dict[str, Callable[..., Tensor]] = {
    "mse": F.mse_loss,
    "smooth_l1": F.smooth_l1_loss,  # Huber with beta = 1 (Girshick 2015)
}


def _score_vector(scores: Tensor) -> Tensor:
    """``(N,)`` view of a score tensor given as ``(N,)`` or ``(N, 1)``."""
    if scores.ndim == 2 and scores.shape[1] == 1:
        return scores[:, 0]
    if scores.ndim == 1:
        return scores
    raise ValueError(f"ordinal scores must have shape (N,) or (N, 1), got {tuple(scores.shape)}")


class OrdinalRegressionLoss(nn.Module):
    """Regression of a scalar severity score on the grade: ``mean_i L(score_i, float(y_i))``.

    Parameters
    ----------
    kind : {"mse", "smooth_l1"}, default "mse"
        ``"mse"``: squared error; ``"smooth_l1"``: Huber loss with ``beta = 1`` (quadratic
        within one grade of the target, linear beyond, so outliers pull less).

    Examples
    --------
    >>> loss = OrdinalRegressionLoss("mse")
    >>> float(loss(torch.tensor([[0.5], [3.0]]), torch.tensor([0, 1])))  # (0.25 + 4) / 2
    2.125
    """

    def __init__(self, kind: str = "mse") -> None:
        super().__init__()
        if kind not in ORDINAL_KINDS:
            raise ValueError(f"unknown ordinal loss kind {kind!r}; valid: "
                             f"{', '.join(ORDINAL_KINDS)}")
        self.kind = kind

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean loss of scores ``(N, 1)`` or ``(N,)`` against integer grades ``(N,)``."""
        score = _score_vector(logits)  # (N,)
        if target.shape != score.shape:
            raise ValueError(f"target shape {tuple(target.shape)} does not match scores "
                             f"{tuple(score.shape)}")
        return ORDINAL_KINDS[self.kind](score, target.to(score.dtype), reduction="mean")

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


# ---------------------------------------------------------------- decoding (numpy only)


def _check_n_classes(n_classes: int) -> int:
    if isinstance(n_classes, bool) or int(n_classes) != n_classes or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    return int(n_classes)


def _as_scores(scores: np.ndarray) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"scores must have shape (N,) or (N, 1), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("scores must be finite; got NaN or infinity at index "
                         f"{int(np.flatnonzero(~np.isfinite(arr))[0])}")
    return arr


def _as_cuts(cuts: np.ndarray) -> np.ndarray:
    arr = np.asarray(cuts, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"cuts must be a non-empty 1-D array (K-1 thresholds), got shape "
                         f"{arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"cuts must be finite, got {arr.tolist()}")
    if np.any(np.diff(arr) < 0):
        raise ValueError(f"cuts must be sorted in increasing order, got {arr.tolist()}")
    return arr


def default_cut_points(n_classes: int) -> np.ndarray:
    """The untuned thresholds ``0.5, 1.5, ..., K - 1.5`` (round to the nearest grade).

    Examples
    --------
    >>> default_cut_points(5)
    array([0.5, 1.5, 2.5, 3.5])
    """
    return np.arange(_check_n_classes(n_classes) - 1, dtype=np.float64) + 0.5


def apply_cut_points(scores: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Grades from scores: grade ``k`` when ``c_{k-1} <= score < c_k``.

    A score exactly on a cut goes to the upper grade.

    Parameters
    ----------
    scores : array of shape (N,) or (N, 1)
        Regression outputs.
    cuts : array of shape (K-1,)
        Increasing thresholds.

    Returns
    -------
    numpy.ndarray
        ``int64`` grades in ``[0, K)``, shape ``(N,)``.

    Examples
    --------
    >>> apply_cut_points([-1.0, 0.5, 1.2, 9.0], [0.5, 1.5])
    array([0, 1, 1, 2])
    """
    s, c = _as_scores(scores), _as_cuts(cuts)
    return np.searchsorted(c, s, side="right").astype(np.int64)


def _quadratic_weighted_kappa(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Quadratic weighted kappa over labels ``0..K-1``.

    Same value as ``sklearn.metrics.cohen_kappa_score(y_true, y_pred, weights="quadratic",
    labels=range(K))`` (checked in the tests), written with ``bincount`` because the cut
    search evaluates it thousands of times and sklearn's input checking costs ~2 ms a call.
    Returns 0.0 where kappa is undefined (all labels and predictions in one class).
    """
    k = n_classes
    observed = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k).astype(float)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
    grid = np.arange(k)
    w = (grid[:, None] - grid[None, :]) ** 2  # quadratic disagreement weights
    denom = float((w * expected).sum())
    return 0.0 if denom == 0.0 else 1.0 - float((w * observed).sum()) / denom


def optimise_cut_points(
    scores: np.ndarray,
    y_true: np.ndarray,
    n_classes: int,
    *,
    n_grid: int = 100,
    max_rounds: int = 20,
) -> np.ndarray:
    """Thresholds that maximise quadratic weighted kappa (QWK) on validation scores.

    Coordinate ascent from ``0.5, 1.5, ..., K - 1.5``: each cut in turn moves to the candidate
    between its neighbours with the highest QWK (candidates are midpoints between consecutive
    distinct scores, thinned to ``n_grid`` evenly spaced ones); a cut moves only on a strict
    improvement, so the result never scores below the defaults and stays strictly increasing.
    Rounds repeat until none moves. This replaces the Nelder-Mead search popular on Kaggle,
    which stalls on QWK because it is piecewise constant in the cuts.

    Parameters
    ----------
    scores : array of shape (N,) or (N, 1)
        Validation regression outputs.
    y_true : array of int, shape (N,)
        True grades in ``[0, n_classes)``.
    n_classes : int
        Number of grades ``K >= 2``.
    n_grid : int, default 100
        Most candidates tried per cut and round.
    max_rounds : int, default 20
        Most passes over all cuts.

    Returns
    -------
    numpy.ndarray
        ``float64`` increasing thresholds, shape ``(K-1,)``.

    Raises
    ------
    ValueError
        On mismatched lengths, empty input, non-finite scores, grades outside ``[0, K)``, or
        ``n_classes``, ``n_grid``, ``max_rounds`` out of range.

    Examples
    --------
    >>> scores = np.array([0.1, 0.3, 0.9, 1.2, 1.4, 2.0])
    >>> cuts = optimise_cut_points(scores, np.array([0, 0, 0, 1, 1, 2]), 3)
    >>> apply_cut_points(scores, cuts)
    array([0, 0, 0, 1, 1, 2])
    """
    k = _check_n_classes(n_classes)
    s = _as_scores(scores)
    y = np.asarray(y_true)
    if y.ndim != 1 or y.shape[0] != s.shape[0]:
        raise ValueError(f"y_true must be 1-D with one grade per score ({s.shape[0]}), got "
                         f"shape {y.shape}")
    if s.size == 0:
        raise ValueError("optimise_cut_points needs at least one score, got none")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y_true must hold integer grades, got dtype {y.dtype}")
    bad = np.flatnonzero((y < 0) | (y >= k))
    if bad.size:
        raise ValueError(f"y_true[{int(bad[0])}] = {int(y[bad[0]])} is not a grade in "
                         f"[0, {k})")
    if int(n_grid) < 1 or int(max_rounds) < 1:
        raise ValueError(f"n_grid and max_rounds must be >= 1, got {n_grid}, {max_rounds}")
    y = y.astype(np.int64)

    cuts = default_cut_points(k)
    best = _quadratic_weighted_kappa(y, apply_cut_points(s, cuts), k)
    for _ in range(int(max_rounds)):
        moved = False
        for j in range(k - 1):
            lo = cuts[j - 1] if j > 0 else -np.inf
            hi = cuts[j + 1] if j < k - 2 else np.inf
            points = np.unique(np.concatenate([s[(s > lo) & (s < hi)],
                                               [v for v in (lo, hi) if np.isfinite(v)]]))
            candidates = (points[:-1] + points[1:]) / 2.0
            candidates = candidates[(candidates > lo) & (candidates < hi)]
            if candidates.size > n_grid:
                candidates = candidates[np.unique(
                    np.linspace(0, candidates.size - 1, int(n_grid)).round().astype(int))]
            for c in candidates:
                trial = cuts.copy()
                trial[j] = c
                score = _quadratic_weighted_kappa(y, apply_cut_points(s, trial), k)
                if score > best + 1e-12:
                    best, cuts, moved = score, trial, True
        if not moved:
            break
    return cuts
