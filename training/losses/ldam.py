"""Label-distribution-aware margin loss (Cao et al. 2019, "Learning Imbalanced Datasets with
Label-Distribution-Aware Margin Loss"), with deferred re-weighting (DRW) driven from outside.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ce import as_class_vector, check_n_classes
from .weights import as_class_counts

__all__ = ["LDAMLoss", "ldam_margins"]


def ldam_margins(class_counts: Sequence[int] | np.ndarray, max_margin: float = 0.5) -> np.ndarray:
    """Per-class LDAM margins ``m_c = K / n_c^(1/4)``, ``K`` set so the largest is ``max_margin``.

    Parameters
    ----------
    class_counts : sequence of int
        Training samples per class (every count >= 1).
    max_margin : float, default 0.5
        Margin of the rarest class (the paper's ``C``-tuning; 0.5 in its code).

    Returns
    -------
    numpy.ndarray
        ``float64`` margins of shape ``(C,)``.

    Examples
    --------
    >>> ldam_margins([100, 10, 1]).round(4)
    array([0.1581, 0.2812, 0.5   ])
    """
    max_margin = float(max_margin)
    if not 0.0 < max_margin < float("inf"):
        raise ValueError(f"max_margin must be a finite number > 0, got {max_margin}")
    n = as_class_counts(class_counts).astype(np.float64)
    margins = 1.0 / np.power(n, 0.25)  # Cao et al. 2019, Eq. 12: m_j proportional to n_j^(-1/4)
    return margins * (max_margin / margins.max())


class LDAMLoss(nn.Module):
    """LDAM loss: cross-entropy on ``s * (z - m_y * onehot(y))``.

    The target logit is lowered by its class margin ``m_y`` (rare classes get larger margins),
    then all logits are scaled by ``s`` (the paper's code normalises features and weights, so
    logits are cosines and need a scale). The batch loss is the plain mean over samples of the
    per-sample weighted loss (the package-wide convention, see :mod:`training.losses.ce`).

    Deferred re-weighting (DRW, Cao et al. 2019, Sec. 3.3): train with ``weight=None``, then at
    the configured epoch (a config field such as ``drw_epoch``, never a hard-coded number) the
    trainer calls :meth:`set_class_weight` once, typically with
    ``class_weights(counts, "effective", beta=0.9999)``. ``forward`` never changes state.

    Parameters
    ----------
    class_counts : sequence of int
        Training samples per class; the margins (buffer ``margins``) derive from it.
    max_margin : float, default 0.5
        Largest margin (that of the rarest class).
    scale : float, default 30.0
        Logit scale ``s`` (30 in the paper's code), ``> 0``.
    weight : sequence of float, optional
        Per-class weights (buffer ``weight``) from the start.

    Examples
    --------
    >>> loss = LDAMLoss([100, 10, 1])
    >>> loss.margins
    tensor([0.1581, 0.2812, 0.5000])
    >>> loss.set_class_weight(torch.tensor([0.5, 1.0, 1.5]))  # at epoch drw_epoch
    """

    margins: Tensor
    weight: Tensor | None

    def __init__(
        self,
        class_counts: Sequence[int] | np.ndarray,
        max_margin: float = 0.5,
        scale: float = 30.0,
        weight: Sequence[float] | np.ndarray | Tensor | None = None,
    ) -> None:
        super().__init__()
        scale = float(scale)
        if not 0.0 < scale < float("inf"):
            raise ValueError(f"scale must be a finite number > 0, got {scale}")
        self.scale = scale
        self.max_margin = float(max_margin)
        margins = ldam_margins(class_counts, max_margin)
        self.register_buffer("margins", torch.as_tensor(margins, dtype=torch.get_default_dtype()))
        self.register_buffer("weight", None)
        self.set_class_weight(weight)

    def set_class_weight(self, weight: Sequence[float] | np.ndarray | Tensor | None) -> None:
        """Replace the per-class weights (None removes them); call between steps, for DRW.

        The new weights take the device and dtype of the module's ``margins`` buffer.

        Raises
        ------
        ValueError
            When ``weight`` has a different length from the class counts, or holds a
            negative or non-finite value.
        """
        vec = as_class_vector(weight, "weight")
        if vec is not None:
            if vec.numel() != self.margins.numel():
                raise ValueError(
                    f"weight has {vec.numel()} entries but the loss has "
                    f"{self.margins.numel()} classes"
                )
            vec = vec.to(self.margins)
        self.weight = vec

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean loss of ``logits`` ``(N, C)`` against integer ``target`` ``(N,)``."""
        check_n_classes(self.margins, logits, "margins (from class_counts)")
        margins = self.margins.to(logits.dtype)
        onehot = F.one_hot(target, logits.shape[1]).to(logits.dtype)  # (N, C)
        adjusted = self.scale * (logits - onehot * margins)  # (N, C)
        weight = None if self.weight is None else self.weight.to(logits.dtype)
        return F.cross_entropy(adjusted, target, weight=weight, reduction="none").mean()

    def extra_repr(self) -> str:
        return (f"max_margin={self.max_margin}, scale={self.scale}, "
                f"weighted={self.weight is not None}")
