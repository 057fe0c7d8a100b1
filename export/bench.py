"""``python -m export.bench RUN_DIR --json OUT [--repeats N] [--markdown PATH]``: speed of one run.

Measures, in one process on the current device and interleaved round by round (so a noisy
neighbour slows every engine alike): median latency at batch 1 (``b1_ms``) and throughput at
batch 32 (``b32_ips``, images/s) for eager PyTorch (``GradingModel.predict`` under
``torch.inference_mode``), ONNX Runtime fp32 and, when ``model.int8.onnx`` exists, ONNX
Runtime int8; then the end-to-end time to grade one 1,500 x 1,500 JPEG (decode, preprocess,
infer, CAM) through the torch-free grading path (``scan_e2e_ms``). Peak memory is the
process's peak resident set size from ``resource.getrusage`` (all engines together).

Prints a markdown table with ratios against eager PyTorch and the project's CPU targets;
never asserts on time (speed is reported, not tested).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

MARK_KEY = "export-bench"
SCAN_SIDE = 1500

#: CPU targets (2 cores, default network and size): ratio vs eager PyTorch at batch 1.
TARGET_FP32_B1 = 1.5
TARGET_INT8_B1 = 3.0
TARGET_INT8_F1_LOSS = 0.01
TARGET_SCAN_MS = 100.0


class BenchError(RuntimeError):
    pass


def cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def device_name() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {cpu} ({cores()} cores)"


def peak_rss_mb() -> float:
    """Peak resident set size of this process (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def synthetic_scan_jpeg(path: Path, side: int = SCAN_SIDE, seed: int = 0) -> Path:
    """A fundus-like 1,500 px JPEG: a reddish disc with vessels-like noise on black."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side].astype(np.float32)
    r = np.hypot(yy - side / 2, xx - side / 2) / (0.46 * side)
    base = np.clip(1.0 - 0.35 * r**2, 0, 1)[..., None] * np.array([200, 90, 40], np.float32)
    img = base + rng.normal(0, 8, (side, side, 3)).astype(np.float32)
    img[r > 1] = 0
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=92)
    return path


def _ort(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle ORT worker threads spin for a while after each run; interleaved with eager PyTorch
    # on the same cores that spinning would steal PyTorch's CPU and skew the comparison.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _time(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _scan_grader(run: Path, threads: int) -> Callable[[Path], Any]:
    """Decode + preprocess + infer + CAM for one file: models.grade.Grader when present."""
    try:
        from models.grade import Grader
    except ImportError:
        Grader = None  # type: ignore[assignment]
    if Grader is not None:
        g = Grader.from_path(run, providers="cpu", threads=threads)
        return lambda p: g.grade_one(p)
    from models.card import parse_card
    from models.preprocess import PreprocessSpec, preprocess

    sess = _ort(run / "model.onnx", threads)
    spec = PreprocessSpec.from_dict(parse_card(sess.get_modelmeta().custom_metadata_map)["preprocess"])
    return lambda p: sess.run(None, {"image": preprocess(p, spec)[None]})


def run_bench(run_dir: str | os.PathLike, *, repeats: int = 30, warmup: int = 3, threads: int | None = None) -> dict[str, Any]:
    """Benchmark a run directory (``model.pt`` + ``model.onnx`` [+ ``model.int8.onnx``])."""
    import torch

    from export.onnx_export import ExportError, open_run, run_spec, validation_images

    run = Path(run_dir)
    try:
        _, model, record = open_run(run)
    except ExportError as exc:
        raise BenchError(str(exc)) from None
    if not (run / "model.onnx").is_file():
        raise BenchError(f"run dir {run}: no model.onnx (export it first: python -m export {run})")
    if repeats < 1:
        raise BenchError(f"--repeats must be >= 1, got {repeats}")
    threads = threads or cores()
    torch.set_num_threads(threads)
    spec = run_spec(record)
    try:
        real = validation_images(run, spec, limit=32)
    except ExportError:
        real = np.random.default_rng(0).normal(size=(32, 3, spec.size, spec.size)).astype(np.float32)
    x32 = np.ascontiguousarray(real[np.arange(32) % len(real)])
    x1 = np.ascontiguousarray(x32[:1])
    t1, t32 = torch.from_numpy(x1), torch.from_numpy(x32)

    def torch_run(t, n_threads):
        torch.set_num_threads(n_threads)
        with torch.inference_mode():
            return model.predict(t)

    # Eager PyTorch at threads = cores (the stated configuration) and at 1 thread: on a
    # loaded 2-core machine OpenMP's barrier at 2 threads can cost 100x on a tiny network,
    # and ratios are taken against the faster of the two (the conservative baseline).
    engines: dict[str, dict[str, Callable[[], Any]]] = {
        "torch_eager": {"b1": lambda: torch_run(t1, threads), "b32": lambda: torch_run(t32, threads)},
    }
    if threads > 1:
        engines["torch_eager_1thread"] = {"b1": lambda: torch_run(t1, 1), "b32": lambda: torch_run(t32, 1)}
    for key, fname in (("ort_fp32", "model.onnx"), ("ort_int8", "model.int8.onnx")):
        if (run / fname).is_file():
            s = _ort(run / fname, threads)
            engines[key] = {"b1": (lambda s=s: s.run(None, {"image": x1})), "b32": (lambda s=s: s.run(None, {"image": x32}))}
    for e in engines.values():  # warm-up: first calls allocate and pick kernels
        for _ in range(warmup):
            e["b1"](), e["b32"]()
    samples: dict[str, dict[str, list[float]]] = {k: {"b1": [], "b32": []} for k in engines}
    for _ in range(repeats):  # interleaved rounds
        for k, e in engines.items():
            samples[k]["b1"].append(_time(e["b1"]))
    for _ in range(max(3, repeats // 4)):
        for k, e in engines.items():
            samples[k]["b32"].append(_time(e["b32"]))
    result: dict[str, Any] = {"device": device_name(), "image_size": int(spec.size)}
    for k, s in samples.items():
        result[k] = {"b1_ms": statistics.median(s["b1"]) * 1e3, "b32_ips": 32.0 / statistics.median(s["b32"])}

    with tempfile.TemporaryDirectory(prefix="drgrade-bench-") as td:
        jpeg = synthetic_scan_jpeg(Path(td) / "scan.jpg")
        grade = _scan_grader(run, threads)
        for _ in range(warmup):
            grade(jpeg)
        result["scan_e2e_ms"] = statistics.median(_time(lambda: grade(jpeg)) for _ in range(max(5, repeats // 2))) * 1e3

    torch.set_num_threads(threads)
    eager_keys = [k for k in ("torch_eager", "torch_eager_1thread") if k in result]
    eager = {"b1_ms": min(result[k]["b1_ms"] for k in eager_keys), "b32_ips": max(result[k]["b32_ips"] for k in eager_keys)}
    result["ratio_baseline"] = "best eager PyTorch configuration per column (threads = cores or 1 thread)"
    result["ratios"] = {k: {"b1": eager["b1_ms"] / result[k]["b1_ms"], "b32": result[k]["b32_ips"] / eager["b32_ips"]}
                        for k in ("ort_fp32", "ort_int8") if k in result}
    result["peak_rss_mb"] = peak_rss_mb()
    result["memory_note"] = "peak RSS of the whole benchmark process (resource.getrusage ru_maxrss)"
    result["threads"] = threads
    result["repeats"] = repeats
    result["network"] = record.get("config", {}).get("network")
    f1 = _f1_loss(run)
    if f1 is not None:
        result["int8_macro_f1_loss"] = f1
    return result


def _f1_loss(run: Path) -> float | None:
    try:
        fp32 = json.loads((run / "metrics.json").read_text())["macro_f1"]
        int8 = json.loads((run / "metrics.int8.json").read_text())["macro_f1"]
    except (OSError, KeyError, json.JSONDecodeError):
        return None
    return float(fp32) - float(int8)


def markdown_table(r: dict[str, Any]) -> str:
    """The results as a markdown table with ratios vs eager PyTorch and target checks."""
    def check(ok: bool) -> str:
        return "✅" if ok else "missed"

    eager = r["torch_eager"]
    lines = [
        f"Device: {r['device']}; network `{r.get('network')}` at {r['image_size']} px; {r.get('threads')} threads; "
        f"median of {r.get('repeats')} interleaved rounds; peak RSS {r.get('peak_rss_mb', float('nan')):.0f} MB (whole process, getrusage).",
        "",
        "| engine | batch 1 (ms) | vs eager | batch 32 (img/s) | vs eager | target |",
        "|---|---:|---:|---:|---:|---|",
        f"| torch eager ({r.get('threads')} threads) | {eager['b1_ms']:.2f} | | {eager['b32_ips']:.0f} | | |",
    ]
    if "torch_eager_1thread" in r:
        e1 = r["torch_eager_1thread"]
        lines.append(f"| torch eager (1 thread) | {e1['b1_ms']:.2f} | | {e1['b32_ips']:.0f} | | |")
    lines.append("")
    lines.insert(2, "Ratios are against the faster eager configuration in each column.")
    lines.insert(3, "")
    lines.pop()
    for key, label, target in (("ort_fp32", "ORT fp32", TARGET_FP32_B1), ("ort_int8", "ORT int8", TARGET_INT8_B1)):
        if key not in r:
            continue
        e, ratio = r[key], r["ratios"][key]
        goal = f">= {target:g}x at batch 1: {check(ratio['b1'] >= target)}"
        if key == "ort_int8":
            loss = r.get("int8_macro_f1_loss")
            goal += "; macro-F1 loss " + ("n/a" if loss is None else f"{loss * 100:.2f} pt: {check(loss <= TARGET_INT8_F1_LOSS)}")
        lines.append(f"| {label} | {e['b1_ms']:.2f} | {ratio['b1']:.2f}x | {e['b32_ips']:.0f} | {ratio['b32']:.2f}x | {goal} |")
    lines.append(f"| one {SCAN_SIDE} x {SCAN_SIDE} JPEG end to end (decode + preprocess + ORT fp32 + CAM) | {r['scan_e2e_ms']:.1f} | | | | "
                 f"< {TARGET_SCAN_MS:g} ms: {check(r['scan_e2e_ms'] < TARGET_SCAN_MS)} |")
    return "\n".join(lines) + "\n"


def replace_section(path: Path, key: str, body: str) -> None:
    """Replace (or append) the section of a markdown file between ``<!-- key:start -->`` and
    ``<!-- key:end -->``; every bench script writes its own section of bench/RESULTS.md this way.
    The file is replaced atomically."""
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    section = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.is_file() else "# Benchmark results\n\nEvery table here was printed by a script under bench/ (or `python -m export.bench`), as measured.\n"
    if start in text and end in text and text.index(start) < text.index(end):
        head, rest = text.split(start, 1)
        new = head + section + rest.split(end, 1)[1]
    else:
        new = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(new)
    os.replace(tmp, path)


def write_markdown_section(path: Path, body: str) -> None:
    """The export-bench section of ``path``."""
    replace_section(path, MARK_KEY, f"## Export and inference speed\n\n{body}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.bench", description="Latency/throughput of eager PyTorch vs ONNX Runtime fp32 vs int8.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="exported run directory (model.pt + model.onnx [+ model.int8.onnx])")
    p.add_argument("--json", required=True, metavar="OUT", help="write the results as JSON here")
    p.add_argument("--repeats", type=int, default=30, help="timed rounds at batch 1 (batch 32 uses a quarter, at least 3)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the CPUs this process may use)")
    p.add_argument("--markdown", metavar="PATH", help="also replace the export-bench section of this markdown file (e.g. bench/RESULTS.md)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    try:
        result = run_bench(args.run_dir, repeats=args.repeats, threads=args.threads)
    except BenchError as exc:
        if os.environ.get("DRGRADE_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = Path(args.json)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.tmp"
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, out)
        table = markdown_table(result)
        if args.markdown:
            write_markdown_section(Path(args.markdown), table)
    except OSError as exc:
        print(f"error: cannot write results ({exc})", file=sys.stderr)
        return 1
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
