"""``python -m training``: train one strategy, list the strategies, or check a collection.

Examples::

    python -m training --list-strategies
    python -m training --data data/synth --check
    python -m training --data data/synth --strategy ldam-drw --out runs/ldam-drw
    python -m training --data data/synth --strategy ce --loss focal --loss-param gamma=1 --out runs/f1
    torchrun --nproc_per_node 2 -m training --data data/synth --strategy ce --out runs/ce-ddp

User errors (bad data, unknown names, impossible combinations, no CUDA) print one line
``error: ...`` and exit 1 (2 for command-line usage); set ``DRGRADE_DEBUG=1`` for tracebacks.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Sequence


def parse_param(text: str) -> tuple[str, Any]:
    """``k=v`` -> (k, v) with v parsed as JSON when it can be (numbers, true/false, lists)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        value: Any = json.loads(v)
    except json.JSONDecodeError:
        value = v
    return k.strip().replace("-", "_"), value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description="Train a DR grading model with an imbalance strategy.")
    p.add_argument("--data", help="labelled collection: CSV, folder with labels.csv/trainLabels.csv/train.csv, or ImageFolder")
    p.add_argument("--strategy", default="ce", help="preset name (see --list-strategies)")
    p.add_argument("--out", help="run directory to write (e.g. runs/ce)")
    p.add_argument("--list-strategies", action="store_true", help="list every preset with a one-line description")
    p.add_argument("--check", action="store_true", help="validate the collection, print its summary; exit 1 on problems")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last epoch checkpoint")
    g = p.add_argument_group("composition (override parts of the preset)")
    g.add_argument("--loss", help="loss registry name")
    g.add_argument("--loss-param", action="append", type=parse_param, default=[], metavar="K=V")
    g.add_argument("--sampler", help="sampler registry name")
    g.add_argument("--sampler-param", action="append", type=parse_param, default=[], metavar="K=V")
    g.add_argument("--stage2", help="crt | tau-norm | ensemble | none")
    g.add_argument("--stage2-param", action="append", type=parse_param, default=[], metavar="K=V", help="e.g. sampler=ADASYN, k_neighbors=3, n_heads=7")
    g.add_argument("--posthoc", help="logit-adjust | none")
    g.add_argument("--posthoc-param", action="append", type=parse_param, default=[], metavar="K=V")
    g.add_argument("--drw-start", type=float, help="deferred re-weighting from this fraction of the epochs")
    t = p.add_argument_group("training")
    t.add_argument("--network", default="compact")
    t.add_argument("--pretrained", help="torchvision ResNet state dict file (downloaded by you)")
    t.add_argument("--epochs", type=int, default=12)
    t.add_argument("--image-size", type=int, default=64)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    t.add_argument("--preprocess", default="fundus", choices=["fundus", "plain"])
    t.add_argument("--ben-graham", action="store_true", help="Ben Graham local-average-colour normalisation")
    t.add_argument("--select-metric", default="macro_f1", help="validation metric for checkpoint selection")
    t.add_argument("--epoch-size", default="dataset", choices=["dataset", "sampler"], help="images per epoch: the training set's size for every sampler (equal compute, default) or the sampler's own epoch")
    t.add_argument("--workers", type=int, default=0)
    t.add_argument("--no-progress", action="store_true")
    d = p.add_argument_group("data")
    d.add_argument("--skip-bad", action="store_true", help="skip bad rows (missing/corrupt images, bad labels) with a warning")
    d.add_argument("--image-col")
    d.add_argument("--label-col")
    d.add_argument("--images", help="folder holding the images (default: next to the CSV)")
    d.add_argument("--class-names", help="comma-separated class names")
    d.add_argument("--val-fraction", type=float, default=0.15)
    d.add_argument("--test-fraction", type=float, default=0.15)
    return p


def strategy_from_args(args: argparse.Namespace):
    from training.strategies import compose

    return compose(
        args.strategy, loss=args.loss, loss_params=dict(args.loss_param), sampler=args.sampler, sampler_params=dict(args.sampler_param),
        stage2=args.stage2, stage2_params=dict(args.stage2_param), posthoc=args.posthoc, posthoc_params=dict(args.posthoc_param), drw_start=args.drw_start,
    )


def list_strategies_text() -> str:
    from training.strategies import STRATEGIES

    width = max(map(len, STRATEGIES))
    lines = [f"{name:<{width}}  {s.description}\n{'':<{width}}  {s.parts}" for name, s in STRATEGIES.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.list_strategies:
        print(list_strategies_text())
        return 0
    if not args.data:
        parser.error("--data is required (or use --list-strategies)")
    class_names = args.class_names.split(",") if args.class_names else None
    data_kw = dict(image_col=args.image_col, label_col=args.label_col, images_dir=args.images, class_names=class_names)
    try:
        if args.check:
            from training.data import check_collection

            collection, problems = check_collection(args.data, seed=args.seed, val_fraction=args.val_fraction, test_fraction=args.test_fraction, skip_bad=args.skip_bad, **data_kw)
            if collection is not None:
                print(collection.summary())
            for problem in problems:
                print(f"problem: {problem}")
            print("OK: no problems found" if not problems else f"{len(problems)} problem(s) found")
            return 1 if problems else 0
        if not args.out:
            parser.error("--out is required to train")
        strategy = strategy_from_args(args)
        from training.trainer import TrainConfig, run

        cfg = TrainConfig(
            data=args.data, out=args.out, strategy=strategy.to_dict(), network=args.network, image_size=args.image_size, preprocess=args.preprocess,
            ben_graham=args.ben_graham, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
            select_metric=args.select_metric, pretrained=args.pretrained, skip_bad=args.skip_bad, val_fraction=args.val_fraction,
            test_fraction=args.test_fraction, workers=args.workers, epoch_size=args.epoch_size, progress=not args.no_progress, **{k: v for k, v in data_kw.items() if k != "images_dir"}, images_dir=args.images,
        )
        validate_config(cfg)
        metrics = run(cfg, resume=args.resume)
        if int(os.environ.get("RANK", "0")) == 0:
            keys = ("balanced_accuracy", "macro_f1", "qwk", "gmean", "ece")
            print(f"{args.out}: " + "  ".join(f"{k}={metrics[k]:.3f}" for k in keys))
        return 0
    except KeyboardInterrupt:
        print(f"interrupted: {args.out} left untouched; continue with --resume", file=sys.stderr)
        return 130
    except Exception as exc:  # user-facing errors: one line, no traceback
        if os.environ.get("DRGRADE_DEBUG") or not _is_user_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1


def validate_config(cfg) -> None:
    from models.metrics import SELECTION_METRICS
    from training.networks import NETWORKS

    if cfg.network not in NETWORKS:
        raise ValueError(f"unknown network {cfg.network!r}; valid: {', '.join(NETWORKS)}")
    if cfg.select_metric not in SELECTION_METRICS:
        raise ValueError(f"unknown selection metric {cfg.select_metric!r}; valid: {', '.join(SELECTION_METRICS)}")
    for name, value, lo in (("--epochs", cfg.epochs, 1), ("--batch-size", cfg.batch_size, 1), ("--image-size", cfg.image_size, 32)):
        if value < lo:
            raise ValueError(f"{name} must be at least {lo}, got {value}")


def _is_user_error(exc: BaseException) -> bool:
    from models.preprocess import ImageError
    from training.data import DataError
    from training.networks import CheckpointError
    from training.strategies import StrategyError
    from training.trainer import TrainError

    return isinstance(exc, (DataError, ImageError, CheckpointError, StrategyError, TrainError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
