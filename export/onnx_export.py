"""PyTorch -> ONNX with a parity gate: a run directory's ``model.pt`` becomes ``model.onnx``.

The graph is a tiny wrapper whose ``forward`` is :meth:`GradingModel.predict`, so it carries
the run's decision rule (post-hoc logit offsets, averaged ensemble heads, ordinal cut points)
and the class-activation maps: ONNX predicts exactly what evaluation measured. The model card
(:mod:`models.card`) goes into the file's ``metadata_props``; the file is self-contained (all
weights inline, no external-data side file).

Nothing is published unless ONNX Runtime agrees with PyTorch on *real* validation scans of
the run (batch 1 and batch 7, max |probs diff| <= 1e-4, identical predicted grades): the
graph is written to ``.model.onnx.tmp`` and renamed only after the gate passes; on failure
the temp file is removed and any older ``model.onnx`` is left untouched.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from models.card import CARD_FORMAT, CARD_KEY, card_json, metric_summary
from models.preprocess import ImageError, PreprocessSpec, preprocess
from training.networks import CheckpointError, GradingModel, load_checkpoint

log = logging.getLogger("drgrade.export")

INPUT_NAME = "image"
OUTPUT_NAMES = ("probs", "cam")
MODEL_FILE = "model.onnx"
REPORT_FILE = "export_report.json"
DEFAULT_OPSET = 18
#: Parity tolerance on probabilities (fp32 graph vs eager PyTorch).
PROBS_ATOL = 1e-4
#: Batch sizes the gate checks: 1, and an odd size that is not the export example's.
GATE_BATCH_SIZES = (1, 7)
#: At most this many validation scans are pushed through the gate (it bounds export time).
GATE_MAX_IMAGES = 24


class ExportError(RuntimeError):
    """A run that cannot be exported (missing/corrupt files, no validation scans, ...)."""


class ParityError(ExportError):
    """ONNX Runtime and PyTorch disagree on the same inputs; the message gives the numbers."""


class PredictWrapper(nn.Module):
    """``forward(image) -> (probs, cam)``: the deployed outputs of :class:`GradingModel`."""

    def __init__(self, model: GradingModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (N, 3, S, S)
        return self.model.predict(image)  # (N, C), (N, C, h, w)


# ----------------------------------------------------------------------------- the run dir


def open_run(run_dir: str | os.PathLike) -> tuple[Path, GradingModel, dict]:
    """Check a run directory and load its checkpoint: ``(run_dir, model, record)``.

    Raises
    ------
    ExportError
        The directory is missing, has no ``model.pt``, or the checkpoint is unreadable.
    """
    run = Path(run_dir).expanduser()
    if not run.exists():
        raise ExportError(f"run dir {run}: no such directory")
    if not run.is_dir():
        raise ExportError(f"run dir {run}: not a directory (pass the run directory that holds model.pt)")
    if not (run / "model.pt").is_file():
        raise ExportError(f"run dir {run}: no model.pt (train the run first: python -m training ... --out {run})")
    try:
        model, record = load_checkpoint(run / "model.pt")
    except CheckpointError as exc:
        raise ExportError(str(exc)) from None
    except Exception as exc:  # a checkpoint whose state dict does not fit its own arch
        raise ExportError(f"{run / 'model.pt'}: cannot rebuild the model ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    for key in ("config", "class_names", "preprocess"):
        if key not in record:
            raise ExportError(f"{run / 'model.pt'}: checkpoint lacks '{key}' (written by an older trainer?)")
    return run, model, record


def run_spec(record: dict) -> PreprocessSpec:
    try:
        return PreprocessSpec.from_dict(dict(record["preprocess"]))
    except (TypeError, ValueError) as exc:
        raise ExportError(f"checkpoint has an invalid preprocessing spec ({exc})") from None


def split_rows(run: Path, split: str) -> list[tuple[str, Path]]:
    """``(image id, path)`` of the rows of ``split.csv`` in ``split`` (train/val/test)."""
    path = run / "split.csv"
    if not path.is_file():
        raise ExportError(f"run dir {run}: no split.csv (needed for real validation scans)")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"image", "split", "path"} - set(reader.fieldnames or ())
        if missing:
            raise ExportError(f"{path}: lacks column(s) {', '.join(sorted(missing))}")
        return [(r["image"], Path(r["path"])) for r in reader if r["split"] == split]


def load_images(paths: Sequence[Path], spec: PreprocessSpec) -> np.ndarray:
    """Preprocess scans with the run's spec: float32 (N, 3, S, S)."""
    try:
        return np.stack([preprocess(p, spec) for p in paths])
    except ImageError as exc:
        raise ExportError(f"cannot read a scan of the run: {exc}") from None


