"""Throughput of the synthetic fundus generator (``training.synth``), as a markdown table.

Writes ``n`` PNGs at 128 and 256 px with all CPU cores (the defaults of
``python -m training.synth``), including process start-up and file writes, and extrapolates
the time for the 5,000-image, 128 px set the README uses.

Usage: ``python bench/synth_speed.py [--n 500] [--workers N]``
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from training.synth import generate_dataset  # noqa: E402


def measure(n: int, size: int, workers: int) -> float:
    """Seconds to write ``n`` images of ``size`` px into a fresh temporary directory."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        generate_dataset(tmp, n=n, size=size, seed=0, workers=workers, progress=False)
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="images per size (default 500)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes (default: all cores)")
    args = parser.parse_args(argv)

    print(f"synthetic fundus generation, n={args.n} per size, {args.workers} worker(s), "
          f"{os.cpu_count()} CPU core(s)\n")
    print("| size (px) | images | seconds | images/s |")
    print("|---:|---:|---:|---:|")
    rates = {}
    for size in (128, 256):
        seconds = measure(args.n, size, args.workers)
        rates[size] = args.n / seconds
        print(f"| {size} | {args.n} | {seconds:.1f} | {rates[size]:.0f} |")
    print(f"\nextrapolated: 5,000 images at 128 px in {5000 / rates[128]:.0f} s "
          f"(target < 60 s on 2 cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
