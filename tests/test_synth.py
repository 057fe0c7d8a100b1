"""Tests of the synthetic fundus generator (training/synth.py): real images, tiny sizes."""

from __future__ import annotations

import csv
import hashlib
import math
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from training import synth
from training.synth import DR_PRIORS, draw_eye_pairs, draw_labels, generate_dataset, generate_fundus, main

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _hashes(folder: pathlib.Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _rows(labels_csv: pathlib.Path) -> list[dict[str, str]]:
    with open(labels_csv, newline="") as f:
        return list(csv.DictReader(f))


# --- priors and labels ------------------------------------------------------------------


def test_dr_priors_are_the_eyepacs_training_counts():
    assert len(DR_PRIORS) == 5
    assert math.isclose(sum(DR_PRIORS), 1.0)
    assert np.allclose(np.array(DR_PRIORS) * 35126, [25810, 2443, 5292, 873, 708])


@pytest.mark.parametrize("priors", [None, (1, 1), (0.1, 0.2, 0.3, 0.4), (5, 0, 1, 1, 1, 2, 3)])
def test_draw_labels_counts_within_four_sigma_of_priors(priors):
    n = 2000
    labels = draw_labels(n, priors, np.random.default_rng(3))
    p = np.array(DR_PRIORS if priors is None else priors, float)
    p /= p.sum()
    counts = np.bincount(labels, minlength=p.size)
    assert counts.size == p.size and counts.sum() == n
    sigma = np.sqrt(n * p * (1 - p))
    assert np.all(np.abs(counts - n * p) <= 4 * sigma + 1e-9), (counts, n * p)
    assert np.all(counts[p == 0] == 0)


@pytest.mark.parametrize(
    ("priors", "match"),
    [
        ((1.0,), "at least 2"),
        ((0.5, -0.1, 0.6), "non-negative"),
        ((0.0, 0.0), "positive"),
        ((0.5, float("nan")), "finite"),
        ("abc", "not a sequence of numbers"),
    ],
)
def test_draw_labels_rejects_bad_priors(priors, match):
    with pytest.raises(ValueError, match=match):
        draw_labels(10, priors, np.random.default_rng(0))


def test_draw_labels_rejects_negative_n():
    with pytest.raises(ValueError, match=r"n=-1 must be a non-negative integer"):
        draw_labels(-1, None, np.random.default_rng(0))


def test_eye_pairs_agree_within_one_grade_and_keep_the_priors():
    pairs = draw_eye_pairs(4000, None, np.random.default_rng(1))
    assert pairs.shape == (4000, 2)
    assert np.abs(pairs[:, 0] - pairs[:, 1]).max() <= 1
    assert (pairs[:, 0] == pairs[:, 1]).mean() > 0.75  # mostly symmetric disease
    assert (pairs[:, 0] != pairs[:, 1]).any()
    # Metropolis-Hastings kernel: fellow eyes are iid with the prior marginal (4-sigma)
    p = np.array(DR_PRIORS)
    counts = np.bincount(pairs[:, 1], minlength=5)
    assert np.all(np.abs(counts - 4000 * p) <= 4 * np.sqrt(4000 * p * (1 - p)))


def test_fellow_eye_kernel_leaves_priors_invariant():
    p = np.array([0.5, 0.3, 0.15, 0.05])
    kernel = synth._fellow_eye_kernel(p)
    assert np.allclose(kernel.sum(axis=1), 1.0)
    assert np.allclose(p @ kernel, p)
    assert np.all(np.triu(kernel, 2) == 0) and np.all(np.tril(kernel, -2) == 0)


# --- single images ----------------------------------------------------------------------


@pytest.mark.parametrize("grade", range(5))
def test_image_is_rgb_fundus_on_black(grade):
    img = generate_fundus(grade, size=64, rng=np.random.default_rng(grade), eye="right")
    assert img.mode == "RGB" and img.size == (64, 64)
    a = np.asarray(img).astype(int)
    for y, x in ((0, 0), (0, 63), (63, 0), (63, 63)):
        assert a[y, x].max() <= 5, "corners are outside the field of view"
    centre = a[24:40, 24:40]
    assert centre.mean() > 40 and (centre[..., 0] > centre[..., 2]).mean() > 0.9  # red retina


def test_disc_is_the_brightest_region_on_the_eye_side():
    # right eye: disc right of centre; left eye: mirrored to the left
    for seed in range(4):
        for eye, side in (("right", 1), ("left", -1)):
            a = np.asarray(generate_fundus(0, size=96, rng=np.random.default_rng(seed), eye=eye), float)
            lum = a.mean(axis=2)
            smooth = np.asarray(Image.fromarray(lum.astype(np.uint8)).resize((12, 12), Image.Resampling.BOX), float)
            y, x = np.unravel_index(np.argmax(smooth), smooth.shape)
            assert side * (x - 5.5) > 0, (seed, eye, x)
            assert smooth.max() > 1.3 * np.median(lum[lum > 10])


def test_same_rng_seed_gives_same_image_and_different_seed_differs():
    a = generate_fundus(2, size=64, rng=np.random.default_rng(9)).tobytes()
    b = generate_fundus(2, size=64, rng=np.random.default_rng(9)).tobytes()
    c = generate_fundus(2, size=64, rng=np.random.default_rng(10)).tobytes()
    assert a == b and a != c


def test_lesions_grow_with_grade_under_the_same_camera_and_eye():
    # The same rng seed gives the same nuisance and anatomy streams, so grade g differs from
    # grade 0 by its lesions only: mean absolute difference must grow from grade 1 upwards.
    diffs = []
    for seed in range(10):
        imgs = [np.asarray(generate_fundus(g, size=64, rng=np.random.default_rng(seed)), float)
                for g in range(5)]
        diffs.append([np.abs(img - imgs[0]).mean() for img in imgs])
    d = np.mean(diffs, axis=0)
    assert d[0] == 0.0
    assert 0 < d[1] < d[2] < d[3]
    assert d[4] > 5 * d[1]
    assert all(row[1] > 0 for row in diffs), "every grade-1 eye has a microaneurysm"


def test_grade_one_lesions_are_small_dark_spots():
    seen = 0
    for seed in range(6):
        a = np.asarray(generate_fundus(0, size=128, rng=np.random.default_rng(seed)), float)
        b = np.asarray(generate_fundus(1, size=128, rng=np.random.default_rng(seed)), float)
        darker = (a - b).sum(axis=2)
        assert darker.min() > -15, "microaneurysms only darken"
        seen += (darker > 30).sum()
    assert 0 < seen < 6 * 60  # a few pixels per eye, not blots


def test_other_class_counts_map_severity_linearly():
    # 3 classes: grade 2 is the 5-grade scale's grade 4 (neovascularisation included)
    a = generate_fundus(2, size=64, rng=np.random.default_rng(4), n_classes=3).tobytes()
    b = generate_fundus(4, size=64, rng=np.random.default_rng(4), n_classes=5).tobytes()
    assert a == b


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"grade": 5}, r"grade=5 must be an integer in \[0, 4\]"),
        ({"grade": -1}, r"grade=-1"),
        ({"grade": 2, "n_classes": 2}, r"grade=2 must be an integer in \[0, 1\]"),
        ({"grade": 0, "n_classes": 1}, r"n_classes=1 must be an integer >= 2"),
        ({"grade": 0, "size": 16}, r"size=16 must be an integer >= 32"),
        ({"grade": 0, "eye": "both"}, r"eye='both' is not one of \['left', 'right'\]"),
    ],
)
def test_generate_fundus_rejects_bad_arguments(kwargs, match):
    kwargs = {"size": 64, **kwargs}
    with pytest.raises(ValueError, match=match):
        generate_fundus(rng=np.random.default_rng(0), **kwargs)


