"""Loss functions for imbalanced DR grading, and the registry that names them.

One small module per family (``ce``, ``focal``, ``ldam``, ``logit_adjusted``, ``ordinal``);
class-weight maths lives only in :mod:`training.losses.weights`. The strategy registry, the
CLI and the dashboard build losses through :func:`build_loss` and read :data:`LOSSES`.

Examples
--------
>>> loss = build_loss("cb-focal", [600, 60, 6], gamma=1.0, beta=0.99)
>>> LOSSES["cb-focal"].output_dim(3), LOSSES["ordinal-mse"].output_dim(5)
(3, 1)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from torch import nn

from .ce import CrossEntropy
from .focal import FocalLoss
from .ldam import LDAMLoss, ldam_margins
from .logit_adjusted import BalancedSoftmaxLoss, LogitAdjustedLoss
from .ordinal import (
    OrdinalRegressionLoss,
    apply_cut_points,
    default_cut_points,
    optimise_cut_points,
)
from .weights import WEIGHT_SCHEMES, as_class_counts, class_weights, log_class_prior

__all__ = [
    "LOSSES",
    "WEIGHT_SCHEMES",
    "BalancedSoftmaxLoss",
    "CrossEntropy",
    "FocalLoss",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "LossSpec",
    "OrdinalRegressionLoss",
    "apply_cut_points",
    "build_loss",
    "class_weights",
    "default_cut_points",
    "ldam_margins",
    "log_class_prior",
    "optimise_cut_points",
    "register_loss",
]

LossKind = Literal["classification", "ordinal"]


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: name, one-line description, kind, default parameters, builder.

    Attributes
    ----------
    name : str
        Registry key, e.g. ``"cb-focal"``.
    description : str
        One line for ``--list-strategies`` and the dashboard.
    kind : {"classification", "ordinal"}
        ``"ordinal"`` losses take one score per image; the rest take ``C`` logits.
    head : {"linear", "cosine"}
        The network head the loss is defined on: LDAM's margins live on cosine logits.
    defaults : Mapping[str, Any]
        Every accepted keyword parameter with its default.
    builder : callable
        ``builder(class_counts, **params) -> nn.Module``; use :meth:`build`, which validates.
    """

    name: str
    description: str
    kind: LossKind
    defaults: Mapping[str, Any]
    builder: Callable[..., nn.Module] = field(repr=False)
    head: str = "linear"

    def output_dim(self, n_classes: int) -> int:
        """Width of the network head this loss needs: 1 for ordinal, else ``n_classes``."""
        return 1 if self.kind == "ordinal" else int(n_classes)

    def build(self, class_counts: Sequence[int], **params: Any) -> nn.Module:
        """Validate ``class_counts`` and ``params``, fill in defaults, build the loss.

        Raises
        ------
        ValueError
            On an unknown parameter (names it and lists the valid ones), on bad class
            counts, or on a bad parameter value (raised by the loss itself).
        """
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            valid = ", ".join(self.defaults) or "(none)"
            raise ValueError(
                f"unknown parameter {unknown[0]!r} for loss {self.name!r}; valid: {valid}"
            )
        counts = as_class_counts(class_counts)
        return self.builder(counts, **{**self.defaults, **params})


_REGISTRY: dict[str, LossSpec] = {}

#: Every registered loss by name (read-only view; add entries with :func:`register_loss`).
LOSSES: Mapping[str, LossSpec] = MappingProxyType(_REGISTRY)


def register_loss(name: str, description: str, kind: LossKind = "classification", head: str = "linear"):
    """Decorator registering ``builder(class_counts, **params)`` under ``name``.

    The builder's keyword defaults become the loss's accepted parameters.
    """

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"loss {name!r} is already registered")
        params = list(inspect.signature(builder).parameters.values())[1:]
        defaults = MappingProxyType({p.name: p.default for p in params})
        _REGISTRY[name] = LossSpec(name, description, kind, defaults, builder, head)
        return builder

    return decorate


def build_loss(name: str, class_counts: Sequence[int], **params: Any) -> nn.Module:
    """Build the loss registered as ``name`` for a training set with ``class_counts``.

    Parameters
    ----------
    name : str
        A key of :data:`LOSSES`.
    class_counts : sequence of int
        Training samples per class (every count >= 1).
    **params
        The loss's parameters (see ``LOSSES[name].defaults``).

    Raises
    ------
    ValueError
        Unknown ``name`` (lists the valid ones), unknown parameter, bad counts or values.

    Examples
    --------
    >>> build_loss("logit-adjusted", [6, 3, 1], tau=0.5)
    LogitAdjustedLoss(tau=0.5)
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(_REGISTRY)}")
    return _REGISTRY[name].build(class_counts, **params)


# ------------------------------------------------------------------------- registry entries
# Each entry is a few lines of data over the loss classes; the counts arrive validated.


@register_loss("ce", "cross-entropy, no re-weighting (the baseline)")
def _ce(counts, label_smoothing=0.0):
    return CrossEntropy(label_smoothing=label_smoothing)


@register_loss("weighted-ce", "cross-entropy weighted by inverse class frequency "
                              "(scheme: balanced | sqrt-inverse | ...)")
def _weighted_ce(counts, scheme="balanced", label_smoothing=0.0):
    return CrossEntropy(class_weights(counts, scheme), label_smoothing=label_smoothing)


@register_loss("cb-ce", "class-balanced cross-entropy, effective-number weights "
                        "(Cui et al. 2019)")
def _cb_ce(counts, beta=0.999, label_smoothing=0.0):
    return CrossEntropy(class_weights(counts, "effective", beta=beta),
                        label_smoothing=label_smoothing)


@register_loss("focal", "focal loss, down-weights easy examples (Lin et al. 2017)")
def _focal(counts, gamma=2.0, label_smoothing=0.0):
    return FocalLoss(gamma=gamma, label_smoothing=label_smoothing)


@register_loss("cb-focal", "class-balanced focal loss, effective-number alpha "
                           "(Cui et al. 2019)")
def _cb_focal(counts, gamma=2.0, beta=0.999, label_smoothing=0.0):
    return FocalLoss(gamma=gamma, alpha=class_weights(counts, "effective", beta=beta),
                     label_smoothing=label_smoothing)


@register_loss("ldam", "label-distribution-aware margins, larger for rare grades; "
                       "pairs with deferred re-weighting (Cao et al. 2019)", head="cosine")
def _ldam(counts, max_margin=0.5, scale=30.0):
    return LDAMLoss(counts, max_margin=max_margin, scale=scale)


@register_loss("balanced-softmax", "softmax shifted by the log class prior "
                                   "(Ren et al. 2020)")
def _balanced_softmax(counts):
    return BalancedSoftmaxLoss(counts)


@register_loss("logit-adjusted", "cross-entropy on logits + tau * log prior "
                                 "(Menon et al. 2021)")
def _logit_adjusted(counts, tau=1.0):
    return LogitAdjustedLoss(counts, tau=tau)


@register_loss("ordinal-mse", "regress one severity score (squared error); grade by tuned "
                              "cut points", kind="ordinal")
def _ordinal_mse(counts):
    return OrdinalRegressionLoss("mse")


@register_loss("ordinal-smooth-l1", "regress one severity score (Huber); grade by tuned "
                                    "cut points", kind="ordinal")
def _ordinal_smooth_l1(counts):
    return OrdinalRegressionLoss("smooth_l1")
