"""The strategy registry: one place that names every imbalance strategy.

A strategy is a composition ``loss x sampler x (optional) stage 2 x (optional) post-hoc
rule`` (see DESIGN.md). A preset is a few lines of data registered here, the way timm
registers models; the CLI (``--list-strategies``, ``--strategy``), the zoo, the dashboard and
the parametrised tests all read :data:`STRATEGIES`, so adding a strategy is one entry.

The composition flags (``--loss``, ``--sampler``, ``--stage2``, ``--posthoc`` and their
``--*-param k=v``) override parts of a preset through :func:`compose`, which also rejects
combinations that make no sense and says why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping

from training.losses import LOSSES, build_loss
from training.samplers import SAMPLERS
from training.stage2 import POSTHOC_RULES, STAGE2_METHODS, imblearn_sampler_names


class StrategyError(ValueError):
    """An unknown part name or an incompatible composition (message says which and why)."""


@dataclass(frozen=True)
class Strategy:
    """A named composition of the four parts (all fields are plain data, JSON-able)."""

    name: str
    description: str
    loss: str = "ce"
    loss_params: Mapping[str, Any] = field(default_factory=dict)
    sampler: str = "instance"
    sampler_params: Mapping[str, Any] = field(default_factory=dict)
    stage2: str | None = None  # decoupled head re-training on frozen embeddings (Kang et al. 2020)
    stage2_params: Mapping[str, Any] = field(default_factory=dict)
    posthoc: str | None = None  # decision rule tuned on validation after training
    posthoc_params: Mapping[str, Any] = field(default_factory=dict)
    # Deferred re-weighting (Cao et al. 2019): from this fraction of the epochs on, the loss is
    # weighted by effective-number class weights (beta below). None = never.
    drw_start: float | None = None
    drw_beta: float = 0.9999

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("loss_params", "sampler_params", "stage2_params", "posthoc_params"):
            d[k] = dict(d[k])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Strategy":
        return validate(cls(**dict(d)))

    @property
    def parts(self) -> str:
        """One-line summary, e.g. ``loss=focal(gamma=2.0) sampler=instance``."""

        def fmt(name: str | None, params: Mapping[str, Any]) -> str:
            if not params:
                return str(name)
            return f"{name}(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"

        s = f"loss={fmt(self.loss, self.loss_params)} sampler={fmt(self.sampler, self.sampler_params)}"
        if self.drw_start is not None:
            s += f" drw@{self.drw_start:g}"
        if self.stage2:
            s += f" stage2={fmt(self.stage2, self.stage2_params)}"
        if self.posthoc:
            s += f" posthoc={fmt(self.posthoc, self.posthoc_params)}"
        return s


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(name: str, description: str, **parts: Any) -> Strategy:
    """Register a preset; parts are the :class:`Strategy` fields. Returns it."""
    if name in STRATEGIES:
        raise StrategyError(f"strategy {name!r} is registered twice")
    strategy = validate(Strategy(name=name, description=description, **parts))
    STRATEGIES[name] = strategy
    return strategy


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise StrategyError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}") from None


def list_strategies() -> list[str]:
    return list(STRATEGIES)


def validate(s: Strategy) -> Strategy:
    """Check every part exists and the parts fit together; return the strategy unchanged."""
    if s.loss not in LOSSES:
        raise StrategyError(f"unknown loss {s.loss!r}; valid: {', '.join(LOSSES)}")
    if s.sampler not in SAMPLERS:
        raise StrategyError(f"unknown sampler {s.sampler!r}; valid: {', '.join(SAMPLERS)}")
    if s.stage2 is not None and s.stage2 not in STAGE2_METHODS:
        raise StrategyError(f"unknown stage 2 {s.stage2!r}; valid: none, {', '.join(STAGE2_METHODS)}")
    if s.posthoc is not None and s.posthoc not in POSTHOC_RULES:
        raise StrategyError(f"unknown post-hoc rule {s.posthoc!r}; valid: none, {', '.join(POSTHOC_RULES)}")
    if s.stage2 == "crt":
        name = s.stage2_params.get("sampler", "SMOTE")
        if name.lower() not in {n.lower() for n in imblearn_sampler_names()}:
            raise StrategyError(f"unknown imbalanced-learn sampler {name!r} for stage 2; valid: {', '.join(imblearn_sampler_names())}")
    ordinal = LOSSES[s.loss].kind == "ordinal"
    if ordinal and s.stage2:
        raise StrategyError(f"stage 2 {s.stage2!r} re-trains a classification head, but loss {s.loss!r} is ordinal regression (one score, no class logits)")
    if ordinal and s.posthoc:
        raise StrategyError(f"post-hoc {s.posthoc!r} adjusts class logits, but loss {s.loss!r} is ordinal regression (its decision rule is the tuned cut points)")
    if s.stage2 == "tau-norm" and LOSSES[s.loss].head == "cosine":
        raise StrategyError(f"loss {s.loss!r} trains a cosine (weight-normalised) head; tau-normalisation of its weights would change nothing")
    if s.posthoc == "logit-adjust" and s.loss in ("balanced-softmax", "logit-adjusted"):
        raise StrategyError(f"loss {s.loss!r} already corrects logits for the class prior; post-hoc logit adjustment would count the prior twice")
    if s.drw_start is not None:
        if not 0.0 <= float(s.drw_start) < 1.0:
            raise StrategyError(f"drw_start must be a fraction of the epochs in [0, 1), got {s.drw_start}")
        if not hasattr(build_loss(s.loss, [10, 10]), "set_class_weight"):
            raise StrategyError(f"deferred re-weighting needs a loss that takes class weights; {s.loss!r} does not")
    return s


def compose(base: Strategy | str, **overrides: Any) -> Strategy:
    """A preset with some parts replaced (``None`` values leave a part as it is).

    Changing a part drops the old part's parameters unless new ones are given; the result is
    named ``custom`` unless nothing changed.

    Examples
    --------
    >>> compose("ce", loss="focal", loss_params={"gamma": 1.0}).parts
    'loss=focal(gamma=1.0) sampler=instance'
    """
    s = get_strategy(base) if isinstance(base, str) else base
    changes: dict[str, Any] = {}
    for part in ("loss", "sampler", "stage2", "posthoc"):
        value = overrides.get(part)
        if value is not None:
            value = None if value == "none" and part in ("stage2", "posthoc") else value
            if value != getattr(s, part):
                changes[part] = value
                changes[f"{part}_params"] = {}
        params = overrides.get(f"{part}_params")
        if params:
            changes[f"{part}_params"] = {**(changes.get(f"{part}_params", getattr(s, f"{part}_params"))), **params}
    for key in ("drw_start", "drw_beta"):
        if overrides.get(key) is not None:
            changes[key] = overrides[key]
    if not changes:
        return s
    return validate(replace(s, name="custom", description=f"{s.name} with " + ", ".join(sorted(changes)) + " changed", **changes))


# --------------------------------------------------------------------------------------
# Presets: each a few lines of data.

register_strategy("ce", "plain cross-entropy on the natural (imbalanced) distribution: the baseline")
register_strategy("weighted-ce", "cross-entropy weighted by inverse class frequency (sklearn 'balanced')", loss="weighted-ce")
register_strategy("cb-ce", "class-balanced cross-entropy, effective-number weights (Cui et al. 2019)", loss="cb-ce", loss_params={"beta": 0.999})
register_strategy("focal", "focal loss, gamma=2 (Lin et al. 2017)", loss="focal", loss_params={"gamma": 2.0})
register_strategy("cb-focal", "class-balanced focal loss (Cui et al. 2019)", loss="cb-focal", loss_params={"gamma": 2.0, "beta": 0.999})
register_strategy("ldam-drw", "LDAM margins with deferred re-weighting after 60 % of epochs (Cao et al. 2019)", loss="ldam", drw_start=0.6)
register_strategy("balanced-softmax", "Balanced Softmax: CE on logits + log prior (Ren et al. 2020)", loss="balanced-softmax")
register_strategy("logit-adjust", "CE, then post-hoc logit adjustment with tau tuned on validation (Menon et al. 2021)", posthoc="logit-adjust")
register_strategy("sampler-balanced", "class-balanced sampling: every grade equally likely per draw (Kang et al. 2020)", sampler="class-balanced")
register_strategy("sampler-sqrt", "square-root sampling, p_j ~ sqrt(n_j) (Kang et al. 2020)", sampler="sqrt")
register_strategy("sampler-progressive", "progressively balanced sampling, instance -> class-balanced over training (Kang et al. 2020)", sampler="progressive")
register_strategy("ros", "imbalanced-learn RandomOverSampler on sample indices, re-drawn every epoch", sampler="ros")
register_strategy("rus", "imbalanced-learn RandomUnderSampler on sample indices, re-drawn every epoch", sampler="rus")
register_strategy("aug-oversample", "minority grades oversampled with strong augmentation (rotations, flips, colour jitter)", sampler="aug-oversample")
register_strategy("crt-smote", "decoupled classifier re-training on SMOTE-resampled embeddings (Kang et al. 2020; Chawla et al. 2002)", stage2="crt", stage2_params={"sampler": "SMOTE"})
register_strategy("tau-norm", "tau-normalised classifier, tau tuned on validation (Kang et al. 2020)", stage2="tau-norm")
register_strategy("easy-ensemble", "EasyEnsemble-style: 5 heads on RandomUnderSampler draws of the embeddings, averaged (Liu et al. 2009)", stage2="ensemble", stage2_params={"n_heads": 5})
register_strategy("ordinal", "ordinal regression on the grade (smooth-L1), cut points tuned for quadratic kappa on validation", loss="ordinal-smooth-l1")