# --- data sets --------------------------------------------------------------------------


def test_dataset_is_byte_identical_across_runs_and_worker_counts(tmp_path):
    a = generate_dataset(tmp_path / "a", n=40, size=64, seed=5, workers=2, progress=False)
    b = generate_dataset(tmp_path / "b", n=40, size=64, seed=5, workers=1, progress=False)
    ha, hb = _hashes(a.parent), _hashes(b.parent)
    assert len(ha) == 40 + 2  # images + labels.csv + synth.json
    assert ha == hb
    c = generate_dataset(tmp_path / "c", n=40, size=64, seed=6, workers=1, progress=False)
    assert _hashes(c.parent) != ha


def test_dataset_layout_is_eyepacs_style(tmp_path):
    labels = generate_dataset(tmp_path, n=12, size=32, seed=1, workers=1, progress=False)
    assert labels == tmp_path / "labels.csv"
    assert labels.read_text().splitlines()[0] == "image,level"
    rows = _rows(labels)
    assert len(rows) == 12 and len({r["image"] for r in rows}) == 12
    for r in rows:
        stem, eye = r["image"].rsplit("_", 1)
        assert eye in ("left", "right") and len(stem) == 5 and stem.isdigit()
        assert 0 <= int(r["level"]) <= 4
        with Image.open(tmp_path / "images" / f"{r['image']}.png") as img:
            assert img.mode == "RGB" and img.size == (32, 32)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(
        r["image"] + ".png" for r in rows)  # no temporary files left behind