def validation_images(run: Path, spec: PreprocessSpec, *, limit: int = GATE_MAX_IMAGES) -> np.ndarray:
    """Real validation scans of the run (``split.csv``, split == "val"), preprocessed."""
    rows = split_rows(run, "val")
    if not rows:
        raise ExportError(f"{run / 'split.csv'}: no rows with split 'val'; the parity gate needs real validation scans")
    return load_images([p for _, p in rows[:limit]], spec)


def read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path}: not valid JSON ({exc})") from None


# ----------------------------------------------------------------------------- the card


def build_card(run: Path, record: dict, *, precision: str = "fp32", metrics: dict | None = None, opset: int | None = None) -> dict[str, Any]:
    """The model card (see :mod:`models.card`) of a run, for one precision of its model."""
    config = record.get("config", {})
    spec = run_spec(record)
    if metrics is None:
        metrics = read_json(run / "metrics.json") or {}
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "name": config.get("name") or run.name,
        "precision": precision,
        "class_names": list(record["class_names"]),
        "input_size": int(spec.size),
        "preprocess": spec.to_dict(),
        "input_name": INPUT_NAME,
        "output_names": list(OUTPUT_NAMES),
        "strategy": config.get("strategy"),
        "strategy_parts": config.get("strategy_parts"),
        "decision_rule": config.get("decision"),
        "metrics": metric_summary(metrics),
        "data_hash": config.get("data_hash"),
        "versions": config.get("versions"),
        "network": config.get("network", record.get("arch", {}).get("network")),
        "exported_with": {"torch": torch.__version__, "onnx": onnx.__version__},
    }
    if opset is not None:
        card["opset"] = int(opset)
    return card


def set_card(model_proto: onnx.ModelProto, card: dict[str, Any]) -> None:
    """Put the card into ``metadata_props`` under :data:`CARD_KEY` (replacing an older one)."""
    keep = [p for p in model_proto.metadata_props if p.key != CARD_KEY]
    del model_proto.metadata_props[:]
    model_proto.metadata_props.extend(keep)
    entry = model_proto.metadata_props.add()
    entry.key, entry.value = CARD_KEY, card_json(card)


def save_inline(model_proto: onnx.ModelProto, path: Path) -> None:
    """One self-contained file: every tensor inline (no ``.data`` side file)."""
    onnx.save_model(model_proto, str(path), save_as_external_data=False)


# ----------------------------------------------------------------------------- export


