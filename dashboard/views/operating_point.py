"""Operating point: the referable-DR threshold and a cost-sensitive (Bayes) multi-class decision."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import figures, state, tables, ui
from models.metrics import DR_GRADE_NAMES, bayes_decision, compute_metrics, referable_operating_point, roc_points

st.title("Operating point")
runs = ui.require_runs()
run = ui.pick_run("Variant", runs, key="op_variant")
preds = state.predictions(run)
class_names = run.class_names
y = preds["true"].to_numpy()
probs = tables.probs_of(preds)

# ---- referable DR
st.subheader("Referable DR (grade ≥ 2)")
if len(class_names) != len(DR_GRADE_NAMES):
    st.info(f"Referable DR needs the 5-grade DR scale; {run.name} has {len(class_names)} classes. The cost-matrix decision below still applies.")
else:
    threshold = st.slider("Refer when P(grade ≥ 2) ≥", 0.0, 1.0, 0.5, 0.01, key="op_threshold")
    op = referable_operating_point(y, probs, threshold)
    c = st.columns(4)
    c[0].metric("Sensitivity", f"{op['sensitivity']:.3f}")
    c[1].metric("Specificity", f"{op['specificity']:.3f}")
    c[2].metric("Referred", f"{op['tp'] + op['fp']} of {len(y)}")
    c[3].metric("Missed referable", f"{op['fn']}")
    left, right = st.columns(2)
    left.plotly_chart(figures.binary_confusion(op["tp"], op["fp"], op["tn"], op["fn"]), key="op_cm")
    score = tables.referable_scores(probs, class_names)
    positive = y >= 2
    if positive.all() or not positive.any():
        right.info("The test split holds only one side of the referable line: no ROC curve.")
    else:
        roc = roc_points(positive, score)
        auc = (run.metrics.get("referable") or {}).get("auc")
        right.plotly_chart(figures.roc_figure({run.name: {**roc, "auc": auc}}, title="Referable-DR ROC",
                                              point=(1.0 - op["specificity"], op["sensitivity"]), point_label=f"threshold {threshold:.2f}"),
                           key="op_roc")

# ---- cost-sensitive decision
st.subheader("Cost-sensitive decision")
st.caption("Cost of predicting the column grade when the truth is the row grade. The decision picks the grade of "
           "least expected cost under the model's probabilities (Bayes rule); a zero diagonal and |i − j| costs "
           "(the default) favour near misses, a large cost for missing severe grades makes the model refer more.")
if st.toggle("Use a cost matrix", key="use_costs"):
    costs = st.data_editor(tables.ordinal_costs(class_names), key="costs", width="stretch")
    try:
        decided = bayes_decision(probs, costs.to_numpy(dtype=float))
    except ValueError as exc:
        st.error(f"Cost matrix: {exc}")
        st.stop()
    base = run.metrics
    bayes = compute_metrics(y, probs, class_names, y_pred=decided)
    keys = ["accuracy", "balanced_accuracy", "macro_f1", "qwk", "gmean", "mae_macro"]
    st.dataframe(pd.DataFrame({"model's rule": [base.get(m) for m in keys], "cost matrix": [bayes[m] for m in keys]}, index=keys),
                 width="stretch", key="bayes_metrics")
    st.plotly_chart(figures.confusion_grid({"model's rule": base["confusion_matrix"], "cost matrix": bayes["confusion_matrix"]}, class_names),
                    key="bayes_cm")
