"""The dashboard: every page driven through Streamlit's AppTest on real tiny runs.

The runs are real (trained by ``run_factory`` in CPU seconds, exported with ``python -m
export``); grading goes through ONNX Runtime; uploads go through ``st.file_uploader`` via
AppTest's ``set_value``. Nothing is mocked.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "dashboard" / "app.py")
TIMEOUT = 60
#: The two variants every dashboard test shows; ``ce`` is also quantised to int8.
VARIANTS = ("ce", "focal")


# --------------------------------------------------------------------------- fixtures


def export_run(run_dir: Path, *, int8: bool = False) -> None:
    """``python -m export RUN_DIR [--quantize int8]``: the real command line."""
    cmd = [sys.executable, "-m", "export", str(run_dir)] + (["--quantize", "int8"] if int8 else [])
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"export of {run_dir} failed:\n{proc.stdout}\n{proc.stderr}"
    assert (run_dir / "model.onnx").is_file()


def exported_runs_root(run_factory, tmp_path_factory) -> Path:
    """A runs folder with copies of two tiny exported runs (built once per pytest session,
    shared with the browser test)."""
    root = tmp_path_factory.getbasetemp() / "dashboard-runs"
    done = root / ".complete"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        for name in VARIANTS:
            shutil.copytree(run_factory(name), root / name, ignore=shutil.ignore_patterns("*.onnx", "metrics.int8.json", "export_report.json"))
            export_run(root / name, int8=name == "ce")
        done.write_text("ok")
    return root


@pytest.fixture(scope="module")
def runs_root(run_factory, tmp_path_factory) -> Path:
    """Two exported runs plus one broken run directory."""
    src = exported_runs_root(run_factory, tmp_path_factory)
    root = tmp_path_factory.mktemp("dash-runs")
    for name in VARIANTS:
        (root / name).symlink_to(src / name, target_is_directory=True)
    broken = root / "broken-run"
    broken.mkdir()
    (broken / "config.json").write_text('{"strategy": {"name": "ce"')  # cut short mid-write
    return root


@pytest.fixture
def app(monkeypatch, runs_root, synth_dir):
    """``open(page)`` -> an AppTest on that page of ``dashboard/app.py`` with the tiny runs."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("RUNS_DIR", str(runs_root))
    monkeypatch.setenv("DRGRADE_DATA", str(synth_dir))

    def open_page(page: str | None = None) -> "AppTest":
        at = AppTest.from_file(APP, default_timeout=TIMEOUT)
        at.run()
        if page:
            at.switch_page(f"views/{page}.py").run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return open_page


def scan_bytes(synth_dir: Path, n: int) -> list[tuple[str, bytes]]:
    files = sorted((synth_dir / "images").glob("*.png"))[:n]
    return [(f.name, f.read_bytes()) for f in files]