@contextlib.contextmanager
def _quiet_exporter():
    """The exporters print progress to stdout and warn about optional torchvision ops."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx.experimental.symbolic_shapes")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def export_graph(model: GradingModel, image_size: int, *, opset: int = DEFAULT_OPSET) -> tuple[onnx.ModelProto, str]:
    """Trace ``model.predict`` to ONNX with a dynamic batch axis: ``(model proto, exporter)``.

    Uses the ``torch.export``-based exporter (``dynamo=True``); if it fails for a model, falls
    back to the TorchScript exporter with a logged warning. ``exporter`` says which one ran.
    """
    if opset < 18:
        raise ExportError(f"opset {opset} is too old; drgrade exports with opset >= 18")
    wrapper = PredictWrapper(model).eval()
    # Example batch of 2: a batch of 1 would let torch.export specialise the batch axis.
    example = torch.zeros(2, 3, image_size, image_size)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                wrapper, (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                dynamic_shapes={"image": {0: torch.export.Dim("batch")}}, verbose=False,
            )
            proto = program.model_proto
        return proto, "dynamo"
    except Exception as exc:  # the dynamo exporter raises many types; keep the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.warning("dynamo ONNX exporter failed (%s: %s); falling back to the TorchScript exporter (dynamo=False)", type(exc).__name__, first)
    buf = io.BytesIO()
    try:
        with _quiet_exporter():
            torch.onnx.export(
                wrapper, (example,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAMES[0]: {0: "batch"}, OUTPUT_NAMES[1]: {0: "batch"}},
            )
    except Exception as exc:
        raise ExportError(f"both ONNX exporters failed for this model ({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from None
    return onnx.load_model_from_string(buf.getvalue()), "torchscript"


def ort_session(path: str | os.PathLike, threads: int | None = None):
    """A plain CPU ONNX Runtime session (the gate checks the graph, not a provider)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
        raise ExportError(f"{path}: ONNX Runtime cannot load the exported graph ({str(exc).splitlines()[0][:300]})") from None


