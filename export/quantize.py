"""int8 and fp16 variants of an exported ``model.onnx``.

int8: static QDQ quantisation with ONNX Runtime (``quant_pre_process`` then
``quantize_static``, per-channel weights). Activation ranges come from a calibration set
that is *stratified* over the training split, up to N scans per class: the first N scans of
an imbalanced collection may hold no grade 3-4 scan at all, and ranges calibrated without
them clip exactly the features that matter for the rare grades (the torchvision quantisation
references make the same point). The int8 model is then evaluated on the test split, and its
own card carries both its metrics and the fp32 ones.

fp16: ``onnxruntime.transformers.float16.convert_float_to_float16`` with float32 inputs and
outputs, for GPU deployment.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx

from export.onnx_export import (
    INPUT_NAME,
    MODEL_FILE,
    OUTPUT_NAMES,
    ExportError,
    build_card,
    load_images,
    ort_session,
    read_json,
    save_inline,
    set_card,
    split_rows,
)
from models.card import metric_summary
from models.metrics import compute_metrics
from models.preprocess import PreprocessSpec

log = logging.getLogger("drgrade.export")

INT8_FILE = "model.int8.onnx"
FP16_FILE = "model.fp16.onnx"
INT8_METRICS_FILE = "metrics.int8.json"
#: A macro-F1 drop larger than this (int8 vs fp32, test split) prints a warning.
MAX_F1_DROP = 0.01
CALIB_BATCH = 8
#: ONNX op types that int8 quantisation touches (see quantize_int8).
QUANTIZED_OPS = ["Conv", "Gemm", "MatMul"]


# ----------------------------------------------------------------------------- labels


def training_labels(run: Path) -> dict[str, int]:
    """Image id -> label of the training split, from ``split.csv``'s ``label`` column."""
    path = run / "split.csv"
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if "label" not in (reader.fieldnames or ()):
            raise ExportError(f"{path}: no 'label' column (written by drgrade before int8 calibration needed it); retrain the run to quantise it")
        return {r["image"]: int(r["label"]) for r in reader if r["split"] == "train"}


def test_labels(run: Path) -> dict[str, int]:
    """Image id -> true grade of the test split, from ``predictions.csv``."""
    path = run / "predictions.csv"
    if not path.is_file():
        raise ExportError(f"run dir {run}: no predictions.csv (needed for the test labels of int8 evaluation)")
    with path.open(newline="") as f:
        return {r["image"]: int(r["true"]) for r in csv.DictReader(f)}


def stratified_sample(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of up to ``per_class`` items of every class present, in a seeded random order.

    Examples
    --------
    >>> idx = stratified_sample(np.array([0, 0, 0, 0, 1, 2, 2]), per_class=2)
    >>> np.bincount(np.array([0, 0, 0, 0, 1, 2, 2])[idx]).tolist()
    [2, 1, 2]
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        picks.append(rng.permutation(idx)[:per_class])
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, np.int64)


