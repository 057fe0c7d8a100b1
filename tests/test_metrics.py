"""Tests for models.metrics on tiny literal fixtures with hand-computed expected values."""

import json

import numpy as np
import pytest
from imblearn.metrics import macro_averaged_mean_absolute_error

from models.metrics import (
    DR_GRADE_NAMES,
    HIGHER_IS_BETTER,
    SELECTION_METRICS,
    bayes_decision,
    compute_metrics,
    expected_calibration_error,
    metric_is_better,
    one_vs_rest_curves,
    referable_operating_point,
    reliability_curve,
    roc_points,
    selection_score,
)

# Every test here fails on any warning: degenerate inputs must not leak sklearn warnings.
pytestmark = pytest.mark.filterwarnings("error")

# --- Fixture A: 2 classes. pred = argmax = [1, 0, 1].
Y_A = [0, 0, 1]
P_A = [[0.1, 0.9], [0.9, 0.1], [0.2, 0.8]]

# --- Fixture B: 5 DR grades, 6 scans. No confidence sits on a k/15 bin edge.
Y_B = [0, 0, 1, 2, 3, 4]
P_B = [
    [0.65, 0.25, 0.10, 0.00, 0.00],  # pred 0 (right), conf .65, P(>=2) = .10
    [0.20, 0.50, 0.30, 0.00, 0.00],  # pred 1 (wrong), conf .50, P(>=2) = .30
    [0.10, 0.35, 0.55, 0.00, 0.00],  # pred 2 (wrong), conf .55, P(>=2) = .55
    [0.00, 0.10, 0.65, 0.25, 0.00],  # pred 2 (right), conf .65, P(>=2) = .90
    [0.00, 0.00, 0.20, 0.70, 0.10],  # pred 3 (right), conf .70, P(>=2) = 1.0
    [0.00, 0.00, 0.10, 0.50, 0.40],  # pred 3 (wrong), conf .50, P(>=2) = 1.0
]


