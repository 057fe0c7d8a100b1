"""``python -m export RUN_DIR [--quantize int8] [--fp16] [--opset 18]``: write ``RUN_DIR/model.onnx``.

The graph is published only when ONNX Runtime and PyTorch agree on the run's real validation
scans (batch 1 and 7, max |probs diff| <= 1e-4, same predicted grades); the numbers go to
``RUN_DIR/export_report.json``.

Errors (missing run, no or corrupt ``model.pt``, parity failure) print one line ``error: ...``
and exit 1 (2 for command-line usage); set ``DRGRADE_DEBUG=1`` for tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export", description="Export a trained run to ONNX (with a PyTorch/ONNX Runtime parity gate).")
    p.add_argument("run_dir", metavar="RUN_DIR", help="trained run directory (holds model.pt)")
    p.add_argument("--quantize", choices=["int8"], help="also write model.int8.onnx (static QDQ, stratified calibration) and metrics.int8.json")
    p.add_argument("--fp16", action="store_true", help="also write model.fp16.onnx (float16 weights, float32 inputs/outputs; for GPUs)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 18; default 18)")
    p.add_argument("--calib-per-class", type=int, default=32, metavar="N", help="int8 calibration scans per class (default 32)")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors and warnings")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.opset < 18:
        parser.error(f"--opset must be >= 18, got {args.opset}")
    if args.calib_per_class < 1:
        parser.error(f"--calib-per-class must be >= 1, got {args.calib_per_class}")
    # Our own logger only: onnxscript and the quantiser log chatty INFO lines of their own.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    ours = logging.getLogger("drgrade")
    ours.addHandler(handler)
    ours.setLevel(logging.WARNING if args.quiet else logging.INFO)
    from export.onnx_export import ExportError, export_run

    try:
        report = export_run(args.run_dir, opset=args.opset, quantize=args.quantize, fp16=args.fp16, calib_per_class=args.calib_per_class)
    except ExportError as exc:
        if os.environ.get("DRGRADE_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (OSError, MemoryError) as exc:  # disk full, permissions: no traceback for the user
        if os.environ.get("DRGRADE_DEBUG"):
            raise
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; nothing was published for the model being written", file=sys.stderr)
        return 130
    if not args.quiet:
        parity = report["parity"]["batch_sizes"]
        print(f"{report['model']}  ({report['exporter']} exporter, opset {report['opset']}, {report['bytes'] / 1e6:.2f} MB)")
        for b, v in parity.items():
            print(f"  parity batch {b}: max |probs diff| {v['max_probs_diff']:.2e}, max |cam diff| {v['max_cam_diff']:.2e}, {v['n_images']} scans")
        if "int8" in report:
            i8 = report["int8"]
            ref = "n/a" if i8["fp32_macro_f1"] is None else f"{i8['fp32_macro_f1']:.4f}"
            print(f"{i8['model']}  (test macro-F1 {i8['macro_f1']:.4f} vs fp32 {ref})")
        if "fp16" in report:
            print(f"{report['fp16']['model']}  (runs on CPU: {report['fp16'].get('runs_on_cpu')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