def calibration_images(run: Path, record: dict, spec: PreprocessSpec, *, per_class: int = 32, seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """Stratified training scans for int8 calibration, and a note of what was used."""
    rows = split_rows(run, "train")
    if not rows:
        raise ExportError(f"{run / 'split.csv'}: no rows with split 'train' to calibrate int8 on")
    labels = training_labels(run)
    y = np.array([labels[i] for i, _ in rows])
    idx = stratified_sample(y, per_class, seed)
    x = load_images([rows[i][1] for i in idx], spec)
    counts = np.bincount(y[idx], minlength=len(record["class_names"])).tolist()
    return x, {"per_class": counts, "stratified_by": "labels", "n": int(len(idx))}


class ArrayCalibrationReader:
    """ONNX Runtime ``CalibrationDataReader`` over a preprocessed (N, 3, S, S) array."""

    def __init__(self, images: np.ndarray, batch_size: int = CALIB_BATCH) -> None:
        self.images, self.batch_size = images.astype(np.float32), batch_size
        self._it: Iterator[dict[str, np.ndarray]] | None = None
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = ({INPUT_NAME: self.images[i:i + self.batch_size]} for i in range(0, len(self.images), self.batch_size))


# ----------------------------------------------------------------------------- evaluation


def evaluate_onnx(path: Path, run: Path, spec: PreprocessSpec, class_names: list[str], *, split: str = "test", batch_size: int = 64) -> dict[str, Any]:
    """Full :func:`compute_metrics` of an ONNX model on a split of the run (CPU)."""
    rows = split_rows(run, split)
    truth = test_labels(run)
    rows = [(i, p) for i, p in rows if i in truth]
    if not rows:
        raise ExportError(f"run dir {run}: no labelled {split} scans to evaluate on")
    x = load_images([p for _, p in rows], spec)
    sess = ort_session(path)
    probs = np.concatenate([sess.run([OUTPUT_NAMES[0]], {INPUT_NAME: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)])
    probs = np.clip(probs.astype(np.float64), 0.0, 1.0)
    probs /= probs.sum(axis=1, keepdims=True)
    return compute_metrics(np.array([truth[i] for i, _ in rows]), probs, class_names)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- int8


def quantize_int8(fp32_path: Path, out_path: Path, calib: np.ndarray) -> None:
    """Static QDQ int8 (per-channel weights, MinMax activation ranges over ``calib``)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(ArrayCalibrationReader, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".quant-") as td:
        pre = Path(td) / "pre.onnx"
        try:
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
        except Exception as exc:  # ORT's symbolic shape inference misses some ops (e.g. the cosine head's)
            log.info("symbolic shape inference failed (%s: %s); pre-processing with ONNX shape inference only", type(exc).__name__, exc)
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        # Only the convolutions (all but a sliver of the compute) are quantised. The decision
        # rule after the pooled embedding (logit offsets, head averaging, ordinal interval
        # distances with their +-1e6 bounds) stays in float: int8 ranges calibrated over such
        # values would flatten the probabilities.
        quantize_static(str(pre), str(out_path), Reader(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=QUANTIZED_OPS)


def export_int8(run: Path, record: dict, spec: PreprocessSpec, *, per_class: int = 32) -> dict[str, Any]:
    """``model.int8.onnx`` + ``metrics.int8.json`` from the run's gated ``model.onnx``."""
    fp32 = run / MODEL_FILE
    out, tmp = run / INT8_FILE, run / f".{INT8_FILE}.tmp"
    try:
        calib, calib_info = calibration_images(run, record, spec, per_class=per_class)
        try:
            quantize_int8(fp32, tmp, calib)
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"int8 quantisation failed ({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from None
        class_names = list(record["class_names"])
        metrics = evaluate_onnx(tmp, run, spec, class_names)
        fp32_metrics = read_json(run / "metrics.json") or {}
        card = build_card(run, record, precision="int8", metrics=metrics)
        card["fp32_metrics"] = metric_summary(fp32_metrics)
        card["calibration"] = calib_info
        proto = onnx.load_model(str(tmp))
        set_card(proto, card)
        save_inline(proto, tmp)
        _write_json_atomic(run / INT8_METRICS_FILE, metrics)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    f1, f1_ref = metrics.get("macro_f1"), fp32_metrics.get("macro_f1")
    drop = None if f1 is None or f1_ref is None else float(f1_ref) - float(f1)
    if drop is not None and drop > MAX_F1_DROP:
        msg = f"warning: int8 macro-F1 {f1:.4f} is {drop:.4f} below fp32 macro-F1 {f1_ref:.4f} (more than {MAX_F1_DROP})"
        log.warning(msg)
    log.info("wrote %s (calibrated on %d training scans, per class %s); test macro-F1 int8 %.4f vs fp32 %s", out, calib_info["n"],
             calib_info["per_class"], f1, "n/a" if f1_ref is None else f"{f1_ref:.4f}")
    return {"model": str(out), "bytes": out.stat().st_size, "calibration": calib_info, "macro_f1": f1, "fp32_macro_f1": f1_ref,
            "macro_f1_drop": drop, "metrics": str(run / INT8_METRICS_FILE)}


# ----------------------------------------------------------------------------- fp16


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs (in place)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ExportError(f"fp16 graph has a cycle or a dangling input (node {rest[0].name!r})")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def export_fp16(run: Path, record: dict, spec: PreprocessSpec, images: np.ndarray) -> dict[str, Any]:
    """``model.fp16.onnx``: float16 weights, float32 ``image``/``probs``/``cam`` (for GPUs).

    Checked with ``onnx.checker``; when ONNX Runtime runs it on CPU, also compared with the
    fp32 model on the validation scans and evaluated on the test split.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    out, tmp = run / FP16_FILE, run / f".{FP16_FILE}.tmp"
    info: dict[str, Any] = {"model": str(out)}
    try:
        proto = convert_float_to_float16(onnx.load_model(str(run / MODEL_FILE)), keep_io_types=True)
        topological_sort(proto.graph)  # the converter appends its input Casts at the end
        onnx.checker.check_model(proto)
        metrics_precision = "fp32"
        metrics = read_json(run / "metrics.json") or {}
        save_inline(proto, tmp)
        try:
            sess16, sess32 = ort_session(tmp), ort_session(run / MODEL_FILE)
            p16 = sess16.run([OUTPUT_NAMES[0]], {INPUT_NAME: images})[0]
            p32 = sess32.run([OUTPUT_NAMES[0]], {INPUT_NAME: images})[0]
            info["cpu_max_probs_diff_vs_fp32"] = float(np.abs(p16 - p32).max())
            info["cpu_pred_mismatches_vs_fp32"] = int((p16.argmax(1) != p32.argmax(1)).sum())
            metrics = evaluate_onnx(tmp, run, spec, list(record["class_names"]))
            metrics_precision = "fp16"
            info["runs_on_cpu"] = True
        except ExportError:
            raise
        except Exception as exc:  # an fp16 kernel ORT's CPU provider lacks: onnx.checker passed
            info["runs_on_cpu"] = False
            info["cpu_error"] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning("fp16 model does not run on ONNX Runtime's CPU provider (%s); validated with onnx.checker only", info["cpu_error"])
        card = build_card(run, record, precision="fp16", metrics=metrics)
        card["metrics_precision"] = metrics_precision
        set_card(proto, card)
        save_inline(proto, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    info["bytes"] = out.stat().st_size
    log.info("wrote %s", out)
    return info