def _assert_plain_json(value):
    """Only builtin JSON types (a numpy float64 is a float subclass: check the exact type)."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert type(k) is str
            _assert_plain_json(v)
    elif isinstance(value, list):
        for v in value:
            _assert_plain_json(v)
    else:
        assert value is None or type(value) in (bool, int, float, str), (value, type(value))


def test_compute_metrics_two_classes_hand_computed():
    m = compute_metrics(Y_A, P_A, ["a", "b"])
    assert m["accuracy"] == pytest.approx(2 / 3)
    # recall a = 1/2, recall b = 1/1
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    # precision a = 1, b = 1/2 -> f1 a = f1 b = 2/3
    assert m["macro_f1"] == pytest.approx(2 / 3)
    # O = [[1,1],[0,1]], E = outer([2,1],[1,2])/3, w = [[0,1],[1,0]]: 1 - 1 / (4/3 + 1/3)
    assert m["qwk"] == pytest.approx(0.4)
    assert m["gmean"] == pytest.approx(np.sqrt(0.5 * 1.0))
    # bin of .9: 2 scans, acc 1/2 -> 2/3 * .4; bin of .8: 1 scan, acc 1 -> 1/3 * .2
    assert m["ece"] == pytest.approx(1 / 3)
    # class a errors |0-1|, |0-0| -> .5; class b -> 0
    assert m["mae_macro"] == pytest.approx(0.25)
    assert m["confusion_matrix"] == [[1, 1], [0, 1]]
    assert m["n"] == 3
    assert m["class_names"] == ["a", "b"]
    assert "referable" not in m
    a, b = m["per_class"]["a"], m["per_class"]["b"]
    assert (a["precision"], a["recall"], a["specificity"], a["support"]) == (1.0, 0.5, 1.0, 2)
    assert (b["precision"], b["recall"], b["specificity"], b["support"]) == (0.5, 1.0, 0.5, 1)
    assert a["f1"] == pytest.approx(2 / 3) and b["f1"] == pytest.approx(2 / 3)
    # a: positives .9,.1 vs negative .2 -> 1 of 2 pairs; b: .8 vs .9,.1 -> 1 of 2
    assert a["roc_auc"] == pytest.approx(0.5) and b["roc_auc"] == pytest.approx(0.5)
    # a ranked .9(+) .2(-) .1(+): AP = .5*1 + .5*2/3; b ranked .9(-) .8(+): AP = 1/2
    assert a["pr_auc"] == pytest.approx(5 / 6) and b["pr_auc"] == pytest.approx(0.5)


def test_compute_metrics_dr_scale_hand_computed():
    m = compute_metrics(Y_B, P_B, DR_GRADE_NAMES)
    assert m["confusion_matrix"] == [
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 1, 0],
    ]
    assert m["accuracy"] == pytest.approx(0.5)
    # recalls .5, 0, 1, 1, 0
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    assert m["gmean"] == 0.0
    # f1: 2/3, 0, 2/3, 2/3, 0
    assert m["macro_f1"] == pytest.approx(0.4)
    # sum w*O = 3/16; sum w*E = 122/96 (marginals true [2,1,1,1,1], pred [1,1,2,2,0])
    assert m["qwk"] == pytest.approx(1 - 18 / 122)
    # bins: {.5,.5} acc 0 -> 1/6; {.55} acc 0 -> .55/6; {.65,.65} acc 1 -> .7/6; {.7} -> .3/6
    assert m["ece"] == pytest.approx(2.55 / 6)
    # per-grade MAE .5, 1, 0, 0, 1
    assert m["mae_macro"] == pytest.approx(0.5)
    spec = [m["per_class"][g]["specificity"] for g in DR_GRADE_NAMES]
    assert spec == pytest.approx([1.0, 0.8, 0.8, 0.8, 1.0])
    prec = [m["per_class"][g]["precision"] for g in DR_GRADE_NAMES]
    assert prec == pytest.approx([1.0, 0.0, 0.5, 0.5, 0.0])
    mild = m["per_class"]["Mild"]
    # positive .35 beats .25, .1, 0, 0 and loses to .5 -> 4/5; ranked .5(-) .35(+) -> AP 1/2
    assert mild["roc_auc"] == pytest.approx(0.8) and mild["pr_auc"] == pytest.approx(0.5)
    # referable truth FFFTTT, predicted (pred >= 2) FFTTTT; scores .1 .3 .55 | .9 1 1
    assert m["referable"] == pytest.approx(
        {"sensitivity": 1.0, "specificity": 2 / 3, "auc": 1.0, "threshold_grade": 2}
    )
    _assert_plain_json(m)
    json.dumps(m, allow_nan=False)


def test_compute_metrics_uses_given_y_pred():
    # Everything referred as grade 2: referable sensitivity 1, specificity 0.
    m = compute_metrics(Y_B, P_B, DR_GRADE_NAMES, y_pred=[2, 2, 2, 2, 2, 2])
    assert m["accuracy"] == pytest.approx(1 / 6)
    assert m["confusion_matrix"][0] == [0, 0, 2, 0, 0]
    assert m["referable"]["sensitivity"] == 1.0 and m["referable"]["specificity"] == 0.0
    # the AUC still ranks probabilities, not the decision
    assert m["referable"]["auc"] == 1.0


def test_compute_metrics_absent_and_single_class_give_none_not_nan():
    # Only grade 1 present, always predicted: AUCs undefined, kappa defined as 0.
    probs = [[0, 1, 0, 0, 0], [0.1, 0.9, 0, 0, 0]]
    m = compute_metrics([1, 1], probs, DR_GRADE_NAMES)
    assert m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0 and m["gmean"] == 1.0
    assert m["macro_f1"] == 1.0  # absent, never-predicted grades do not count
    assert m["qwk"] == 0.0
    assert m["per_class"]["Mild"]["roc_auc"] is None  # single class in y_true
    assert m["per_class"]["Mild"]["pr_auc"] == 1.0
    assert m["per_class"]["Severe"]["roc_auc"] is None
    assert m["per_class"]["Severe"]["pr_auc"] is None
    assert m["per_class"]["Severe"]["support"] == 0
    assert m["referable"]["auc"] is None and m["referable"]["sensitivity"] == 0.0
    assert m["confusion_matrix"][1] == [0, 2, 0, 0, 0] and len(m["confusion_matrix"]) == 5
    json.dumps(m, allow_nan=False)


def test_compute_metrics_prediction_of_absent_class():
    # Class c never occurs but is predicted: imblearn's macro MAE would raise here.
    m = compute_metrics([0, 0, 1], [[0.5, 0.2, 0.3]] * 3, ["a", "b", "c"], y_pred=[2, 2, 2])
    assert m["mae_macro"] == pytest.approx((2 + 1) / 2)
    assert m["per_class"]["c"]["specificity"] == 0.0  # fp = 3, tn = 0
    assert m["per_class"]["c"]["roc_auc"] is None
    assert m["gmean"] == 0.0 and m["balanced_accuracy"] == 0.0


def test_macro_mae_matches_imblearn_where_imblearn_works():
    y, pred = [1, 1, 2, 2, 2], [1, 2, 1, 2, 2]
    probs = np.eye(3)[pred] * 0.9 + 0.1 / 3
    m = compute_metrics(y, probs, ["a", "b", "c"])
    assert m["mae_macro"] == pytest.approx(macro_averaged_mean_absolute_error(y, pred))


def test_expected_calibration_error_hand_computed():
    # 4 scans, 10 bins: .95 right, .95 wrong (bin 9: acc .5, conf .95); .55 right, .75 right.
    y = [0, 1, 1, 0]
    probs = [[0.95, 0.05], [0.95, 0.05], [0.45, 0.55], [0.75, 0.25]]
    # |.5 - .95| * 2/4 + |1 - .55| * 1/4 + |1 - .75| * 1/4 = .225 + .1125 + .0625
    assert expected_calibration_error(y, probs, n_bins=10) == pytest.approx(0.4)
    # one bin: |3/4 - (.95+.95+.55+.75)/4| = |.75 - .8|
    assert expected_calibration_error(y, probs, n_bins=1) == pytest.approx(0.05)


def test_expected_calibration_error_perfect_confident_model_is_zero():
    assert expected_calibration_error([0, 1], [[1.0, 0.0], [0.0, 1.0]]) == 0.0


def test_reliability_curve_bins():
    y = [0, 1, 1, 0]
    probs = [[0.95, 0.05], [0.95, 0.05], [0.45, 0.55], [0.75, 0.25]]
    curve = reliability_curve(y, probs, n_bins=4)
    assert curve["bin_centers"] == pytest.approx([0.125, 0.375, 0.625, 0.875])
    # bins are ((m-1)/M, m/M] (Guo et al.): .75 closes bin 2, it does not open bin 3
    assert curve["count"] == [0, 0, 2, 2]
    assert curve["accuracy"][:2] == [None, None]
    assert curve["accuracy"][2:] == pytest.approx([1.0, 0.5])
    assert curve["confidence"][2:] == pytest.approx([(0.55 + 0.75) / 2, 0.95])
    _assert_plain_json(curve)


def test_referable_operating_point_thresholds():
    # P(>=2) = .1 .3 .55 .9 1 1, truth FFFTTT
    assert referable_operating_point(Y_B, P_B, 0.5) == {
        "sensitivity": 1.0, "specificity": 2 / 3, "tp": 3, "fp": 1, "tn": 2, "fn": 0,
    }
    op = referable_operating_point(Y_B, P_B, 0.95)
    assert (op["tp"], op["fp"], op["tn"], op["fn"]) == (2, 0, 3, 1)
    assert op["sensitivity"] == pytest.approx(2 / 3) and op["specificity"] == 1.0
    _assert_plain_json(op)


def test_roc_points_and_one_vs_rest_curves():
    roc = roc_points([0, 1, 1], [0.1, 0.5, 0.7])
    assert roc == {
        "fpr": [0.0, 0.0, 0.0, 1.0],
        "tpr": [0.0, 0.5, 1.0, 1.0],
        "thresholds": [None, 0.7, 0.5, 0.1],
    }
    curves = one_vs_rest_curves(Y_B, P_B, 1)
    assert curves["roc"]["auc"] == pytest.approx(0.8)
    assert curves["pr"]["average_precision"] == pytest.approx(0.5)
    _assert_plain_json(curves)
    json.dumps(curves, allow_nan=False)


def test_one_vs_rest_curves_absent_class_is_none():
    curves = one_vs_rest_curves([0, 0], [[0.9, 0.1], [0.6, 0.4]], 1)
    assert curves == {"roc": None, "pr": None}
    only = one_vs_rest_curves([1, 1], [[0.9, 0.1], [0.6, 0.4]], 1)
    assert only["roc"] is None and only["pr"]["average_precision"] == 1.0


def test_bayes_decision_expected_cost():
    # cost of predicting 0 = 5 * p1, of predicting 1 = 1 * p0: row0 1.0 vs .8, row1 .5 vs .9
    assert bayes_decision([[0.8, 0.2], [0.9, 0.1]], [[0, 1], [5, 0]]).tolist() == [1, 0]
    # 0-1 cost is argmax
    assert bayes_decision(P_B, 1 - np.eye(5)).tolist() == [0, 1, 2, 2, 3, 3]


def test_selection_metrics_and_direction():
    assert SELECTION_METRICS == (
        "accuracy", "balanced_accuracy", "macro_f1", "qwk", "gmean", "ece", "mae_macro",
    )
    assert HIGHER_IS_BETTER["ece"] is False and HIGHER_IS_BETTER["mae_macro"] is False
    assert metric_is_better("macro_f1", 0.6, 0.5) is True
    assert metric_is_better("macro_f1", 0.5, 0.5) is False
    assert metric_is_better("ece", 0.04, 0.05) is True
    assert metric_is_better("mae_macro", 0.6, 0.5) is False
    assert metric_is_better("qwk", -1.0, None) is True
    m = compute_metrics(Y_A, P_A, ["a", "b"])
    assert selection_score(m, "qwk") == pytest.approx(0.4)
    assert selection_score(m, "ece") == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "y, probs, names, match",
    [
        ([0, 1], [0.5, 0.5], ["a", "b"], r"probs must be 2-D \[N, C\], got shape \(2,\)"),
        ([0, 1], np.full((2, 2, 1), 0.5), ["a", "b"], r"got shape \(2, 2, 1\)"),
        ([], np.zeros((0, 2)), ["a", "b"], r"no samples"),
        ([0], [[1.0]], ["a"], r"at least 2 classes"),
        ([0, 1, 1], P_A[:2], ["a", "b"], r"y_true has 3 labels but probs has 2 rows"),
        ([0, 5], P_A[:2], ["a", "b"], r"labels \[5\] outside range\(2\); valid labels are 0..1"),
        ([-1, 0], P_A[:2], ["a", "b"], r"labels \[-1\] outside range\(2\)"),
        ([0.5, 1.0], P_A[:2], ["a", "b"], r"y_true must hold integer class indices"),
        ([[0, 1]], P_A[:2], ["a", "b"], r"y_true must be 1-D"),
        ([0, 1], P_A[:2], ["a", "b", "c"], r"class_names has 3 names but probs has 2 classes"),
        ([0, 1], [[2.0, -1.0], [0.5, 0.5]], ["a", "b"], r"\[0, 1\].*not logits"),
        ([0, 1], [[0.5, 0.2], [0.5, 0.5]], ["a", "b"], r"row 0 summing to 0.7"),
        ([0, 1], [[np.nan, 0.5], [0.5, 0.5]], ["a", "b"], r"NaN or inf"),
    ],
)
def test_compute_metrics_rejects_bad_input(y, probs, names, match):
    with pytest.raises(ValueError, match=match):
        compute_metrics(y, probs, names)


def test_compute_metrics_rejects_bad_y_pred():
    with pytest.raises(ValueError, match=r"y_pred holds labels \[2\] outside range\(2\)"):
        compute_metrics(Y_A, P_A, ["a", "b"], y_pred=[0, 2, 1])
    with pytest.raises(ValueError, match=r"y_pred has 2 labels but probs has 3 rows"):
        compute_metrics(Y_A, P_A, ["a", "b"], y_pred=[0, 1])


def test_helpers_reject_bad_input():
    with pytest.raises(ValueError, match=r"n_bins must be a positive int, got 0"):
        expected_calibration_error(Y_A, P_A, n_bins=0)
    with pytest.raises(ValueError, match=r"n_bins must be a positive int, got 2.5"):
        reliability_curve(Y_A, P_A, n_bins=2.5)
    with pytest.raises(ValueError, match=r"cost_matrix must have shape \(2, 2\).*got \(3, 3\)"):
        bayes_decision(P_A, np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"cost_matrix contains NaN or inf"):
        bayes_decision(P_A, [[0, np.inf], [1, 0]])
    with pytest.raises(ValueError, match=r"threshold must be a number in \[0, 1\], got 1.5"):
        referable_operating_point(Y_B, P_B, 1.5)
    with pytest.raises(ValueError, match=r"5-grade DR scale, got shape \(\d+, 2\)"):
        referable_operating_point(Y_A, P_A, 0.5)
    with pytest.raises(ValueError, match=r"class_index must be an int in range\(2\), got 2"):
        one_vs_rest_curves(Y_A, P_A, 2)
    with pytest.raises(ValueError, match=r"needs positive and negative samples, got only neg"):
        roc_points([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"must hold 0/1 or bool, got values \[0, 2\]"):
        roc_points([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"1-D of equal length, got shapes \(2,\) and \(3,\)"):
        roc_points([0, 1], [0.1, 0.2, 0.3])


def test_selection_rejects_unknown_metric():
    valid = r"valid: accuracy, balanced_accuracy, macro_f1, qwk, gmean, ece, mae_macro"
    with pytest.raises(ValueError, match=r"unknown selection metric 'f1'; " + valid):
        selection_score({"f1": 1.0}, "f1")
    with pytest.raises(ValueError, match=r"unknown selection metric 'auc'"):
        metric_is_better("auc", 1.0, 0.5)
    with pytest.raises(ValueError, match=r"metrics has no number for 'qwk' \(got None\)"):
        selection_score({"macro_f1": 0.5}, "qwk")
