"""Tests for models.registry on tiny run directories written into tmp_path."""

import json
from pathlib import Path

import pandas as pd
import pytest

from models.metrics import DR_GRADE_NAMES, compute_metrics
from models.registry import (
    Run,
    best_run,
    comparison_table,
    list_runs,
    load_run,
    runs_dir,
)

pytestmark = pytest.mark.filterwarnings("error")

CONFIG = {"strategy": {"name": "focal_drw", "loss": "focal", "sampler": "none",
                       "stage2": None, "posthoc": "logit_adjust"}}

# 3 scans of a 2-class problem: pred = argmax = [1, 0, 1]
PRED_ROWS = "image,true,pred,p0,p1\na.png,0,1,0.1,0.9\nb.png,0,0,0.9,0.1\nc.png,1,1,0.2,0.8\n"


def _metrics(macro_f1=0.5, ece=0.1, class_names=("a", "b"), **extra):
    n = len(class_names)
    metrics = {
        "accuracy": 0.7, "balanced_accuracy": 0.6, "macro_f1": macro_f1, "qwk": 0.4,
        "gmean": 0.5, "ece": ece, "mae_macro": 0.3, "class_names": list(class_names),
        "per_class": {name: {"recall": round(0.1 * (k + 1), 1)}
                      for k, name in enumerate(class_names)},
        "confusion_matrix": [[0] * n for _ in range(n)], "n": 3,
    }
    metrics.update(extra)
    return metrics


def _write_run(root: Path, name: str, *, config=CONFIG, metrics=None, model_pt=b"pt",
               predictions=PRED_ROWS, files=None) -> Path:
    """Write a run directory; ``None`` leaves a file out, a str is written verbatim."""
    run = root / name
    run.mkdir(parents=True)
    contents = {
        "config.json": config,
        "metrics.json": _metrics() if metrics is None else metrics,
        "model.pt": model_pt,
        "predictions.csv": predictions,
        **(files or {}),
    }
    for filename, content in contents.items():
        if content is None or content is False:
            continue
        if isinstance(content, bytes):
            (run / filename).write_bytes(content)
        elif isinstance(content, str):
            (run / filename).write_text(content)
        else:
            (run / filename).write_text(json.dumps(content))
    return run


@pytest.fixture
def runs_root(tmp_path):
    """Two good runs, four damaged ones and four directories that are not listed."""
    _write_run(tmp_path, "b_good", metrics=_metrics(macro_f1=0.8, ece=0.2))
    _write_run(tmp_path, "a_good", metrics=_metrics(macro_f1=0.6, ece=0.05))
    _write_run(tmp_path, "c_bad_json", metrics='{"macro_f1": }')
    _write_run(tmp_path, "d_no_metrics", metrics=False)
    # A damaged run with the best score must never win best_run.
    _write_run(tmp_path, "e_bad_preds", metrics=_metrics(macro_f1=0.99),
               predictions="image,label,p0,p1\na.png,0,0.5,0.5\n")
    _write_run(tmp_path, "f_no_model", model_pt=None)
    _write_run(tmp_path, ".hidden")
    _write_run(tmp_path, "g_training.tmp")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.txt").write_text("not a run")
    (tmp_path / "stray.json").write_text("{}")
    return tmp_path


def test_runs_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RUNS_DIR", str(tmp_path))
    assert runs_dir() == tmp_path
    monkeypatch.delenv("RUNS_DIR")
    assert runs_dir() == Path("runs")


def test_list_runs_lists_skips_and_explains(runs_root):
    runs = list_runs(runs_root)
    assert [r.name for r in runs] == [
        "a_good", "b_good", "c_bad_json", "d_no_metrics", "e_bad_preds", "f_no_model",
    ]
    by_name = {r.name: r for r in runs}
    assert [r.ok for r in runs] == [True, True, False, False, False, False]
    assert by_name["a_good"].problem is None
    # '{"macro_f1": }': the value is missing where "}" stands, column 14
    assert by_name["c_bad_json"].problem == (
        "metrics.json: invalid JSON at line 1 column 14 (Expecting value)"
    )
    assert by_name["d_no_metrics"].problem == "missing metrics.json (training did not finish?)"
    assert by_name["e_bad_preds"].problem == (
        "predictions.csv: expected columns image,true,pred,p0,p1, got image,label,p0,p1"
    )
    assert by_name["f_no_model"].problem == "missing model (neither model.pt nor model.onnx)"