def test_patients_have_both_eyes_with_close_grades(tmp_path):
    labels = generate_dataset(tmp_path, n=40, size=32, seed=2, patients=True, workers=1,
                              priors=(1, 1, 1, 1, 1), progress=False)
    rows = _rows(labels)
    assert list(rows[0]) == ["image", "level", "patient"]
    by_patient: dict[str, dict[str, int]] = {}
    for r in rows:
        stem, eye = r["image"].rsplit("_", 1)
        assert int(stem) == int(r["patient"])
        by_patient.setdefault(r["patient"], {})[eye] = int(r["level"])
    assert len(by_patient) == 20
    for eyes in by_patient.values():
        assert set(eyes) == {"left", "right"}
        assert abs(eyes["left"] - eyes["right"]) <= 1


def test_custom_priors_reach_the_labels(tmp_path):
    labels = generate_dataset(tmp_path, n=30, size=32, seed=0, priors=(0, 1, 0), workers=1,
                              progress=False)
    assert {r["level"] for r in _rows(labels)} == {"1"}


def test_regenerating_over_a_previous_set_replaces_it(tmp_path):
    generate_dataset(tmp_path, n=10, size=32, seed=0, workers=1, progress=False)
    labels = generate_dataset(tmp_path, n=4, size=32, seed=1, workers=1, progress=False)
    assert len(_rows(labels)) == 4
    assert len(list((tmp_path / "images").iterdir())) == 4  # stale images removed


def test_refuses_a_foreign_non_empty_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not empty"):
        generate_dataset(tmp_path, n=2, size=32, workers=1, progress=False)
    assert not (tmp_path / "labels.csv").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, r"n=0 must be a positive integer"),
        ({"n": 2, "size": 31}, r"size=31 must be an integer >= 32"),
        ({"n": 2, "seed": -1}, r"seed=-1 must be a non-negative integer"),
        ({"n": 2, "workers": 0}, r"workers=0 must be a positive integer"),
        ({"n": 2, "priors": (1,)}, r"at least 2"),
    ],
)
def test_generate_dataset_rejects_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_dataset(tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out" / "labels.csv").exists()


# --- command line -----------------------------------------------------------------------


def test_cli_writes_a_set(tmp_path, capsys):
    code = main(["--out", str(tmp_path), "--n", "6", "--size", "32", "--seed", "3",
                 "--priors", "1,1,1", "--patients", "--workers", "1", "--no-progress"])
    assert code == 0
    rows = _rows(tmp_path / "labels.csv")
    assert len(rows) == 6 and {r["level"] for r in rows} <= {"0", "1", "2"}
    assert "wrote 6 images" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--n", "-5"], r"argument --n: -5 is too small: --n must be >= 1"),
        (["--n", "ten"], r"argument --n: 'ten' is not an integer"),
        (["--n", "4", "--size", "16"], r"argument --size: 16 is too small: --size must be >= 32"),
        (["--n", "4", "--priors", "0.5,x"], r"'0.5,x' is not a comma-separated list of numbers"),
        (["--n", "4", "--priors", "0,0,0"], r"must sum to a positive number"),
        (["--n", "4", "--priors", "1"], r"at least 2"),
        (["--n", "4", "--priors", "1,-1"], r"non-negative"),
        (["--n", "4", "--seed", "-2"], r"argument --seed: -2 is too small"),
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args, match):
    code = main(["--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("python -m training.synth: error: ")
    assert re.search(match, err), err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_foreign_directory_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("x")
    assert main(["--out", str(tmp_path), "--n", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not empty" in err


def test_module_runs_without_importing_torch(tmp_path):
    code = (
        "import sys, training.synth as s\n"
        "r = s.main(['--out', sys.argv[1], '--n', '2', '--size', '32', '--workers', '1', '--no-progress'])\n"
        "assert 'torch' not in sys.modules, 'synth must not import torch'\n"
        "sys.exit(r)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "o")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o" / "labels.csv").exists()
