"""``python -m training.zoo``: train the comparison set of strategies, one run each.

    python -m training.zoo --data data/synth --out runs --preset quick

``quick`` is sized for a laptop CPU (64 px, few epochs: about 10 minutes for the 12 runs on
2 cores, see bench/RESULTS.md); ``full`` is for a GPU. A run directory that already holds a
finished run is kept (``--force`` retrains it), so an interrupted zoo continues where it
stopped. One progress bar per run and an overall bar with an ETA.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

#: The strategies compared by the zoo (the dashboard's default comparison set).
ZOO_STRATEGIES = (
    "ce", "weighted-ce", "focal", "cb-focal", "ldam-drw", "balanced-softmax", "logit-adjust",
    "sampler-balanced", "ros", "crt-smote", "easy-ensemble", "ordinal",
)


@dataclass(frozen=True)
class ZooPreset:
    description: str
    epochs: int
    image_size: int
    network: str = "compact"
    batch_size: int = 64
    extra: dict = field(default_factory=dict)


ZOO_PRESETS = {
    "quick": ZooPreset("CPU-sized: 64 px, 10 epochs, compact CNN", epochs=10, image_size=64),
    "full": ZooPreset("GPU-sized: 128 px, 40 epochs, ResNet-18", epochs=40, image_size=128, network="resnet18"),
}


def is_finished(run_dir: Path) -> bool:
    return (run_dir / "metrics.json").is_file() and (run_dir / "model.pt").is_file()


def train_zoo(data: str, out: str | Path, *, preset: str = "quick", strategies: Sequence[str] = ZOO_STRATEGIES, seed: int = 0, device: str = "auto",
              force: bool = False, epochs: int | None = None, image_size: int | None = None, progress: bool = True,
              split_seed: int | None = None) -> dict[str, dict]:
    """Train every strategy into ``out/<strategy>``; returns {strategy: test metrics} of the
    runs trained now (finished runs that are kept are read back from their metrics.json)."""
    from tqdm.auto import tqdm

    from training.strategies import get_strategy
    from training.trainer import TrainConfig, run

    if preset not in ZOO_PRESETS:
        raise ValueError(f"unknown zoo preset {preset!r}; valid: {', '.join(ZOO_PRESETS)}")
    p = ZOO_PRESETS[preset]
    todo = [get_strategy(s) for s in strategies]  # fails early on an unknown name
    out = Path(out)
    results: dict[str, dict] = {}
    overall = tqdm(total=len(todo), desc="zoo", unit="run", disable=not progress, position=0, dynamic_ncols=True)
    for strategy in todo:
        run_dir = out / strategy.name
        overall.set_postfix_str(strategy.name)
        if is_finished(run_dir) and not force:
            results[strategy.name] = json.loads((run_dir / "metrics.json").read_text())
            overall.update(1)
            continue
        cfg = TrainConfig(data=str(data), out=str(run_dir), strategy=strategy.to_dict(), network=p.network, image_size=image_size or p.image_size,
                          epochs=epochs or p.epochs, batch_size=p.batch_size, seed=seed, split_seed=split_seed, device=device, progress=progress)
        t0 = time.time()
        results[strategy.name] = run(cfg)
        m = results[strategy.name]
        overall.write(f"{strategy.name:<18} bal_acc={m['balanced_accuracy']:.3f} macro_f1={m['macro_f1']:.3f} qwk={m['qwk']:.3f} ({time.time() - t0:.0f} s)")
        overall.update(1)
    overall.close()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.zoo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", default="runs")
    ap.add_argument("--preset", default="quick", choices=list(ZOO_PRESETS))
    ap.add_argument("--strategies", help="comma-separated subset (default: the zoo set)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--image-size", type=int)
    ap.add_argument("--force", action="store_true", help="retrain finished runs")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    strategies = args.strategies.split(",") if args.strategies else ZOO_STRATEGIES
    try:
        train_zoo(args.data, args.out, preset=args.preset, strategies=strategies, seed=args.seed, device=args.device, force=args.force, epochs=args.epochs, image_size=args.image_size)
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept; run the same command again to continue", file=sys.stderr)
        return 130
    except Exception as exc:
        from training.__main__ import _is_user_error

        if not _is_user_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
