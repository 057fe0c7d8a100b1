"""Export: PyTorch -> ONNX with the parity gate, the card, int8/fp16, bad input, the benchmark.

Real exports of tiny real runs (conftest fixtures); ONNX Runtime runs on CPU. Exported files
are made once per module and reused.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.onnx_export import (
    ExportError,
    ParityError,
    export_run,
    parity_check,
    run_spec,
    validation_images,
)
from models.card import CARD_KEY, parse_card
from training.networks import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def cli(*args: str, module: str = "export") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    env.pop("DRGRADE_DEBUG", None)
    return subprocess.run([PY, "-m", module, *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)


def card_of(path: Path) -> dict:
    meta = {p.key: p.value for p in onnx.load_model(str(path), load_external_data=False).metadata_props}
    return parse_card(meta, source=str(path))


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def main_in_process(capsys, *args: str, module: str = "export") -> tuple[int, str, str]:
    """The CLI's ``main`` in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    import importlib

    main = importlib.import_module(module + (".__main__" if module == "export" else "")).main
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def exported(ce_run, tmp_path_factory) -> Path:
    """A copy of the ce run, exported once through the CLI's main with int8 and fp16."""
    from export.__main__ import main

    run = tmp_path_factory.mktemp("export") / "ce"
    shutil.copytree(ce_run, run)
    assert main([str(run), "--quantize", "int8", "--fp16", "-q"]) == 0
    return run


# ----------------------------------------------------------------------------- fp32 + gate


def test_export_writes_gated_self_contained_model(exported):
    files = sorted(p.name for p in exported.iterdir())
    assert "model.onnx" in files
    assert not [f for f in files if f.endswith(".tmp") or f.endswith(".data")], files
    model = onnx.load_model(str(exported / "model.onnx"), load_external_data=False)
    onnx.checker.check_model(model)
    assert all(not t.external_data for t in model.graph.initializer)  # weights inline
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18
    report = json.loads((exported / "export_report.json").read_text())
    assert report["passed"] and report["opset"] == 18 and report["exporter"] in ("dynamo", "torchscript")
    for b in ("1", "7"):
        assert report["parity"]["batch_sizes"][b]["max_probs_diff"] <= 1e-4
        assert report["parity"]["batch_sizes"][b]["pred_mismatches"] == 0
        assert "max_cam_diff" in report["parity"]["batch_sizes"][b]
    assert set(report["timings_s"]) >= {"export", "parity", "total"}


def test_card_in_metadata(exported):
    _, record = load_checkpoint(exported)
    card = card_of(exported / "model.onnx")
    config = record["config"]
    metrics = json.loads((exported / "metrics.json").read_text())
    assert card["format"] == 1 and card["precision"] == "fp32"
    assert card["class_names"] == record["class_names"]
    assert card["input_size"] == run_spec(record).size == 32
    assert card["preprocess"] == record["preprocess"]
    assert card["input_name"] == "image" and card["output_names"] == ["probs", "cam"]
    assert card["strategy"] == config["strategy"] and card["strategy_parts"] == config["strategy_parts"]
    assert card["decision_rule"] == json.loads(json.dumps(config["decision"]))
    assert card["metrics"]["macro_f1"] == pytest.approx(metrics["macro_f1"])
    assert card["data_hash"] == config["data_hash"] and card["network"] == config["network"]
    assert card["versions"] == config["versions"]
    # The torch-free runtime reads the same card.
    from models.runtime import create_session

    s = create_session(exported / "model.onnx", providers="cpu")
    assert s.class_names == record["class_names"]


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_ort_matches_torch_on_real_val_scans(exported, batch):
    model, record = load_checkpoint(exported)
    x = validation_images(exported, run_spec(record))
    x = x[np.arange(batch) % len(x)]  # batch 3 was never seen by the exporter or the gate
    probs, cam = session(exported / "model.onnx").run(["probs", "cam"], {"image": x})
    with torch.inference_mode():
        tp, tc = model.predict(torch.from_numpy(x))
    assert probs.shape == (batch, len(record["class_names"])) and cam.shape == tuple(tc.shape)
    np.testing.assert_allclose(probs, tp.numpy(), atol=1e-4)
    np.testing.assert_allclose(cam, tc.numpy(), atol=1e-3)
    assert (probs.argmax(1) == tp.numpy().argmax(1)).all()


