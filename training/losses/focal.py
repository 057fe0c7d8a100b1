"""Multi-class focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection").

Class-balanced focal loss (Cui et al. 2019) is this loss with
``alpha = class_weights(counts, "effective", beta=beta)``; the registry entry ``cb-focal``
builds exactly that.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from .ce import check_n_classes, as_class_vector, check_label_smoothing

__all__ = ["FocalLoss"]


class FocalLoss(nn.Module):
    """Focal loss ``-alpha_t (1 - p_t)^gamma log p_t``, averaged over the batch.

    With label smoothing the focal term is applied to every class of the smoothed target
    ``q = (1 - eps) * onehot(y) + eps / C``:
    ``l_i = -sum_k q_k alpha_k (1 - p_k)^gamma log p_k``, so at ``gamma = 0`` this is exactly
    :class:`~training.losses.ce.CrossEntropy` with ``weight = alpha`` (same reduction: plain
    mean over the batch).

    Parameters
    ----------
    gamma : float, default 2.0
        Focusing parameter, ``>= 0``; ``gamma = 2`` is the paper's best value (Table 1a).
    alpha : sequence of float, optional
        Per-class weights ``alpha_k`` (buffer ``alpha``); None means all ones.
    label_smoothing : float, default 0.0
        ``eps`` in ``[0, 1)``.

    Examples
    --------
    >>> import torch
    >>> loss = FocalLoss(gamma=2.0)
    >>> float(loss(torch.zeros(1, 2), torch.tensor([0])))  # (1 - 0.5)^2 * log 2
    0.173286...
    """

    alpha: Tensor | None

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: Sequence[float] | np.ndarray | Tensor | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        gamma = float(gamma)
        if not gamma >= 0.0 or gamma == float("inf"):
            raise ValueError(f"gamma must be a finite number >= 0, got {gamma}")
        self.gamma = gamma
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.register_buffer("alpha", as_class_vector(alpha, "alpha"))

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean loss of ``logits`` ``(N, C)`` against integer ``target`` ``(N,)``."""
        check_n_classes(self.alpha, logits, "alpha")
        n_classes = logits.shape[1]
        log_p = F.log_softmax(logits, dim=1)  # (N, C)
        # (1 - p)^gamma; clamp guards tiny negative values from exp(log_softmax) rounding.
        modulator = (1.0 - log_p.exp()).clamp(min=0.0).pow(self.gamma)  # (N, C)
        per_class = -modulator * log_p  # (N, C)
        if self.alpha is not None:
            per_class = per_class * self.alpha.to(logits.dtype)
        eps = self.label_smoothing
        q = F.one_hot(target, n_classes).to(logits.dtype) * (1.0 - eps) + eps / n_classes
        return (q * per_class).sum(dim=1).mean()

    def extra_repr(self) -> str:
        return (f"gamma={self.gamma}, label_smoothing={self.label_smoothing}, "
                f"alpha={self.alpha is not None}")
