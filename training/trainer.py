"""The trainer: importable functions under a thin CLI (after torchvision's references).

``train_one_epoch`` is handed its criterion and never knows which loss it is; ``evaluate``
returns probabilities through the model's own decision rule, so validation, test metrics and
the exported ONNX graph all measure the same thing. ``run`` strings them together and writes
the run directory atomically (everything goes to ``.<name>.tmp`` and is renamed at the end).
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from models.metrics import compute_metrics, selection_score, metric_is_better
from models.preprocess import PreprocessSpec
from training.data import Collection, load_collection
from training.dataset import ScanDataset, load_prepared
from training.losses import LOSSES, build_loss
from training.losses.ordinal import optimise_cut_points
from training.losses.weights import class_weights
from training.networks import GradingModel, load_torchvision_weights
from training.samplers import AugmentedOversampleDataset, build_sampler, strong_augment
from training.stage2 import POSTHOC_RULES, Embeddings, run_stage2
from training.strategies import Strategy

log = logging.getLogger("drgrade.train")

CHECKPOINT_FORMAT = 1
#: Validation metrics written to history.csv after train_loss and val_loss (DESIGN.md).
HISTORY_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "qwk", "gmean", "ece", "mae_macro")


class TrainError(RuntimeError):
    """A run that cannot start or continue (bad device, nothing to resume, ...)."""


@dataclass
class TrainConfig:
    """Everything that defines a run; saved as ``config.json`` (plus data hash and versions)."""

    data: str  # collection path (CSV, folder with a known CSV, or ImageFolder)
    out: str  # run directory to create
    strategy: dict  # Strategy.to_dict(): loss x sampler x stage 2 x post-hoc
    network: str = "compact"  # backbone registry name (training.networks.NETWORKS)
    image_size: int = 64  # network input side, px
    preprocess: str = "fundus"  # "fundus" (crop field of view) or "plain"
    ben_graham: bool = False  # local-average-colour subtraction (Graham 2015)
    epochs: int = 12
    batch_size: int = 64
    lr: float = 3e-3  # AdamW peak learning rate (cosine decay after a 1-epoch warm-up)
    weight_decay: float = 1e-4
    seed: int = 0  # model init, sampling, augmentation and (unless split_seed) the split
    split_seed: int | None = None  # seed of the train/val/test split (default: seed)
    device: str = "auto"  # auto | cpu | cuda
    select_metric: str = "macro_f1"  # validation metric that picks the checkpoint
    pretrained: str | None = None  # torchvision-format ResNet state dict (local file)
    skip_bad: bool = False  # drop bad rows with a warning instead of failing
    image_col: str | None = None
    label_col: str | None = None
    images_dir: str | None = None
    class_names: list[str] | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    # Images per epoch: "dataset" = the training split's size for every sampler (equal compute,
    # so strategies are compared at the same number of steps); "sampler" = the sampler's own
    # epoch (RandomOverSampler's is C x the majority count, RandomUnderSampler's C x the minority).
    epoch_size: str = "dataset"
    workers: int = 0  # DataLoader workers (0: in the main process; data is in memory)
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    progress: bool = True  # tqdm bar per epoch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------
# Device and distributed set-up


@dataclass
class Dist:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """Initialise torch.distributed when launched by torchrun (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    d = Dist(world, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return d


def resolve_device(name: str, d: Dist) -> torch.device:
    if name not in ("auto", "cpu", "cuda"):
        raise TrainError(f"unknown device {name!r}; valid: auto, cpu, cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda was requested but CUDA is not available on this machine (torch " + torch.__version__ + "); use --device cpu or auto")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", d.local_rank)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------
# The loop


def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer, scheduler, loader: Iterable, device: torch.device, *, scaler=None, channels_last: bool = False, progress=None) -> float:
    """One pass over ``loader``; returns the mean training loss (over this rank's samples)."""
    model.train()
    total, n = 0.0, 0
    amp = scaler is not None
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
            logits = model(x)  # (B, out_dim)
        loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        if amp:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        total += float(loss.detach()) * len(y)
        n += len(y)
        if progress is not None:
            progress.update(len(y))
    return total / max(n, 1)


@torch.no_grad()
def evaluate(model: GradingModel, loader: Iterable, device: torch.device, criterion: nn.Module | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Probabilities through the model's decision rule, embeddings, and the criterion's mean loss."""
    model.eval()
    probs, embs, total, n = [], [], 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        z = model.embed(x)
        embs.append(z.float().cpu())
        probs.append(model.probs_from_embedding(z.float()).cpu())
        if criterion is not None:
            total += float(criterion(model.logits_from_embedding(z.float()), y)) * len(y)
            n += len(y)
    return torch.cat(probs).numpy(), torch.cat(embs).numpy(), (total / n if n else float("nan"))


def _loader(ds, batch_size: int, *, sampler=None, workers: int = 0, device: torch.device) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers, pin_memory=device.type == "cuda", drop_last=False, persistent_workers=workers > 0)


def cosine_with_warmup(optimizer, total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------------------
# Writing the run directory


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def _write_csv(path: Path, header: list[str], rows: Iterable[Iterable[Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def versions() -> dict[str, str]:
    import sklearn
    import imblearn

    return {"python": platform.python_version(), "torch": str(torch.__version__), "numpy": np.__version__, "scikit-learn": sklearn.__version__, "imbalanced-learn": imblearn.__version__}


#: Options that may change between an interrupted run and its --resume (the rest must match).
RESUME_FREE = ("out", "progress", "workers")


def resume_key(cfg: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in cfg.to_dict().items() if k not in RESUME_FREE}


def _tmp_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.tmp"


def check_output_dir(out: Path) -> None:
    """Refuse an ``--out`` that exists and is not a drgrade run: publishing replaces it whole."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "config.json").is_file() and not (out / "model.pt").is_file())):
        raise TrainError(f"--out {out} exists and is not a drgrade run directory; refusing to replace it (choose a new run directory, e.g. {out / 'my-run'})")


def _publish(tmp: Path, out: Path) -> None:
    """Replace ``out`` by the finished ``tmp`` directory (rename is atomic on one file system)."""
    old = out.parent / f".{out.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    if old.exists():
        shutil.rmtree(old)


# --------------------------------------------------------------------------------------
# A whole run


def run(cfg: TrainConfig, *, resume: bool = False) -> dict:
    """Train, apply stage 2 / post-hoc rules, evaluate on test, write the run directory.

    Returns the test metrics. Only rank 0 writes; every rank returns the same metrics.
    """
    d = setup_distributed()
    try:
        return _run(cfg, d, resume)
    finally:
        if d.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _run(cfg: TrainConfig, d: Dist, resume: bool) -> dict:
    t0 = time.time()
    device = resolve_device(cfg.device, d)
    strategy = Strategy.from_dict(cfg.strategy)
    seed_everything(cfg.seed)
    out = Path(cfg.out)
    check_output_dir(out)
    tmp = _tmp_dir(out)

    collection: Collection = load_collection(
        cfg.data, image_col=cfg.image_col, label_col=cfg.label_col, images_dir=cfg.images_dir, class_names=cfg.class_names,
        seed=cfg.seed if cfg.split_seed is None else cfg.split_seed, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
        skip_bad=cfg.skip_bad,
    )
    class_names = list(collection.class_names)
    C = len(class_names)
    table = collection.table
    spec = PreprocessSpec(mode=cfg.preprocess, size=cfg.image_size, ben_graham=cfg.ben_graham)
    splits = {s: table[table["split"] == s].reset_index(drop=True) for s in ("train", "val", "test")}
    arrays = {s: load_prepared(list(t["path"]), spec) for s, t in splits.items()}
    labels = {s: t["label"].to_numpy(np.int64) for s, t in splits.items()}
    counts = np.bincount(labels["train"], minlength=C)

    loss_spec = LOSSES[strategy.loss]
    criterion = build_loss(strategy.loss, counts.tolist(), **dict(strategy.loss_params)).to(device)
    ordinal = loss_spec.kind == "ordinal"
    model = GradingModel(cfg.network, C, out_dim=loss_spec.output_dim(C), rule="ordinal" if ordinal else "softmax",
                         head=loss_spec.head, logit_scale=getattr(criterion, "scale", 1.0) if loss_spec.head == "cosine" else 1.0)
    if cfg.pretrained:
        missing = load_torchvision_weights(model.backbone, cfg.pretrained)
        if missing:
            log.warning("pretrained weights: %d backbone tensors not in the file (first: %s)", len(missing), missing[0])
    model.to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    train_ds = ScanDataset(arrays["train"], labels["train"], spec, augment=True, seed=cfg.seed)
    sampler_kw = dict(strategy.sampler_params)
    if strategy.sampler == "progressive":
        sampler_kw.setdefault("total_epochs", cfg.epochs)
    sampler = build_sampler(strategy.sampler, labels["train"], seed=cfg.seed, num_replicas=d.world_size, rank=d.rank, **sampler_kw)
    if cfg.epoch_size not in ("dataset", "sampler"):
        raise TrainError(f"unknown epoch size {cfg.epoch_size!r}; valid: dataset, sampler")
    if cfg.epoch_size == "dataset":
        sampler.set_epoch_size(len(labels["train"]))
    fit_ds = AugmentedOversampleDataset(train_ds, strong_augment) if strategy.sampler == "aug-oversample" else train_ds
    per_rank_batch = max(1, cfg.batch_size // d.world_size)
    train_loader = _loader(fit_ds, per_rank_batch, sampler=sampler, workers=cfg.workers, device=device)
    val_loader = _loader(ScanDataset(arrays["val"], labels["val"], spec), 256, device=device)
    test_loader = _loader(ScanDataset(arrays["test"], labels["test"], spec), 256, device=device)

    ddp_model: nn.Module = model
    if d.world_size > 1:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(train_loader)
    scheduler = cosine_with_warmup(optimizer, cfg.epochs * steps_per_epoch, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if (device.type == "cuda" and cfg.amp) else None

    history: list[dict] = []
    best_state, best_score, best_epoch, start_epoch = None, None, -1, 0
    if resume:
        ckpt_path = tmp / "last.pt"
        if not ckpt_path.is_file():
            raise TrainError(f"--resume: no interrupted run to continue ({ckpt_path} does not exist)")
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        changed = sorted(k for k, v in resume_key(cfg).items() if ck["config"].get(k) != v)
        if changed:
            raise TrainError(f"--resume: the interrupted run used different {', '.join(changed)}; resume with the same options, or start afresh without --resume")
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        history, best_state, best_score, best_epoch = ck["history"], ck["best_state"], ck["best_score"], ck["best_epoch"]
        start_epoch = ck["epoch"] + 1
        log.info("resuming %s at epoch %d", out.name, start_epoch + 1)
    elif d.main:
        if tmp.exists():
            shutil.rmtree(tmp)
    if d.main:
        tmp.mkdir(parents=True, exist_ok=True)
    drw_epoch = None if strategy.drw_start is None else int(round(strategy.drw_start * cfg.epochs))
    drw_weight = torch.as_tensor(class_weights(counts, "effective", beta=strategy.drw_beta), dtype=torch.float32, device=device)

    bar = None
    if cfg.progress and d.main:
        from tqdm.auto import tqdm

        bar = tqdm(total=(cfg.epochs - start_epoch) * len(sampler) * d.world_size, desc=f"{out.name}", unit="img", leave=False, dynamic_ncols=True)
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        train_ds.set_epoch(epoch)
        if drw_epoch is not None and epoch >= drw_epoch:
            criterion.set_class_weight(drw_weight)  # deferred re-weighting (Cao et al. 2019)
        train_loss = train_one_epoch(ddp_model, criterion, optimizer, scheduler, train_loader, device, scaler=scaler, channels_last=channels_last, progress=bar)
        if d.world_size > 1:
            t = torch.tensor([train_loss], device=device)
            dist.all_reduce(t)
            train_loss = float(t) / d.world_size
        if d.world_size > 1:  # BatchNorm running stats drift apart per rank: use rank 0's everywhere
            for buf in model.buffers():
                dist.broadcast(buf, src=0)
        val_probs, _, val_loss = evaluate(model, val_loader, device, criterion)
        val_metrics = compute_metrics(labels["val"], val_probs, class_names)
        score = selection_score(val_metrics, cfg.select_metric)
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, **{k: val_metrics[k] for k in HISTORY_METRICS}})
        if best_score is None or metric_is_better(cfg.select_metric, score, best_score):
            best_score, best_epoch = score, epoch + 1
            best_state = copy.deepcopy(model.state_dict())
        if d.main:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch,
                        "history": history, "best_state": best_state, "best_score": best_score, "best_epoch": best_epoch,
                        "config": resume_key(cfg), "scaler": scaler.state_dict() if scaler is not None else None}, tmp / "last.pt.part")
            os.replace(tmp / "last.pt.part", tmp / "last.pt")
        if bar is not None:
            bar.set_postfix(epoch=epoch + 1, loss=f"{train_loss:.3f}", **{cfg.select_metric: f"{score:.3f}"})
    if bar is not None:
        bar.close()

    # ---- stage 2 and post-hoc rules on frozen embeddings (identical on every rank)
    model.load_state_dict(best_state)
    model.eval()
    decision: dict[str, Any] = {"rule": model.rule, "selected_epoch": best_epoch, cfg.select_metric + "_val": best_score}
    if strategy.stage2 or strategy.posthoc or ordinal:
        plain_train = _loader(ScanDataset(arrays["train"], labels["train"], spec), 256, device=device)
        _, z_train, _ = evaluate(model, plain_train, device)
        _, z_val, _ = evaluate(model, val_loader, device)
        emb = Embeddings(z_train, labels["train"], z_val, labels["val"])
        if strategy.stage2:
            decision["stage2"] = {"method": strategy.stage2, **run_stage2(strategy.stage2, model, emb, class_names, strategy.stage2_params, seed=cfg.seed, metric=cfg.select_metric)}
        if strategy.posthoc:
            decision["posthoc"] = {"method": strategy.posthoc, **POSTHOC_RULES[strategy.posthoc](model, emb, class_names, prior=counts, metric=cfg.select_metric, **dict(strategy.posthoc_params))}
        if ordinal:
            with torch.no_grad():
                scores = model.logits_from_embedding(torch.as_tensor(z_val, device=device))[:, 0].cpu().numpy()
            cuts = optimise_cut_points(scores, labels["val"], C)
            model.cuts.copy_(torch.as_tensor(cuts, dtype=torch.float32))
            decision["cut_points"] = [float(c) for c in cuts]
    model.to("cpu").eval()
    test_probs, _, _ = evaluate(model, test_loader, torch.device("cpu"))
    metrics = compute_metrics(labels["test"], test_probs, class_names)
    metrics["selection_metric"] = cfg.select_metric
    if not d.main:
        return metrics

    # ---- write the run directory (rank 0), then publish it with one rename
    config = cfg.to_dict()
    config.update(
        name=out.name, class_names=class_names, n_classes=C, preprocess_spec=spec.to_dict(), data_hash=collection.data_hash(),
        data_source=collection.source, class_counts={s: np.bincount(labels[s], minlength=C).tolist() for s in labels},
        skipped_rows=collection.skipped, decision=decision, world_size=d.world_size, device_used=str(device), versions=versions(),
        train_seconds=round(time.time() - t0, 1), strategy_parts=strategy.parts,
        sampler_distribution={  # what the sampler really fed the network (dashboard's Data page)
            "before": counts.tolist(),
            "epoch_first": np.bincount(labels["train"][sampler.epoch_indices(0) % len(labels["train"])], minlength=C).tolist(),
            "epoch_last": np.bincount(labels["train"][sampler.epoch_indices(cfg.epochs - 1) % len(labels["train"])], minlength=C).tolist(),
        },
    )
    record = {"format": CHECKPOINT_FORMAT, "arch": model.arch(), "state_dict": model.state_dict(), "config": config, "class_names": class_names, "preprocess": spec.to_dict()}
    torch.save(record, tmp / "model.pt")
    _write_json(tmp / "config.json", config)
    _write_json(tmp / "metrics.json", metrics)
    hist_cols = ["epoch", "train_loss", "val_loss", *HISTORY_METRICS]
    _write_csv(tmp / "history.csv", hist_cols, ([h[c] for c in hist_cols] for h in history))
    test_ids = splits["test"]["image"].tolist()
    pred = test_probs.argmax(1)
    _write_csv(tmp / "predictions.csv", ["image", "true", "pred", *[f"p{i}" for i in range(C)]],
               ([img, int(t), int(p), *[f"{v:.6f}" for v in row]] for img, t, p, row in zip(test_ids, labels["test"], pred, test_probs)))
    _write_csv(tmp / "split.csv", ["image", "split", "label", "path"], table[["image", "split", "label", "path"]].itertuples(index=False))
    (tmp / "last.pt").unlink(missing_ok=True)
    _publish(tmp, out)
    return metrics

