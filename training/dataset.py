"""Torch datasets over a :class:`training.data.Collection` split.

Scans are decoded and prepared once (crop, resize, optional Ben Graham) by the shared
``models.preprocess`` code and kept in memory as uint8 (a 64 px scan is 12 KB, so 35,000
EyePACS scans at 128 px take 1.7 GB); each epoch then costs only augmentation and the
network. Decoding uses a thread pool, since Pillow releases the GIL while decoding.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from models.preprocess import PreprocessSpec, load_scan, normalize


def load_prepared(paths: Sequence[str], spec: PreprocessSpec, *, workers: int = 4) -> np.ndarray:
    """Decode and prepare scans: uint8 array (N, S, S, 3)."""

    out = np.empty((len(paths), spec.size, spec.size, 3), np.uint8)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, arr in enumerate(pool.map(lambda p: load_scan(p, spec), paths)):
            out[i] = arr
    return out


def light_augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Label-preserving geometry for fundus scans: random flips and a 90-degree turn.

    A fundus photograph has no canonical up; left and right eyes are mirror images.
    """
    if torch.rand((), generator=generator) < 0.5:
        x = x.flip(-1)
    if torch.rand((), generator=generator) < 0.5:
        x = x.flip(-2)
    k = int(torch.randint(0, 4, (), generator=generator))
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


class ScanDataset(Dataset):
    """In-memory prepared scans -> ``(image (3, S, S) float32, label)``.

    Parameters
    ----------
    images : uint8 array (N, S, S, 3)
        From :func:`load_prepared`.
    labels : int array (N,)
    spec : PreprocessSpec
        Supplies the normalisation.
    augment : bool
        Apply :func:`light_augment` (training split only).
    seed : int
        Augmentation stream; each item draws from ``(seed, epoch, index)`` so a run is
        reproducible whatever the DataLoader's worker count.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, spec: PreprocessSpec, *, augment: bool = False, seed: int = 0) -> None:
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.spec = spec

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def item_generator(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x = torch.from_numpy(normalize(self.images[index], self.spec))  # (3, S, S), the shared maths
        if self.augment:  # flips and quarter turns commute with per-channel normalisation
            x = light_augment(x, self.item_generator(index))
        return x, int(self.labels[index])

