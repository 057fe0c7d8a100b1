"""Grading API (models.grade.Grader) and the batch CLI ``python -m models.grade``.

Real ONNX Runtime on the toy graph of tests/test_runtime.py; real files of every awkward kind.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.grade import Grader, ScanResult, cam_overlay, csv_columns
from models.preprocess import PreprocessSpec, load_scan
from models.runtime import ModelFileError
from tests.test_runtime import DR_CLASSES, fundus_like, make_card, make_model, make_weights, reference_probs

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["path", "status", "error", "grade", "grade_name", "p0", "p1", "p2", "p3", "p4"]


@pytest.fixture
def run_dir(tmp_path) -> Path:
    run = tmp_path / "run"
    make_model(run / "model.onnx")
    return run


@pytest.fixture
def grader(run_dir) -> Grader:
    return Grader.from_path(run_dir, providers="cpu")


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


# ----------------------------------------------------------------------------- API

def test_from_path_attributes(grader, run_dir):
    assert grader.class_names == DR_CLASSES and grader.n_classes == 5
    assert grader.spec == PreprocessSpec(mode="fundus", size=32)
    assert grader.path == (run_dir / "model.onnx").resolve()
    assert grader.name == "toy" and grader.provider == "CPUExecutionProvider"
    assert grader.card["input_size"] == 32
    assert Grader.from_path(run_dir / "model.onnx", providers="cpu").path == grader.path


def test_from_path_errors(run_dir, tmp_path):
    with pytest.raises(ModelFileError, match=r"has no model.int8.onnx: export it with `python -m export .*run --quantize int8`"):
        Grader.from_path(run_dir, precision="int8")
    with pytest.raises(ValueError, match="unknown precision 'fp64'; valid: fp32, int8"):
        Grader.from_path(run_dir, precision="fp64")
    bad = make_model(tmp_path / "bad.onnx", card=make_card(5, 32, preprocess={"mode": "fundus", "size": 32, "colour": "yes"}))
    with pytest.raises(ModelFileError, match=r"invalid preprocessing spec \(unknown preprocessing fields \['colour'\]"):
        Grader.from_path(bad)
    bad = make_model(tmp_path / "bad2.onnx", card=make_card(5, 32, preprocess={"mode": "fundus", "size": 64}))
    with pytest.raises(ModelFileError, match="card input_size 32 differs from the preprocessing size 64"):
        Grader.from_path(bad)


def test_int8_precision_picks_int8_file(tmp_path):
    run = tmp_path / "run"
    make_model(run / "model.onnx")
    make_model(run / "model.int8.onnx", card=make_card(5, 32, precision="int8"))
    g = Grader.from_path(run, precision="int8", providers="cpu")
    assert g.path.name == "model.int8.onnx" and g.card["precision"] == "int8"


def test_grade_mixed_sources_matches_numpy_reference(grader, tmp_path):
    scan = fundus_like(200)
    path = tmp_path / "scan.png"
    scan.save(path)
    data = png_bytes(scan.rotate(90))
    arr = np.asarray(fundus_like(150, seed=3))
    with open(path, "rb") as fh:
        results = grader.grade([path, data, fh, arr, scan], batch_size=2)
    assert [r.ok for r in results] == [True] * 5
    assert [r.name for r in results] == [str(path), "scan-1", str(path), "scan-3", "scan-4"]
    for r in results:
        assert r.error is None and r.probs.shape == (5,) and r.probs.dtype == np.float32
        assert r.grade == int(np.argmax(r.probs)) and r.grade_name == DR_CLASSES[r.grade]
        assert r.prepared.shape == (32, 32, 3) and r.prepared.dtype == np.uint8
        assert r.cam.shape == (8, 8) and r.cam.dtype == np.float32 and r.cam.min() == 0.0 and r.cam.max() == 1.0
        assert r.latency_ms > 0
        np.testing.assert_allclose(r.probs, reference_probs(r.prepared), atol=1e-5)
    # The network's view is the shared preprocessing path, exactly.
    np.testing.assert_array_equal(results[0].prepared, load_scan(path, grader.spec))


def test_batch_size_does_not_change_results(grader):
    scans = [np.asarray(fundus_like(96, seed=s)) for s in range(7)]
    one = grader.grade(scans, batch_size=1, workers=1)
    many = grader.grade(scans, batch_size=16, workers=4)
    for a, b in zip(one, many):
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-6)
        np.testing.assert_allclose(a.cam, b.cam, atol=1e-5)


def test_bad_scans_do_not_stop_the_others(grader, tmp_path):
    good = png_bytes(fundus_like(128))
    truncated = good[: len(good) // 2]
    results = grader.grade([good, truncated, b"", b"hello", np.zeros((3, 3, 2), np.uint8), good],
                           names=["a.png", "b.png", "c.png", "d.png", "e", "f.png"], batch_size=2)
    assert [r.ok for r in results] == [True, False, False, False, False, True]
    assert results[1].error.startswith("b.png: corrupt or truncated image (")
    assert results[2].error == "c.png: empty file (0 bytes)"
    assert results[3].error == "d.png: not an image file Pillow can read"
    assert results[4].error.startswith("e: array of shape (3, 3, 2)")
    for r in results[1:5]:
        assert r.grade is None and r.probs is None and r.cam is None and r.prepared is None
    np.testing.assert_allclose(results[0].probs, results[5].probs)


def test_grade_arguments(grader):
    with pytest.raises(ValueError, match="names has 1 entries for 2 sources"):
        grader.grade([b"x", b"y"], names=["a"])
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        grader.grade([b"x"], batch_size=0)
    assert grader.grade([]) == []


def test_grade_one_without_cam_and_model_without_cam(grader, tmp_path):
    r = grader.grade_one(fundus_like(64), name="eye", with_cam=False)
    assert r.ok and r.name == "eye" and r.cam is None and r.probs is not None
    nocam = Grader.from_path(make_model(tmp_path / "nocam.onnx", with_cam=False), providers="cpu")
    r2 = nocam.grade_one(fundus_like(64))
    assert r2.ok and r2.cam is None
    np.testing.assert_allclose(r2.probs, r.probs, atol=1e-6)


def test_cam_points_at_the_evidence(tmp_path):
    """The CAM of the predicted class is highest where the image drives that class."""
    g = Grader.from_path(make_model(tmp_path / "plain.onnx", card=make_card(5, 32, preprocess={"mode": "plain", "size": 32})), providers="cpu")
    img = np.full((32, 32, 3), 128, np.uint8)
    base = g.grade_one(img)
    w = make_weights(5)[0]
    colour = np.where(w[base.grade] > 0, 255, 0).astype(np.uint8)  # pushes the predicted class up
    img[:8, :8] = colour
    r = g.grade_one(img)
    assert r.grade == base.grade and r.cam[0, 0] == 1.0 and r.cam[0, 0] > r.cam[-1, -1]
    overlay = cam_overlay(r.prepared, r.cam)
    assert overlay.shape == (32, 32, 3)


def test_exif_rotation_is_applied(tmp_path):
    g = Grader.from_path(make_model(tmp_path / "plain.onnx", card=make_card(5, 32, preprocess={"mode": "plain", "size": 32})), providers="cpu")
    upright = np.zeros((64, 32, 3), np.uint8)
    upright[:32] = (255, 0, 0)  # red top half
    upright[32:] = (0, 0, 255)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # as the sensor wrote it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rot.jpg"
    stored.save(path, quality=95, exif=exif)
    r = g.grade_one(path)
    assert r.ok and r.prepared[2, 16, 0] > 200 and r.prepared[2, 16, 2] < 60
    assert r.prepared[-3, 16, 2] > 200 and r.prepared[-3, 16, 0] < 60


def test_pixel_budget_from_card(tmp_path):
    g = Grader.from_path(make_model(tmp_path / "m.onnx", card=make_card(5, 32, preprocess={"mode": "fundus", "size": 32, "max_pixels": 10_000})), providers="cpu")
    r = g.grade_one(png_bytes(Image.new("RGB", (200, 200))), name="big.png")
    assert not r.ok and r.error == "big.png: image is 200 x 200 = 40,000 pixels, above the limit of 10,000 (decompression bomb?)"


def test_to_row():
    r = ScanResult(name="a.png", ok=True, grade=1, grade_name="Mild", probs=np.array([0.1, 0.9], np.float32))
    assert r.to_row(2) == {"path": "a.png", "status": "ok", "error": "", "grade": 1, "grade_name": "Mild", "p0": "0.100000", "p1": "0.900000"}
    bad = ScanResult(name="b.png", ok=False, error="b.png: empty file (0 bytes)")
    assert bad.to_row(2) == {"path": "b.png", "status": "error", "error": "b.png: empty file (0 bytes)", "grade": "", "grade_name": "", "p0": "", "p1": ""}
    assert csv_columns(5) == COLUMNS


# ----------------------------------------------------------------------------- CLI

def cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "models.grade", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        return list(reader)


@pytest.fixture
def awkward_folder(tmp_path) -> Path:
    """One file of every awkward kind, plus a non-image file the folder walk must skip."""
    d = tmp_path / "scans"
    (d / "sub").mkdir(parents=True)
    scan = fundus_like(160)
    scan.save(d / "good.png")
    scan.save(d / "sub" / "good.jpg", quality=90)
    jpg = (d / "sub" / "good.jpg").read_bytes()
    (d / "corrupt.jpg").write_bytes(jpg[: len(jpg) // 2])
    (d / "empty.png").write_bytes(b"")
    (d / "text.png").write_text("not an image at all\n")
    # 20000 x 20000 1-bit PNG: 400 MP claimed in the header, a few kB on disk.
    Image.new("1", (20000, 20000)).save(d / "bomb.png", optimize=True)
    # 10000 x 10000: below Pillow's own refusal, above the spec's 60 MP budget.
    Image.new("1", (10000, 10000)).save(d / "bomb100.png", optimize=True)
    scan.convert("L").save(d / "grey.png")
    scan.convert("RGBA").save(d / "rgba.png")
    scan.convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray((np.asarray(scan.convert("L")).astype(np.uint16) * 257)).save(d / "deep16.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    scan.transpose(Image.Transpose.ROTATE_90).save(d / "exif.jpg", exif=exif)
    Image.new("RGB", (8, 8), (120, 60, 30)).save(d / "tiny.png")
    (d / "notes.txt").write_text("skip me")
    return d


def test_cli_grades_a_folder_of_awkward_files(run_dir, awkward_folder, tmp_path):
    out = tmp_path / "out" / "grades.csv"
    proc = cli("--model", str(run_dir), "--csv", str(out), "--batch-size", "4", str(awkward_folder))
    assert proc.returncode == 1, proc.stderr  # some failed
    assert proc.stdout == ""
    assert "CPUExecutionProvider" in proc.stderr and "Traceback" not in proc.stderr
    rows = {Path(r["path"]).name: r for r in read_rows(out)}
    paths = [r["path"] for r in read_rows(out)]
    assert paths == sorted(paths) and "notes.txt" not in rows
    graded = ["good.png", "good.jpg", "grey.png", "rgba.png", "cmyk.jpg", "deep16.png", "exif.jpg", "tiny.png"]
    assert sorted(rows) == sorted(graded + ["corrupt.jpg", "empty.png", "text.png", "bomb.png", "bomb100.png"])
    for name in graded:
        r = rows[name]
        assert r["status"] == "ok" and r["error"] == "", r
        assert r["grade_name"] == DR_CLASSES[int(r["grade"])]
        assert sum(float(r[f"p{i}"]) for i in range(5)) == pytest.approx(1.0, abs=1e-4)
    errors = {
        "corrupt.jpg": "corrupt or truncated image (",
        "empty.png": "empty file (0 bytes)",
        "text.png": "not an image file Pillow can read",
        "bomb.png": "refused as a decompression bomb (",  # Pillow's own guard, at open
        "bomb100.png": "image is 10000 x 10000 = 100,000,000 pixels, above the limit of 60,000,000 (decompression bomb?)",
    }
    for name, msg in errors.items():
        r = rows[name]
        assert r["status"] == "error" and r["error"].startswith(str(awkward_folder / name) + ": " + msg), r
        assert r["grade"] == r["grade_name"] == r["p0"] == ""
    assert [p.name for p in out.parent.iterdir()] == ["grades.csv"]  # no temp file left behind


def test_cli_all_good_to_stdout(tmp_path):
    run = tmp_path / "run"
    make_model(run / "model.onnx")
    fundus_like(100).save(tmp_path / "a.png")
    fundus_like(120, seed=2).save(tmp_path / "b.jpg")
    proc = cli("--model", str(run / "model.onnx"), "--no-progress", str(tmp_path / "b.jpg"), str(tmp_path / "a.png"))
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [Path(r["path"]).name for r in rows] == ["b.jpg", "a.png"]  # files keep the order given
    assert all(r["status"] == "ok" for r in rows)
    assert "grading" not in proc.stderr  # --no-progress
    assert "on CPUExecutionProvider" in proc.stderr


def test_cli_usage_errors(run_dir, tmp_path):
    img = tmp_path / "a.png"
    fundus_like(64).save(img)
    proc = cli("--model", str(run_dir))
    assert proc.returncode == 2 and "error: no PATH given" in proc.stderr
    proc = cli("--model", str(run_dir), str(img), str(tmp_path / "missing.png"))
    assert proc.returncode == 2 and f"error: {tmp_path / 'missing.png'}: no such file or directory" in proc.stderr
    assert proc.stdout == ""
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x01garbage")
    proc = cli("--model", str(tmp_path / "broken.onnx"), str(img))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines == [f"error: {(tmp_path / 'broken.onnx').resolve()}: not a valid ONNX file (truncated or corrupt?)"]
    proc = cli("--model", str(make_model(tmp_path / "nocard.onnx", card=None)), str(img))
    assert proc.returncode == 2 and "not a drgrade model" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("--model", str(run_dir), "--int8", str(img))
    assert proc.returncode == 2 and "has no model.int8.onnx" in proc.stderr
    proc = cli("--model", str(run_dir), "--batch-size", "0", str(img))
    assert proc.returncode == 2 and "--batch-size must be >= 1" in proc.stderr
    (tmp_path / "no_scans").mkdir()
    (tmp_path / "no_scans" / "notes.txt").write_text("not a scan")
    proc = cli("--model", str(run_dir), str(tmp_path / "no_scans"))
    assert proc.returncode == 2 and "error: no image files" in proc.stderr and "no_scans" in proc.stderr
    proc = cli("--model", str(run_dir), "--csv", str(tmp_path), str(img))  # a directory, not a file
    assert proc.returncode == 2 and "cannot write there" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "a_file").write_text("")
    proc = cli("--model", str(run_dir), "--csv", str(tmp_path / "a_file" / "out.csv"), str(img))  # its "folder" is a file
    assert proc.returncode == 2 and "cannot write there" in proc.stderr


# ----------------------------------------------------------------------------- real export

def test_export_and_grade_a_trained_run(ce_run, tmp_path):
    """Export the tiny trained ``ce`` run with the real exporter and grade through it."""
    run = ce_run
    proc = subprocess.run([sys.executable, "-m", "export", str(run)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (run / "model.onnx").is_file()
    g = Grader.from_path(run, providers="cpu")
    metrics = json.loads((run / "metrics.json").read_text())
    assert g.class_names == metrics["class_names"]
    images = sorted((Path(json.loads((run / "config.json").read_text())["data"]) / "images").glob("*.png"))[:6]
    results = g.grade(images, batch_size=4)
    assert all(r.ok for r in results) and all(r.cam is not None and r.cam.ndim == 2 for r in results)
    out = tmp_path / "g.csv"
    cli_proc = cli("--model", str(run), "--csv", str(out), *map(str, images))
    assert cli_proc.returncode == 0, cli_proc.stderr
    rows = read_rows_n(out, len(g.class_names))
    for r, res in zip(rows, results):
        assert int(r["grade"]) == res.grade
        np.testing.assert_allclose([float(r[f"p{i}"]) for i in range(len(g.class_names))], res.probs, atol=1e-5)


def read_rows_n(path: Path, n_classes: int) -> list[dict]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == csv_columns(n_classes)
        return list(reader)
