"""Class-frequency maths: the one place that turns class counts into weights or priors.

Every loss, sampler and post-hoc rule that needs per-class weights calls
:func:`class_weights`; every logit adjustment calls :func:`log_class_prior`. Both are
numpy-only (no torch), so the torch-free runtime can use them too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["WEIGHT_SCHEMES", "as_class_counts", "class_weights", "log_class_prior"]

#: Valid values of ``scheme`` in :func:`class_weights`.
WEIGHT_SCHEMES: tuple[str, ...] = ("none", "inverse", "balanced", "sqrt-inverse", "effective")


def as_class_counts(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """Validate per-class sample counts and return them as a 1-D ``int64`` array.

    Parameters
    ----------
    counts : sequence of int
        Number of training samples of each class, indexed by class id.

    Returns
    -------
    numpy.ndarray
        ``int64`` array of shape ``(n_classes,)``.

    Raises
    ------
    ValueError
        When ``counts`` is not 1-D, has fewer than 2 classes, holds a non-integer value, or a
        class has a count of 0 or less (the message names the class index).

    Examples
    --------
    >>> as_class_counts([6, 3, 1])
    array([6, 3, 1])
    """
    arr = np.asarray(counts)
    if arr.ndim != 1:
        raise ValueError(f"class counts must be 1-D, got shape {arr.shape}")
    if arr.size < 2:
        raise ValueError(f"class counts need at least 2 classes, got {arr.size}: {arr.tolist()}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"class counts must be integers, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
        raise ValueError(f"class counts must be whole numbers, got {arr.tolist()}")
    arr = arr.astype(np.int64)
    bad = np.flatnonzero(arr <= 0)
    if bad.size:
        k = int(bad[0])
        raise ValueError(
            f"class {k} has count {int(arr[k])}; every class needs at least one sample "
            f"(counts: {arr.tolist()})"
        )
    return arr


def class_weights(
    counts: Sequence[int] | np.ndarray, scheme: str = "balanced", *, beta: float = 0.999
) -> np.ndarray:
    """Per-class loss weights from class counts.

    Parameters
    ----------
    counts : sequence of int
        Training samples per class (``n_c``), indexed by class id; every count must be >= 1.
    scheme : {"none", "inverse", "balanced", "sqrt-inverse", "effective"}
        - ``"none"``: all ones.
        - ``"inverse"`` / ``"balanced"`` (synonyms): ``n / (C * n_c)``, exactly scikit-learn's
          ``compute_class_weight("balanced", ...)``; not renormalised (their count-weighted
          mean is 1, so the expected weight of a training sample is 1).
        - ``"sqrt-inverse"``: ``1 / sqrt(n_c)``, normalised so the weights average 1 over
          classes (the milder re-weighting of Mahajan et al. 2018 / Mikolov et al. 2013).
        - ``"effective"``: class-balanced weights of Cui et al. 2019, "Class-Balanced Loss
          Based on Effective Number of Samples" (Eq. 3): ``(1 - beta) / (1 - beta ** n_c)``,
          normalised so the weights sum to ``C`` (as in the paper's code).
    beta : float, default 0.999
        Only for ``"effective"``: ``0 <= beta < 1``; ``beta = 0`` gives all ones and
        ``beta -> 1`` tends to inverse frequency.

    Returns
    -------
    numpy.ndarray
        ``float64`` array of shape ``(C,)``.

    Raises
    ------
    ValueError
        Unknown ``scheme`` (lists the valid ones), ``beta`` outside ``[0, 1)``, or bad
        ``counts`` (see :func:`as_class_counts`; a zero count names the class index).

    Examples
    --------
    >>> class_weights([6, 3, 1], "balanced").round(4)
    array([0.5556, 1.1111, 3.3333])
    >>> class_weights([6, 3, 1], "none")
    array([1., 1., 1.])
    """
    if scheme not in WEIGHT_SCHEMES:
        raise ValueError(
            f"unknown class-weight scheme {scheme!r}; valid: {', '.join(WEIGHT_SCHEMES)}"
        )
    n = as_class_counts(counts).astype(np.float64)
    n_classes = n.size
    if scheme == "none":
        return np.ones(n_classes)
    if scheme in ("inverse", "balanced"):
        # sklearn.utils.class_weight.compute_class_weight("balanced"): n_samples / (C * n_c).
        return n.sum() / (n_classes * n)
    if scheme == "sqrt-inverse":
        w = 1.0 / np.sqrt(n)
        return w / w.mean()
    # "effective": Cui et al. 2019, effective number E_n = (1 - beta^n) / (1 - beta).
    beta = float(beta)
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1) for the 'effective' scheme, got {beta}")
    w = (1.0 - beta) / (1.0 - np.power(beta, n))
    return w * (n_classes / w.sum())


def log_class_prior(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """Log of the empirical class prior, ``log(n_c / n)``.

    Used by Balanced Softmax (Ren et al. 2020) and logit adjustment (Menon et al. 2021).

    Parameters
    ----------
    counts : sequence of int
        Training samples per class; every count must be >= 1 (a zero prior has no log).

    Returns
    -------
    numpy.ndarray
        ``float64`` array of shape ``(C,)``; ``exp`` of it sums to 1.

    Examples
    --------
    >>> np.exp(log_class_prior([6, 3, 1])).round(2)
    array([0.6, 0.3, 0.1])
    """
    n = as_class_counts(counts).astype(np.float64)
    return np.log(n) - np.log(n.sum())
