"""Every preset of the strategy registry: trains, exports through the parity gate, grades.

Parametrised over the registry (as timm's tests loop over ``list_models()``), so a new preset
is covered without anyone writing a new test.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.strategies import STRATEGIES

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_preset_trains_exports_and_grades(run_factory, synth_dir, strategy, tmp_path):
    run = run_factory(strategy)
    exp = subprocess.run([sys.executable, "-m", "export", str(run)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert exp.returncode == 0, exp.stderr[-2000:]
    report = json.loads((run / "export_report.json").read_text())
    assert report["passed"] is True
    assert (run / "model.onnx").is_file()

    # grade the run's own test scans through the torch-free CLI: same grades as evaluation
    pred = pd.read_csv(run / "predictions.csv").head(12)
    split = pd.read_csv(run / "split.csv").set_index("image")
    paths = [split.loc[i, "path"] for i in pred["image"]]
    out_csv = tmp_path / "grades.csv"
    res = subprocess.run([sys.executable, "-m", "models.grade", "--model", str(run), "--csv", str(out_csv), "--no-progress", *paths],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["status"] for r in rows] == ["ok"] * len(paths)
    graded = {r["path"]: r for r in rows}
    for (_, p), path in zip(pred.iterrows(), paths):
        row = graded[str(path)]
        assert int(row["grade"]) == int(p["pred"]), f"{strategy}: ONNX grade differs from evaluation for {path}"
        probs = np.array([float(row[f"p{i}"]) for i in range(5)])
        assert np.allclose(probs, p[[f"p{i}" for i in range(5)]].to_numpy(float), atol=1e-4)
