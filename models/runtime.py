"""ONNX Runtime sessions for drgrade models (torch-free).

One entry point, :func:`create_session`, turns a ``model.onnx`` (or a run directory holding
one) into a :class:`Session`: the ONNX Runtime session, the model card read from the file's
metadata, and the execution provider *really* in use.

Why the provider needs care: ``onnxruntime-gpu`` lists TensorRT and CUDA as available even
when their shared libraries (cuBLAS, cuDNN, TensorRT) are missing; asking for them then logs
errors, prints an "EP Error" banner on *stdout* (which would corrupt a CSV written there) and
silently falls back to CPU. So each accelerated provider is probed once per process, quietly,
on a one-node model; sessions only ever ask for providers that passed, and report
``session.get_providers()[0]``.

Sessions are cached per (resolved path, mtime, size, providers, threads) behind a lock: the
Streamlit dashboard shares them between users and threads. ``InferenceSession.run`` itself
is thread-safe.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import onnxruntime as ort

from models.card import CardError, parse_card

#: Preference order of execution providers for ``providers="auto"``.
PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
CPU = "CPUExecutionProvider"

#: ONNX Runtime log severity: 3 = errors only (0 verbose ... 4 fatal).
LOG_SEVERITY = 3

#: File names inside a run directory.
MODEL_FILE = "model.onnx"
INT8_MODEL_FILE = "model.int8.onnx"

INPUT_NAME = "image"
PROBS_NAME = "probs"
CAM_NAME = "cam"

Providers = Union[str, Sequence[str]]

ort.set_default_logger_severity(LOG_SEVERITY)


class ModelFileError(ValueError):
    """A model file that cannot be used: missing, empty, corrupt, or not a drgrade model."""


class ModelCardError(ModelFileError, CardError):
    """An ONNX file without a valid drgrade card (both a ModelFileError and a CardError)."""


@dataclass(eq=False)
class Session:
    """A loaded model: the ONNX Runtime session, its card and the provider in use.

    Attributes
    ----------
    inference : onnxruntime.InferenceSession
    path : Path
        The resolved ``.onnx`` file.
    card : dict
        The model card (see :mod:`models.card`).
    provider : str
        The execution provider really running the graph (``get_providers()[0]``).
    requested : tuple of str
        What the caller asked for (``("auto",)``, ``("cpu",)`` or the explicit list).
    output_names : tuple of str
        Graph outputs (``probs`` and, usually, ``cam``).
    """

    inference: ort.InferenceSession
    path: Path
    card: dict[str, Any]
    provider: str
    requested: tuple[str, ...]
    output_names: tuple[str, ...] = field(default=())

    @property
    def class_names(self) -> list[str]:
        return list(self.card["class_names"])

    @property
    def has_cam(self) -> bool:
        return CAM_NAME in self.output_names

    def run(self, batch: np.ndarray, *, with_cam: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Run a float32 NCHW batch: ``(probs [N, C], cam [N, C, h, w] or None)``."""
        names = [PROBS_NAME] + ([CAM_NAME] if with_cam and self.has_cam else [])
        out = self.inference.run(names, {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})
        probs = np.asarray(out[0], dtype=np.float32)
        n_classes = len(self.card["class_names"])
        if probs.ndim != 2 or probs.shape[1] != n_classes:
            raise ModelFileError(f"{self.path}: 'probs' output has shape {probs.shape}, expected (N, {n_classes}) for the card's classes")
        return probs, (np.asarray(out[1], dtype=np.float32) if len(out) > 1 else None)


# ----------------------------------------------------------------------------- providers

_probe_lock = threading.Lock()
_probed: dict[str, bool] = {}


