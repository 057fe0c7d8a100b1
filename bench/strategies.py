"""Strategy comparison on the synthetic set: the zoo with several seeds, mean +- std.

    python bench/strategies.py --data data/synth --seeds 0,1,2 --markdown bench/RESULTS.md

Each seed re-trains every zoo strategy (model initialisation, sampling and augmentation
change; the train/val/test split stays fixed, so the spread is training randomness, not a
different test set). The rare grades are few in a 3,000-scan set's test split (about 13
Severe and 9 PDR scans), so their recall moves in steps of 8-11 points; every trained run is
therefore also graded on a large independent hold-out set drawn by the same generator with
another seed (``--holdout``, 6,000 scans: about 150 Severe and 120 PDR), which measures the
rare grades far more precisely. Also measures the trainer's throughput against a bare
PyTorch loop on the same network and data (the trainer's overhead). Prints markdown;
``--markdown`` replaces the section between the ``strategies`` markers of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export.bench import replace_section  # noqa: E402

COLUMNS = [("balanced_accuracy", "bal. acc"), ("macro_f1", "macro-F1"), ("qwk", "QWK"), ("gmean", "G-mean"),
           ("recall_3", "recall Severe"), ("recall_4", "recall PDR"), ("ece", "ECE")]


def flatten(m: dict) -> dict:
    out = {k: m[k] for k, _ in COLUMNS if k in m}
    names = m["class_names"]
    for i in (3, 4):
        if i < len(names):
            out[f"recall_{i}"] = m["per_class"][names[i]]["recall"]
    return out


def holdout_metrics(run_dirs: dict[str, list[Path]], holdout: str) -> dict[str, list[dict]]:
    """Grade the hold-out collection with every run (PyTorch, the run's own decision rule)."""
    import torch

    from models.data import load_collection
    from models.metrics import compute_metrics
    from models.preprocess import PreprocessSpec, normalize
    from training.dataset import load_prepared
    from training.networks import load_checkpoint

    coll = load_collection(holdout, verify_images=False)
    labels = coll.table["label"].to_numpy()
    cache: dict[str, np.ndarray] = {}
    out: dict[str, list[dict]] = {}
    for name, dirs in run_dirs.items():
        for run in dirs:
            model, record = load_checkpoint(run)
            spec = PreprocessSpec.from_dict(record["preprocess"])
            key = json.dumps(record["preprocess"], sort_keys=True)
            if key not in cache:
                cache[key] = load_prepared(list(coll.table["path"]), spec)
            with torch.inference_mode():
                probs = np.concatenate([model.predict(torch.from_numpy(normalize(cache[key][i:i + 512], spec)))[0].numpy() for i in range(0, len(labels), 512)])
            out.setdefault(name, []).append(flatten(compute_metrics(labels, probs, record["class_names"])))
    return out


def table(results: dict[str, list[dict]]) -> tuple[list[str], dict]:
    lines = ["| strategy | " + " | ".join(h for _, h in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    stats = {}
    for name, rows in results.items():
        stats[name] = {k: mean_std([r[k] for r in rows]) for k, _ in COLUMNS if rows and k in rows[0]}
        lines.append(f"| {name} | " + " | ".join(f"{stats[name][k][0]:.3f} +- {stats[name][k][1]:.3f}" for k, _ in COLUMNS if k in stats[name]) + " |")
    return lines, stats


def verdict(stats: dict) -> list[str]:
    ce = stats["ce"]
    best = max((n for n in stats if n != "ce"), key=lambda n: stats[n]["balanced_accuracy"][0])
    lines = [f"Best strategy by balanced accuracy: **{best}**. Against plain cross-entropy (margin vs the larger of the two seed-to-seed standard deviations):", ""]
    for k, label in (("balanced_accuracy", "balanced accuracy"), ("recall_3", "recall of grade 3 (Severe)"), ("recall_4", "recall of grade 4 (PDR)")):
        margin = stats[best][k][0] - ce[k][0]
        spread = max(stats[best][k][1], ce[k][1])
        verdict = "beats it by more than the spread" if margin > spread else "does NOT beat it by more than the spread"
        lines.append(f"- {label}: {stats[best][k][0]:.3f} vs {ce[k][0]:.3f}, margin {margin:+.3f}, spread {spread:.3f}: {verdict}")
    return lines


def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def throughput(data: str, image_size: int, batch_size: int, repeats: int = 3) -> dict:
    """images/s of trainer.train_one_epoch vs a bare loop, same model/data/optimiser, interleaved."""
    import torch
    from torch.utils.data import DataLoader

    from models.preprocess import PreprocessSpec
    from training.data import load_collection
    from training.dataset import ScanDataset, load_prepared
    from training.losses import build_loss
    from training.networks import GradingModel
    from training.samplers import build_sampler
    from training.trainer import cosine_with_warmup, train_one_epoch

    coll = load_collection(data, verify_images=False)
    train = coll.table[coll.table["split"] == "train"]
    spec = PreprocessSpec(size=image_size)
    images = load_prepared(list(train["path"]), spec)
    labels = train["label"].to_numpy()
    ds = ScanDataset(images, labels, spec, augment=True)
    model = GradingModel("compact", len(coll.class_names))
    crit = build_loss("ce", np.bincount(labels).tolist())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sampler = build_sampler("instance", labels).set_epoch_size(len(labels))
    loader = DataLoader(ds, batch_size=batch_size, sampler=sampler)
    sched = cosine_with_warmup(opt, 10**6, 1)

    def bare() -> None:  # the textbook loop: no sampler epochs, no scheduler, no bookkeeping
        model.train()
        for x, y in DataLoader(ds, batch_size=batch_size, shuffle=True):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    def ours() -> None:
        train_one_epoch(model, crit, opt, sched, loader, torch.device("cpu"))

    times = {"bare": [], "trainer": []}
    bare()  # warm-up
    for _ in range(repeats):
        for name, fn in (("trainer", ours), ("bare", bare)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    ips = {k: len(labels) / statistics.median(v) for k, v in times.items()}
    return {"images": len(labels), "bare_ips": ips["bare"], "trainer_ips": ips["trainer"], "overhead_pct": 100.0 * (ips["bare"] / ips["trainer"] - 1.0)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data/synth")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default="bench/runs")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--markdown", help="RESULTS.md to update")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--holdout", help="independent collection to grade every run on (generated when missing)")
    ap.add_argument("--holdout-n", type=int, default=6000)
    ap.add_argument("--strategies", help="comma-separated subset of the zoo (default: all; must include ce)")
    ap.add_argument("--epochs", type=int, help="override the preset's epochs")
    ap.add_argument("--section", default="strategies", help="RESULTS.md section key")
    ap.add_argument("--title", default="Imbalance strategies (bench/strategies.py)")
    args = ap.parse_args(argv)
    from training.zoo import ZOO_PRESETS, ZOO_STRATEGIES, train_zoo

    seeds = [int(s) for s in args.seeds.split(",")]
    strategies = args.strategies.split(",") if args.strategies else list(ZOO_STRATEGIES)
    results: dict[str, list[dict]] = {s: [] for s in strategies}
    run_dirs: dict[str, list[Path]] = {s: [] for s in strategies}
    t0 = time.time()
    for seed in seeds:
        out = Path(args.out) / f"seed{seed}"
        for name, m in train_zoo(args.data, out, preset=args.preset, strategies=strategies, seed=seed, split_seed=0, epochs=args.epochs, progress=False).items():
            results[name].append(flatten(m))
            run_dirs[name].append(out / name)
    wall = time.time() - t0
    preset = ZOO_PRESETS[args.preset]
    n_scans = sum(1 for _ in open(Path(args.data) / "labels.csv")) - 1
    rows, stats = table(results)
    lines = [f"Synthetic set `{args.data}` ({n_scans} scans, EyePACS priors), zoo preset `{args.preset}` "
             f"({preset.description}{f'; {args.epochs} epochs' if args.epochs else ''}), seeds {args.seeds}, fixed split (split seed 0); mean +- std over seeds. "
             f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}); "
             f"the {len(seeds)} x {len(strategies)} runs took {wall / 60:.1f} min (runs already finished are read back, not retrained).", "",
             "### Test split of the training set", "", *rows, "", *verdict(stats)]
    if args.holdout:
        if not (Path(args.holdout) / "labels.csv").is_file():
            from training.synth import generate_dataset

            generate_dataset(args.holdout, n=args.holdout_n, size=128, seed=1000, progress=False)
        hold = holdout_metrics(run_dirs, args.holdout)
        n_hold = sum(1 for _ in open(Path(args.holdout) / "labels.csv")) - 1
        rows, hstats = table(hold)
        lines += ["", f"### Independent hold-out set ({n_hold} scans, generator seed 1000, EyePACS priors)", "",
                  "The same trained runs, graded on scans none of them saw in training, validation or test.", "", *rows, "", *verdict(hstats)]
        stats = {"test": stats, "holdout": hstats}
    if not args.skip_throughput:
        tp = throughput(args.data, preset.image_size, preset.batch_size)
        lines += ["", f"Training throughput, compact CNN at {preset.image_size} px, batch {preset.batch_size}, {tp['images']} images per epoch, median of 3 interleaved epochs:", "",
                  "| loop | images/s |", "|---|---|", f"| bare PyTorch loop | {tp['bare_ips']:.0f} |", f"| drgrade trainer (`train_one_epoch`) | {tp['trainer_ips']:.0f} |",
                  "", f"Trainer overhead: {tp['overhead_pct']:+.1f} % (target: under 10 %)."]
    text = "\n".join(lines)
    print(text)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "strategies.json").write_text(json.dumps({"stats": stats, "raw": results}, indent=1))
    if args.markdown:
        replace_section(Path(args.markdown), args.section, f"## {args.title}\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
