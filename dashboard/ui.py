"""Small Streamlit pieces shared by the pages: the first-run page, broken-run warnings,
the variant picker and thumbnail grids."""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import streamlit as st

from dashboard import state
from dashboard.settings import CREATE_RUNS_HELP
from models.registry import Run, best_run

#: Thumbnails per row in galleries.
GRID_COLUMNS = 6


def require_runs(*, need_onnx: bool = False) -> list[Run]:
    """The complete runs (with ``model.onnx`` when ``need_onnx``), listing broken ones.

    With nothing usable, shows how to create runs and stops the page.
    """
    root, runs = state.load_runs()
    if not runs:
        st.info(CREATE_RUNS_HELP.format(root=root), icon=":material/model_training:")
        st.stop()
    show_broken(runs)
    ok = [r for r in runs if r.ok]
    if not ok:
        st.error(f"None of the {len(runs)} run(s) in `{root}` is complete (see the warnings above). "
                 "Train new ones: `python -m training.zoo --data data/synth --out runs --preset quick`.")
        st.stop()
    if need_onnx:
        ok = state.exported(ok)
        if not ok:
            names = ", ".join(r.name for r in runs if r.ok)
            st.warning(f"No run in `{root}` is exported to ONNX yet ({names}). Export one with "
                       "`python -m export runs/<name>` (or run `make dashboard`), then reload.")
            st.stop()
    return ok


def show_broken(runs: Sequence[Run]) -> None:
    """One warning per damaged run, naming it and what is wrong (the page goes on)."""
    broken = [r for r in runs if not r.ok]
    if broken:
        with st.expander(f"{len(broken)} run(s) could not be loaded", expanded=True, icon=":material/warning:"):
            for r in broken:
                st.warning(f"**{r.name}**: {r.problem}")


def default_run(runs: Sequence[Run], metric: str = "macro_f1") -> Run:
    """The best run by ``metric`` (macro F1: the headline number for imbalanced grading)."""
    return best_run(runs, metric) or runs[0]


def pick_run(label: str, runs: Sequence[Run], *, key: str, help: str | None = None) -> Run:
    """A selectbox over runs, defaulting to the best by macro F1."""
    names = [r.name for r in runs]
    best = default_run(runs).name
    name = st.selectbox(label, names, index=names.index(best), key=key, help=help)
    return runs[names.index(name)]


def thumbnail_grid(frame: pd.DataFrame, caption_columns: Sequence[str], *, limit: int = 18, size: int = 140) -> None:
    """Thumbnails of the scans in ``frame`` (a ``path`` column), captioned by the given columns."""
    if frame.empty:
        st.caption("No scans.")
        return
    shown = frame.head(limit)
    cols = st.columns(GRID_COLUMNS)
    for i, (_, row) in enumerate(shown.iterrows()):
        caption = " · ".join(f"{c}={row[c]}" if c != "image" else str(row[c]) for c in caption_columns)
        with cols[i % GRID_COLUMNS]:
            img = state.thumbnail(str(row["path"]), size) if isinstance(row.get("path"), str) else None
            if img is None:
                st.caption(f"{caption} (scan file not found)")
            else:
                st.image(img, caption=caption, width="stretch")
    if len(frame) > limit:
        st.caption(f"Showing {limit} of {len(frame)} scans.")
