"""Cross-entropy, optionally class-weighted and label-smoothed.

Reduction convention shared by every loss in this package: the loss of a batch is the plain
mean over its ``N`` samples of the per-sample (weighted) loss, ``sum_i w_{y_i} l_i / N``.
PyTorch's ``F.cross_entropy(weight=...)`` instead divides by ``sum_i w_{y_i}``, which undoes
the re-weighting whenever a batch holds a single class and makes the loss scale depend on the
batch composition; with the plain mean, focal loss at ``gamma = 0`` equals this loss exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CrossEntropy", "as_class_vector", "check_label_smoothing", "check_n_classes"]


def check_label_smoothing(label_smoothing: float) -> float:
    """Return ``label_smoothing`` as a float, or raise ValueError when outside ``[0, 1)``."""
    value = float(label_smoothing)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    return value


def as_class_vector(
    values: Sequence[float] | np.ndarray | Tensor | None, name: str
) -> Tensor | None:
    """Validate an optional per-class vector (weights, alpha) and return a float tensor.

    Parameters
    ----------
    values : sequence of float, numpy array, tensor or None
        One non-negative finite value per class.
    name : str
        Parameter name used in error messages.

    Returns
    -------
    torch.Tensor or None
        1-D tensor of the default float dtype, or None when ``values`` is None.

    Raises
    ------
    ValueError
        When ``values`` is not 1-D, is empty, or holds a negative or non-finite value.
    """
    if values is None:
        return None
    if isinstance(values, Tensor):
        vec = values.detach().cpu().double()
    else:
        vec = torch.as_tensor(np.asarray(values, dtype=np.float64))
    if vec.ndim != 1 or vec.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D per-class vector, got shape "
                         f"{tuple(vec.shape)}")
    if not bool(torch.isfinite(vec).all()) or bool((vec < 0).any()):
        raise ValueError(f"{name} must be finite and >= 0, got {vec.tolist()}")
    return vec.to(torch.get_default_dtype())


def check_n_classes(vec: Tensor | None, logits: Tensor, name: str) -> None:
    """Raise ValueError when a per-class vector and ``logits`` disagree on the class count."""
    if vec is not None and vec.numel() != logits.shape[1]:
        raise ValueError(
            f"{name} has {vec.numel()} entries but logits have {logits.shape[1]} classes"
        )


class CrossEntropy(nn.Module):
    """Cross-entropy with optional per-class weights and label smoothing.

    Per sample, with smoothed target ``q = (1 - eps) * onehot(y) + eps / C``:
    ``l_i = -sum_k q_k w_k log p_k`` (exactly ``F.cross_entropy(..., reduction="none")``);
    the batch loss is ``mean_i l_i`` (see the module docstring for why not PyTorch's
    weight-normalised mean).

    Parameters
    ----------
    weight : sequence of float, optional
        Per-class weights ``w`` (e.g. from :func:`training.losses.weights.class_weights`);
        stored as the buffer ``weight`` so ``.to(device)`` moves it.
    label_smoothing : float, default 0.0
        ``eps`` in ``[0, 1)`` (Szegedy et al. 2016).

    Examples
    --------
    >>> loss = CrossEntropy(weight=[1.0, 2.0, 3.0])
    >>> float(loss(torch.zeros(2, 3), torch.tensor([0, 2])))  # (1 + 3) / 2 * log 3
    2.197224...
    """

    weight: Tensor | None

    def __init__(
        self,
        weight: Sequence[float] | np.ndarray | Tensor | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.register_buffer("weight", as_class_vector(weight, "weight"))

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean loss of ``logits`` ``(N, C)`` against integer ``target`` ``(N,)``."""
        check_n_classes(self.weight, logits, "weight")
        weight = None if self.weight is None else self.weight.to(logits.dtype)
        per_sample = F.cross_entropy(  # (N,)
            logits, target, weight=weight, label_smoothing=self.label_smoothing,
            reduction="none",
        )
        return per_sample.mean()

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, weighted={self.weight is not None}"