def _batches(images: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split into full batches; the last is padded by repeating scans from the start."""
    n = len(images)
    total = max(batch_size, -(-n // batch_size) * batch_size)
    idx = np.arange(total) % n
    return [images[idx[i:i + batch_size]] for i in range(0, total, batch_size)]


def parity_check(model: GradingModel, onnx_path: str | os.PathLike, images: np.ndarray, *,
                 batch_sizes: Sequence[int] = GATE_BATCH_SIZES, atol: float = PROBS_ATOL) -> dict[str, Any]:
    """Compare ONNX Runtime (CPU) with eager PyTorch on ``images`` at each batch size.

    Returns ``{"batch_sizes": {"1": {max_probs_diff, max_cam_diff, n_images, pred_mismatches}, ...},
    "atol": atol, "passed": True}``.

    Raises
    ------
    ParityError
        Some max |probs diff| > ``atol`` or a predicted grade differs; names the batch size and
        the numbers.
    """
    if len(images) == 0:
        raise ExportError("parity gate: no images to compare on")
    # One thread on both sides: the gate measures agreement, not speed, and on a busy small
    # machine OpenMP's 2-thread barrier can make tiny batches 10x slower.
    sess = ort_session(onnx_path, threads=1)
    model = model.eval()
    out: dict[str, Any] = {"batch_sizes": {}, "atol": float(atol)}
    failures = []
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _compare(model, sess, images, batch_sizes, atol, out, failures)
    finally:
        torch.set_num_threads(prev_threads)
    out["passed"] = not failures
    if failures:
        raise ParityError("parity gate failed: ONNX Runtime and PyTorch disagree on real validation scans; " + "; ".join(failures))
    return out


def _compare(model, sess, images, batch_sizes, atol, out, failures) -> None:
    for b in batch_sizes:
        dp = dc = 0.0
        mismatches = n = 0
        for batch in _batches(images, int(b)):
            with torch.inference_mode():
                tp, tc = model.predict(torch.from_numpy(np.ascontiguousarray(batch)))
            op, oc = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})
            if op.shape != tuple(tp.shape) or oc.shape != tuple(tc.shape):
                raise ParityError(f"parity gate failed at batch {b}: ONNX output shapes {op.shape}, {oc.shape} differ from PyTorch's {tuple(tp.shape)}, {tuple(tc.shape)}")
            dp = max(dp, float(np.abs(op - tp.numpy()).max()))
            dc = max(dc, float(np.abs(oc - tc.numpy()).max()))
            mismatches += int((op.argmax(1) != tp.numpy().argmax(1)).sum())
            n += len(batch)
        out["batch_sizes"][str(b)] = {"max_probs_diff": dp, "max_cam_diff": dc, "n_images": n, "pred_mismatches": mismatches}
        if not dp <= atol or mismatches:  # `not <=` also catches NaN
            failures.append(f"batch {b}: max |probs diff| {dp:.3g} (limit {atol:g}), {mismatches} of {n} predicted grades differ, max |cam diff| {dc:.3g}")


def _write_report(run: Path, report: dict) -> None:
    tmp = run / f".{REPORT_FILE}.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, run / REPORT_FILE)


def export_run(run_dir: str | os.PathLike, *, opset: int = DEFAULT_OPSET, quantize: str | None = None, fp16: bool = False,
               reference: GradingModel | None = None, calib_per_class: int = 32) -> dict[str, Any]:
    """Export a run: ``model.onnx`` (gated), optionally ``model.int8.onnx`` and ``model.fp16.onnx``.

    Parameters
    ----------
    run_dir : path
        A trained run directory (``model.pt``, ``config.json``, ``split.csv``, ``metrics.json``).
    opset : int
        ONNX opset (>= 18).
    quantize : {None, "int8"}
        Also write ``model.int8.onnx`` (static QDQ, stratified calibration) and ``metrics.int8.json``.
    fp16 : bool
        Also write ``model.fp16.onnx`` (float16 weights, float32 inputs/outputs; for GPUs).
    reference : GradingModel, optional
        The model the parity gate compares ONNX Runtime against (default: the checkpoint that
        was exported). Tests pass a perturbed copy to prove that the gate rejects a mismatch.
    calib_per_class : int
        Calibration scans per class for int8 (stratified over the training split).

    Returns
    -------
    dict
        The export report, also written to ``RUN_DIR/export_report.json``.

    Raises
    ------
    ExportError, ParityError
        Nothing is published for the failing model (temp files are removed).
    """
    if quantize not in (None, "int8"):
        raise ExportError(f"unknown quantisation {quantize!r}; valid: int8")
    t0 = time.perf_counter()
    run, model, record = open_run(run_dir)
    spec = run_spec(record)
    images = validation_images(run, spec)
    report: dict[str, Any] = {"run": str(run), "opset": int(opset), "passed": False, "timings_s": {}}

    tmp = run / f".{MODEL_FILE}.tmp"
    try:
        t = time.perf_counter()
        proto, exporter = export_graph(model, spec.size, opset=opset)
        report["exporter"] = exporter
        report["timings_s"]["export"] = round(time.perf_counter() - t, 3)
        set_card(proto, build_card(run, record, precision="fp32", opset=opset))
        save_inline(proto, tmp)
        try:
            onnx.checker.check_model(str(tmp))
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"{run}: the exported graph is not valid ONNX ({str(exc).splitlines()[0]})") from None
        t = time.perf_counter()
        report["parity"] = parity_check(reference if reference is not None else model, tmp, images)
        report["timings_s"]["parity"] = round(time.perf_counter() - t, 3)
        os.replace(tmp, run / MODEL_FILE)
    except ExportError as exc:  # ParityError included: the report says why nothing was published
        report["error"] = str(exc)
        _write_report(run, report)
        raise
    finally:
        tmp.unlink(missing_ok=True)
    report["passed"] = True
    report["model"] = str(run / MODEL_FILE)
    report["bytes"] = (run / MODEL_FILE).stat().st_size
    log.info("wrote %s (%s exporter, opset %d); parity: %s", run / MODEL_FILE, exporter, opset,
             ", ".join(f"batch {b}: max |probs diff| {v['max_probs_diff']:.2g}, max |cam diff| {v['max_cam_diff']:.2g}" for b, v in report["parity"]["batch_sizes"].items()))

    if quantize == "int8":
        from export.quantize import export_int8

        t = time.perf_counter()
        report["int8"] = export_int8(run, record, spec, per_class=calib_per_class)
        report["timings_s"]["int8"] = round(time.perf_counter() - t, 3)
    if fp16:
        from export.quantize import export_fp16

        t = time.perf_counter()
        report["fp16"] = export_fp16(run, record, spec, images)
        report["timings_s"]["fp16"] = round(time.perf_counter() - t, 3)
    report["timings_s"]["total"] = round(time.perf_counter() - t0, 3)
    _write_report(run, report)
    return report