def test_list_runs_uses_runs_dir_and_tolerates_missing_root(monkeypatch, runs_root, tmp_path):
    monkeypatch.setenv("RUNS_DIR", str(runs_root))
    assert len(list_runs()) == 6
    assert list_runs(tmp_path / "does-not-exist") == []


def test_load_run_good_run_fields(tmp_path):
    history = "epoch,train_loss,val_loss\n1,0.9,1.1\n"
    path = _write_run(tmp_path, "r", files={"model.onnx": b"x" * 10, "model.int8.onnx": b"y",
                                            "history.csv": history})
    run = load_run(path)
    assert run.ok and run.problem is None
    assert run.name == "r" and run.path == path
    assert run.strategy == "focal_drw"
    assert run.class_names == ["a", "b"]
    assert run.onnx_path == path / "model.onnx" and run.int8_path == path / "model.int8.onnx"
    preds = run.predictions()
    assert list(preds.columns) == ["image", "true", "pred", "p0", "p1"]
    assert preds["pred"].tolist() == [1, 0, 1]
    assert run.predictions() is preds  # read once
    assert run.history()["val_loss"].tolist() == [1.1]


def test_load_run_accepts_metrics_written_by_compute_metrics(tmp_path):
    probs = [[0.7, 0.1, 0.1, 0.05, 0.05], [0.1, 0.1, 0.6, 0.1, 0.1]]
    metrics = compute_metrics([0, 2], probs, DR_GRADE_NAMES)
    rows = "image,true,pred,p0,p1,p2,p3,p4\na.png,0,0,0.7,0.1,0.1,0.05,0.05\n"
    run = load_run(_write_run(tmp_path, "dr", metrics=metrics, predictions=rows))
    assert run.ok, run.problem
    table = comparison_table([run])
    assert table.loc[0, "recall_Proliferative DR"] == 0.0
    assert table.loc[0, "referable_sensitivity"] == 1.0
    assert table.loc[0, "referable_auc"] == 1.0


@pytest.mark.parametrize(
    "override, problem",
    [
        ({"metrics": "[1, 2]"}, "metrics.json: expected a JSON object, got list"),
        ({"config": '{"a" 1}'},
         "config.json: invalid JSON at line 1 column 6 (Expecting ':' delimiter)"),
        ({"config": False}, "missing config.json"),
        ({"predictions": False}, "missing predictions.csv"),
        ({"metrics": {"accuracy": 0.5, "qwk": "high", "class_names": ["a", "b"]}},
         "metrics.json: missing or non-numeric balanced_accuracy, macro_f1, qwk, gmean, ece, "
         "mae_macro"),
        ({"metrics": _metrics(class_names=())}, "metrics.json: missing class_names"),
        ({"metrics": {}}, "metrics.json: missing or non-numeric accuracy, balanced_accuracy, "
         "macro_f1, qwk, gmean, ece, mae_macro; metrics.json: missing class_names"),
        ({"predictions": "image,true,pred,p0\n"},
         "predictions.csv: expected columns image,true,pred,p0,p1, got image,true,pred,p0"),
    ],
)
def test_load_run_problems(tmp_path, override, problem):
    run = load_run(_write_run(tmp_path, "r", **override))
    assert run.ok is False
    assert run.problem == problem


def test_load_run_reports_several_problems(tmp_path):
    run = load_run(_write_run(tmp_path, "r", metrics=False, model_pt=None, predictions=None))
    assert run.problem == (
        "missing metrics.json (training did not finish?); "
        "missing model (neither model.pt nor model.onnx); missing predictions.csv"
    )


