"""Training end to end: every preset, the CLI and its errors, determinism, DDP, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from training.networks import NETWORKS, GradingModel, ResNet, load_torchvision_weights
from training.strategies import STRATEGIES, Strategy, StrategyError, compose, get_strategy

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = ("config.json", "model.pt", "history.csv", "metrics.json", "predictions.csv", "split.csv")
SCALARS = ("accuracy", "balanced_accuracy", "macro_f1", "qwk", "gmean", "ece", "mae_macro")


def cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_preset_writes_the_full_run_directory(run_factory, strategy):
    run = run_factory(strategy)
    for name in RUN_FILES:
        assert (run / name).is_file(), f"{strategy}: {name} missing"
    metrics = json.loads((run / "metrics.json").read_text())
    for k in SCALARS:
        assert isinstance(metrics[k], float) and np.isfinite(metrics[k]), k
    assert metrics["class_names"] == ["No DR", "Mild", "Moderate", "Severe", "Proliferative DR"]
    assert set(metrics["referable"]) >= {"sensitivity", "specificity", "auc"}
    cm = np.array(metrics["confusion_matrix"])
    assert cm.shape == (5, 5)
    pred = pd.read_csv(run / "predictions.csv")
    assert list(pred.columns) == ["image", "true", "pred", "p0", "p1", "p2", "p3", "p4"]
    assert cm.sum() == len(pred) and np.allclose(pred[[f"p{i}" for i in range(5)]].sum(axis=1), 1.0, atol=1e-4)
    # the confusion matrix is the one of the predictions file, and pred is the argmax of the probabilities
    assert np.array_equal(pred[[f"p{i}" for i in range(5)]].to_numpy().argmax(1), pred["pred"].to_numpy())
    hist = pd.read_csv(run / "history.csv")
    assert list(hist.columns[:3]) == ["epoch", "train_loss", "val_loss"] and len(hist) == 2
    config = json.loads((run / "config.json").read_text())
    assert config["strategy"]["name"] == strategy and config["data_hash"] and config["preprocess_spec"]["size"] == 32
    split = pd.read_csv(run / "split.csv")
    assert set(split["split"]) == {"train", "val", "test"} and set(pred["image"]) <= set(split.loc[split["split"] == "test", "image"])
    assert not any(p.name.startswith(".") for p in run.parent.iterdir() if p.name.endswith(".tmp")), "temp dir left behind"


def test_decision_rules_are_recorded(run_factory):
    la = json.loads((run_factory("logit-adjust") / "config.json").read_text())["decision"]
    assert la["posthoc"]["method"] == "logit-adjust" and 0.0 <= la["posthoc"]["tau"] <= 2.0
    ordinal = json.loads((run_factory("ordinal") / "config.json").read_text())["decision"]
    cuts = ordinal["cut_points"]
    assert len(cuts) == 4 and cuts == sorted(cuts)
    ens = torch.load(run_factory("easy-ensemble") / "model.pt", weights_only=False)
    assert ens["arch"]["n_heads"] == 5 and ens["state_dict"]["head_weight"].shape[0] == 5
    dist = json.loads((run_factory("sampler-balanced") / "config.json").read_text())["sampler_distribution"]
    before, after = np.array(dist["before"]), np.array(dist["epoch_first"])
    assert after.sum() == before.sum() and after.std() < before.std()  # balanced sampling flattens the counts


def test_same_seed_same_metrics(run_factory, synth_dir, tmp_path):
    from training.trainer import TrainConfig, run

    first = json.loads((run_factory("focal") / "metrics.json").read_text())
    again = run(TrainConfig(data=str(synth_dir), out=str(tmp_path / "again"), strategy=get_strategy("focal").to_dict(), epochs=2, image_size=32, batch_size=32, progress=False, device="cpu"))
    assert again["confusion_matrix"] == first["confusion_matrix"]
    assert again["macro_f1"] == pytest.approx(first["macro_f1"], abs=1e-12)
    p1 = pd.read_csv(run_factory("focal") / "predictions.csv")
    p2 = pd.read_csv(tmp_path / "again" / "predictions.csv")
    assert np.allclose(p1[["p0", "p4"]], p2[["p0", "p4"]], atol=1e-6)


def test_list_strategies_lists_every_preset():
    out = cli("--list-strategies")
    assert out.returncode == 0
    for name, s in STRATEGIES.items():
        assert name in out.stdout and s.description in out.stdout


def test_check_summarises_and_exit_codes(synth_dir, tmp_path):
    ok = cli("--data", str(synth_dir), "--check")
    assert ok.returncode == 0, ok.stderr
    assert "Proliferative DR" in ok.stdout and "imbalance" in ok.stdout.lower() and "no problems" in ok.stdout
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "labels.csv").write_text((synth_dir / "labels.csv").read_text() + "missing_scan,2\n")
    (bad / "images").symlink_to(synth_dir / "images")
    out = cli("--data", str(bad), "--check")
    assert out.returncode == 1 and "missing_scan" in out.stdout and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--strategy", "smote-magic"], "unknown strategy 'smote-magic'; valid: ce, weighted-ce"),
        (["--loss", "hinge"], "unknown loss 'hinge'; valid: ce"),
        (["--sampler", "nope"], "unknown sampler 'nope'; valid: instance"),
        (["--stage2", "crt", "--stage2-param", "sampler=SMOOTE"], "unknown imbalanced-learn sampler 'SMOOTE'"),
        (["--strategy", "ordinal", "--posthoc", "logit-adjust"], "ordinal regression"),
        (["--strategy", "balanced-softmax", "--posthoc", "logit-adjust"], "count the prior twice"),
        (["--loss", "focal", "--loss-param", "gama=2"], "gama"),
        (["--device", "cuda"], "CUDA is not available"),
        (["--network", "vgg99"], "unknown network 'vgg99'; valid: compact"),
    ],
)
def test_bad_composition_or_device_is_one_clear_line(synth_dir, tmp_path, args, message):
    if "--device" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = cli("--data", str(synth_dir), "--out", str(tmp_path / "run"), "--epochs", "1", "--image-size", "32", *args)
    assert out.returncode == 1, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()


def test_imblearn_sampler_too_few_examples_names_the_class(synth_dir, tmp_path):
    out = cli("--data", str(synth_dir), "--out", str(tmp_path / "run"), "--epochs", "1", "--image-size", "32", "--no-progress",
              "--strategy", "crt-smote", "--stage2-param", "k_neighbors=40")
    assert out.returncode == 1
    assert "SMOTE needs more than k_neighbors=40" in out.stderr and "has" in out.stderr and "lower it" in out.stderr
    assert not (tmp_path / "run").exists(), "a failed run must not leave a run directory"


def test_too_few_examples_for_the_split(synth_dir, tmp_path):
    """A class with two scans cannot appear in train, val and test: say so, train nothing."""
    labels = pd.read_csv(synth_dir / "labels.csv")
    small = pd.concat([labels[labels.level == 0].head(20), labels[labels.level == 1].head(2)])[["image", "level"]]
    (tmp_path / "small").mkdir()
    small.to_csv(tmp_path / "small" / "labels.csv", index=False)
    (tmp_path / "small" / "images").symlink_to(synth_dir / "images")
    out = cli("--data", str(tmp_path / "small"), "--out", str(tmp_path / "run"), "--epochs", "1", "--image-size", "32")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "class '1' (1) has 2 images" in out.stderr and "too few for a train/val/test split" in out.stderr, out.stderr
    assert not (tmp_path / "run").exists()


def test_compose_overrides_parts_and_keeps_registry_intact():
    s = compose("ce", loss="focal", loss_params={"gamma": 1.0}, sampler="sqrt")
    assert (s.name, s.loss, s.sampler, dict(s.loss_params)) == ("custom", "focal", "sqrt", {"gamma": 1.0})
    assert get_strategy("ce").loss == "ce"
    assert compose("ldam-drw") is get_strategy("ldam-drw")
    with pytest.raises(StrategyError, match="deferred re-weighting needs a loss that takes class weights"):
        compose("ce", drw_start=0.5, loss="balanced-softmax")
    with pytest.raises(StrategyError, match="deferred re-weighting needs a loss"):  # configs built by hand are checked too
        Strategy.from_dict({**get_strategy("balanced-softmax").to_dict(), "drw_start": 0.5})
    with pytest.raises(StrategyError, match="cosine"):
        compose("ldam-drw", stage2="tau-norm")


def test_torchrun_two_cpu_processes(synth_dir, tmp_path):
    out_dir = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000),
           "-m", "training", "--data", str(synth_dir), "--strategy", "sampler-balanced", "--out", str(out_dir), "--epochs", "2",
           "--image-size", "32", "--batch-size", "32", "--device", "cpu", "--no-progress"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((out_dir / "metrics.json").read_text())
    config = json.loads((out_dir / "config.json").read_text())
    assert config["world_size"] == 2
    assert 0.0 <= metrics["balanced_accuracy"] <= 1.0 and np.array(metrics["confusion_matrix"]).sum() == len(pd.read_csv(out_dir / "predictions.csv"))
    assert res.stdout.count(str(out_dir) + ":") == 1, "only rank 0 reports"


def test_interrupted_run_leaves_no_run_dir_and_resumes(synth_dir, tmp_path):
    out_dir = tmp_path / "long"
    args = ["--data", str(synth_dir), "--out", str(out_dir), "--epochs", "40", "--image-size", "32", "--no-progress", "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, "-m", "training", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = tmp_path / ".long.tmp" / "last.pt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "--resume" in err
    assert not out_dir.exists(), "an interrupted run must not publish a run directory"
    done_epochs = torch.load(last, weights_only=False)["epoch"] + 1
    res = cli(*args, "--resume")
    assert res.returncode == 0, res.stderr[-2000:]
    hist = pd.read_csv(out_dir / "history.csv")
    assert list(hist["epoch"]) == list(range(1, 41)) and done_epochs >= 1
    assert not (tmp_path / ".long.tmp").exists()
    # resuming is exact: the same model as a run that was never interrupted
    straight = tmp_path / "straight"
    res = cli(*[a if a != str(out_dir) else str(straight) for a in args])
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = pd.read_csv(out_dir / "predictions.csv"), pd.read_csv(straight / "predictions.csv")
    assert np.allclose(a[["p0", "p1", "p2", "p3", "p4"]], b[["p0", "p1", "p2", "p3", "p4"]], atol=1e-6)
    assert json.loads((out_dir / "metrics.json").read_text())["confusion_matrix"] == json.loads((straight / "metrics.json").read_text())["confusion_matrix"]


def test_out_refuses_to_replace_a_folder_that_is_not_a_run(synth_dir, tmp_path):
    precious = tmp_path / "my_scans"
    precious.mkdir()
    (precious / "keep.txt").write_text("do not delete")
    out = cli("--data", str(synth_dir), "--out", str(precious), "--epochs", "1", "--image-size", "32")
    assert out.returncode == 1 and "is not a drgrade run directory; refusing to replace it" in out.stderr
    assert (precious / "keep.txt").read_text() == "do not delete"


def test_resume_without_interrupted_run_is_an_error(synth_dir, tmp_path):
    out = cli("--data", str(synth_dir), "--out", str(tmp_path / "x"), "--resume", "--epochs", "1", "--image-size", "32")
    assert out.returncode == 1 and "no interrupted run to continue" in out.stderr


def test_torchvision_state_dict_maps_onto_resnet(tmp_path):
    src = ResNet((2, 2, 2, 2))
    state = {f"module.{k}": v.clone() + 0.5 for k, v in src.state_dict().items()}  # DataParallel-style prefix
    state["module.fc.weight"], state["module.fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    torch.save(state, tmp_path / "resnet18.pth")
    model = GradingModel("resnet18", 5)
    missing = load_torchvision_weights(model.backbone, tmp_path / "resnet18.pth")
    assert missing == []
    assert torch.equal(model.backbone.layer3[1].conv2.weight, src.layer3[1].conv2.weight + 0.5)
    torch.save(ResNet((3, 4, 6, 3)).state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(ValueError, match="layer1.2.conv1.weight' has no place in this network"):
        load_torchvision_weights(GradingModel("resnet18", 5).backbone, tmp_path / "resnet34.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch state dict"):
        load_torchvision_weights(model.backbone, tmp_path / "junk.pth")


@pytest.mark.parametrize("network", list(NETWORKS))
@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_networks_give_logits_probs_and_cams(network, head):
    model = GradingModel(network, 5, head=head, logit_scale=30.0 if head == "cosine" else 1.0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
        deployed = model.head_logits(model.embed(x))[0]  # (B, C), what the probabilities use
        probs, cam = model.predict(x)
    assert logits.shape == (2, 5) and probs.shape == (2, 5) and cam.shape[:2] == (2, 5)
    assert torch.allclose(probs.sum(1), torch.ones(2), atol=1e-5)
    assert torch.allclose(probs, torch.softmax(deployed, 1), atol=1e-6)
    # CAM is exact for GAP + linear (or cosine) heads: its spatial mean plus the bias is the logit
    assert torch.allclose(cam.mean(dim=(2, 3)) + model.logit_scale * model.head_bias[0], deployed, atol=1e-4)
    if head == "cosine":  # training logits are cosines; the loss's scale s applies at inference
        assert logits.abs().max() <= 1.0 + 1e-6 and torch.allclose(deployed, 30.0 * logits, atol=1e-4)
    else:
        assert torch.allclose(deployed, logits, atol=1e-5)


def test_ordinal_rule_argmax_equals_cut_points():
    """The exported ordinal probabilities must pick exactly the grade the cut points give."""
    model = GradingModel("compact", 5, out_dim=1, rule="ordinal").eval()
    cuts = [0.4, 1.3, 2.2, 3.6]
    model.cuts.copy_(torch.tensor(cuts))
    scores = [-1.0, 0.39, 0.41, 1.29, 2.0, 3.0, 3.59, 3.61, 9.0]
    got = []
    with torch.no_grad():
        model.head_weight.zero_()  # score = bias, whatever the embedding
        for s in scores:
            model.head_bias.fill_(s)
            probs = model.probs_from_embedding(torch.zeros(1, model.feature_dim))
            assert torch.allclose(probs.sum(), torch.tensor(1.0))
            got.append(int(probs.argmax()))
    assert got == np.searchsorted(cuts, scores, side="right").tolist() == [0, 0, 1, 1, 2, 3, 3, 4, 4]
