"""Stage 2 on frozen embeddings, and post-hoc decision rules tuned on validation.

Decoupling (Kang et al. 2020, "Decoupling Representation and Classifier for Long-Tailed
Recognition"): once the network is trained, the representation is kept and only the linear
classifier is fixed for imbalance. Working on embeddings (a few hundred numbers per scan)
is what lets us use *any* imbalanced-learn sampler, including the SMOTE family, cleaning
and prototype methods, which need feature vectors rather than image references.

Methods (:data:`STAGE2_METHODS`):

- ``crt``: classifier re-training on embeddings resampled by an imbalanced-learn sampler
  chosen by name (``fit_resample`` on the embedding matrix);
- ``tau-norm``: rescale each class's head weights by ``1 / ||w_c||^tau``, tau tuned on val;
- ``ensemble``: K heads, each trained on a RandomUnderSampler draw, softmax outputs averaged
  (EasyEnsemble, Liu et al. 2009, with linear heads instead of AdaBoost).

Post-hoc rules (:data:`POSTHOC_RULES`): ``logit-adjust`` subtracts ``tau * log(prior)``
from the logits (Menon et al. 2021), tau tuned on validation.

Everything writes into the one :class:`~training.networks.GradingModel` (head parameters and
buffers), so export still produces one ONNX graph.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.metrics import compute_metrics, selection_score
from training.losses.weights import log_class_prior

log = logging.getLogger("drgrade.stage2")


def _imblearn_registry() -> dict[str, Callable[..., Any]]:
    from imblearn import combine, over_sampling as over, under_sampling as under

    reg: dict[str, Callable[..., Any]] = {
        "SMOTE": over.SMOTE,
        "ADASYN": over.ADASYN,
        "BorderlineSMOTE": over.BorderlineSMOTE,
        "SVMSMOTE": over.SVMSMOTE,
        "KMeansSMOTE": over.KMeansSMOTE,
        "RandomOverSampler": over.RandomOverSampler,
        "SMOTEENN": combine.SMOTEENN,
        "SMOTETomek": combine.SMOTETomek,
        "RandomUnderSampler": under.RandomUnderSampler,
        "TomekLinks": under.TomekLinks,
        "EditedNearestNeighbours": under.EditedNearestNeighbours,
        "RepeatedEditedNearestNeighbours": under.RepeatedEditedNearestNeighbours,
        "AllKNN": under.AllKNN,
        "CondensedNearestNeighbour": under.CondensedNearestNeighbour,
        "OneSidedSelection": under.OneSidedSelection,
        "NeighbourhoodCleaningRule": under.NeighbourhoodCleaningRule,
        "InstanceHardnessThreshold": under.InstanceHardnessThreshold,
        "ClusterCentroids": under.ClusterCentroids,
    }
    for v in (1, 2, 3):
        reg[f"NearMiss-{v}"] = lambda v=v, **kw: under.NearMiss(version=v, **kw)
    return reg


def imblearn_sampler_names() -> list[str]:
    """Names accepted by ``--stage2 crt --stage2-param sampler=NAME`` (case-insensitive)."""
    return list(_imblearn_registry())


#: Samplers whose constructor takes ``random_state`` (the others are deterministic).
_NO_RANDOM_STATE = {"TomekLinks", "EditedNearestNeighbours", "RepeatedEditedNearestNeighbours", "AllKNN", "NeighbourhoodCleaningRule", "NearMiss-1", "NearMiss-2", "NearMiss-3"}


def make_imblearn_sampler(name: str, *, seed: int = 0, **params: Any) -> Any:
    """An imbalanced-learn sampler by (case-insensitive) name; unknown names list the valid ones."""
    reg = _imblearn_registry()
    canonical = {k.lower(): k for k in reg}.get(name.lower())
    if canonical is None:
        raise ValueError(f"unknown imbalanced-learn sampler {name!r}; valid: {', '.join(reg)}")
    if canonical not in _NO_RANDOM_STATE:
        params.setdefault("random_state", seed)
    try:
        return canonical, reg[canonical](**params)
    except TypeError as exc:
        raise ValueError(f"imbalanced-learn {canonical}: bad parameter ({exc})") from None


def resample_embeddings(z: np.ndarray, y: np.ndarray, name: str, class_names: list[str], *, seed: int = 0, **params: Any) -> tuple[np.ndarray, np.ndarray]:
    """``fit_resample`` the embedding matrix with an imbalanced-learn sampler.

    Neighbour-based samplers fail when a class has fewer members than ``k_neighbors + 1``;
    that is checked first, so the message can name the class and what to change.
    """
    canonical, sampler = make_imblearn_sampler(name, seed=seed, **params)
    counts = np.bincount(y, minlength=len(class_names))
    k = params.get("k_neighbors", 5 if canonical in ("SMOTE", "BorderlineSMOTE", "SVMSMOTE", "KMeansSMOTE", "SMOTEENN", "SMOTETomek") else None)
    if canonical == "ADASYN":
        k = params.get("n_neighbors", 5)
    if isinstance(k, int):
        present = [(c, n) for c, n in enumerate(counts) if 0 < n <= k]
        if present:
            c, n = present[0]
            raise ValueError(
                f"stage-2 sampler {canonical} needs more than k_neighbors={k} training examples per class, "
                f"but class '{class_names[c]}' has {n}; lower it (--stage2-param k_neighbors={max(1, n - 1)}) "
                f"or use RandomOverSampler"
            )
    try:
        z_res, y_res = sampler.fit_resample(z, y)
    except (ValueError, RuntimeError) as exc:
        raise ValueError(f"stage-2 sampler {canonical} failed on the training embeddings (class counts {counts.tolist()}): {exc}") from None
    if len(np.unique(y_res)) < 2:
        raise ValueError(f"stage-2 sampler {canonical} left fewer than 2 classes; choose another sampler")
    return np.asarray(z_res, np.float32), np.asarray(y_res, np.int64)


def fit_linear_head(z: np.ndarray, y: np.ndarray, n_classes: int, *, init: tuple[torch.Tensor, torch.Tensor] | None = None, epochs: int = 60, lr: float = 0.01, weight_decay: float = 1e-4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Train a linear softmax head on fixed embeddings (mini-batch Adam, CE). Returns (W, b)."""
    g = torch.Generator().manual_seed(seed)
    zt, yt = torch.as_tensor(z, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
    head = nn.Linear(zt.shape[1], n_classes)
    if init is not None:
        with torch.no_grad():
            head.weight.copy_(init[0])
            head.bias.copy_(init[1])
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    batch = 256
    for _ in range(epochs):
        order = torch.randperm(len(yt), generator=g)
        for i in range(0, len(yt), batch):
            idx = order[i : i + batch]
            loss = F.cross_entropy(head(zt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return head.weight.detach().clone(), head.bias.detach().clone()


def set_heads(model: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Replace the model's head(s) by plain linear ones: weight (K, C, F), bias (K, C).

    Re-trained heads are ordinary linear classifiers on the raw embeddings (Kang et al.'s
    cRT), so a cosine head (LDAM) becomes a linear one.
    """
    model.head_weight = nn.Parameter(weight.detach().clone().to(model.head_weight.device))
    model.head_bias = nn.Parameter(bias.detach().clone().to(model.head_bias.device))
    model.n_heads = int(weight.shape[0])
    model.head = "linear"
    model.logit_scale.fill_(1.0)


@dataclass
class Embeddings:
    """Frozen-network embeddings of the train and validation splits."""

    z_train: np.ndarray  # (N_train, F)
    y_train: np.ndarray
    z_val: np.ndarray  # (N_val, F)
    y_val: np.ndarray


def _val_score(model: nn.Module, emb: Embeddings, class_names: list[str], metric: str) -> float:
    with torch.no_grad():
        probs = model.probs_from_embedding(torch.as_tensor(emb.z_val, device=model.head_weight.device)).cpu().numpy()
    return selection_score(compute_metrics(emb.y_val, probs, class_names), metric)


def _tune(model: nn.Module, grid: np.ndarray, apply: Callable[[float], None], emb: Embeddings, class_names: list[str], metric: str) -> tuple[float, list[tuple[float, float]]]:
    """Grid search of one scalar on validation; leaves the best value applied."""
    trail = []
    for t in grid:
        apply(float(t))
        trail.append((float(t), _val_score(model, emb, class_names, metric)))
    best = max(trail, key=lambda ts: ts[1])[0]  # first best on ties = the smallest change
    apply(best)
    return best, trail


def stage2_crt(model, emb: Embeddings, class_names, *, seed: int = 0, sampler: str = "SMOTE", epochs: int = 60, **sampler_params) -> dict:
    z, y = resample_embeddings(emb.z_train, emb.y_train, sampler, class_names, seed=seed, **sampler_params)
    w, b = fit_linear_head(z, y, len(class_names), init=(model.head_weight[0].detach().cpu(), model.head_bias[0].detach().cpu()), epochs=epochs, seed=seed)
    set_heads(model, w[None], b[None])
    return {"sampler": sampler, "resampled_counts": np.bincount(y, minlength=len(class_names)).tolist()}


def stage2_tau_norm(model, emb: Embeddings, class_names, *, seed: int = 0, metric: str = "macro_f1", tau: float | None = None) -> dict:
    w0, b0 = model.head_weight.detach().clone(), model.head_bias.detach().clone()  # (1, C, F), (1, C)

    def apply(t: float) -> None:
        # Kang et al. drop the bias of the re-normalised head; tau = 0 keeps the trained head as
        # it is, so the search can always fall back to "no change".
        norms = w0.norm(dim=2, keepdim=True).clamp_min(1e-12)
        set_heads(model, w0 / norms.pow(t), b0 if t == 0 else torch.zeros_like(b0))

    if tau is not None:
        apply(float(tau))
        return {"tau": float(tau)}
    best, trail = _tune(model, np.round(np.arange(0.0, 2.01, 0.1), 2), apply, emb, class_names, metric)
    return {"tau": best, "val_search": trail}


def stage2_ensemble(model, emb: Embeddings, class_names, *, seed: int = 0, n_heads: int = 5, epochs: int = 60) -> dict:
    ws, bs = [], []
    init = (model.head_weight[0].detach().cpu(), model.head_bias[0].detach().cpu())
    for k in range(int(n_heads)):
        z, y = resample_embeddings(emb.z_train, emb.y_train, "RandomUnderSampler", class_names, seed=seed + k)
        w, b = fit_linear_head(z, y, len(class_names), init=init, epochs=epochs, seed=seed + k)
        ws.append(w)
        bs.append(b)
    set_heads(model, torch.stack(ws), torch.stack(bs))
    return {"n_heads": int(n_heads), "per_head_counts": int(len(z))}


STAGE2_METHODS: dict[str, Callable[..., dict]] = {"crt": stage2_crt, "tau-norm": stage2_tau_norm, "ensemble": stage2_ensemble}


def posthoc_logit_adjust(model, emb: Embeddings, class_names, *, prior: np.ndarray, metric: str = "macro_f1", tau: float | None = None) -> dict:
    log_prior = torch.as_tensor(log_class_prior(prior), dtype=torch.float32, device=model.logit_offset.device)

    def apply(t: float) -> None:
        model.logit_offset.copy_(t * log_prior)

    if tau is not None:
        apply(float(tau))
        return {"tau": float(tau)}
    best, trail = _tune(model, np.round(np.arange(0.0, 2.01, 0.25), 2), apply, emb, class_names, metric)
    return {"tau": best, "val_search": trail}


POSTHOC_RULES: dict[str, Callable[..., dict]] = {"logit-adjust": posthoc_logit_adjust}


def run_stage2(name: str, model, emb: Embeddings, class_names, params: Mapping[str, Any], *, seed: int, metric: str) -> dict:
    fn = STAGE2_METHODS[name]
    kw = dict(params)
    if name == "tau-norm":
        kw.setdefault("metric", metric)
    return fn(model, emb, class_names, seed=seed, **kw)