def test_load_run_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"run directory not found: .*nope"):
        load_run(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"not a run directory \(it is a file\)"):
        load_run(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    run = load_run(tmp_path / "empty")
    assert not run.ok and run.problem.startswith("not a run directory: none of config.json")


def test_lazy_tables_fail_with_clear_messages(tmp_path):
    run = load_run(_write_run(tmp_path, "r", predictions=None))
    with pytest.raises(FileNotFoundError, match=r"run 'r' has no predictions.csv"):
        run.predictions()
    with pytest.raises(FileNotFoundError, match=r"run 'r' has no history.csv"):
        run.history()
    (run.path / "history.csv").write_text("step,loss\n1,0.5\n")
    with pytest.raises(ValueError, match=r"has no 'epoch' column \(columns: step, loss\)"):
        run.history()


def test_strategy_and_class_names_fallbacks():
    assert Run("r", Path("r"), config={"strategy": "ce"}).strategy == "ce"
    assert Run("r", Path("r")).strategy is None
    assert Run("r", Path("r"), config={"class_names": ["x", "y"]}).class_names == ["x", "y"]
    assert Run("r", Path("r")).class_names == []


def test_best_run(runs_root):
    runs = list_runs(runs_root)
    assert best_run(runs).name == "b_good"  # macro_f1 .8 > .6; e_bad_preds (.99) is not ok
    assert best_run(runs, "ece").name == "a_good"  # lower is better: .05 < .2
    assert best_run([r for r in runs if not r.ok]) is None
    assert best_run([]) is None
    with pytest.raises(ValueError, match=r"unknown selection metric 'f1'; valid: accuracy"):
        best_run(runs, "f1")
    with pytest.raises(ValueError, match=r"unknown selection metric 'f1'"):
        best_run([], "f1")


def test_comparison_table(tmp_path):
    _write_run(
        tmp_path, "exported",
        metrics=_metrics(macro_f1=0.6, referable={"sensitivity": 0.9, "specificity": 0.8,
                                                 "auc": 0.95, "threshold_grade": 2}),
        model_pt=b"p" * 500_000,
        files={"model.onnx": b"o" * 250_000,  # the ONNX size wins: 0.25 MB
               "metrics.int8.json": _metrics(macro_f1=0.55),
               "bench.json": {"ort_fp32": {"b1_ms": 3.5}, "ort_int8": {"b1_ms": 2.0}}},
    )
    _write_run(tmp_path, "plain", config={"strategy": {"name": "ce"}},
               metrics=_metrics(class_names=("a", "b", "c")),
               predictions="image,true,pred,p0,p1,p2\n", model_pt=b"p" * 500_000,
               files={"bench.json": "{broken"})
    _write_run(tmp_path, "broken", metrics=False)
    table = comparison_table(list_runs(tmp_path))
    assert list(table.columns) == [
        "name", "strategy", "loss", "sampler", "stage2", "posthoc",
        "accuracy", "balanced_accuracy", "macro_f1", "qwk", "gmean", "ece", "mae_macro",
        "recall_a", "recall_b", "recall_c",
        "referable_sensitivity", "referable_specificity", "referable_auc",
        "model_size_mb", "int8_macro_f1_delta", "latency_ms",
    ]
    assert table["name"].tolist() == ["exported", "plain"]  # the broken run is left out
    ex, pl = table.iloc[0], table.iloc[1]
    assert (ex["strategy"], ex["loss"], ex["sampler"], ex["posthoc"]) == (
        "focal_drw", "focal", "none", "logit_adjust")
    assert pd.isna(ex["stage2"])
    assert ex["macro_f1"] == 0.6 and ex["recall_b"] == 0.2 and pd.isna(ex["recall_c"])
    assert pl["recall_c"] == 0.3
    assert (ex["referable_sensitivity"], ex["referable_specificity"], ex["referable_auc"]) == (
        0.9, 0.8, 0.95)
    assert ex["model_size_mb"] == 0.25 and pl["model_size_mb"] == 0.5
    assert ex["int8_macro_f1_delta"] == pytest.approx(-0.05)
    assert ex["latency_ms"] == 3.5
    # no referable block (3 classes), no int8 metrics, unreadable bench.json
    assert pl["strategy"] == "ce" and pd.isna(pl["loss"])
    assert pd.isna(pl["referable_auc"]) and pd.isna(pl["int8_macro_f1_delta"])
    assert pd.isna(pl["latency_ms"])


def test_comparison_table_empty_has_columns():
    table = comparison_table([])
    assert len(table) == 0
    assert table.columns[:3].tolist() == ["name", "strategy", "loss"]
    assert table.columns[-1] == "latency_ms"
