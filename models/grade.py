"""Grade fundus scans with an exported drgrade model (torch-free): API and batch CLI.

API::

    grader = Grader.from_path("runs/ce")               # or a .onnx file; precision="int8"
    results = grader.grade(["a.jpg", b"...", array])   # list[ScanResult], one per source
    overlay = cam_overlay(results[0].prepared, results[0].cam)

CLI::

    python -m models.grade --model RUN_DIR_OR_ONNX [--csv OUT] [--int8] [--batch-size B]
                           [--no-progress] PATH...

Decoding and preprocessing (:func:`models.preprocess.load_scan`, the same path training
used) run in a thread pool while the network grades the previous batch; Pillow and ONNX
Runtime both release the GIL, so the two overlap. A scan that cannot be decoded gives a
``ScanResult(ok=False, error=...)`` and the others are still graded.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from models.card import CardError
from models.preprocess import IMAGE_EXTENSIONS, ImageError, ImageSource, PreprocessSpec, load_scan, normalize
from models.grades import DR_GRADE_NAMES, referable_score
from models.runtime import INT8_MODEL_FILE, MODEL_FILE, ModelFileError, Providers, Session, create_session, default_threads, resolve_model_path

PRECISIONS = {"fp32": MODEL_FILE, "int8": INT8_MODEL_FILE}



@dataclass
class ScanResult:
    """The grading of one scan.

    Attributes
    ----------
    name : str
        The path, or the name given for an in-memory scan.
    ok : bool
        False when the scan could not be decoded or graded; ``error`` then says why.
    error : str or None
    grade : int or None
        Index of the predicted class (the decision rule is part of the exported graph).
    grade_name : str or None
    probs : ndarray of shape (C,) or None
    cam : ndarray of shape (h, w), float32 in [0, 1], or None
        Class activation map of the predicted grade, at the network's map resolution.
    prepared : ndarray of shape (S, S, 3), uint8, or None
        The network's view of the scan (cropped, resized), for overlays.
    latency_ms : float
        This scan's share of decode + preprocess + inference time.
    """

    name: str
    ok: bool
    error: str | None = None
    grade: int | None = None
    grade_name: str | None = None
    probs: np.ndarray | None = None
    cam: np.ndarray | None = None
    prepared: np.ndarray | None = None
    latency_ms: float = 0.0

    def to_row(self, n_classes: int) -> dict[str, Any]:
        """The CSV row: ``path,status,error,grade,grade_name,p0..p{C-1}`` (empty when failed)."""
        row: dict[str, Any] = {
            "path": self.name,
            "status": "ok" if self.ok else "error",
            "error": self.error or "",
            "grade": "" if self.grade is None else int(self.grade),
            "grade_name": self.grade_name or "",
        }
        for i in range(n_classes):
            row[f"p{i}"] = "" if self.probs is None else f"{float(self.probs[i]):.6f}"
        return row


def csv_columns(n_classes: int) -> list[str]:
    return ["path", "status", "error", "grade", "grade_name", *[f"p{i}" for i in range(n_classes)]]


# ----------------------------------------------------------------------------- pure helpers

def _jet_lut() -> np.ndarray:
    """256 x 3 uint8 'jet' colour map (blue -> cyan -> yellow -> red), as in matplotlib."""
    x = np.linspace(0.0, 1.0, 256)
    r = np.clip(1.5 - np.abs(4.0 * x - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * x - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * x - 1.0), 0.0, 1.0)
    return (np.stack([r, g, b], axis=1) * 255.0).round().astype(np.uint8)


def _gray_lut() -> np.ndarray:
    v = np.arange(256, dtype=np.uint8)
    return np.stack([v, v, v], axis=1)


COLORMAPS = {"jet": _jet_lut(), "gray": _gray_lut()}


def normalize_cam(cam: np.ndarray) -> np.ndarray:
    """Min-max scale a 2-D map to float32 [0, 1]; a constant map becomes zeros."""
    c = np.nan_to_num(np.asarray(cam, dtype=np.float32))
    lo, hi = float(c.min()), float(c.max())
    if hi - lo <= 1e-12:
        return np.zeros_like(c, dtype=np.float32)
    return ((c - lo) / (hi - lo)).astype(np.float32)


def cam_overlay(prepared: np.ndarray, cam: np.ndarray, opacity: float = 0.45, colormap: str = "jet") -> np.ndarray:
    """Blend a class activation map over an image.

    Parameters
    ----------
    prepared : ndarray (H, W, 3) uint8
        The image (usually ``ScanResult.prepared``).
    cam : ndarray (h, w)
        The map, any range; upsampled bilinearly to (H, W) and min-max normalised.
    opacity : float in [0, 1]
        Weight of the coloured map.
    colormap : {"jet", "gray"}

    Returns
    -------
    ndarray (H, W, 3) uint8

    Examples
    --------
    >>> img = np.zeros((32, 32, 3), np.uint8)
    >>> cam_overlay(img, np.eye(4)).shape
    (32, 32, 3)
    """
    img = np.asarray(prepared)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"cam_overlay needs a uint8 HxWx3 image, got {img.dtype} array of shape {img.shape}")
    c = np.asarray(cam, dtype=np.float32)
    if c.ndim != 2 or c.size == 0:
        raise ValueError(f"cam_overlay needs a 2-D map, got shape {c.shape}")
    if not 0.0 <= float(opacity) <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; valid: {', '.join(COLORMAPS)}")
    h, w = img.shape[:2]
    up = np.asarray(Image.fromarray(np.nan_to_num(c).astype(np.float32)).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    idx = (normalize_cam(up) * 255.0).round().astype(np.uint8)
    heat = COLORMAPS[colormap][idx].astype(np.float32)
    out = (1.0 - opacity) * img.astype(np.float32) + opacity * heat
    return np.clip(out, 0, 255).round().astype(np.uint8)


def referable_probability(probs: np.ndarray | Sequence[float], class_names: Sequence[str]) -> float | None:
    """P(grade >= 2) for 5-class DR models (referable DR, ICDR scale); None for other models.

    Examples
    --------
    >>> referable_probability([0.5, 0.2, 0.1, 0.1, 0.1], ["0", "1", "2", "3", "4"])
    0.3
    >>> referable_probability([0.5, 0.5], ["healthy", "sick"]) is None
    True
    """
    if len(class_names) != len(DR_GRADE_NAMES):
        return None
    p = np.asarray(probs, dtype=np.float64).reshape(1, -1)
    return round(float(referable_score(p)[0]), 12)


# ----------------------------------------------------------------------------- grader

def _default_name(source: Any, index: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    fname = getattr(source, "name", None)
    if isinstance(fname, str) and fname:
        return fname
    return f"scan-{index}"


class Grader:
    """Grades scans with one exported model. Thread-safe; build it with :meth:`from_path`.

    Attributes
    ----------
    session : Session
    card : dict
    class_names : list of str
    spec : PreprocessSpec
    provider : str
        The ONNX Runtime execution provider in use.
    path : Path
        The ``.onnx`` file.
    name : str
        The run name from the card (else the run directory's name).
    """

    def __init__(self, session: Session):
        self.session = session
        self.card = session.card
        self.class_names = list(session.card["class_names"])
        try:
            self.spec = PreprocessSpec.from_dict(dict(session.card["preprocess"]))
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"{session.path}: model card has an invalid preprocessing spec ({exc})") from None
        if self.spec.size != int(session.card["input_size"]):
            raise ModelFileError(f"{session.path}: card input_size {session.card['input_size']} differs from the preprocessing size {self.spec.size}")
        self.provider = session.provider
        self.path = session.path
        self.name = str(session.card.get("name") or session.path.parent.name)

    @classmethod
    def from_path(cls, model: str | os.PathLike, *, precision: str = "fp32", providers: Providers = "auto", threads: int | None = None) -> "Grader":
        """Load a run directory (``model.onnx`` / ``model.int8.onnx``) or an ``.onnx`` file.

        Raises ModelFileError (see :func:`models.runtime.create_session`) and ValueError for
        an unknown precision.
        """
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        path = resolve_model_path(model, filename=PRECISIONS[precision])
        return cls(create_session(path, providers=providers, threads=threads))

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def __repr__(self) -> str:
        return f"Grader(name={self.name!r}, path={str(self.path)!r}, classes={self.n_classes}, provider={self.provider!r})"

    # -- decoding (worker threads)
    def _prepare(self, source: ImageSource, name: str) -> tuple[np.ndarray | None, str | None, float]:
        t0 = time.perf_counter()
        try:
            arr = load_scan(source, self.spec, name=name)
            return arr, None, time.perf_counter() - t0
        except ImageError as exc:
            return None, str(exc), time.perf_counter() - t0
        except MemoryError:
            return None, f"{name}: out of memory while decoding", time.perf_counter() - t0
        except Exception as exc:  # never let one scan stop the batch
            return None, f"{name}: cannot read image ({type(exc).__name__}: {exc})", time.perf_counter() - t0

    def iter_grade(self, sources: Iterable[ImageSource], *, names: Sequence[str] | None = None, batch_size: int = 16,
                   with_cam: bool = True, workers: int | None = None) -> Iterator[ScanResult]:
        """Like :meth:`grade`, but yields results in input order as soon as each batch is done."""
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        srcs = list(sources)
        if names is not None:
            names = [str(n) for n in names]
            if len(names) != len(srcs):
                raise ValueError(f"names has {len(names)} entries for {len(srcs)} sources")
        labels = names if names is not None else [_default_name(s, i) for i, s in enumerate(srcs)]
        n_workers = int(workers) if workers else min(8, default_threads())
        window = max(2 * batch_size, 2 * n_workers)  # decoded scans kept ahead of the network
        with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="drgrade-decode") as pool:
            pending: deque[tuple[int, Future]] = deque()
            next_i = 0

            def fill() -> None:
                nonlocal next_i
                while next_i < len(srcs) and len(pending) < window:
                    pending.append((next_i, pool.submit(self._prepare, srcs[next_i], labels[next_i])))
                    next_i += 1

            fill()
            while pending:
                # Collect up to batch_size decoded scans, in order; failures pass straight through.
                chunk: list[tuple[int, np.ndarray | None, str | None, float]] = []
                while pending and sum(1 for c in chunk if c[1] is not None) < batch_size:
                    i, fut = pending.popleft()
                    arr, err, secs = fut.result()
                    chunk.append((i, arr, err, secs))
                    fill()
                yield from self._infer_chunk(chunk, labels, with_cam)

    def _infer_chunk(self, chunk, labels, with_cam) -> list[ScanResult]:
        good = [c for c in chunk if c[1] is not None]
        probs = cams = None
        share = 0.0
        infer_error = None
        if good:
            t0 = time.perf_counter()
            batch = normalize(np.stack([c[1] for c in good]), self.spec)  # (B, 3, S, S)
            try:
                probs, cams = self.session.run(batch, with_cam=with_cam)
            except Exception as exc:
                infer_error = f"inference failed ({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"
            share = (time.perf_counter() - t0) / len(good)
        results = []
        k = 0
        for i, arr, err, secs in chunk:
            name = labels[i]
            if arr is None:
                results.append(ScanResult(name=name, ok=False, error=err, latency_ms=secs * 1e3))
                continue
            if infer_error is not None:
                results.append(ScanResult(name=name, ok=False, error=f"{name}: {infer_error}", prepared=arr, latency_ms=(secs + share) * 1e3))
                k += 1
                continue
            p = probs[k]
            g = int(np.argmax(p))
            cam = None
            if cams is not None:
                cmap = cams[k]
                cam = normalize_cam(cmap[g] if cmap.shape[0] > g else cmap[0])  # ordinal models: one map
            results.append(ScanResult(name=name, ok=True, grade=g, grade_name=self.class_names[g], probs=p.copy(), cam=cam,
                                      prepared=arr, latency_ms=(secs + share) * 1e3))
            k += 1
        return results

    def grade(self, sources: Iterable[ImageSource], *, names: Sequence[str] | None = None, batch_size: int = 16,
              with_cam: bool = True, workers: int | None = None) -> list[ScanResult]:
        """Grade scans: one :class:`ScanResult` per source, in order.

        Parameters
        ----------
        sources : iterable of path, bytes, binary file, PIL image or array (mixed is fine)
        names : sequence of str, optional
            Names for the results and error messages (default: the path, the file object's
            ``name``, else ``scan-<index>``).
        batch_size : int
            Scans per inference call.
        with_cam : bool
            Also compute the class activation map of the predicted grade.
        workers : int, optional
            Decoding threads (default: up to 8).
        """
        return list(self.iter_grade(sources, names=names, batch_size=batch_size, with_cam=with_cam, workers=workers))

    def grade_one(self, source: ImageSource, name: str | None = None, *, with_cam: bool = True) -> ScanResult:
        """Grade a single scan."""
        return self.grade([source], names=None if name is None else [name], batch_size=1, with_cam=with_cam, workers=1)[0]


# ----------------------------------------------------------------------------- CLI

def collect_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given (any extension), folders walked recursively for image files, sorted.

    Raises FileNotFoundError naming the first path that does not exist.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    return out


def _write_csv_atomic(path: Path, columns: list[str], rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m models.grade", description="Grade fundus scans with an exported drgrade model; one CSV row per file.")
    p.add_argument("--model", required=True, help="run directory (model.onnx) or an .onnx file")
    p.add_argument("--csv", metavar="OUT", help="write the CSV here (atomically); default: stdout")
    p.add_argument("--int8", action="store_true", help="use the run directory's model.int8.onnx")
    p.add_argument("--batch-size", type=int, default=16, metavar="B", help="scans per inference call (default 16)")
    p.add_argument("--providers", default="auto", help="auto | cpu (default auto: TensorRT, CUDA, then CPU)")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: up to 8)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files and folders (searched recursively)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.paths:
        parser.print_usage(sys.stderr)
        print("error: no PATH given: name image files or folders to grade", file=sys.stderr)
        return 2
    if args.batch_size < 1:
        print(f"error: --batch-size must be >= 1, got {args.batch_size}", file=sys.stderr)
        return 2
    if args.workers is not None and args.workers < 1:
        print(f"error: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    try:
        files = collect_images(args.paths)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not files:
        print(f"error: no image files ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(args.paths)}", file=sys.stderr)
        return 2
    if args.csv:  # fail before grading, not after: a directory, or a folder we cannot create or write
        target = Path(args.csv)
        try:
            if target.is_dir():
                raise IsADirectoryError("it is a directory")
            target.resolve().parent.mkdir(parents=True, exist_ok=True)
            if not os.access(target.resolve().parent, os.W_OK):
                raise PermissionError("its folder is read-only")
        except OSError as exc:
            print(f"error: --csv {args.csv}: cannot write there ({exc.strerror or exc})", file=sys.stderr)
            return 2
    if args.int8 and Path(args.model).is_file():
        print("error: --int8 needs a run directory; pass the int8 .onnx file itself instead", file=sys.stderr)
        return 2
    try:
        grader = Grader.from_path(args.model, precision="int8" if args.int8 else "fp32", providers=args.providers)
    except (ModelFileError, CardError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"drgrade: model {grader.name} ({grader.path.name}, {grader.n_classes} classes) on {grader.provider}; {len(files)} file(s)", file=sys.stderr)

    from tqdm import tqdm

    results: list[ScanResult] = []
    with tqdm(total=len(files), unit="scan", desc="grading", file=sys.stderr, disable=args.no_progress) as bar:
        for r in grader.iter_grade(files, batch_size=args.batch_size, with_cam=False, workers=args.workers):
            results.append(r)
            bar.update(1)
    columns = csv_columns(grader.n_classes)
    rows = [r.to_row(grader.n_classes) for r in results]
    if args.csv:
        _write_csv_atomic(Path(args.csv), columns, rows)
    else:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        sys.stdout.write(buf.getvalue())
        sys.stdout.flush()
    failed = [r for r in results if not r.ok]
    print(f"drgrade: {len(results) - len(failed)} graded, {len(failed)} failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