def charts(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def heatmaps(at) -> list[dict]:
    return [t for spec in charts(at) for t in spec["data"] if t.get("type") == "heatmap"]


def texts(at) -> str:
    return "\n".join(str(e.value) for kind in ("markdown", "caption", "success", "error", "warning", "info") for e in getattr(at, kind))


# --------------------------------------------------------------------------- first run


@pytest.mark.parametrize("page", [None, "compare", "operating_point", "model_card"])
def test_no_runs_page_says_how_to_create_them(monkeypatch, tmp_path, page):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    if page:
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception
    message = " ".join(i.value for i in at.info)
    assert "No trained variants" in message and "make dashboard" in message
    assert "python -m training.zoo --data data/synth --out runs --preset quick" in message
    assert "python -m export runs/<name>" in message


# --------------------------------------------------------------------------- grade


def test_grade_good_and_bad_uploads(app, synth_dir, monkeypatch):
    monkeypatch.setenv("DRGRADE_MAX_UPLOAD_MB", "0.05")  # 50 kB: the tiny scans pass, "huge.jpg" not
    good = scan_bytes(synth_dir, 2)
    truncated = good[0][1][: len(good[0][1]) // 2]
    bomb = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(bomb, "PNG")  # 12 kB file, 100 Mpx decoded
    huge = np.random.default_rng(0).bytes(60_000)
    at = app()
    assert at.title[0].value == "Grade scans"
    # default variant: the best exported run by macro F1; its provider is shown
    assert at.multiselect(key="variants").value and at.multiselect(key="variants").value[0] in VARIANTS
    assert "CPUExecutionProvider" in at.dataframe[0].value.to_string()

    files = [(n, b, "image/png") for n, b in good] + [
        ("truncated.png", truncated, "image/png"),
        ("notes.png", b"this is not an image", "image/png"),
        ("bomb.png", bomb.getvalue(), "image/png"),
        ("huge.jpg", huge, "image/jpeg"),
    ]
    at.file_uploader(key="scans").set_value(files).run()
    assert not at.exception, [e.value for e in at.exception]

    errors = {e.value.split("**")[1]: e.value for e in at.error if e.value.startswith("**")}
    assert set(errors) == {"truncated.png", "notes.png", "bomb.png", "huge.jpg"}
    assert "upload limit" in errors["huge.jpg"]
    assert "not an image" in errors["notes.png"]
    assert "decompression bomb" in errors["bomb.png"]
    assert "corrupt or truncated" in errors["truncated.png"]
    assert "Graded 2 of 6 file(s)." in [s.value for s in at.success]

    verdicts = [m.value for m in at.markdown if "· Grade" in m.value]
    assert len(verdicts) == 2
    assert len(at.get("image")) >= 4  # thumbnail + heat-map per scan
    assert any("ms on CPUExecutionProvider" in c.value for c in at.caption)

    # the results table has the CLI's columns and lists every file, bad ones as errors
    table = next(d.value for d in at.dataframe if "status" in d.value.columns)
    assert list(table.columns) == ["path", "status", "error", "grade", "grade_name", "p0", "p1", "p2", "p3", "p4"]
    assert sorted(table["path"]) == sorted(f[0] for f in files)
    assert (table["status"] == "ok").sum() == 2
    assert at.get("download_button")

    # threshold slider: 0 refers every scan, 1 almost none
    at.slider(key="threshold").set_value(0.0).run()
    assert sum("Referable DR:" in e.value for e in at.error) == 2
    at.slider(key="threshold").set_value(1.0).run()
    assert sum("Not referable:" in s.value for s in at.success) == 2

    # several variants side by side, then int8
    at.multiselect(key="variants").set_value(list(VARIANTS)).run()
    assert not at.exception
    verdicts = [m.value for m in at.markdown if "· Grade" in m.value]
    assert {v.split("**")[1] for v in verdicts} == set(VARIANTS) and len(verdicts) == 4
    at.radio(key="precision").set_value("int8").run()
    assert not at.exception
    assert "model.int8.onnx" in at.dataframe[0].value.to_string()
    assert any("Runs without model.int8.onnx use fp32: focal" in c.value for c in at.caption)
    assert len([m for m in at.markdown if "· Grade" in m.value]) == 4


def test_grade_helpers_on_real_files(runs_root, synth_dir):
    """The page's pure helpers: size check, grading, CSV in the CLI's format."""
    from dashboard import grading
    from models.grade import Grader

    grader = Grader.from_path(runs_root / "ce")
    uploads = [grading.Upload(n, b) for n, b in scan_bytes(synth_dir, 2)] + [grading.Upload("bad.png", b"nope")]
    limit = max(u.size for u in uploads)
    ok, rejected = grading.split_by_size(uploads + [grading.Upload("big.png", b"x" * (limit + 1))], limit)
    assert [r.name for r in rejected] == ["big.png"]
    results = grading.grade_uploads(grader, ok)
    assert [r.ok for r in results] == [True, True, False]
    csv = grading.results_csv(results + grading.rejected_results(rejected), grader.n_classes).decode()
    frame = pd.read_csv(io.StringIO(csv))
    assert list(frame["status"]) == ["ok", "ok", "error", "error"]
    assert frame.loc[3, "error"].startswith(f"big.png: file is {limit + 1:,} bytes")
    view = grading.inspect_upload(ok[0])
    assert view.thumbnail is not None and view.thumbnail.dtype == np.uint8 and isinstance(view.warnings, list)


# --------------------------------------------------------------------------- compare


def test_compare_page(app, runs_root):
    at = app("compare")
    warnings = [w.value for w in at.warning]
    assert any(w.startswith("**broken-run**") and "config.json" in w for w in warnings)
    table = at.dataframe[0].value
    assert sorted(table["name"]) == sorted(VARIANTS)
    assert {"macro_f1", "balanced_accuracy", "recall_Proliferative DR"} <= set(table.columns)

    # two confusion matrices on one colour scale
    maps = heatmaps(at)
    assert len(maps) == 2 and maps[0]["coloraxis"] == maps[1]["coloraxis"]
    counts = np.asarray(maps[0]["z"])
    assert counts.sum() == len(pd.read_csv(runs_root / "ce" / "predictions.csv"))  # every test scan, once
    at.radio(key="cm_mode").set_value("row-normalised").run()
    rows = np.asarray(heatmaps(at)[0]["z"]).sum(axis=1)
    assert np.all((np.isclose(rows, 1.0)) | (rows == 0))

    # metric bar chart follows the chosen metric
    at.selectbox(key="metric").set_value("qwk").run()
    assert any((spec["layout"].get("title") or {}).get("text", "").startswith("qwk") for spec in charts(at))

    # disagreements, curves and calibration are drawn
    assert any("test scans get different grades" in c.value for c in at.caption)
    titles = [(spec["layout"].get("title") or {}).get("text", "") for spec in charts(at)]
    assert any(t.startswith("ROC:") for t in titles) and any(t.startswith("Precision-recall:") for t in titles)
    assert "Reliability diagram" in titles


def test_compare_drill_down_shows_scans_of_a_cell(app, runs_root):
    preds = pd.read_csv(runs_root / "ce" / "predictions.csv")
    true, pred = preds.groupby(["true", "pred"]).size().idxmax()
    at = app("compare")
    at.multiselect(key="cm_variants").set_value(["ce", "focal"]).run()
    at.selectbox(key="drill_variant").set_value("ce").run()
    at.selectbox(key="drill_true").set_value(int(true)).run()
    at.selectbox(key="drill_pred").set_value(int(pred)).run()
    expected = int(((preds["true"] == true) & (preds["pred"] == pred)).sum())
    caption = next(c.value for c in at.caption if "test scan(s) of grade" in c.value)
    assert caption.startswith(f"{expected} test scan(s)")
    captions = [img.proto.imgs[0].caption for img in at.get("image")]
    cell_images = set(preds.loc[(preds["true"] == true) & (preds["pred"] == pred), "image"])
    assert cell_images & set(captions)


# --------------------------------------------------------------------------- operating point


def test_operating_point_slider_and_costs(app):
    at = app("operating_point")
    metric = {m.label: m.value for m in at.metric}
    assert set(metric) >= {"Sensitivity", "Specificity"}
    at.slider(key="op_threshold").set_value(0.0).run()
    metric = {m.label: m.value for m in at.metric}
    assert metric["Sensitivity"] == "1.000" and metric["Missed referable"] == "0"
    at.slider(key="op_threshold").set_value(1.0).run()
    metric = {m.label: m.value for m in at.metric}
    assert metric["Sensitivity"] == "0.000" and metric["Specificity"] == "1.000"
    roc = next(spec for spec in charts(at) if (spec["layout"].get("title") or {}).get("text") == "Referable-DR ROC")
    marker = [t for t in roc["data"] if t.get("mode") == "markers"][0]
    assert marker["x"] == [0.0] and marker["y"] == [0.0]

    at.toggle(key="use_costs").set_value(True).run()
    assert not at.exception
    bayes = [spec for spec in charts(at) if "cost matrix" in json.dumps(spec["layout"].get("annotations", []))]
    assert bayes, "the Bayes-decision confusion matrix is drawn"
    table = next(d.value for d in at.dataframe if "cost matrix" in d.value.columns)
    assert {"accuracy", "macro_f1"} <= set(table.index)


# --------------------------------------------------------------------------- model card


def test_model_card_page(app):
    at = app("model_card")
    at.selectbox(key="card_variant").set_value("ce").run()
    assert not at.exception
    card = next(d.value for d in at.dataframe if "field" in d.value.columns)
    assert "class_names" in set(card["field"]) and "preprocess.size" in set(card["field"])
    labels = {m.label: m.value for m in at.metric}
    assert labels["Input size"] == "32 px" and labels["Strategy"] == "ce"
    titles = [(spec["layout"].get("title") or {}).get("text", "") for spec in charts(at)]
    assert {"Loss per epoch", "Validation metrics per epoch", "Test metrics: fp32 vs int8"} <= set(titles)
    at.selectbox(key="card_variant").set_value("focal").run()
    assert any("No int8 model measured yet" in i.value for i in at.info)


# --------------------------------------------------------------------------- data


def test_data_page(app, synth_dir):
    at = app("data")
    assert at.text_input(key="data_path").value == str(synth_dir)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Scans"] == "160" and metrics["Classes"] == "5"
    assert float(metrics["Imbalance ratio (train)"]) > 1
    titles = [(spec["layout"].get("title") or {}).get("text", "") for spec in charts(at)]
    assert "Class distribution" in titles
    assert "Effective class distribution per sampler" in titles  # the tiny runs trained on synth_dir
    images = at.get("image")
    assert len(images) >= 5 * 3 + 3  # a gallery row per grade, then raw / cropped / Ben Graham
    # an uploaded scan replaces the collection's in the preview; a bad path is an error, not a crash
    name, data = scan_bytes(synth_dir, 1)[0]
    at.file_uploader(key="preview_upload").set_value((name, data, "image/png")).run()
    assert any(name in img.proto.imgs[0].caption for img in at.get("image"))
    at.text_input(key="data_path").set_value(str(synth_dir / "nope")).run()
    assert not at.exception and at.error


# --------------------------------------------------------------------------- pure pieces


def test_figures_and_tables_are_pure():
    from dashboard import figures, tables

    fig = figures.confusion_grid({"a": [[3, 1], [0, 2]], "b": [[1, 3], [2, 0]]}, ["x", "y"], normalised=True)
    assert fig.layout.coloraxis.cmax == pytest.approx(1.0)
    assert np.allclose(np.asarray(fig.data[0].z), [[0.75, 0.25], [0.0, 1.0]])
    a = pd.DataFrame({"image": ["i1", "i2", "i3"], "true": [0, 1, 2], "pred": [0, 1, 2]})
    b = a.assign(pred=[0, 2, 2])
    split = pd.DataFrame({"image": ["i1", "i2", "i3"], "split": "test", "path": ["/p1", "/p2", "/p3"]})
    diff = tables.disagreements({"a": a, "b": b}, split)
    assert diff[["image", "a", "b", "path"]].values.tolist() == [["i2", 1, 2, "/p2"]]
    assert tables.most_confused_cell([[4, 0, 0], [0, 1, 3], [1, 0, 2]]) == (1, 2)


def test_dashboard_is_torch_free_and_imports_only_models():
    """Dependency direction: dashboard -> models, never training/export, never torch."""
    import ast

    for path in (ROOT / "dashboard").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] not in {"torch", "torchvision", "training", "export", "onnx"}, f"{path.name} imports {name}"
    code = ("import sys; import dashboard.state, dashboard.ui, dashboard.figures, dashboard.grading, dashboard.tables; "
            "bad = [m for m in ('torch', 'training', 'export') if m in sys.modules]; assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
