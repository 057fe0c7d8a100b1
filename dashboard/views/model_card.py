"""Model card: what an exported model says about itself, how it was trained, fp32 vs int8."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import figures, state, tables, ui
from models.registry import REQUIRED_METRICS

st.title("Model card")
runs = ui.require_runs()
run = ui.pick_run("Variant", runs, key="card_variant")

# ---- the ONNX card
st.subheader("ONNX model card")
if run.onnx_path is None:
    st.info(f"{run.name} is not exported yet: `python -m export {run.path}` writes model.onnx with its card.")
    card = None
else:
    try:
        grader = state.grader(run, "fp32")
    except Exception as exc:
        st.error(f"**{run.name}**: cannot load model.onnx ({exc})")
        card = None
    else:
        card = grader.card
        c = st.columns(4)
        c[0].metric("Classes", len(grader.class_names))
        c[1].metric("Input size", f"{card.get('input_size')} px")
        c[2].metric("Precision", card.get("precision", "fp32"))
        c[3].metric("Provider", grader.provider.replace("ExecutionProvider", ""))
        summary = {k: card.get(k) for k in ("name", "strategy_parts", "network", "class_names", "decision_rule", "preprocess", "data_hash")}
        st.dataframe(pd.DataFrame(tables.flat_items(summary), columns=["field", "value"]), hide_index=True, width="stretch", key="card_table")
        with st.expander("Full card (JSON)"):
            st.json(card)

# ---- training config
st.subheader("Training")
cfg = run.config
strategy = cfg.get("strategy") if isinstance(cfg.get("strategy"), dict) else {}
c = st.columns(4)
c[0].metric("Strategy", run.strategy or "?")
c[1].metric("Epochs", cfg.get("epochs", "?"))
c[2].metric("Image size", cfg.get("image_size", "?"))
c[3].metric("Device", cfg.get("device_used", cfg.get("device", "?")))
if cfg.get("strategy_parts"):
    st.caption(f"Composition: {cfg['strategy_parts']}")
if strategy.get("description"):
    st.caption(strategy["description"])
with st.expander("config.json"):
    st.json(cfg)

try:
    hist = state.history(run)
except (FileNotFoundError, ValueError) as exc:
    st.warning(str(exc))
else:
    left, right = st.columns(2)
    left.plotly_chart(figures.history_figure(hist, ["train_loss", "val_loss"], title="Loss per epoch"), key="hist_loss")
    right.plotly_chart(figures.history_figure(hist, ["macro_f1", "balanced_accuracy", "qwk", "gmean", "accuracy"], title="Validation metrics per epoch"), key="hist_metrics")

# ---- fp32 vs int8
st.subheader("fp32 vs int8")
int8 = state.read_json(run.path / "metrics.int8.json")
if int8 is None:
    st.info("No int8 model measured yet: `python -m export RUN_DIR --quantize int8` writes model.int8.onnx and metrics.int8.json.")
else:
    keys = [k for k in REQUIRED_METRICS if k in int8 and k in run.metrics]
    st.plotly_chart(figures.precision_comparison({"fp32": run.metrics, "int8": int8}, keys), key="int8_bars")
    sizes = {p: f"{path.stat().st_size / 1e6:.2f} MB" for p, path in (("fp32", run.onnx_path), ("int8", run.int8_path)) if path is not None and path.exists()}
    st.dataframe(pd.DataFrame({"fp32": [run.metrics.get(k) for k in keys], "int8": [int8.get(k) for k in keys]}, index=keys),
                 width="stretch", key="int8_table")
    if sizes:
        st.caption("Model size: " + ", ".join(f"{p} {s}" for p, s in sizes.items()))
bench = state.read_json(run.path / "bench.json")
if bench:
    latencies = {k: float(v["b1_ms"]) for k, v in bench.items() if isinstance(v, dict) and isinstance(v.get("b1_ms"), (int, float))}
    if latencies:
        st.plotly_chart(figures.latency_bars(latencies), key="bench")
    with st.expander("bench.json"):
        st.json(bench)
report = state.read_json(run.path / "export_report.json")
if report:
    with st.expander("Export report (PyTorch vs ONNX Runtime parity)"):
        st.json(report)
