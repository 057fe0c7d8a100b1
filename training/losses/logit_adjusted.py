"""Prior-corrected softmax losses: Balanced Softmax and the logit-adjusted loss.

Both add ``tau * log(prior)`` to the logits before cross-entropy, so the network learns
balanced (prior-free) scores: predict with the raw logits at test time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ce import check_n_classes
from .weights import log_class_prior

__all__ = ["BalancedSoftmaxLoss", "LogitAdjustedLoss"]


class LogitAdjustedLoss(nn.Module):
    """Logit-adjusted cross-entropy (Menon et al. 2021, "Long-tail learning via logit
    adjustment", Eq. 10): ``CE(z + tau * log pi, y)``, mean over the batch.

    Parameters
    ----------
    class_counts : sequence of int
        Training samples per class; ``pi = n_c / n`` (buffer ``log_prior``).
    tau : float, default 1.0
        Adjustment strength, finite and ``>= 0``; ``tau = 1`` is Balanced Softmax and
        ``tau = 0`` plain cross-entropy.

    Examples
    --------
    >>> loss = LogitAdjustedLoss([6, 3, 1], tau=1.0)
    >>> loss.log_prior.exp()
    tensor([0.6000, 0.3000, 0.1000])
    """

    log_prior: Tensor

    def __init__(self, class_counts: Sequence[int] | np.ndarray, tau: float = 1.0) -> None:
        super().__init__()
        tau = float(tau)
        if not 0.0 <= tau < float("inf"):
            raise ValueError(f"tau must be a finite number >= 0, got {tau}")
        self.tau = tau
        self.register_buffer(
            "log_prior",
            torch.as_tensor(log_class_prior(class_counts), dtype=torch.get_default_dtype()),
        )

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean loss of ``logits`` ``(N, C)`` against integer ``target`` ``(N,)``."""
        check_n_classes(self.log_prior, logits, "log_prior (from class_counts)")
        adjusted = logits + self.tau * self.log_prior.to(logits.dtype)  # (N, C)
        return F.cross_entropy(adjusted, target, reduction="none").mean()

    def extra_repr(self) -> str:
        return f"tau={self.tau}"


class BalancedSoftmaxLoss(LogitAdjustedLoss):
    """Balanced Softmax (Ren et al. 2020, "Balanced Meta-Softmax for Long-Tailed Visual
    Recognition", Eq. 4): ``CE(z + log pi, y)``; the logit-adjusted loss at ``tau = 1``.

    Parameters
    ----------
    class_counts : sequence of int
        Training samples per class.
    """

    def __init__(self, class_counts: Sequence[int] | np.ndarray) -> None:
        super().__init__(class_counts, tau=1.0)
