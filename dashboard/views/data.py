"""Data: a collection's class distribution, sample scans per grade, preprocessing, samplers."""

from __future__ import annotations

import math

import streamlit as st

from dashboard import figures, state, tables, ui
from dashboard.settings import UPLOAD_TYPES, default_data_dir
from models.data import SPLITS, DataError
from models.preprocess import ImageError, PreprocessSpec, open_image, prepare_rgb

#: Side of the preprocessing preview images (px).
PREVIEW_SIZE = 256

st.title("Data")
path = st.text_input("Dataset folder (or labels CSV)", value=default_data_dir(), key="data_path",
                     help="A folder with labels.csv / trainLabels.csv (EyePACS) / train.csv (APTOS), a CSV file, or one sub-folder per class.")
try:
    coll = state.collection(path)
except DataError as exc:
    st.error(f"**{path}**: {exc}")
    st.info("Create the synthetic set with `python -m training.synth --out data/synth --n 2000 --size 128 --seed 0`.")
    st.stop()

# ---- distribution
ratio = coll.imbalance_ratio("train")
c = st.columns(4)
c[0].metric("Scans", len(coll.table))
c[1].metric("Classes", coll.num_classes)
c[2].metric("Imbalance ratio (train)", f"{ratio:.1f}" if math.isfinite(ratio) else "∞", help="Largest over smallest class count in the training split.")
c[3].metric("Source", coll.source)
st.plotly_chart(figures.class_distribution({s: coll.counts(s).tolist() for s in SPLITS}, coll.class_names), key="distribution")
if coll.problems:
    st.warning(f"{coll.skipped} bad row(s) skipped:\n\n" + "\n".join(f"- {p}" for p in coll.problems))
with st.expander("Summary"):
    st.code(coll.summary(), language=None)

# ---- gallery
st.subheader("Sample scans per grade")
samples = tables.sample_per_class(coll.table, n=ui.GRID_COLUMNS, seed=0)
for label, frame in samples.items():
    st.markdown(f"**{label} {coll.class_names[label]}** ({int(coll.counts()[label])} scans)")
    ui.thumbnail_grid(frame, ["image"], limit=ui.GRID_COLUMNS, size=128)

# ---- preprocessing preview
st.subheader("Preprocessing preview")
left, right = st.columns(2)
image_id = left.selectbox("Scan from the collection", coll.table["image"].tolist(), key="preview_image")
uploaded = right.file_uploader("... or upload one", type=list(UPLOAD_TYPES), key="preview_upload")
try:
    if uploaded is not None:
        raw = open_image(uploaded.getvalue(), name=uploaded.name)
        shown_name = uploaded.name
    else:
        row = coll.table.loc[coll.table["image"] == image_id].iloc[0]
        raw = state.decoded(str(row["path"]))
        shown_name = f"{image_id} (grade {row['label']})"
except ImageError as exc:
    st.error(str(exc))
else:
    cropped = prepare_rgb(raw, PreprocessSpec(mode="fundus", size=PREVIEW_SIZE))
    graham = prepare_rgb(raw, PreprocessSpec(mode="fundus", size=PREVIEW_SIZE, ben_graham=True))
    cols = st.columns(3)
    cols[0].image(raw, caption=f"raw: {shown_name}, {raw.width} x {raw.height}", width="stretch")
    cols[1].image(cropped, caption=f"cropped to the field of view, {PREVIEW_SIZE} px", width="stretch")
    cols[2].image(graham, caption="Ben Graham local-colour subtraction", width="stretch")

# ---- samplers
st.subheader("What the samplers fed the network")
_, runs = state.load_runs()
on_data = [r for r in tables.runs_on_data(runs, path) if isinstance(r.config.get("sampler_distribution"), dict)]
if not on_data:
    st.info("No run in the runs folder was trained on this collection (or its runs predate the sampler record). "
            "Train some with `python -m training.zoo --data " + path + " --out runs --preset quick`.")
else:
    names = [r.name for r in on_data]
    chosen = st.multiselect("Runs", names, default=names[:4], key="sampler_runs")
    dists = {r.name: r.config["sampler_distribution"] for r in on_data if r.name in chosen}
    if dists:
        st.plotly_chart(figures.sampler_distribution(dists, coll.class_names), key="samplers")
        st.caption("Scans per class in one epoch: the natural training split, and what the run's sampler drew in its first and last epoch.")
