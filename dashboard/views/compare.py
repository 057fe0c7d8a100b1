"""Compare: every variant's test metrics, confusion matrices, the scans behind them, curves."""

from __future__ import annotations

import streamlit as st

from dashboard import figures, state, tables, ui
from models.metrics import HIGHER_IS_BETTER, one_vs_rest_curves, reliability_curve
from models.registry import comparison_table

st.title("Compare variants")
runs = ui.require_runs()
by_name = {r.name: r for r in runs}

# ---- the table and one metric
table = comparison_table(runs)
st.subheader("All variants (test split)")
st.caption("Click a column header to sort.")
st.dataframe(table, hide_index=True, width="stretch", column_config={"name": st.column_config.TextColumn(pinned=True)}, key="comparison")

metric_options = [c for c in table.columns if c in HIGHER_IS_BETTER or c.startswith("referable_") or c in ("model_size_mb", "latency_ms")]
metric_options = [c for c in metric_options if table[c].notna().any()]
metric = st.selectbox("Metric", metric_options, index=metric_options.index("macro_f1") if "macro_f1" in metric_options else 0, key="metric")
direction = False if metric in ("model_size_mb", "latency_ms") else HIGHER_IS_BETTER.get(metric, True)
st.plotly_chart(figures.metric_bars(table, metric, higher_is_better=direction), key="metric-bars")
st.plotly_chart(figures.per_class_recall(table), key="recall-bars")

# ---- confusion matrices
st.subheader("Confusion matrices")
ranked = list(table.sort_values("macro_f1", ascending=False)["name"])
chosen = st.multiselect("Variants (2-4)", ranked, default=ranked[:2], max_selections=4, key="cm_variants")
if not chosen:
    st.info("Choose variants to compare.")
    st.stop()
class_sets = {tuple(by_name[n].class_names) for n in chosen}
if len(class_sets) > 1:
    st.error("These variants were trained on different class sets and cannot share a confusion matrix; choose variants of one dataset.")
    st.stop()
class_names = list(next(iter(class_sets)))
mode = st.radio("Cells", ["counts", "row-normalised"], horizontal=True, key="cm_mode")
matrices = {n: by_name[n].metrics["confusion_matrix"] for n in chosen if by_name[n].metrics.get("confusion_matrix")}
st.plotly_chart(figures.confusion_grid(matrices, class_names, normalised=mode == "row-normalised"), key="confusion")

# ---- drill-down into one cell
st.subheader("Drill down: the scans in one cell")
labels = [f"{i} {n}" for i, n in enumerate(class_names)]
c1, c2, c3 = st.columns(3)
focus = c1.selectbox("Variant", chosen, key="drill_variant")
t0, p0 = tables.most_confused_cell(by_name[focus].metrics.get("confusion_matrix", [[0]]))
true = c2.selectbox("True grade", range(len(labels)), index=t0, format_func=labels.__getitem__, key="drill_true")
pred = c3.selectbox("Predicted grade", range(len(labels)), index=p0, format_func=labels.__getitem__, key="drill_pred")
preds = {n: state.predictions(by_name[n]) for n in chosen}
cell = tables.cell_scans(preds[focus], true, pred, state.split_table(by_name[focus]))
st.caption(f"{len(cell)} test scan(s) of grade {labels[true]} predicted as {labels[pred]} by {focus}.")
ui.thumbnail_grid(cell, ["image"], limit=12)

# ---- disagreements
st.subheader("Where the chosen variants disagree")
if len(chosen) < 2:
    st.info("Choose at least two variants to see their disagreements.")
else:
    diff = tables.disagreements(preds, state.split_table(by_name[chosen[0]]))
    st.caption(f"{len(diff)} of {len(preds[chosen[0]])} test scans get different grades.")
    st.dataframe(diff.drop(columns=["path"]), hide_index=True, width="stretch", key="disagreements")
    ui.thumbnail_grid(diff, ["image", "true", *chosen], limit=12)

# ---- curves
st.subheader("One-vs-rest curves")
k = st.selectbox("Class", range(len(labels)), index=min(2, len(labels) - 1), format_func=labels.__getitem__, key="curve_class")
roc, pr = {}, {}
for n in chosen:
    frame = preds[n]
    curves = one_vs_rest_curves(frame["true"].to_numpy(), tables.probs_of(frame), int(k))
    if curves["roc"] is not None:
        roc[n] = curves["roc"]
    if curves["pr"] is not None:
        pr[n] = curves["pr"]
if not roc and not pr:
    st.info(f"The test split holds no scan of class {labels[k]} (or only that class): no curve to draw.")
else:
    left, right = st.columns(2)
    left.plotly_chart(figures.roc_figure(roc, title=f"ROC: {labels[k]} vs rest"), key="roc")
    right.plotly_chart(figures.pr_figure(pr, title=f"Precision-recall: {labels[k]} vs rest"), key="pr")

st.subheader("Calibration")
rel = {n: reliability_curve(preds[n]["true"].to_numpy(), tables.probs_of(preds[n]), n_bins=10) for n in chosen}
st.plotly_chart(figures.reliability_figure(rel), key="reliability")
