"""Synthetic-set generation speed and data-loading throughput, as markdown tables.

Generation writes ``n`` PNGs at 128 and 256 px with all CPU cores (the defaults of
``python -m training.synth``), including process start-up and file writes, and extrapolates
the time for 5,000 images at 128 px (target: under 60 s on 2 cores). Data loading measures,
on a generated collection, the three stages a training run goes through: reading and
validating the collection (every scan decoded once), decoding + preparing the scans into the
in-memory cache at 64 and 128 px, and iterating the augmented torch dataset.

Usage: ``python bench/synth_speed.py [--n 500] [--workers N] [--markdown bench/RESULTS.md]``
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export.bench import replace_section  # noqa: E402
from training.synth import generate_dataset  # noqa: E402


def measure(n: int, size: int, workers: int, out: str) -> float:
    """Seconds to write ``n`` images of ``size`` px into ``out``."""
    start = time.perf_counter()
    generate_dataset(out, n=n, size=size, seed=0, workers=workers, progress=False)
    return time.perf_counter() - start


def loading(folder: str) -> list[str]:
    from torch.utils.data import DataLoader

    from models.data import load_collection
    from models.preprocess import PreprocessSpec
    from training.dataset import ScanDataset, load_prepared

    rows = []
    t = time.perf_counter()
    coll = load_collection(folder)  # verifies every scan by decoding it
    n = len(coll.table)
    rows.append(f"| read + validate collection (decode every scan) | {n} | {n / (time.perf_counter() - t):.0f} |")
    for size in (64, 128):
        spec = PreprocessSpec(size=size)
        t = time.perf_counter()
        arrays = load_prepared(list(coll.table["path"]), spec)
        rows.append(f"| decode + crop + resize to {size} px (cache fill) | {n} | {n / (time.perf_counter() - t):.0f} |")
        ds = ScanDataset(arrays, coll.table["label"].to_numpy(), spec, augment=True)
        t = time.perf_counter()
        for _ in DataLoader(ds, batch_size=64, shuffle=True):
            pass
        rows.append(f"| iterate augmented dataset at {size} px (batch 64, per epoch) | {n} | {n / (time.perf_counter() - t):.0f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="images per size (default 500)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    parser.add_argument("--markdown", help="RESULTS.md to update")
    args = parser.parse_args(argv)

    lines = [f"Synthetic fundus generation, n={args.n} per size, {args.workers} worker(s), {os.cpu_count()} CPU core(s), "
             f"measured {time.strftime('%Y-%m-%d')}:", "", "| size (px) | images | seconds | images/s |", "|---:|---:|---:|---:|"]
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in (256, 128):
            out = os.path.join(tmp, str(size))
            seconds = measure(args.n, size, args.workers, out)
            rates[size] = args.n / seconds
            lines.append(f"| {size} | {args.n} | {seconds:.1f} | {rates[size]:.0f} |")
        est = 5000 / rates[128]
        lines += ["", f"Extrapolated: 5,000 images at 128 px in {est:.0f} s (target < 60 s on 2 cores: {'met' if est < 60 else 'missed'}).",
                  "", "Data loading on the 128 px set just generated:", "", "| stage | scans | scans/s |", "|---|---:|---:|"]
        lines += loading(os.path.join(tmp, "128"))
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        replace_section(pathlib.Path(args.markdown), "synth", "## Synthetic data: generation and loading (bench/synth_speed.py)\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
