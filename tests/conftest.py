"""Shared fixtures: a tiny synthetic collection and tiny trained runs (CPU, seconds each).

Session-scoped, so the suite generates the data once and trains each strategy at most once;
every test that needs a run directory asks ``run_factory(strategy)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

#: Priors for the tiny set: still imbalanced, but every grade has enough scans to appear in
#: train, val and test splits of a 160-scan collection.
TINY_PRIORS = (0.4, 0.15, 0.2, 0.13, 0.12)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    from training.synth import generate_dataset

    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, n=160, size=48, seed=1, priors=TINY_PRIORS, patients=True, workers=2, progress=False)
    return out


@pytest.fixture(scope="session")
def run_factory(synth_dir, tmp_path_factory):
    """``make(strategy, **overrides) -> run dir``: trains once per distinct request."""
    from training.strategies import get_strategy
    from training.trainer import TrainConfig, run

    root = tmp_path_factory.mktemp("runs")
    cache: dict[tuple, Path] = {}

    def make(strategy: str = "ce", **overrides) -> Path:
        key = (strategy, tuple(sorted(overrides.items())))
        if key not in cache:
            out = root / (strategy + ("-" + "-".join(f"{k}{v}" for k, v in sorted(overrides.items())) if overrides else ""))
            kw = dict(epochs=2, image_size=32, batch_size=32, progress=False, device="cpu")
            kw.update(overrides)
            run(TrainConfig(data=str(synth_dir), out=str(out), strategy=get_strategy(strategy).to_dict(), **kw))
            cache[key] = out
        return cache[key]

    return make


@pytest.fixture(scope="session")
def ce_run(run_factory) -> Path:
    return run_factory("ce")
