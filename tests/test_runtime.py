"""ONNX Runtime sessions (models.runtime), grading helpers and quality warnings.

Models are small real ONNX graphs built with ``onnx.helper`` and run by the real ONNX Runtime:
``image`` [N, 3, S, S] -> AveragePool(4) -> 1x1 Conv = ``cam`` [N, C, S/4, S/4];
``probs`` = Softmax(Flatten(GlobalAveragePool(cam)) + b), so the CAM is the true class
activation map of the classifier (Zhou et al. 2016) and probs can be recomputed in numpy.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image, ImageDraw, ImageFilter

from models.card import CARD_KEY, CardError
from models.grade import cam_overlay, normalize_cam, referable_probability
from models.quality import BLUR_VARIANCE, laplacian_variance, quality_warnings
from models.runtime import CPU, ModelCardError, ModelFileError, clear_session_cache, create_session, resolve_providers

ROOT = Path(__file__).resolve().parents[1]
DR_CLASSES = ["No DR", "Mild", "Moderate", "Severe", "Proliferative"]


def make_weights(n_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1.5, size=(n_classes, 3)).astype(np.float32), rng.normal(0, 0.1, size=n_classes).astype(np.float32)


def make_card(n_classes: int = 5, size: int = 32, **overrides) -> dict:
    card = {
        "format": 1,
        "name": "toy",
        "precision": "fp32",
        "class_names": DR_CLASSES if n_classes == 5 else [f"c{i}" for i in range(n_classes)],
        "input_size": size,
        "preprocess": {"mode": "fundus", "size": size},
        "input_name": "image",
        "output_names": ["probs", "cam"],
    }
    card.update(overrides)
    return card


def make_model(path: Path, *, n_classes: int = 5, size: int = 32, card: dict | None | str = "default", input_name: str = "image",
               graph_classes: int | None = None, with_cam: bool = True, static_batch: bool = False, seed: int = 0) -> Path:
    """Write a small real drgrade-style ONNX model; ``card=None`` omits the card."""
    gc = graph_classes or n_classes
    w, b = make_weights(gc, seed)
    batch = 1 if static_batch else "N"
    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, 3, size, size])
    outs = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, gc])]
    if with_cam:
        outs.append(helper.make_tensor_value_info("cam", TensorProto.FLOAT, [batch, gc, size // 4, size // 4]))
    inits = [helper.make_tensor("W", TensorProto.FLOAT, [gc, 3, 1, 1], w.reshape(-1).tolist()),
             helper.make_tensor("B", TensorProto.FLOAT, [gc], b.tolist())]
    nodes = [
        helper.make_node("AveragePool", [input_name], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),  # (N, 3, S/4, S/4)
        helper.make_node("Conv", ["pooled", "W"], ["cam" if with_cam else "maps"]),  # (N, C, S/4, S/4)
        helper.make_node("GlobalAveragePool", ["cam" if with_cam else "maps"], ["gap"]),  # (N, C, 1, 1)
        helper.make_node("Flatten", ["gap"], ["flat"]),  # (N, C)
        helper.make_node("Add", ["flat", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    model = helper.make_model(helper.make_graph(nodes, "toy", [x], outs, inits), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if card == "default":
        card = make_card(n_classes, size)
    if card is not None:
        helper.set_model_props(model, {CARD_KEY: card if isinstance(card, str) else json.dumps(card)})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def reference_probs(prepared: np.ndarray, n_classes: int = 5, seed: int = 0, mean=0.5, std=0.25) -> np.ndarray:
    """What the toy graph computes, in numpy, from the uint8 network view."""
    w, b = make_weights(n_classes, seed)
    x = (prepared.astype(np.float32) / 255.0 - mean) / std
    logits = w @ x.reshape(-1, 3).mean(0) + b
    e = np.exp(logits - logits.max())
    return e / e.sum()


@pytest.fixture
def toy_model(tmp_path) -> Path:
    return make_model(tmp_path / "toy.onnx")


# ----------------------------------------------------------------------------- sessions

def test_session_runs_and_reports_real_provider(toy_model):
    s = create_session(toy_model)
    assert s.provider == s.inference.get_providers()[0]
    assert s.requested == ("auto",)
    assert s.card["class_names"] == DR_CLASSES and s.has_cam
    probs, cam = s.run(np.zeros((3, 3, 32, 32), np.float32))
    assert probs.shape == (3, 5) and cam.shape == (3, 5, 8, 8)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


def test_thread_settings_and_cpu_provider(toy_model):
    s = create_session(toy_model, providers="cpu", threads=2)
    assert s.provider == CPU and s.requested == ("cpu",)
    opts = s.inference.get_session_options()
    assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
    assert opts.graph_optimization_level.name == "ORT_ENABLE_ALL"


def test_explicit_provider_list_and_unknown_names(toy_model):
    s = create_session(toy_model, providers=["CPUExecutionProvider"])
    assert s.provider == CPU and s.requested == ("CPUExecutionProvider",)
    assert resolve_providers("cpu") == [CPU]
    assert resolve_providers("auto")[-1] == CPU
    with pytest.raises(ValueError, match="unknown execution provider.*FooExecutionProvider"):
        create_session(toy_model, providers=["FooExecutionProvider"])
    with pytest.raises(ValueError, match="unknown providers 'gpu-please'"):
        create_session(toy_model, providers="gpu-please")
    with pytest.raises(ValueError, match="providers list is empty"):
        create_session(toy_model, providers=[])
    with pytest.raises(ValueError, match="threads must be >= 1"):
        create_session(toy_model, threads=-1)


def test_sessions_are_cached_and_reloaded_after_reexport(tmp_path):
    path = make_model(tmp_path / "m.onnx")
    a = create_session(path, providers="cpu")
    assert create_session(str(path), providers="cpu") is a
    assert create_session(tmp_path / "." / "m.onnx", providers="cpu") is a
    make_model(path, n_classes=3)  # re-export: new size and mtime
    b = create_session(path, providers="cpu")
    assert b is not a and len(b.class_names) == 3
    clear_session_cache()
    assert create_session(path, providers="cpu") is not b


def test_session_cache_is_thread_safe(tmp_path):
    path = make_model(tmp_path / "m.onnx")
    got, errors = [], []

    def load():
        try:
            got.append(create_session(path, providers="cpu"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(got) == 8 and all(s is got[0] for s in got)


def test_run_dir_resolves_to_model_onnx(tmp_path):
    run = tmp_path / "run"
    make_model(run / "model.onnx")
    assert create_session(run).path == (run / "model.onnx").resolve()


# ----------------------------------------------------------------------------- bad model files

def test_missing_path(tmp_path):
    with pytest.raises(ModelFileError, match="nope.onnx: no such file or directory"):
        create_session(tmp_path / "nope.onnx")


def test_run_dir_without_model(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(ModelFileError, match=r"run dir .*run has no model.onnx: export it with `python -m export .*run`"):
        create_session(tmp_path / "run")


def test_empty_file(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"m.onnx: empty file \(0 bytes\)"):
        create_session(tmp_path / "m.onnx")


@pytest.mark.parametrize("damage", ["truncate", "text"])
def test_corrupt_file(tmp_path, damage):
    path = make_model(tmp_path / "m.onnx")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3] if damage == "truncate" else b"this is a text file, not a model\n")
    with pytest.raises(ModelFileError, match=r"m.onnx: not a valid ONNX file \(truncated or corrupt\?\)"):
        create_session(path)


def test_onnx_file_without_card(tmp_path):
    path = make_model(tmp_path / "m.onnx", card=None)
    with pytest.raises(ModelCardError, match="not a drgrade model") as info:
        create_session(path)
    assert isinstance(info.value, CardError) and isinstance(info.value, ModelFileError)


def test_card_not_json(tmp_path):
    path = make_model(tmp_path / "m.onnx", card="{not json")
    with pytest.raises(CardError, match="model card is not valid JSON"):
        create_session(path)


def test_card_missing_fields(tmp_path):
    path = make_model(tmp_path / "m.onnx", card={"format": 1, "class_names": DR_CLASSES})
    with pytest.raises(CardError, match="model card lacks input_size, preprocess"):
        create_session(path)


def test_input_not_named_image(tmp_path):
    path = make_model(tmp_path / "m.onnx", input_name="input")
    with pytest.raises(ModelFileError, match=r"graph inputs are \['input'\], expected one input named 'image'"):
        create_session(path)


def test_class_count_mismatch(tmp_path):
    path = make_model(tmp_path / "m.onnx", n_classes=5, graph_classes=3)
    with pytest.raises(ModelFileError, match="'probs' has 3 classes but the card names 5"):
        create_session(path)


def test_input_size_mismatch(tmp_path):
    path = make_model(tmp_path / "m.onnx", card=make_card(5, 64))
    with pytest.raises(ModelFileError, match="card says input_size 64"):
        create_session(path)


def test_bad_class_names_in_card(tmp_path):
    path = make_model(tmp_path / "m.onnx", card=make_card(5, 32, class_names="0,1,2,3,4"))
    with pytest.raises(ModelCardError, match="'class_names' must be a list"):
        create_session(path)


# ----------------------------------------------------------------------------- process hygiene

def test_no_torch_and_no_provider_noise(toy_model):
    """models.* never imports torch, and 'auto' sessions print nothing (stdout may carry CSV)."""
    code = (
        "import sys\n"
        "from models.runtime import create_session\n"
        "import models.grade, models.quality\n"
        f"s = create_session({str(toy_model)!r})\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
        "sys.stderr.write('PROVIDER=' + s.provider)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert "EP Error" not in proc.stderr and "[E:onnxruntime" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("PROVIDER=") and proc.stderr.endswith("ExecutionProvider")


# ----------------------------------------------------------------------------- helpers

def test_cam_overlay():
    img = np.full((32, 32, 3), 100, np.uint8)
    cam = np.zeros((4, 4), np.float32)
    cam[0, 0] = 5.0
    np.testing.assert_array_equal(cam_overlay(img, cam, opacity=0.0), img)
    full = cam_overlay(img, cam, opacity=1.0)
    assert full.shape == (32, 32, 3) and full.dtype == np.uint8
    assert full[0, 0, 0] > 100 and full[0, 0, 2] < 50  # hot corner: red in jet
    assert full[31, 31, 2] > 100 and full[31, 31, 0] == 0  # cold corner: blue
    grey = cam_overlay(img, cam, opacity=0.5, colormap="gray")
    assert grey[0, 0, 0] == grey[0, 0, 1] == grey[0, 0, 2]
    with pytest.raises(ValueError, match="needs a uint8 HxWx3 image"):
        cam_overlay(img.astype(np.float32), cam)
    with pytest.raises(ValueError, match="needs a 2-D map"):
        cam_overlay(img, cam[None])
    with pytest.raises(ValueError, match="opacity must be in"):
        cam_overlay(img, cam, opacity=2)
    with pytest.raises(ValueError, match="unknown colormap 'viridis'; valid: jet, gray"):
        cam_overlay(img, cam, colormap="viridis")


def test_normalize_cam():
    np.testing.assert_allclose(normalize_cam(np.array([[1.0, 3.0], [2.0, 5.0]])), [[0, 0.5], [0.25, 1.0]])
    np.testing.assert_array_equal(normalize_cam(np.ones((3, 3))), np.zeros((3, 3)))


def test_referable_probability():
    assert referable_probability(np.array([0.5, 0.2, 0.1, 0.1, 0.1]), DR_CLASSES) == pytest.approx(0.3)
    assert referable_probability([0.3, 0.7], ["healthy", "dr"]) is None
    with pytest.raises(ValueError, match=r"5-grade DR scale, got shape \(1, 3\)"):
        referable_probability([0.2, 0.3, 0.5], DR_CLASSES)


# ----------------------------------------------------------------------------- quality

def fundus_like(size: int = 512, seed: int = 0) -> Image.Image:
    """Orange disc on black with a darker macula, a bright optic disc, vessels and texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    r = np.hypot(yy - size / 2, xx - size / 2) / (0.46 * size)
    inside = r <= 1.0
    shade = np.clip(1.0 - 0.35 * r ** 2, 0, 1)
    img = np.zeros((size, size, 3), np.float32)
    img[..., 0], img[..., 1], img[..., 2] = 190 * shade, 90 * shade, 40 * shade
    img += rng.normal(0, 6, size=(size, size, 1))
    pil = Image.fromarray(np.clip(img * inside[..., None], 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(pil)
    c = size / 2
    d.ellipse([c + 0.2 * size, c - 0.06 * size, c + 0.3 * size, c + 0.06 * size], fill=(250, 210, 150))  # optic disc
    for k in range(8):  # vessels radiating from the disc
        ang = k * np.pi / 4 + 0.3
        d.line([c + 0.25 * size, c, c + 0.25 * size + 0.4 * size * np.cos(ang), c + 0.4 * size * np.sin(ang)], fill=(120, 30, 20), width=max(2, size // 120))
    return Image.fromarray(np.asarray(pil) * inside[..., None].astype(np.uint8))


def test_quality_fundus_passes():
    assert quality_warnings(fundus_like()) == []
    assert quality_warnings(np.asarray(fundus_like(300, seed=1))) == []


def test_quality_synth_fundus_passes():
    from training.synth import generate_fundus

    for grade in range(5):
        assert quality_warnings(generate_fundus(grade, size=256, rng=np.random.default_rng(grade))) == []


def test_quality_black_and_white():
    black = quality_warnings(np.zeros((300, 300, 3), np.uint8))
    assert black[0].startswith("too dark") and any("no circular field of view" in w for w in black)
    white = quality_warnings(np.full((300, 300, 3), 255, np.uint8))
    assert white[0].startswith("over-exposed") and any("no circular field of view" in w for w in white)


def test_quality_dark_fundus():
    dark = Image.fromarray((np.asarray(fundus_like()).astype(np.float32) * 0.2).astype(np.uint8))
    warnings = quality_warnings(dark)
    assert any(w.startswith("too dark") for w in warnings)


def test_quality_blurred():
    blurred = fundus_like().filter(ImageFilter.GaussianBlur(10))
    warnings = quality_warnings(blurred)
    assert len(warnings) == 1 and warnings[0].startswith("blurred"), warnings


def test_quality_document_like_rectangle():
    page = Image.new("RGB", (600, 800), (235, 235, 230))
    d = ImageDraw.Draw(page)
    for y in range(60, 760, 24):  # lines of "text"
        d.rectangle([50, y, 550, y + 8], fill=(30, 30, 30))
    assert any("no circular field of view" in w for w in quality_warnings(page))
    rect = Image.new("RGB", (400, 400), (0, 0, 0))
    ImageDraw.Draw(rect).rectangle([60, 60, 340, 340], fill=(180, 90, 40))
    rect = Image.fromarray(np.clip(np.asarray(rect) + np.random.default_rng(0).normal(0, 8, (400, 400, 3)), 0, 255).astype(np.uint8))
    assert quality_warnings(rect) == ["no circular field of view found: this may not be a fundus photograph"]


def test_quality_accepts_other_modes_and_rejects_bad_arrays():
    assert quality_warnings(fundus_like().convert("RGBA")) == []
    with pytest.raises(ValueError, match="not an HxW, HxWx3 or HxWx4 image"):
        quality_warnings(np.zeros((4, 4, 2), np.uint8))


def test_laplacian_variance():
    flat = np.full((20, 20), 7.0)
    assert laplacian_variance(flat) == 0.0
    checker = (np.indices((20, 20)).sum(0) % 2) * 255.0
    assert laplacian_variance(checker) > BLUR_VARIANCE
    assert laplacian_variance(np.zeros((2, 2))) == 0.0
