"""The data layer: layouts, id resolution, labels, splits and every kind of bad data.

Each test builds a tiny real collection (8 px PNG/JPEG files) in tmp_path.
"""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.data import DR_GRADE_NAMES, Collection, DataError, check_collection, load_collection


def scan(path: Path, value: int = 128, size: int = 8) -> Path:
    """A tiny real image file (format from the extension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, value // 2, 40)).save(path)
    return path


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return path


def simple_set(root: Path, per_class: list[int], *, csv_name: str = "labels.csv", ext: str = ".png", sub: str = "") -> list[tuple[str, int]]:
    """labels.csv with image,level and one file per row; returns (id, level) rows."""
    rows = []
    for level, n in enumerate(per_class):
        for j in range(n):
            image = f"img{level}_{j}"
            scan(root / sub / (image + ext), value=40 * level + j)
            rows.append((image, level))
    write_csv(root / csv_name, "image,level", [f"{i},{lv}" for i, lv in rows])
    return rows


def split_of(c: Collection) -> dict[str, str]:
    return dict(zip(c.table["image"], c.table["split"]))


# ------------------------------------------------------------------------------------------
# Layouts
# ------------------------------------------------------------------------------------------


def test_eyepacs_layout(tmp_path):
    rows = []
    for p in range(40):
        level = p % 5
        for eye in ("left", "right"):
            scan(tmp_path / "train" / f"{p + 10}_{eye}.jpeg", value=50 + p)
            rows.append(f"{p + 10}_{eye},{level}")
    write_csv(tmp_path / "trainLabels.csv", "image,level", rows)
    c = load_collection(tmp_path)
    assert c.source == "eyepacs"
    assert c.class_names == list(DR_GRADE_NAMES)
    assert len(c.table) == 80 and list(c.table.columns) == ["image", "path", "label", "split", "patient"]
    assert all(Path(p).is_absolute() and Path(p).is_file() and p.endswith(".jpeg") for p in c.table["path"])
    assert c.table["label"].dtype.kind == "i" and set(c.table["split"]) == {"train", "val", "test"}
    # EyePACS ids name the patient: both eyes of a patient stay in one split.
    assert c.table.loc[c.table["image"] == "10_left", "patient"].item() == "10"
    assert (c.table.groupby("patient")["split"].nunique() == 1).all()
    assert c.root == tmp_path.resolve()
    # The CSV itself works the same as its folder.
    assert split_of(load_collection(tmp_path / "trainLabels.csv")) == split_of(c)


def test_eyepacs_files_next_to_csv(tmp_path):
    rows = []
    for p in range(9):
        scan(tmp_path / f"{p}_left.jpeg")
        rows.append(f"{p}_left,{p % 3}")
    write_csv(tmp_path / "trainLabels.csv", "image,level", rows)
    c = load_collection(tmp_path)
    assert c.class_names == ["0", "1", "2"]
    assert c.counts().tolist() == [3, 3, 3]


def test_aptos_layout(tmp_path):
    rows = []
    for j in range(30):
        code = f"{j:04x}abcd"
        scan(tmp_path / "train_images" / f"{code}.png")
        rows.append(f"{code},{j % 5}")
    write_csv(tmp_path / "train.csv", "id_code,diagnosis", rows)
    c = load_collection(tmp_path)
    assert c.source == "aptos"
    assert c.counts().tolist() == [6] * 5
    assert all(Path(p).parent.name == "train_images" for p in c.table["path"])
    assert c.table["patient"].isna().all()


def test_generic_csv_with_named_columns_and_images_dir(tmp_path):
    images = tmp_path / "elsewhere" / "scans"
    rows = []
    for j in range(12):
        scan(images / f"s{j}.jpg")
        rows.append(f"{j},s{j}.jpg,{['mild', 'none', 'severe'][j % 3]}")
    csv_path = write_csv(tmp_path / "meta" / "export.csv", "idx,scan,severity", rows)
    c = load_collection(csv_path, image_col="scan", label_col="severity", images_dir=images)
    assert c.source == "csv"
    assert c.class_names == ["mild", "none", "severe"]  # string labels: sorted
    assert c.table.loc[c.table["image"] == "s1.jpg", "label"].item() == 1
    assert all(Path(p).parent == images.resolve() for p in c.table["path"])
    # Without the image folder the files are not found.
    with pytest.raises(DataError, match=r"export\.csv: 12 image files not found"):
        load_collection(csv_path, image_col="scan", label_col="severity")


def test_semicolon_csv_and_column_auto_detection(tmp_path):
    for j in range(9):
        scan(tmp_path / "images" / f"f{j}.png")
    (tmp_path / "clinic.csv").write_text("Filename;Grade\n" + "".join(f"f{j};{j % 3}\n" for j in range(9)))
    c = load_collection(tmp_path / "clinic.csv")
    assert c.counts().tolist() == [3, 3, 3]


def test_imagefolder(tmp_path):
    for name, n in (("healthy", 5), ("DR", 4)):
        for j in range(n):
            scan(tmp_path / name / ("nested" if j == 0 else "") / f"{name}{j}.png")
    (tmp_path / "healthy" / "notes.txt").write_text("not an image")
    (tmp_path / "healthy" / ".DS_Store").write_bytes(b"\0\1")
    c = load_collection(tmp_path)
    assert c.source == "imagefolder"
    assert c.class_names == ["DR", "healthy"]  # folder names, sorted
    assert c.counts().tolist() == [4, 5]
    assert "healthy/nested/healthy0.png" in set(c.table["image"])
    assert c.table.loc[c.table["image"] == "DR/DR1.png", "label"].item() == 0


def test_imagefolder_bad_scan(tmp_path):
    for name in ("a", "b"):
        for j in range(4):
            scan(tmp_path / name / f"{j}.png")
    (tmp_path / "b" / "2.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"^[^:]+/: 1 unreadable image: 'b/2\.png' \(empty file \(0 bytes\)\) \(1 in total\)\. Use --skip-bad"):
        load_collection(tmp_path)
    c = load_collection(tmp_path, skip_bad=True)
    assert c.counts().tolist() == [4, 3] and c.skipped == 1


def test_imagefolder_numeric_folders_sort_as_numbers(tmp_path):
    for name in ("2", "10", "1"):
        for j in range(3):
            scan(tmp_path / name / f"{j}.png")
    assert load_collection(tmp_path).class_names == ["1", "2", "10"]


def test_ids_with_and_without_extension(tmp_path):
    scan(tmp_path / "a.png")
    scan(tmp_path / "images" / "b.jpg")
    scan(tmp_path / "c.JPG")  # extension case differs from the id
    scan(tmp_path / "d.jpg")
    scan(tmp_path / "d.png")  # both: IMAGE_EXTENSIONS order prefers .png
    scan(tmp_path / "sub" / "e.tif")
    scan(tmp_path / "train" / "f.bmp")
    scan(tmp_path / "train_images" / "g.webp")
    scan(tmp_path / "h.1.png")  # a dot in the id is not an extension
    ids = ["a", "b.jpg", "c.jpg", "d", "sub/e", "f", "g", "h.1", "a.png"]
    write_csv(tmp_path / "labels.csv", "image,level", [f"{i},{k % 2}" for k, i in enumerate(ids[:-1])])
    c = load_collection(tmp_path, val_fraction=0.3, test_fraction=0.3)
    paths = {i: Path(p) for i, p in zip(c.table["image"], c.table["path"])}
    assert paths["a"] == (tmp_path / "a.png").resolve()
    assert paths["b.jpg"].parent.name == "images"
    assert paths["c.jpg"].name == "c.JPG"
    assert paths["d"].name == "d.png"
    assert paths["sub/e"] == (tmp_path / "sub" / "e.tif").resolve()
    assert paths["f"].parent.name == "train" and paths["g"].parent.name == "train_images"
    assert paths["h.1"].name == "h.1.png"


# ------------------------------------------------------------------------------------------
# Splits
# ------------------------------------------------------------------------------------------


def test_split_column_is_honoured(tmp_path):
    rows, expected = [], {}
    for j in range(12):
        scan(tmp_path / f"x{j}.png")
        s = ["TRAIN", "train", "Val", "test"][j % 4]
        rows.append(f"x{j},{j % 2},{s}")
        expected[f"x{j}"] = s.lower()
    write_csv(tmp_path / "labels.csv", "image,level,split", rows)
    c = load_collection(tmp_path, seed=123)
    assert split_of(c) == expected


def test_val_is_carved_stratified_from_train(tmp_path):
    rows = []
    for j in range(60):
        scan(tmp_path / f"x{j}.png")
        level = 0 if j < 40 else 1 if j < 52 else 2
        rows.append(f"x{j},{level},{'test' if j % 5 == 0 else 'train'}")
    write_csv(tmp_path / "labels.csv", "image,level,split", rows)
    c = load_collection(tmp_path, val_fraction=0.2)
    before = {r.split(",")[0]: r.split(",")[2] for r in rows}
    after = split_of(c)
    assert all(after[i] == "test" for i, s in before.items() if s == "test")  # test untouched
    assert all(after[i] in ("train", "val") for i, s in before.items() if s == "train")
    val = c.counts("val")
    assert (val >= 1).all()  # every class in val
    assert val.sum() == pytest.approx(0.2 * 60, abs=2)  # a share of the whole collection
    assert (c.counts("train") >= 1).all()


def test_seeded_split_is_deterministic_and_stratified(tmp_path):
    per_class = [100, 40, 20, 10, 5]
    rows = simple_set(tmp_path, per_class)
    a, b = load_collection(tmp_path, seed=7), load_collection(tmp_path, seed=7)
    assert split_of(a) == split_of(b)
    assert split_of(load_collection(tmp_path, seed=8)) != split_of(a)
    for k, n in enumerate(per_class):
        assert a.counts("test")[k] == max(1, round(0.15 * n))
        assert a.counts("val")[k] == max(1, round(0.15 * n))
    assert a.counts().tolist() == per_class
    # The CSV's row order does not change the split.
    write_csv(tmp_path / "labels.csv", "image,level", [f"{i},{lv}" for i, lv in reversed(rows)])
    assert split_of(load_collection(tmp_path, seed=7)) == split_of(a)


def test_fractions_are_used(tmp_path):
    simple_set(tmp_path, [50, 50])
    c = load_collection(tmp_path, val_fraction=0.1, test_fraction=0.3)
    assert c.counts("test").tolist() == [15, 15] and c.counts("val").tolist() == [5, 5]
    with pytest.raises(DataError, match="must each lie between 0 and 1"):
        load_collection(tmp_path, val_fraction=0.6, test_fraction=0.5)


def test_no_patient_crosses_splits(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for p in range(60):
        worst = int(rng.choice(5, p=[0.5, 0.2, 0.15, 0.1, 0.05]))
        for eye, level in (("L", worst), ("R", int(rng.integers(0, worst + 1)))):
            scan(tmp_path / f"p{p}{eye}.png")
            rows.append(f"p{p}{eye},{level},patient{p}")
    # Make sure every grade has at least 3 patients.
    for level in range(5):
        for q in range(3):
            scan(tmp_path / f"extra{level}_{q}.png")
            rows.append(f"extra{level}_{q},{level},extra{level}_{q}")
    write_csv(tmp_path / "labels.csv", "image,level,patient", rows)
    for seed in range(5):
        c = load_collection(tmp_path, seed=seed)
        per_patient = c.table.groupby("patient")["split"].nunique()
        assert (per_patient == 1).all(), seed
        assert (c.counts("train") > 0).all() and (c.counts("test") > 0).all()


def test_patient_column_off(tmp_path):
    rows = []
    for j in range(9):
        scan(tmp_path / f"{j}_left.png")
        rows.append(f"{j}_left,{j % 3}")
    write_csv(tmp_path / "labels.csv", "image,level", rows)
    assert load_collection(tmp_path).table["patient"].notna().all()
    assert load_collection(tmp_path, patient_col=None).table["patient"].isna().all()


# ------------------------------------------------------------------------------------------
# Class names
# ------------------------------------------------------------------------------------------


def test_class_names_dr_default_and_digits(tmp_path):
    simple_set(tmp_path / "five", [3] * 5)
    simple_set(tmp_path / "four", [3] * 4)
    assert load_collection(tmp_path / "five").class_names == list(DR_GRADE_NAMES)
    assert load_collection(tmp_path / "four").class_names == ["0", "1", "2", "3"]


def test_dr_grade_names_match_metrics():
    from models.metrics import DR_GRADE_NAMES as metric_names

    assert tuple(DR_GRADE_NAMES) == tuple(metric_names)


def test_class_names_given(tmp_path):
    rows = []
    for j in range(12):
        scan(tmp_path / f"x{j}.png")
        rows.append(f"x{j},{['low', '1', 'HIGH'][j % 3]}")  # names (any case) or indices
    write_csv(tmp_path / "labels.csv", "image,level", rows)
    c = load_collection(tmp_path, class_names=["low", "mid", "high"])
    assert c.class_names == ["low", "mid", "high"]
    assert c.counts().tolist() == [4, 4, 4]
    with pytest.raises(DataError, match="at least 2 distinct"):
        load_collection(tmp_path, class_names=["a", "a"])


def test_class_names_given_for_imagefolder(tmp_path):
    for name in ("b", "a"):
        for j in range(3):
            scan(tmp_path / name / f"{j}.png")
    c = load_collection(tmp_path, class_names=["b", "a"])
    assert c.class_names == ["b", "a"] and c.table.loc[c.table["image"] == "b/0.png", "label"].item() == 0


# ------------------------------------------------------------------------------------------
# Bad data: each kind raises, and --skip-bad drops the rows
# ------------------------------------------------------------------------------------------


def test_missing_files(tmp_path, caplog):
    simple_set(tmp_path, [6, 6])
    (tmp_path / "img0_2.png").unlink()
    (tmp_path / "img1_4.png").unlink()
    with pytest.raises(DataError, match=r"^labels\.csv: 2 image files not found: row 4 'img0_2', row 12 'img1_4' \(2 in total\)\. Use --skip-bad to skip them\.$"):
        load_collection(tmp_path)
    with caplog.at_level(logging.WARNING, logger="drgrade.data"):
        c = load_collection(tmp_path, skip_bad=True)
    assert len(c.table) == 10 and c.skipped == 2
    assert c.problems == ["labels.csv: 2 image files not found: row 4 'img0_2', row 12 'img1_4' (2 in total)."]
    assert "skipped 2 bad rows" in caplog.text


def test_first_20_rows_listed(tmp_path):
    simple_set(tmp_path, [20, 20])
    for j in range(13):
        (tmp_path / f"img0_{j}.png").unlink()
        (tmp_path / f"img1_{j}.png").unlink()
    with pytest.raises(DataError) as info:
        load_collection(tmp_path)
    msg = str(info.value)
    assert msg.count("row ") == 20 and ", ..." in msg and "(26 in total)" in msg
    assert "row 2 'img0_0'" in msg and "img1_12" not in msg
    c = load_collection(tmp_path, skip_bad=True)
    assert c.skipped == 26 and c.counts().tolist() == [7, 7]


def test_corrupt_image(tmp_path):
    simple_set(tmp_path, [5, 5])
    (tmp_path / "img1_0.png").write_bytes(b"this is not a png at all" * 10)
    with pytest.raises(DataError, match=r"1 unreadable image: row 7 'img1_0' \(not an image file Pillow can read\)"):
        load_collection(tmp_path)
    c = load_collection(tmp_path, skip_bad=True)
    assert "img1_0" not in set(c.table["image"]) and c.skipped == 1
    assert "unreadable image" in c.problems[0]
    # Without verification the file is not decoded (and so not caught).
    assert len(load_collection(tmp_path, verify_images=False).table) == 10


def test_truncated_png(tmp_path):
    simple_set(tmp_path, [5, 5])
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    (tmp_path / "img0_3.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DataError, match=r"1 unreadable image: row 5 'img0_3' \(corrupt or truncated"):
        load_collection(tmp_path)
    c = load_collection(tmp_path, skip_bad=True)
    assert c.counts().tolist() == [4, 5] and c.skipped == 1


def test_label_outside_given_class_set(tmp_path):
    simple_set(tmp_path, [4, 4, 4])
    with pytest.raises(DataError, match=r"4 labels outside the class set \('a', 'b'\): row 10 'img2_0' \('2'\)"):
        load_collection(tmp_path, class_names=["a", "b"])
    c = load_collection(tmp_path, class_names=["a", "b"], skip_bad=True)
    assert c.counts().tolist() == [4, 4] and c.skipped == 4


def test_label_outside_inferred_class_set(tmp_path):
    rows = simple_set(tmp_path, [3, 3, 3])
    scan(tmp_path / "stray.png")
    write_csv(tmp_path / "labels.csv", "image,level", [f"{i},{lv}" for i, lv in rows] + ["stray,9"])
    with pytest.raises(DataError, match=r"1 label outside the class set \(0\.\.2, inferred.*row 11 'stray' \('9'\)"):
        load_collection(tmp_path)
    c = load_collection(tmp_path, skip_bad=True)
    assert c.class_names == ["0", "1", "2"] and c.skipped == 1


def test_non_numeric_and_empty_labels(tmp_path):
    rows = simple_set(tmp_path, [3, 3, 3])
    scan(tmp_path / "odd.png")
    scan(tmp_path / "blank.png")
    write_csv(tmp_path / "labels.csv", "image,level", [f"{i},{lv}" for i, lv in rows] + ["odd,severe", "blank,"])
    with pytest.raises(DataError) as info:
        load_collection(tmp_path)
    assert "1 non-numeric label where integer grades are expected: row 11 'odd' ('severe')" in str(info.value)
    assert "1 empty label: row 12 'blank'" in str(info.value)
    c = load_collection(tmp_path, skip_bad=True)
    assert c.skipped == 2 and len(c.problems) == 2


def test_duplicate_ids(tmp_path):
    rows = simple_set(tmp_path, [4, 4])
    lines = [f"{i},{lv}" for i, lv in rows] + ["img0_1,0", "img1_1.png,0"]  # same label; different label
    write_csv(tmp_path / "labels.csv", "image,level", lines)
    with pytest.raises(DataError, match=r"^labels\.csv: 3 duplicate image ids: row 7 'img1_1'") as info:
        load_collection(tmp_path)
    msg = str(info.value)
    assert "row 10 'img0_1' (same scan as row 3 'img0_1')" in msg
    assert "row 7 'img1_1' (labels differ between its copies)" in msg and "row 11 'img1_1.png'" in msg
    assert "row 3 'img0_1'" not in msg.replace("same scan as row 3 'img0_1'", "")
    c = load_collection(tmp_path, skip_bad=True, val_fraction=0.25, test_fraction=0.25)
    images = list(c.table["image"])
    assert images.count("img0_1") == 1  # first copy kept: labels agree
    assert "img1_1" not in images and "img1_1.png" not in images  # conflicting: all copies dropped
    assert c.skipped == 3


def test_class_with_no_training_example(tmp_path):
    rows = []
    for j in range(12):
        scan(tmp_path / f"x{j}.png")
        level = j % 3
        rows.append(f"x{j},{level},{'test' if level == 2 else ['train', 'val'][j % 2]}")
    write_csv(tmp_path / "labels.csv", "image,level,split", rows)
    with pytest.raises(DataError, match=r"class '2' \(2\) has no training example: its 4 images are all in val/test"):
        load_collection(tmp_path)
    c = load_collection(tmp_path, skip_bad=True)
    assert c.class_names == ["0", "1"] and c.skipped == 4
    assert "no training example" in c.problems[0]


def test_class_emptied_by_skipped_rows(tmp_path):
    simple_set(tmp_path, [4, 4, 3])
    for j in range(3):
        (tmp_path / f"img2_{j}.png").unlink()
    with pytest.raises(DataError, match="3 image files not found"):
        load_collection(tmp_path, class_names=["a", "b", "c"])
    c = load_collection(tmp_path, class_names=["a", "b", "c"], skip_bad=True)
    assert c.class_names == ["a", "b"] and c.skipped == 3
    assert any("class 'c' (2) has no images" in p for p in c.problems)


def test_too_few_for_split(tmp_path):
    simple_set(tmp_path, [6, 5, 4, 2, 3])
    with pytest.raises(DataError, match=r"class 'Severe' \(3\) has 2 images, too few for a train/val/test split.*--skip-bad"):
        load_collection(tmp_path)
    c = load_collection(tmp_path, skip_bad=True)
    assert c.class_names == ["No DR", "Mild", "Moderate", "Proliferative DR"]
    assert c.counts("train").min() >= 1 and c.counts("test").min() >= 1 and c.counts("val").min() >= 1
    assert c.table.loc[c.table["image"] == "img4_0", "label"].item() == 3  # re-indexed
    assert c.skipped == 2


def test_too_few_patients_for_split(tmp_path):
    rows = []
    for p in range(6):
        for eye in "LR":
            scan(tmp_path / f"{p}{eye}.png")
            rows.append(f"{p}{eye},{0 if p < 4 else 1},pt{p}")
    write_csv(tmp_path / "labels.csv", "image,level,patient", rows)
    with pytest.raises(DataError, match=r"class '1' \(1\) has 4 images from 2 patients, too few"):
        load_collection(tmp_path)
    with pytest.raises(DataError, match="fewer than 2 classes left"):
        load_collection(tmp_path, skip_bad=True)


def test_unknown_column(tmp_path):
    simple_set(tmp_path, [3, 3])
    for skip in (False, True):  # a usage error: --skip-bad cannot skip it
        with pytest.raises(DataError, match=r"no column 'scan' for the image id; the CSV's columns are 'image', 'level'"):
            load_collection(tmp_path, image_col="scan", skip_bad=skip)
        with pytest.raises(DataError, match=r"no column 'where' \(--split-col\)"):
            load_collection(tmp_path, split_col="where", skip_bad=skip)
    write_csv(tmp_path / "labels.csv", "picture,score", ["img0_0,0"])
    with pytest.raises(DataError, match=r"cannot tell which column holds the image id .*'picture', 'score'\. Name it with --image-col"):
        load_collection(tmp_path, skip_bad=True)


def test_invalid_split_values(tmp_path):
    rows = []
    for j in range(9):
        scan(tmp_path / f"x{j}.png")
        rows.append(f"x{j},{j % 2},{['train', 'holdout', 'test'][j % 3] if j else 'train'}")
    rows.append("x9,0,val")
    scan(tmp_path / "x9.png")
    write_csv(tmp_path / "labels.csv", "image,level,split", rows)
    with pytest.raises(DataError, match=r"3 invalid split values \(valid: train, val, test\): row 3 'x1' \('holdout'\)"):
        load_collection(tmp_path)
    c = load_collection(tmp_path, skip_bad=True)
    assert "holdout" not in set(c.table["split"]) and c.skipped == 3


def test_no_train_split(tmp_path):
    for j in range(4):
        scan(tmp_path / f"x{j}.png")
    write_csv(tmp_path / "labels.csv", "image,level,split", [f"x{j},{j % 2},test" for j in range(4)])
    for skip in (False, True):
        with pytest.raises(DataError, match="training split would be empty"):
            load_collection(tmp_path, skip_bad=skip)


def test_unusable_paths_and_csvs(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_collection(tmp_path / "nope")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: the CSV is empty"):
        load_collection(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("image,level\n\n")
    with pytest.raises(DataError, match="has a header .* but no rows"):
        load_collection(tmp_path / "header.csv")
    (tmp_path / "binary.csv").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match="not a text CSV"):
        load_collection(tmp_path / "binary.csv")
    scan(tmp_path / "loose" / "a.png")
    with pytest.raises(DataError, match="not a collection"):
        load_collection(tmp_path / "loose")
    with pytest.raises(DataError, match="is an image"):
        load_collection(tmp_path / "loose" / "a.png")


# ------------------------------------------------------------------------------------------
# Collection methods and --check
# ------------------------------------------------------------------------------------------


def test_counts_ratio_hash_and_summary(tmp_path):
    simple_set(tmp_path / "a", [20, 5, 4])
    c = load_collection(tmp_path / "a")
    assert c.counts().tolist() == [20, 5, 4]
    assert c.counts("train").sum() + c.counts("val").sum() + c.counts("test").sum() == 29
    assert c.imbalance_ratio() == c.counts("train").max() / c.counts("train").min()
    with pytest.raises(ValueError, match="unknown split"):
        c.counts("dev")
    h = c.data_hash()
    assert len(h) == 64 and h == load_collection(tmp_path / "a").data_hash()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert load_collection(tmp_path / "b").data_hash() == h  # location-independent
    assert load_collection(tmp_path / "a", seed=1).data_hash() != h  # different split
    scan(tmp_path / "b" / "img0_0.png", size=12)
    assert load_collection(tmp_path / "b").data_hash() != h  # a changed file
    text = c.summary()
    assert "Source:     labels.csv" in text and "0 0" in text and "Problems:   none" in text
    assert "Imbalance:" in text and "total" in text


def test_check_collection(tmp_path):
    simple_set(tmp_path, [6, 6])
    (tmp_path / "img1_0.png").unlink()
    (tmp_path / "img0_0.png").write_bytes(b"garbage")
    collection, problems = check_collection(tmp_path)
    assert collection is not None and len(problems) == 2
    assert collection.skipped == 2 and len(collection.table) == 10
    summary = collection.summary()
    assert "1 image file not found" in summary and "1 unreadable image" in summary and "(2 bad rows skipped)" in summary
    assert check_collection(tmp_path / "nope") == (None, [f"{tmp_path / 'nope'}: no such file or folder"])
    none, problems = check_collection(tmp_path, label_col="grade_x")
    assert none is None and "no column 'grade_x'" in problems[0]
    good, problems = check_collection(tmp_path, verify_images=False, image_col="image")
    assert problems == ["labels.csv: 1 image file not found: row 8 'img1_0' (1 in total)."]
