"""Grade: upload scans, get a grade, probabilities, referable-DR flag and a heat-map per variant."""

from __future__ import annotations

import hashlib

import streamlit as st

from dashboard import figures, grading, state, ui
from dashboard.settings import UPLOAD_TYPES, max_upload_bytes, max_upload_mb
from models.grade import cam_overlay

#: Scans shown per page of results (a folder upload can hold hundreds).
SCANS_PER_PAGE = 10

st.title("Grade scans")
runs = ui.require_runs(need_onnx=True)

# ---- settings
names = [r.name for r in runs]
best = ui.default_run(runs).name
with st.sidebar:
    chosen = st.multiselect("Model variants", names, default=[best], key="variants",
                            help="Default: the best exported run by macro F1. Choose several to see their verdicts side by side.")
    precision = st.radio("Precision", ["fp32", "int8"], horizontal=True, key="precision",
                         help="int8 uses model.int8.onnx where the run has one (fp32 otherwise).")
    threshold = st.slider("Referable-DR threshold: refer when P(grade ≥ 2) ≥", 0.0, 1.0, 0.5, 0.01, key="threshold")
    opacity = st.slider("Heat-map opacity", 0.0, 1.0, 0.45, 0.05, key="opacity")
if not chosen:
    st.info("Choose at least one model variant in the sidebar.")
    st.stop()
variants = [runs[names.index(n)] for n in chosen]

limit_mb = max_upload_mb()
files = list(st.file_uploader(f"Fundus scans ({', '.join(UPLOAD_TYPES)}; up to {limit_mb:g} MB each)", type=list(UPLOAD_TYPES),
                              accept_multiple_files=True, key="scans", max_upload_size=max(200, int(limit_mb) + 1)) or [])
with st.expander("Upload a whole folder"):
    files += list(st.file_uploader("Folder of scans", type=list(UPLOAD_TYPES), accept_multiple_files="directory", key="scan_folder",
                                   max_upload_size=max(200, int(limit_mb) + 1)) or [])

# ---- the models
graders = {}
for run in variants:
    try:
        graders[run.name] = state.grader(run, precision)
    except Exception as exc:  # a damaged model file: say so, keep the other variants
        st.error(f"**{run.name}**: cannot load the model ({exc})")
if not graders:
    st.stop()
active = [r for r in variants if r.name in graders]
st.dataframe(
    [{"variant": r.name, "precision": "int8" if precision == "int8" and r.int8_path else "fp32",
      "provider": graders[r.name].provider, "model file": graders[r.name].path.name,
      "classes": len(graders[r.name].class_names)} for r in active],
    hide_index=True, width="stretch")
if precision == "int8" and any(r.int8_path is None for r in active):
    st.caption("Runs without model.int8.onnx use fp32: " + ", ".join(r.name for r in active if r.int8_path is None))

if not files:
    st.info("Upload one or more fundus scans to grade them.")
    st.stop()

# ---- grading
uploads = [grading.Upload(f.name, f.getvalue(), key=f"{f.file_id}:{hashlib.sha1(f.getvalue()).hexdigest()}") for f in files]
good, rejected = grading.split_by_size(uploads, max_upload_bytes())
with st.spinner(f"Grading {len(good)} scan(s) ..."):
    results = {r.name: state.graded(r, precision, good) for r in active}

for bad in rejected:
    st.error(f"**{bad.name}**: {bad.reason}", icon=":material/error:")
first = results[active[0].name]
for upload, res in zip(good, first):
    if not res.ok:
        st.error(f"**{upload.name}**: {res.error}", icon=":material/error:")
n_ok = sum(r.ok for r in first)
st.success(f"Graded {n_ok} of {len(uploads)} file(s)." if n_ok else "No scan could be graded.")

# ---- per scan
ok_idx = [i for i, res in enumerate(first) if res.ok]
if ok_idx:
    pages = (len(ok_idx) + SCANS_PER_PAGE - 1) // SCANS_PER_PAGE
    page = st.number_input("Results page", 1, pages, 1, key="results_page") if pages > 1 else 1
    for i in ok_idx[(page - 1) * SCANS_PER_PAGE: page * SCANS_PER_PAGE]:
        upload = good[i]
        view = state.inspect(upload)
        with st.container(border=True):
            st.subheader(upload.name, divider="gray")
            cols = st.columns([1] + [2] * len(active))
            with cols[0]:
                if view.thumbnail is not None:
                    st.image(view.thumbnail, caption="uploaded scan", width="stretch")
                for w in view.warnings:
                    st.warning(f"Image quality: {w}", icon=":material/warning:")
                if not view.warnings:
                    st.caption("No image-quality problems found.")
            for col, run in zip(cols[1:], active):
                res = results[run.name][i]
                g = graders[run.name]
                with col:
                    st.markdown(f"**{run.name}** · Grade {res.grade}: {res.grade_name}")
                    flag = grading.referable_flag(res.probs, g.class_names, threshold)
                    if flag is not None:
                        p, refer = flag
                        (st.error if refer else st.success)(
                            f"{'Referable DR' if refer else 'Not referable'}: P(grade ≥ 2) = {p:.2f} (threshold {threshold:.2f})")
                    inner = st.columns(2)
                    with inner[0]:
                        st.plotly_chart(figures.probability_bars(res.probs, g.class_names, predicted=res.grade),
                                        key=f"probs-{i}-{run.name}", config={"displayModeBar": False})
                    with inner[1]:
                        if res.cam is not None and res.prepared is not None:
                            st.image(cam_overlay(res.prepared, res.cam, opacity), caption="heat-map of the predicted grade", width="stretch")
                        elif res.prepared is not None:
                            st.image(res.prepared, caption="network input (no heat-map output)", width="stretch")
                    st.caption(f"{res.latency_ms:.1f} ms on {g.provider}")

# ---- table and CSV
st.subheader("Results table")
for run in active:
    n_classes = len(graders[run.name].class_names)
    rows = results[run.name] + grading.rejected_results(rejected)
    table = grading.results_frame(rows, n_classes)
    if len(active) > 1:
        st.markdown(f"**{run.name}**")
    st.dataframe(table, hide_index=True, width="stretch", key=f"table-{run.name}")
    st.download_button(f"Download CSV ({run.name})", grading.results_csv(rows, n_classes),
                       file_name=f"grades-{run.name}.csv", mime="text/csv", key=f"csv-{run.name}")