# ----------------------------------------------------------------------------- int8 / fp16


def test_int8_model_and_metrics(exported):
    assert (exported / "model.int8.onnx").is_file()
    metrics = json.loads((exported / "metrics.int8.json").read_text())
    assert {"accuracy", "macro_f1", "qwk", "per_class", "confusion_matrix"} <= set(metrics)
    card = card_of(exported / "model.int8.onnx")
    assert card["precision"] == "int8"
    assert card["metrics"]["macro_f1"] == pytest.approx(metrics["macro_f1"])
    fp32 = json.loads((exported / "metrics.json").read_text())
    assert card["fp32_metrics"]["macro_f1"] == pytest.approx(fp32["macro_f1"])
    # Stratified calibration: every class of the training split is represented.
    assert all(n > 0 for n in card["calibration"]["per_class"])
    model = onnx.load_model(str(exported / "model.int8.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)  # QDQ format
    x = validation_images(exported, run_spec(load_checkpoint(exported)[1]))[:3]
    probs, _ = session(exported / "model.int8.onnx").run(None, {"image": x})
    assert probs.shape[0] == 3 and np.allclose(probs.sum(1), 1, atol=1e-2)


@pytest.mark.parametrize("strategy", ["ldam-drw", "easy-ensemble", "ordinal"])
def test_int8_for_other_heads_and_rules(run_factory, strategy, tmp_path):
    """Cosine heads (LDAM), head ensembles and ordinal rules quantise too."""
    run = tmp_path / strategy
    shutil.copytree(run_factory(strategy), run)
    result = export_run(run, quantize="int8")
    assert result["passed"] and (run / "model.int8.onnx").is_file()
    x = validation_images(run, run_spec(load_checkpoint(run)[1]))[:4]
    p32, _ = session(run / "model.onnx").run(None, {"image": x})
    p8, _ = session(run / "model.int8.onnx").run(None, {"image": x})
    assert p8.shape == p32.shape and np.allclose(p8.sum(1), 1, atol=1e-2)
    assert np.abs(p8 - p32).max() < 0.25  # quantised, not broken


def test_fp16_model(exported):
    path = exported / "model.fp16.onnx"
    onnx.checker.check_model(str(path))
    model = onnx.load_model(str(path))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # keep_io_types
    assert card_of(path)["precision"] == "fp16"
    report = json.loads((exported / "export_report.json").read_text())["fp16"]
    if report["runs_on_cpu"]:
        assert report["cpu_max_probs_diff_vs_fp32"] < 1e-2


# ----------------------------------------------------------------------------- decision rules


@pytest.mark.parametrize("strategy", ["logit-adjust", "easy-ensemble", "ordinal", "tau-norm"])
def test_decision_rules_export_with_parity(run_factory, tmp_path, strategy):
    run = tmp_path / strategy
    shutil.copytree(run_factory(strategy), run)
    report = export_run(run)
    assert report["passed"]
    model, record = load_checkpoint(run)
    x = validation_images(run, run_spec(record))[:5]
    probs, cam = session(run / "model.onnx").run(None, {"image": x})
    with torch.inference_mode():
        tp, tc = model.predict(torch.from_numpy(x))
    np.testing.assert_allclose(probs, tp.numpy(), atol=1e-4)
    assert cam.shape == tuple(tc.shape) and cam.shape[1] == len(record["class_names"])
    card = card_of(run / "model.onnx")
    assert card["decision_rule"] == json.loads(json.dumps(record["config"]["decision"]))
    if strategy == "ordinal":
        assert card["decision_rule"]["rule"] == "ordinal" and "cut_points" in card["decision_rule"]
    if strategy == "easy-ensemble":
        assert model.n_heads > 1


# ----------------------------------------------------------------------------- the gate bites


def test_parity_gate_rejects_a_perturbed_model(exported):
    model, record = load_checkpoint(exported)
    x = validation_images(exported, run_spec(record))
    with torch.no_grad():
        model.head_bias.add_(torch.linspace(-3, 3, model.head_bias.shape[-1]))  # a different model
    with pytest.raises(ParityError, match=r"parity gate failed.*batch 1: max \|probs diff\|"):
        parity_check(model, exported / "model.onnx", x)


def test_failed_gate_publishes_nothing_and_keeps_older_model(exported, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(exported, run)
    before = (run / "model.onnx").read_bytes()
    model, _ = load_checkpoint(run)
    with torch.no_grad():
        model.head_bias.add_(torch.linspace(-3, 3, model.head_bias.shape[-1]))
    with pytest.raises(ParityError, match="disagree"):
        export_run(run, reference=model)
    assert (run / "model.onnx").read_bytes() == before  # older good model untouched
    assert not list(run.glob(".*.tmp"))
    assert json.loads((run / "export_report.json").read_text())["passed"] is False


# ----------------------------------------------------------------------------- bad input


def test_missing_run_dir(tmp_path):
    r = cli(str(tmp_path / "nope"))
    assert r.returncode == 1
    assert r.stderr.strip().startswith("error: ") and "no such directory" in r.stderr and "Traceback" not in r.stderr


def test_run_dir_without_checkpoint(tmp_path, capsys):
    code, _, err = main_in_process(capsys, str(tmp_path))
    assert code == 1 and err.startswith("error: ") and "no model.pt" in err
    assert not list(tmp_path.iterdir())


def test_corrupt_checkpoint(ce_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(ce_run, run)
    (run / "model.pt").write_bytes(os.urandom(4096))
    code, _, err = main_in_process(capsys, str(run))
    assert code == 1 and err.startswith("error: ") and "unreadable checkpoint" in err
    assert len(err.strip().splitlines()) == 1
    assert not (run / "model.onnx").exists() and not list(run.glob(".*tmp"))


def test_run_without_val_scans(ce_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ce_run, run)
    lines = (run / "split.csv").read_text().splitlines()
    (run / "split.csv").write_text("\n".join(l for l in lines if ",val," not in l) + "\n")
    with pytest.raises(ExportError, match="no rows with split 'val'"):
        export_run(run)
    assert not (run / "model.onnx").exists()


def test_usage_errors(ce_run, capsys):
    assert main_in_process(capsys)[0] == 2
    assert main_in_process(capsys, str(ce_run), "--quantize", "int4")[0] == 2
    code, _, err = main_in_process(capsys, str(ce_run), "--opset", "12")
    assert code == 2 and "opset" in err
    assert main_in_process(capsys, "--json", "x", module="export.bench")[0] == 2
    assert main_in_process(capsys, str(ce_run), "--json", "x", "--repeats", "0", module="export.bench")[0] == 2


def test_unknown_quantisation_api(ce_run):
    with pytest.raises(ExportError, match="unknown quantisation 'int4'"):
        export_run(ce_run, quantize="int4")


# ----------------------------------------------------------------------------- benchmark


def test_bench_json_shape(exported, tmp_path, capsys):
    from export.bench import write_markdown_section

    out = tmp_path / "bench.json"
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nother section\n")
    code, stdout, err = main_in_process(capsys, str(exported), "--json", str(out), "--repeats", "2", "--markdown", str(md), module="export.bench")
    assert code == 0, err
    res = json.loads(out.read_text())
    assert isinstance(res["device"], str) and res["image_size"] == 32
    for key in ("torch_eager", "ort_fp32", "ort_int8"):
        assert set(res[key]) == {"b1_ms", "b32_ips"}
        assert res[key]["b1_ms"] > 0 and res[key]["b32_ips"] > 0
    assert res["scan_e2e_ms"] > 0
    assert "| ORT fp32 |" in stdout and "vs eager" in stdout
    text = md.read_text()
    assert "other section" in text and text.count("<!-- export-bench:start -->") == 1
    write_markdown_section(md, "second\n")
    text = md.read_text()
    assert text.count("<!-- export-bench:start -->") == 1 and "second" in text and "| ORT fp32 |" not in text  # replaced
    assert "other section" in text


def test_bench_without_int8_and_bad_run(ce_run, tmp_path):
    from export.bench import BenchError, run_bench

    with pytest.raises(BenchError, match="no model.onnx"):
        run_bench(ce_run if not (ce_run / "model.onnx").exists() else tmp_path)
    r = cli(str(tmp_path / "nope"), "--json", str(tmp_path / "o.json"), module="export.bench")
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert not (tmp_path / "o.json").exists()