def _tiny_model_bytes() -> bytes:
    """A one-node ONNX model (Identity) built with the onnx helper, for probing providers."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


@contextlib.contextmanager
def _quiet_ort():
    """Silence ONNX Runtime while probing: fatal-only logging and no stdout banner."""
    ort.set_default_logger_severity(4)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        ort.set_default_logger_severity(LOG_SEVERITY)


def provider_works(name: str) -> bool:
    """Whether ``name`` really runs a graph in this process (probed once, quietly, cached)."""
    if name == CPU:
        return True
    if name not in ort.get_available_providers():
        return False
    with _probe_lock:
        if name not in _probed:
            ok = False
            try:
                with _quiet_ort():
                    so = ort.SessionOptions()
                    so.log_severity_level = 4
                    sess = ort.InferenceSession(_tiny_model_bytes(), so, providers=[name, CPU])
                    sess.run(None, {"x": np.ones((1, 4), np.float32)})
                    ok = sess.get_providers()[0] == name
            except Exception:
                ok = False
            _probed[name] = ok
        return _probed[name]


def resolve_providers(providers: Providers = "auto") -> list[str]:
    """The provider list a session will ask for: only providers that really work, CPU last.

    ``"auto"``: TensorRT, CUDA, CPU (those that work); ``"cpu"``: CPU only; a list: those
    names in that order (ones that do not work here are dropped), then CPU.

    Raises
    ------
    ValueError
        An unknown provider name or keyword.
    """
    available = ort.get_available_providers()
    if isinstance(providers, str):
        key = providers.lower()
        if key == "auto":
            wanted = list(PROVIDER_PREFERENCE)
        elif key == "cpu":
            return [CPU]
        elif providers in available or providers in PROVIDER_PREFERENCE:
            wanted = [providers]
        else:
            raise ValueError(f"unknown providers {providers!r}; valid: 'auto', 'cpu' or a list of {', '.join(available)}")
    else:
        wanted = list(providers)
        if not wanted:
            raise ValueError("providers list is empty; use 'auto', 'cpu' or a list of provider names")
        unknown = [p for p in wanted if not isinstance(p, str) or p not in set(available) | set(PROVIDER_PREFERENCE)]
        if unknown:
            raise ValueError(f"unknown execution provider(s) {unknown}; available here: {', '.join(available)}")
    out = [p for p in wanted if provider_works(p)]
    if CPU not in out:
        out.append(CPU)
    return out


def default_threads() -> int:
    """Intra-op threads: the CPUs this process may use (affinity-aware ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------------------- sessions

def resolve_model_path(path: str | os.PathLike, *, filename: str = MODEL_FILE) -> Path:
    """A run directory -> its ``filename``; a file -> itself. Raises ModelFileError."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelFileError(f"{p}: no such file or directory")
    if p.is_dir():
        model = p / filename
        if not model.is_file():
            hint = f"python -m export {p}" + (" --quantize int8" if filename == INT8_MODEL_FILE else "")
            raise ModelFileError(f"run dir {p} has no {filename}: export it with `{hint}`")
        p = model
    if not p.is_file():
        raise ModelFileError(f"{p}: not a regular file")
    if p.stat().st_size == 0:
        raise ModelFileError(f"{p}: empty file (0 bytes), not an ONNX model")
    return p.resolve()


def _static_dim(dim: Any) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def _check_graph(sess: ort.InferenceSession, card: dict[str, Any], label: str) -> tuple[str, ...]:
    """Card and graph agree: one ``image`` input of the card's size, ``probs`` with C classes."""
    inputs = sess.get_inputs()
    names = [i.name for i in inputs]
    if names != [INPUT_NAME]:
        raise ModelFileError(f"{label}: graph inputs are {names}, expected one input named '{INPUT_NAME}'")
    class_names = card["class_names"]
    if not isinstance(class_names, list) or len(class_names) < 2 or not all(isinstance(c, str) for c in class_names):
        raise ModelCardError(f"{label}: model card 'class_names' must be a list of at least 2 names, got {class_names!r}")
    shape = inputs[0].shape
    if len(shape) != 4 or _static_dim(shape[1]) not in (None, 3):
        raise ModelFileError(f"{label}: input '{INPUT_NAME}' has shape {shape}, expected [N, 3, S, S]")
    size = int(card["input_size"])
    for dim in shape[2:]:
        if _static_dim(dim) is not None and dim != size:
            raise ModelFileError(f"{label}: input '{INPUT_NAME}' has shape {shape} but the card says input_size {size}")
    outputs = {o.name: o for o in sess.get_outputs()}
    if PROBS_NAME not in outputs:
        raise ModelFileError(f"{label}: graph has no '{PROBS_NAME}' output (outputs: {sorted(outputs)})")
    pshape = outputs[PROBS_NAME].shape
    if len(pshape) != 2:
        raise ModelFileError(f"{label}: output '{PROBS_NAME}' has shape {pshape}, expected [N, C]")
    if _static_dim(pshape[1]) is not None and pshape[1] != len(class_names):
        raise ModelFileError(f"{label}: output '{PROBS_NAME}' has {pshape[1]} classes but the card names {len(class_names)}: {class_names}")
    if CAM_NAME in outputs:
        cshape = outputs[CAM_NAME].shape
        if len(cshape) != 4:
            raise ModelFileError(f"{label}: output '{CAM_NAME}' has shape {cshape}, expected [N, C, h, w]")
    return tuple(o.name for o in sess.get_outputs())


def _load(path: Path, provider_list: list[str], requested: tuple[str, ...], threads: int) -> Session:
    so = ort.SessionOptions()
    so.log_severity_level = LOG_SEVERITY
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    label = str(path)
    try:
        # stdout guard: the Python wrapper prints an "EP Error" banner there on fallback.
        with contextlib.redirect_stdout(io.StringIO()):
            sess = ort.InferenceSession(str(path), so, providers=provider_list)
    except Exception as exc:  # ORT raises its own pybind exception types
        kind = type(exc).__name__
        msg = str(exc)
        if kind in ("InvalidProtobuf",) or "INVALID_PROTOBUF" in msg or "Protobuf parsing failed" in msg:
            raise ModelFileError(f"{label}: not a valid ONNX file (truncated or corrupt?)") from None
        if kind in ("NoSuchFile",):
            raise ModelFileError(f"{label}: no such file") from None
        first = msg.strip().splitlines()[0] if msg.strip() else kind
        raise ModelFileError(f"{label}: ONNX Runtime cannot load this model ({first})") from None
    try:
        card = parse_card(sess.get_modelmeta().custom_metadata_map, source=label)
    except CardError as exc:
        raise ModelCardError(str(exc)) from None
    outputs = _check_graph(sess, card, label)
    return Session(inference=sess, path=path, card=card, provider=sess.get_providers()[0], requested=requested, output_names=outputs)


_cache_lock = threading.Lock()
_cache: dict[tuple, Session] = {}


def create_session(path: str | os.PathLike, *, providers: Providers = "auto", threads: int | None = None) -> Session:
    """Load (or reuse) a drgrade ONNX model.

    Parameters
    ----------
    path : str or Path
        A ``.onnx`` file, or a run directory holding ``model.onnx``.
    providers : "auto", "cpu" or list of str
        ``auto`` prefers TensorRT, then CUDA, then CPU, keeping only those that really work.
    threads : int, optional
        Intra-op threads (default: the CPUs this process may use); inter-op is 1.

    Returns
    -------
    Session
        Cached per (resolved path, mtime, size, providers, threads): re-exporting a model
        (new mtime/size) loads it afresh.

    Raises
    ------
    ModelFileError
        Missing path, run dir without ``model.onnx``, empty/corrupt file, no card
        (:class:`ModelCardError`, also a ``CardError``) or a card that disagrees with the graph.
    ValueError
        Unknown providers.

    Examples
    --------
    >>> s = create_session("runs/ce", providers="cpu")  # doctest: +SKIP
    >>> s.provider  # doctest: +SKIP
    'CPUExecutionProvider'
    """
    resolved = resolve_model_path(path)
    provider_list = resolve_providers(providers)
    requested = (providers,) if isinstance(providers, str) else tuple(providers)
    n_threads = int(threads) if threads else default_threads()
    if n_threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    st = resolved.stat()
    key = (str(resolved), st.st_mtime_ns, st.st_size, tuple(provider_list), n_threads, requested)
    with _cache_lock:
        sess = _cache.get(key)
        if sess is None:
            sess = _load(resolved, provider_list, requested, n_threads)
            # Drop stale entries of the same file (it was re-exported).
            for old in [k for k in _cache if k[0] == key[0] and k[1:3] != key[1:3]]:
                del _cache[old]
            _cache[key] = sess
        return sess


def clear_session_cache() -> None:
    """Forget every cached session (tests, or to free memory)."""
    with _cache_lock:
        _cache.clear()
