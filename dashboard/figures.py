"""Plotly figures for the dashboard: pure functions from numbers to ``go.Figure``.

No Streamlit and no model code here, so every figure can be built and checked in a plain
test. Inputs are the plain structures :mod:`models.metrics` and :mod:`models.registry`
return (lists, dicts, DataFrames).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

#: One colour per variant, stable across figures of a page (plotly's default qualitative set).
PALETTE = ("#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692", "#B6E880", "#FF97FF", "#FECB52")
#: Sequential scale of the confusion matrices (one scale shared by every panel).
HEATMAP_SCALE = "Blues"

_MARGIN = dict(l=10, r=10, t=40, b=10)


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _layout(fig: go.Figure, title: str | None = None, height: int = 360, **kw) -> go.Figure:
    kw.setdefault("margin", _MARGIN)
    fig.update_layout(title=title, height=height, template="plotly_white", **kw)
    return fig


# --------------------------------------------------------------------------- grading


def probability_bars(probs: Sequence[float], class_names: Sequence[str], *, predicted: int | None = None, height: int = 220) -> go.Figure:
    """Horizontal bars of one scan's class probabilities; the predicted grade is highlighted.

    Examples
    --------
    >>> fig = probability_bars([0.7, 0.3], ["a", "b"], predicted=0)
    >>> list(fig.data[0].x)
    [0.7, 0.3]
    """
    p = [float(v) for v in probs]
    labels = [f"{i} {n}" for i, n in enumerate(class_names)]
    colours = [colour(1) if i == predicted else "#9aa5b1" for i in range(len(p))]
    fig = go.Figure(go.Bar(x=p, y=labels, orientation="h", marker_color=colours, text=[f"{v:.2f}" for v in p], textposition="auto"))
    fig.update_xaxes(range=[0, 1], title=None)
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, None, height, showlegend=False, margin=dict(l=10, r=10, t=10, b=10))


# --------------------------------------------------------------------------- comparison


def metric_bars(table: pd.DataFrame, metric: str, *, higher_is_better: bool | None = None) -> go.Figure:
    """One bar per variant for ``metric`` (a column of :func:`models.registry.comparison_table`)."""
    frame = table[["name", metric]].dropna()
    if higher_is_better is not None:
        frame = frame.sort_values(metric, ascending=not higher_is_better)
    fig = go.Figure(go.Bar(x=frame["name"], y=frame[metric], marker_color=[colour(i) for i in range(len(frame))],
                           text=[f"{v:.3f}" for v in frame[metric]], textposition="auto"))
    arrow = "" if higher_is_better is None else (" (higher is better)" if higher_is_better else " (lower is better)")
    fig.update_yaxes(title=metric)
    return _layout(fig, f"{metric}{arrow}", showlegend=False)


def per_class_recall(table: pd.DataFrame) -> go.Figure:
    """Recall per class, bars grouped by variant (the ``recall_<class>`` columns)."""
    columns = [c for c in table.columns if c.startswith("recall_")]
    classes = [c[len("recall_"):] for c in columns]
    fig = go.Figure()
    for i, (_, row) in enumerate(table.iterrows()):
        fig.add_bar(name=str(row["name"]), x=classes, y=[row[c] for c in columns], marker_color=colour(i))
    fig.update_yaxes(title="recall", range=[0, 1.05])
    return _layout(fig, "Recall per class (the rare grades are what imbalance strategies are for)", barmode="group")


def normalise_rows(matrix: Sequence[Sequence[float]]) -> np.ndarray:
    """Each row divided by its sum (a row of zeros stays zeros): recall on the diagonal.

    Examples
    --------
    >>> normalise_rows([[1, 3], [0, 0]]).tolist()
    [[0.25, 0.75], [0.0, 0.0]]
    """
    m = np.asarray(matrix, dtype=float)
    sums = m.sum(axis=1, keepdims=True)
    return np.divide(m, sums, out=np.zeros_like(m), where=sums > 0)


def confusion_grid(matrices: Mapping[str, Sequence[Sequence[float]]], class_names: Sequence[str], *, normalised: bool = False) -> go.Figure:
    """Confusion matrices side by side with ONE colour scale (so panels compare by eye).

    Rows are true classes, columns predictions. ``normalised`` divides each row by its sum.

    Examples
    --------
    >>> fig = confusion_grid({"a": [[2, 0], [1, 1]], "b": [[1, 1], [0, 2]]}, ["x", "y"])
    >>> len(fig.data), fig.data[0].coloraxis == fig.data[1].coloraxis
    (2, True)
    """
    names = list(matrices)
    n = max(1, len(names))
    fig = make_subplots(rows=1, cols=n, subplot_titles=names, horizontal_spacing=0.06)
    labels = [str(c) for c in class_names]
    shown = {name: (normalise_rows(m) if normalised else np.asarray(m, dtype=float)) for name, m in matrices.items()}
    zmax = max((float(m.max()) for m in shown.values() if m.size), default=1.0) or 1.0
    for i, name in enumerate(names, start=1):
        m = shown[name]
        text = [[f"{v:.2f}" if normalised else f"{int(v)}" for v in row] for row in m]
        fig.add_trace(go.Heatmap(z=m.tolist(), x=labels, y=labels, coloraxis="coloraxis", text=text, texttemplate="%{text}",
                                 hovertemplate="true %{y}<br>predicted %{x}<br>%{text}<extra>" + name + "</extra>"), row=1, col=i)
        fig.update_xaxes(title_text="predicted", row=1, col=i)
        fig.update_yaxes(autorange="reversed", row=1, col=i, title_text="true" if i == 1 else None, showticklabels=i == 1)
    fig.update_layout(coloraxis=dict(colorscale=HEATMAP_SCALE, cmin=0, cmax=zmax, colorbar=dict(title="share" if normalised else "scans")))
    return _layout(fig, "Confusion matrices (" + ("row-normalised" if normalised else "counts") + ", one colour scale)", height=400 + 10 * len(labels),
                   margin=dict(l=10, r=10, t=80, b=10))


def binary_confusion(tp: int, fp: int, tn: int, fn: int, *, labels: tuple[str, str] = ("not referable", "referable")) -> go.Figure:
    """The 2 x 2 matrix of a binary decision (rows true, columns predicted)."""
    z = [[tn, fp], [fn, tp]]
    text = [[f"TN {tn}", f"FP {fp}"], [f"FN {fn}", f"TP {tp}"]]
    fig = go.Figure(go.Heatmap(z=z, x=list(labels), y=list(labels), text=text, texttemplate="%{text}", colorscale=HEATMAP_SCALE, showscale=False))
    fig.update_xaxes(title="predicted")
    fig.update_yaxes(title="true", autorange="reversed")
    return _layout(fig, "Referable DR at this threshold", height=320)


def roc_figure(curves: Mapping[str, Mapping], *, title: str = "ROC", point: tuple[float, float] | None = None, point_label: str = "operating point") -> go.Figure:
    """ROC curves (``{name: {fpr, tpr, auc?}}``), the chance diagonal and an optional marked point."""
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#bbb"), name="chance", hoverinfo="skip")
    for i, (name, c) in enumerate(curves.items()):
        auc = c.get("auc")
        label = f"{name} (AUC {auc:.3f})" if isinstance(auc, (int, float)) else name
        fig.add_scatter(x=c["fpr"], y=c["tpr"], mode="lines", name=label, line=dict(color=colour(i), shape="hv"))
    if point is not None:
        fig.add_scatter(x=[point[0]], y=[point[1]], mode="markers", name=point_label, marker=dict(size=14, color="black", symbol="x"))
    fig.update_xaxes(title="false positive rate (1 - specificity)", range=[-0.01, 1.01])
    fig.update_yaxes(title="true positive rate (sensitivity)", range=[-0.01, 1.01])
    return _layout(fig, title, height=400)


def pr_figure(curves: Mapping[str, Mapping], *, title: str = "Precision-recall") -> go.Figure:
    """Precision-recall curves (``{name: {precision, recall, average_precision?}}``)."""
    fig = go.Figure()
    for i, (name, c) in enumerate(curves.items()):
        ap = c.get("average_precision")
        label = f"{name} (AP {ap:.3f})" if isinstance(ap, (int, float)) else name
        fig.add_scatter(x=c["recall"], y=c["precision"], mode="lines", name=label, line=dict(color=colour(i), shape="hv"))
    fig.update_xaxes(title="recall", range=[-0.01, 1.01])
    fig.update_yaxes(title="precision", range=[-0.01, 1.05])
    return _layout(fig, title, height=400)


def reliability_figure(curves: Mapping[str, Mapping]) -> go.Figure:
    """Reliability diagram: top-label accuracy against confidence per bin, one line per variant."""
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#bbb"), name="perfect calibration", hoverinfo="skip")
    for i, (name, c) in enumerate(curves.items()):
        pts = [(conf, acc, n) for conf, acc, n in zip(c["confidence"], c["accuracy"], c["count"]) if conf is not None]
        fig.add_scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=name, line=dict(color=colour(i)),
                        customdata=[p[2] for p in pts], hovertemplate="confidence %{x:.2f}<br>accuracy %{y:.2f}<br>%{customdata} scans")
    fig.update_xaxes(title="confidence (top label)", range=[0, 1])
    fig.update_yaxes(title="accuracy", range=[0, 1.02])
    return _layout(fig, "Reliability diagram", height=400)


# --------------------------------------------------------------------------- model card


def history_figure(history: pd.DataFrame, columns: Sequence[str], *, title: str) -> go.Figure:
    """Per-epoch lines of ``columns`` (those present in ``history``)."""
    fig = go.Figure()
    for i, col in enumerate(c for c in columns if c in history.columns):
        fig.add_scatter(x=history["epoch"], y=history[col], mode="lines+markers", name=col, line=dict(color=colour(i)))
    fig.update_xaxes(title="epoch", dtick=1 if len(history) <= 20 else None)
    return _layout(fig, title, height=320)


def precision_comparison(metrics: Mapping[str, Mapping[str, float]], keys: Sequence[str]) -> go.Figure:
    """Grouped bars of scalar metrics per precision (``{"fp32": metrics, "int8": metrics}``)."""
    fig = go.Figure()
    for i, (precision, m) in enumerate(metrics.items()):
        shown = [k for k in keys if isinstance(m.get(k), (int, float))]
        fig.add_bar(name=precision, x=shown, y=[m[k] for k in shown], marker_color=colour(i))
    return _layout(fig, "Test metrics: fp32 vs int8", barmode="group")


def latency_bars(rows: Mapping[str, float], *, title: str = "Latency, batch of 1 (ms)") -> go.Figure:
    """One bar per engine (``{"ort_fp32": 3.1, ...}``)."""
    names = list(rows)
    fig = go.Figure(go.Bar(x=names, y=[rows[n] for n in names], marker_color=[colour(i) for i in range(len(names))],
                           text=[f"{rows[n]:.2f}" for n in names], textposition="auto"))
    fig.update_yaxes(title="ms")
    return _layout(fig, title, showlegend=False, height=300)


# --------------------------------------------------------------------------- data


def class_distribution(counts: Mapping[str, Sequence[int]], class_names: Sequence[str]) -> go.Figure:
    """Scans per class, stacked by split (``{"train": [...], "val": [...], "test": [...]}``)."""
    labels = [f"{i} {n}" for i, n in enumerate(class_names)]
    fig = go.Figure()
    for i, (split, c) in enumerate(counts.items()):
        fig.add_bar(name=split, x=labels, y=[int(v) for v in c], marker_color=colour(i), text=[int(v) for v in c], textposition="inside")
    totals = np.sum([np.asarray(c) for c in counts.values()], axis=0) if counts else []
    fig.add_scatter(x=labels, y=list(totals), mode="text", text=[f"{int(t)}" for t in totals], textposition="top center", showlegend=False, hoverinfo="skip")
    fig.update_yaxes(title="scans")
    return _layout(fig, "Class distribution", barmode="stack")


def sampler_distribution(dists: Mapping[str, Mapping[str, Sequence[int]]], class_names: Sequence[str]) -> go.Figure:
    """What each run's sampler fed the network: natural counts vs the first and last epoch.

    ``dists`` maps a run name to its ``config["sampler_distribution"]`` (``before``,
    ``epoch_first``, ``epoch_last``: scans per class in one epoch).
    """
    names = list(dists)
    n = max(1, len(names))
    fig = make_subplots(rows=1, cols=n, subplot_titles=names, shared_yaxes=True, horizontal_spacing=0.04)
    labels = [str(i) for i in range(len(class_names))]
    stages = (("before", "natural (train split)"), ("epoch_first", "first epoch"), ("epoch_last", "last epoch"))
    for col, name in enumerate(names, start=1):
        for s, (key, label) in enumerate(stages):
            values = dists[name].get(key)
            if values is None:
                continue
            fig.add_bar(name=label, x=labels, y=list(values), marker_color=colour(s), legendgroup=key, showlegend=col == 1, row=1, col=col)
        fig.update_xaxes(title_text="grade", row=1, col=col)
    fig.update_yaxes(title_text="scans per epoch", row=1, col=1)
    return _layout(fig, "Effective class distribution per sampler", barmode="group", height=380, margin=dict(l=10, r=10, t=80, b=10))
