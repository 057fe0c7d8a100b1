"""Tests of training.losses: hand-computed values for every loss, class weights, the LDAM
margins, ordinal decoding, buffers and the registry's errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import cohen_kappa_score
from sklearn.utils.class_weight import compute_class_weight

from training.losses import (
    LOSSES,
    WEIGHT_SCHEMES,
    BalancedSoftmaxLoss,
    CrossEntropy,
    FocalLoss,
    LDAMLoss,
    LogitAdjustedLoss,
    OrdinalRegressionLoss,
    apply_cut_points,
    build_loss,
    class_weights,
    default_cut_points,
    ldam_margins,
    log_class_prior,
    optimise_cut_points,
)
from training.losses.ordinal import _quadratic_weighted_kappa

# The shared 2x3 example.
LOGITS = [[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]]
TARGET = [0, 2]


def _logits(dtype=torch.float64):
    return torch.tensor(LOGITS, dtype=dtype)


def _target():
    return torch.tensor(TARGET)


# Row 0: logsumexp(1, 0, -1) = log(e + 1 + 1/e) = log(4.086161) = 1.407606
#        log p = [-0.407606, -1.407606, -2.407606], p = [0.665241, 0.244728, 0.090031]
# Row 1: logsumexp(.5, .5, 0) = log(2 e^.5 + 1) = log(4.297443) = 1.458020
#        log p = [-0.958020, -0.958020, -1.458020], p = [0.383652, 0.383652, 0.232697]
LSE0 = math.log(math.e + 1 + math.exp(-1))
LSE1 = math.log(2 * math.exp(0.5) + 1)
LOGP = [[1 - LSE0, 0 - LSE0, -1 - LSE0], [0.5 - LSE1, 0.5 - LSE1, 0 - LSE1]]
P = [[math.exp(v) for v in row] for row in LOGP]


def _close(value, expected, tol=1e-6):
    # 1e-6: buffers are built in float32 (the default dtype) even when the module is cast to
    # float64 afterwards, so values carry float32 rounding of the class statistics.
    assert float(value) == pytest.approx(expected, abs=tol, rel=tol)


# ------------------------------------------------------------------------- class weights


def test_class_weights_none():
    np.testing.assert_array_equal(class_weights([6, 3, 1], "none"), [1.0, 1.0, 1.0])


@pytest.mark.parametrize("scheme", ["balanced", "inverse"])
def test_class_weights_balanced_by_hand_and_sklearn(scheme):
    # n = 10, C = 3: 10 / (3 * 6) = 0.5556, 10 / (3 * 3) = 1.1111, 10 / (3 * 1) = 3.3333
    w = class_weights([6, 3, 1], scheme)
    np.testing.assert_allclose(w, [10 / 18, 10 / 9, 10 / 3])
    y = np.repeat([0, 1, 2], [6, 3, 1])
    np.testing.assert_allclose(w, compute_class_weight("balanced", classes=np.arange(3), y=y))


def test_class_weights_sqrt_inverse_by_hand():
    # 1/sqrt(6) = 0.408248, 1/sqrt(3) = 0.577350, 1/sqrt(1) = 1; sum 1.985598, mean 0.661866
    # -> [0.616814, 0.872307, 1.510879], mean 1
    raw = [1 / math.sqrt(6), 1 / math.sqrt(3), 1.0]
    mean = sum(raw) / 3
    w = class_weights([6, 3, 1], "sqrt-inverse")
    np.testing.assert_allclose(w, [v / mean for v in raw])
    np.testing.assert_allclose(w, [0.616814, 0.872307, 1.510879], atol=1e-6)
    assert w.mean() == pytest.approx(1.0)


def test_class_weights_effective_by_hand():
    # beta = 0.9: 1 - 0.9^6 = 0.468559, 1 - 0.9^3 = 0.271, 1 - 0.9 = 0.1
    # (1 - beta) / (1 - beta^n) = [0.213420, 0.369004, 1.0]; sum 1.582424
    # * 3 / 1.582424 = [0.404608, 0.699567, 1.895826], sum 3
    w = class_weights([6, 3, 1], "effective", beta=0.9)
    raw = [0.1 / (1 - 0.9**6), 0.1 / (1 - 0.9**3), 0.1 / (1 - 0.9)]
    np.testing.assert_allclose(w, [3 * v / sum(raw) for v in raw])
    np.testing.assert_allclose(w, [0.404608, 0.699567, 1.895826], atol=1e-6)
    assert w.sum() == pytest.approx(3.0)


def test_class_weights_effective_limits():
    # beta = 0 -> every class weight (1 - 0) / (1 - 0) = 1
    np.testing.assert_allclose(class_weights([6, 3, 1], "effective", beta=0.0), [1, 1, 1])
    # beta -> 1: (1 - beta^n) ~ n (1 - beta), so the weights tend to 1/n, sum-normalised:
    # [1/6, 1/3, 1] * 3 / 1.5 = [1/3, 2/3, 2]
    np.testing.assert_allclose(class_weights([6, 3, 1], "effective", beta=1 - 1e-9),
                               [1 / 3, 2 / 3, 2], rtol=1e-6)


def test_class_weights_every_scheme_listed():
    assert set(WEIGHT_SCHEMES) == {"none", "inverse", "balanced", "sqrt-inverse", "effective"}
    for scheme in WEIGHT_SCHEMES:
        assert class_weights([6, 3, 1], scheme).shape == (3,)


def test_class_weights_zero_count_names_class():
    with pytest.raises(ValueError, match=r"class 1 has count 0"):
        class_weights([6, 0, 1])


def test_class_weights_negative_count():
    with pytest.raises(ValueError, match=r"class 2 has count -1"):
        class_weights([6, 3, -1], "none")


def test_class_weights_unknown_scheme_lists_valid():
    with pytest.raises(ValueError, match=r"unknown class-weight scheme 'log'; valid: none, "
                                         r"inverse, balanced, sqrt-inverse, effective"):
        class_weights([6, 3, 1], "log")


@pytest.mark.parametrize("beta", [1.0, -0.1, 1.5])
def test_class_weights_bad_beta(beta):
    with pytest.raises(ValueError, match=rf"beta must be in \[0, 1\).*got {beta}"):
        class_weights([6, 3, 1], "effective", beta=beta)


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ([[6, 3], [1, 1]], r"must be 1-D, got shape \(2, 2\)"),
        ([5], r"at least 2 classes, got 1"),
        ([6.5, 3], r"whole numbers, got \[6.5, 3.0\]"),
        (["a", "b"], r"must be integers, got dtype"),
    ],
)
def test_class_counts_bad_shapes_and_values(counts, message):
    with pytest.raises(ValueError, match=message):
        class_weights(counts, "none")


def test_log_class_prior_by_hand():
    # [6, 3, 1] / 10 = [0.6, 0.3, 0.1]
    np.testing.assert_allclose(log_class_prior([6, 3, 1]), np.log([0.6, 0.3, 0.1]))


# ---------------------------------------------------------------------------- cross-entropy


def test_ce_by_hand():
    # mean(-log p[0,0], -log p[1,2]) = (0.407606 + 1.458020) / 2 = 0.932813
    _close(CrossEntropy()(_logits(), _target()), (-LOGP[0][0] - LOGP[1][2]) / 2)
    _close(CrossEntropy()(_logits(), _target()), 0.932813, tol=1e-6)


def test_weighted_ce_by_hand_plain_mean():
    # w = [1, 2, 3]: (1 * 0.407606 + 3 * 1.458020) / 2 = 2.390833 (plain mean over N = 2,
    # not torch's division by the weight sum 1 + 3)
    loss = CrossEntropy(weight=[1.0, 2.0, 3.0])
    _close(loss(_logits(), _target()), (1 * -LOGP[0][0] + 3 * -LOGP[1][2]) / 2)


def test_ce_label_smoothing_by_hand():
    # eps = 0.3, C = 3: q = 0.7 onehot + 0.1; l_i = -sum_k q_k log p_k
    # row 0: 0.8*0.407606 + 0.1*1.407606 + 0.1*2.407606 = 0.707606
    # row 1: 0.1*0.958020 + 0.1*0.958020 + 0.8*1.458020 = 1.358020; mean 1.032813
    q = [[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]]
    rows = [-sum(q[i][k] * LOGP[i][k] for k in range(3)) for i in range(2)]
    loss = CrossEntropy(label_smoothing=0.3)
    _close(loss(_logits(), _target()), sum(rows) / 2)
    _close(loss(_logits(), _target()), 1.032813, tol=1e-6)


@pytest.mark.parametrize("eps", [-0.1, 1.0])
def test_ce_bad_label_smoothing(eps):
    with pytest.raises(ValueError, match=rf"label_smoothing must be in \[0, 1\), got {eps}"):
        CrossEntropy(label_smoothing=eps)


def test_ce_bad_weight():
    with pytest.raises(ValueError, match=r"weight must be finite and >= 0, got \[1.0, -1.0\]"):
        CrossEntropy(weight=[1.0, -1.0])
    with pytest.raises(ValueError, match=r"weight must be a non-empty 1-D"):
        CrossEntropy(weight=[[1.0, 2.0]])


def test_ce_weight_length_mismatch():
    with pytest.raises(ValueError, match=r"weight has 2 entries but logits have 3 classes"):
        CrossEntropy(weight=[1.0, 2.0])(_logits(), _target())


# -------------------------------------------------------------------------------- focal


def test_focal_by_hand():
    # gamma = 2: row 0: (1 - 0.665241)^2 * 0.407606 = 0.045678
    #            row 1: (1 - 0.232697)^2 * 1.458020 = 0.858416; mean 0.452047
    rows = [(1 - P[0][0]) ** 2 * -LOGP[0][0], (1 - P[1][2]) ** 2 * -LOGP[1][2]]
    _close(FocalLoss(gamma=2.0)(_logits(), _target()), sum(rows) / 2)
    _close(FocalLoss(gamma=2.0)(_logits(), _target()), 0.452047, tol=1e-5)


def test_focal_alpha_by_hand():
    # alpha = [0.25, 1, 4], gamma = 1: (0.25 * 0.334759 * 0.407606 + 4 * 0.767303 * 1.458020)/2
    rows = [0.25 * (1 - P[0][0]) * -LOGP[0][0], 4 * (1 - P[1][2]) * -LOGP[1][2]]
    _close(FocalLoss(gamma=1.0, alpha=[0.25, 1.0, 4.0])(_logits(), _target()), sum(rows) / 2)


@pytest.mark.parametrize("weight", [None, [0.5, 1.0, 2.0]])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_focal_gamma_zero_equals_ce(weight, eps):
    logits = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target = torch.arange(16) % 3
    focal = FocalLoss(gamma=0.0, alpha=weight, label_smoothing=eps).double()
    ce = CrossEntropy(weight=weight, label_smoothing=eps).double()
    torch.testing.assert_close(focal(logits, target), ce(logits, target))


def test_focal_down_weights_easy_examples():
    # A confident correct prediction loses more of its loss than a hard one.
    easy, hard = torch.tensor([[4.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    t = torch.tensor([0])
    ratio_easy = FocalLoss(2.0)(easy, t) / CrossEntropy()(easy, t)
    ratio_hard = FocalLoss(2.0)(hard, t) / CrossEntropy()(hard, t)
    assert ratio_easy < ratio_hard


@pytest.mark.parametrize("gamma", [-1.0, float("inf"), float("nan")])
def test_focal_bad_gamma(gamma):
    with pytest.raises(ValueError, match=r"gamma must be a finite number >= 0"):
        FocalLoss(gamma=gamma)


def test_focal_alpha_length_mismatch():
    with pytest.raises(ValueError, match=r"alpha has 4 entries but logits have 3 classes"):
        FocalLoss(alpha=[1.0, 1.0, 1.0, 1.0])(_logits(), _target())


# --------------------------------------------------------------------------------- LDAM


def test_ldam_margins_by_hand():
    # n^(1/4): 100 -> 3.162278, 10 -> 1.778279, 1 -> 1; 1/that = [0.316228, 0.562341, 1]
    # scaled so the max is 0.5: [0.158114, 0.281171, 0.5]
    expected = [0.5 / 100**0.25, 0.5 / 10**0.25, 0.5]
    np.testing.assert_allclose(ldam_margins([100, 10, 1], 0.5), expected)
    np.testing.assert_allclose(ldam_margins([100, 10, 1], 0.5), [0.158114, 0.281171, 0.5],
                               atol=1e-6)
    torch.testing.assert_close(LDAMLoss([100, 10, 1]).margins,
                               torch.tensor(expected, dtype=torch.float32))


def _ldam_by_hand(scale, weight=(1.0, 1.0, 1.0)):
    # row 0 (y = 0): z = s * [1 - 0.158114, 0, -1]; row 1 (y = 2): z = s * [0.5, 0.5, 0 - 0.5]
    m = [0.5 / 100**0.25, 0.5 / 10**0.25, 0.5]
    rows = [[scale * (1 - m[0]), 0.0, scale * -1.0], [scale * 0.5, scale * 0.5, scale * -m[2]]]
    losses = []
    for z, y in zip(rows, TARGET):
        lse = math.log(sum(math.exp(v) for v in z))
        losses.append(weight[y] * (lse - z[y]))
    return sum(losses) / 2


def test_ldam_by_hand():
    # scale 1: row 0 z = [0.841886, 0, -1] -> -log softmax_0 = 0.463366
    #          row 1 z = [0.5, 0.5, -0.5] -> -log softmax_2 = 1.861995; mean 1.162680
    _close(LDAMLoss([100, 10, 1], scale=1.0).double()(_logits(), _target()), _ldam_by_hand(1.0))
    _close(LDAMLoss([100, 10, 1], scale=1.0)(_logits(), _target()), 1.162680, tol=1e-5)
    _close(LDAMLoss([100, 10, 1], scale=30.0).double()(_logits(), _target()),
           _ldam_by_hand(30.0))


def test_ldam_drw_set_class_weight():
    loss = LDAMLoss([100, 10, 1], scale=1.0).double()
    before = loss(_logits(), _target())
    # forward changes no state: the same call gives the same value and no weight appears
    torch.testing.assert_close(loss(_logits(), _target()), before)
    assert loss.weight is None
    loss.set_class_weight([0.5, 1.0, 2.0])
    assert loss.weight.dtype == torch.float64  # follows the module's buffers
    assert any(b is loss.weight for b in loss.buffers())
    _close(loss(_logits(), _target()), _ldam_by_hand(1.0, (0.5, 1.0, 2.0)))
    loss.set_class_weight(None)
    torch.testing.assert_close(loss(_logits(), _target()), before)


def test_ldam_bad_inputs():
    with pytest.raises(ValueError, match=r"weight has 2 entries but the loss has 3 classes"):
        LDAMLoss([100, 10, 1]).set_class_weight([1.0, 2.0])
    with pytest.raises(ValueError, match=r"scale must be a finite number > 0, got 0.0"):
        LDAMLoss([100, 10, 1], scale=0.0)
    with pytest.raises(ValueError, match=r"max_margin must be a finite number > 0, got -0.5"):
        LDAMLoss([100, 10, 1], max_margin=-0.5)
    with pytest.raises(ValueError, match=r"class 2 has count 0"):
        LDAMLoss([100, 10, 0])
    with pytest.raises(ValueError, match=r"margins \(from class_counts\) has 2 entries but "
                                         r"logits have 3 classes"):
        LDAMLoss([100, 10])(_logits(), _target())


# ----------------------------------------------------------------- prior-adjusted losses


def test_balanced_softmax_equals_ce_on_logits_plus_log_prior():
    # counts [6, 3, 1]: prior [0.6, 0.3, 0.1]; row 0 z = [1 + log .6, log .3, -1 + log .1]
    log_prior = [math.log(0.6), math.log(0.3), math.log(0.1)]
    by_hand = 0.0
    for z, y in zip(LOGITS, TARGET):
        adj = [a + b for a, b in zip(z, log_prior)]
        by_hand += (math.log(sum(math.exp(v) for v in adj)) - adj[y]) / 2
    loss = BalancedSoftmaxLoss([6, 3, 1]).double()
    _close(loss(_logits(), _target()), by_hand)
    shifted = _logits() + torch.log(torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64))
    torch.testing.assert_close(loss(_logits(), _target()), F.cross_entropy(shifted, _target()))


def test_logit_adjusted_by_hand():
    # tau = 0.5: z + 0.5 log pi
    log_prior = [math.log(0.6), math.log(0.3), math.log(0.1)]
    by_hand = 0.0
    for z, y in zip(LOGITS, TARGET):
        adj = [a + 0.5 * b for a, b in zip(z, log_prior)]
        by_hand += (math.log(sum(math.exp(v) for v in adj)) - adj[y]) / 2
    _close(LogitAdjustedLoss([6, 3, 1], tau=0.5).double()(_logits(), _target()), by_hand)


def test_logit_adjusted_tau_limits():
    torch.testing.assert_close(LogitAdjustedLoss([6, 3, 1], tau=0.0).double()(_logits(), _target()),
                               CrossEntropy()(_logits(), _target()))
    torch.testing.assert_close(LogitAdjustedLoss([6, 3, 1], tau=1.0)(_logits(), _target()),
                               BalancedSoftmaxLoss([6, 3, 1])(_logits(), _target()))


def test_logit_adjusted_bad_inputs():
    with pytest.raises(ValueError, match=r"tau must be a finite number >= 0, got -1"):
        LogitAdjustedLoss([6, 3, 1], tau=-1.0)
    with pytest.raises(ValueError, match=r"class 0 has count 0"):
        BalancedSoftmaxLoss([0, 3, 1])


# ------------------------------------------------------------------------------ ordinal


def test_ordinal_mse_by_hand():
    # scores [0.5, 3.0] vs grades [0, 1]: ((0.5 - 0)^2 + (3 - 1)^2) / 2 = (0.25 + 4) / 2
    loss = OrdinalRegressionLoss("mse")
    _close(loss(torch.tensor([[0.5], [3.0]]), torch.tensor([0, 1])), 2.125)
    _close(loss(torch.tensor([0.5, 3.0]), torch.tensor([0, 1])), 2.125)


def test_ordinal_smooth_l1_by_hand():
    # |d| = 0.5 < 1: 0.5 * 0.25 = 0.125; |d| = 2: 2 - 0.5 = 1.5; mean 0.8125
    loss = OrdinalRegressionLoss("smooth_l1")
    _close(loss(torch.tensor([[0.5], [3.0]]), torch.tensor([0, 1])), 0.8125)


def test_ordinal_loss_bad_inputs():
    with pytest.raises(ValueError, match=r"unknown ordinal loss kind 'l1'; valid: mse, "
                                         r"smooth_l1"):
        OrdinalRegressionLoss("l1")
    with pytest.raises(ValueError, match=r"shape \(N,\) or \(N, 1\), got \(2, 3\)"):
        OrdinalRegressionLoss()(_logits(), _target())
    with pytest.raises(ValueError, match=r"target shape \(3,\) does not match scores \(2,\)"):
        OrdinalRegressionLoss()(torch.zeros(2, 1), torch.tensor([0, 1, 2]))


def test_apply_cut_points_by_hand():
    # cuts [0.5, 1.5]: -1 -> 0; 0.5 on the cut -> upper grade 1; 1.2 -> 1; 9 -> 2
    np.testing.assert_array_equal(apply_cut_points([-1.0, 0.5, 1.2, 9.0], [0.5, 1.5]),
                                  [0, 1, 1, 2])
    assert apply_cut_points(np.array([[0.2], [2.0]]), [0.5, 1.5]).dtype == np.int64
    np.testing.assert_array_equal(default_cut_points(5), [0.5, 1.5, 2.5, 3.5])


def test_fast_qwk_equals_sklearn():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    p[:150] = y[:150]
    assert _quadratic_weighted_kappa(y, p, 5) == pytest.approx(
        cohen_kappa_score(y, p, weights="quadratic", labels=list(range(5))))


def _synthetic_scores(seed, n=2000):
    # Imbalanced grades whose scores are biased upward and squeezed: score = 0.7 y + 0.6 + noise,
    # so the best cuts sit near 0.7 k + 0.95 rather than at k + 0.5.
    rng = np.random.default_rng(seed)
    y = rng.choice(5, size=n, p=[0.5, 0.2, 0.15, 0.1, 0.05])
    return 0.7 * y + 0.6 + rng.normal(0, 0.15, n), y


def test_optimise_cut_points_recovers_thresholds_and_improves_qwk():
    scores, y = _synthetic_scores(0)
    cuts = optimise_cut_points(scores, y, 5)
    assert cuts.shape == (4,) and np.all(np.diff(cuts) > 0)
    np.testing.assert_allclose(cuts, 0.7 * np.arange(4) + 0.95, atol=0.12)
    qwk = lambda c: cohen_kappa_score(y, apply_cut_points(scores, c), weights="quadratic")
    assert qwk(default_cut_points(5)) < 0.9 < qwk(cuts)
    # the tuned cuts generalise to fresh scores from the same model
    scores2, y2 = _synthetic_scores(1)
    assert (cohen_kappa_score(y2, apply_cut_points(scores2, cuts), weights="quadratic")
            > cohen_kappa_score(y2, apply_cut_points(scores2, default_cut_points(5)),
                                weights="quadratic"))


def test_optimise_cut_points_keeps_defaults_when_already_best():
    # scores exactly on the grades: 0.5, 1.5 already separate perfectly, nothing moves
    cuts = optimise_cut_points(np.array([0.0, 1.0, 2.0, 0.0]), np.array([0, 1, 2, 0]), 3)
    np.testing.assert_array_equal(cuts, [0.5, 1.5])


@pytest.mark.parametrize(
    ("scores", "y", "k", "message"),
    [
        ([0.1, 0.2], [0, 1, 1], 3, r"one grade per score \(2\), got shape \(3,\)"),
        ([0.1, 0.2], [0, 3], 3, r"y_true\[1\] = 3 is not a grade in \[0, 3\)"),
        ([0.1, 0.2], [0, 1], 1, r"n_classes must be an integer >= 2, got 1"),
        ([0.1, np.nan], [0, 1], 3, r"scores must be finite; got NaN or infinity at index 1"),
        ([0.1, 0.2], [0.0, 1.0], 3, r"y_true must hold integer grades"),
        ([], [], 3, r"at least one score"),
    ],
)
def test_optimise_cut_points_bad_inputs(scores, y, k, message):
    with pytest.raises(ValueError, match=message):
        optimise_cut_points(np.array(scores), np.array(y), k)


# ----------------------------------------------------------------- buffers and the registry


@pytest.mark.parametrize(
    ("loss", "names"),
    [
        (CrossEntropy(weight=[1.0, 2.0, 3.0]), {"weight"}),
        (FocalLoss(alpha=[1.0, 2.0, 3.0]), {"alpha"}),
        (LDAMLoss([100, 10, 1], weight=[1.0, 2.0, 3.0]), {"margins", "weight"}),
        (BalancedSoftmaxLoss([6, 3, 1]), {"log_prior"}),
        (LogitAdjustedLoss([6, 3, 1], tau=0.5), {"log_prior"}),
    ],
)
def test_tensors_are_buffers_that_move_with_module(loss, names):
    assert {name for name, _ in loss.named_buffers()} == names
    assert all(b.dtype == torch.float32 for b in loss.buffers())
    loss = loss.to(torch.float64)
    assert all(b.dtype == torch.float64 for b in loss.buffers())
    assert list(loss.parameters()) == []
    assert loss(_logits(), _target()).dtype == torch.float64


def test_registry_names_and_specs():
    assert list(LOSSES) == ["ce", "weighted-ce", "cb-ce", "focal", "cb-focal", "ldam",
                            "balanced-softmax", "logit-adjusted", "ordinal-mse",
                            "ordinal-smooth-l1"]
    for name in ["ce", "weighted-ce", "cb-ce", "focal", "cb-focal"]:
        assert "label_smoothing" in LOSSES[name].defaults
    assert dict(LOSSES["cb-focal"].defaults) == {"gamma": 2.0, "beta": 0.999,
                                                 "label_smoothing": 0.0}
    assert dict(LOSSES["ldam"].defaults) == {"max_margin": 0.5, "scale": 30.0}
    assert LOSSES["ordinal-mse"].kind == "ordinal" and LOSSES["ordinal-mse"].output_dim(5) == 1
    assert LOSSES["focal"].kind == "classification" and LOSSES["focal"].output_dim(5) == 5


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_registered_loss_builds_and_trains_a_step(name):
    spec = LOSSES[name]
    assert spec.description and "\n" not in spec.description
    counts = [60, 25, 10, 4, 1]
    loss = build_loss(name, counts)
    head = torch.nn.Linear(4, spec.output_dim(len(counts)))
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 1, 2, 3, 4, 0, 0, 1])
    value = loss(head(x), target)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()


def test_build_loss_applies_params():
    counts = [6, 3, 1]
    torch.testing.assert_close(build_loss("weighted-ce", counts, scheme="sqrt-inverse").weight,
                               torch.tensor(class_weights(counts, "sqrt-inverse"),
                                            dtype=torch.float32))
    cb = build_loss("cb-focal", counts, gamma=1.0, beta=0.9, label_smoothing=0.1)
    assert (cb.gamma, cb.label_smoothing) == (1.0, 0.1)
    torch.testing.assert_close(cb.alpha, torch.tensor(class_weights(counts, "effective",
                                                                    beta=0.9),
                                                      dtype=torch.float32))
    torch.testing.assert_close(build_loss("cb-ce", counts, beta=0.9).weight, cb.alpha)
    assert build_loss("logit-adjusted", counts, tau=0.5).tau == 0.5
    ldam = build_loss("ldam", [100, 10, 1], max_margin=0.3, scale=10.0)
    assert ldam.scale == 10.0 and float(ldam.margins.max()) == pytest.approx(0.3)
    assert build_loss("ordinal-smooth-l1", counts).kind == "smooth_l1"


def test_build_loss_unknown_name_lists_valid():
    with pytest.raises(ValueError, match=r"unknown loss 'x'; valid: ce, weighted-ce, cb-ce, "
                                         r"focal, cb-focal, ldam, balanced-softmax, "
                                         r"logit-adjusted, ordinal-mse, ordinal-smooth-l1"):
        build_loss("x", [6, 3, 1])


def test_build_loss_unknown_param_names_it_and_valid_ones():
    with pytest.raises(ValueError, match=r"unknown parameter 'gama' for loss 'focal'; valid: "
                                         r"gamma, label_smoothing"):
        build_loss("focal", [6, 3, 1], gama=2.0)
    with pytest.raises(ValueError, match=r"unknown parameter 'label_smoothing' for loss "
                                         r"'balanced-softmax'; valid: \(none\)"):
        build_loss("balanced-softmax", [6, 3, 1], label_smoothing=0.1)


def test_build_loss_bad_values_and_counts():
    with pytest.raises(ValueError, match=r"unknown class-weight scheme 'foo'"):
        build_loss("weighted-ce", [6, 3, 1], scheme="foo")
    with pytest.raises(ValueError, match=r"class 1 has count 0"):
        build_loss("ce", [6, 0, 1])
    with pytest.raises(ValueError, match=r"gamma must be a finite number >= 0, got -2"):
        build_loss("cb-focal", [6, 3, 1], gamma=-2)
