"""Per-epoch class-rebalancing samplers for the training DataLoader.

Every sampler here is a ``torch.utils.data.Sampler[int]`` that

* re-draws its index stream every epoch, deterministically from ``(seed, epoch)``
  (call :meth:`EpochSampler.set_epoch` before each epoch, as with torch's
  ``DistributedSampler``);
* is correct under DistributedDataParallel: every rank builds the SAME full epoch stream,
  pads it by wrapping to a multiple of ``num_replicas`` (exactly like ``DistributedSampler``)
  and keeps ``stream[rank::num_replicas]``, so the ranks' shares are disjoint by position and
  of equal length;
* exposes the full (all-rank, unpadded) stream through :meth:`EpochSampler.epoch_indices`,
  which the tests and the dashboard's "effective class distribution" view read.

The family (``SAMPLERS`` registry, built with :func:`build_sampler`):

``instance``
    Plain shuffling, every sample exactly once per epoch.
``class-balanced`` / ``sqrt`` / ``progressive``
    The q-parametrised family of Kang et al. 2020, "Decoupling Representation and Classifier
    for Long-Tailed Recognition" (ICLR), Sec. 3: class ``j`` is drawn with probability
    ``p_j = n_j**q / sum_k n_k**q`` (q=1 instance-balanced, q=0 class-balanced, q=1/2
    square-root), then a member of that class uniformly; progressively-balanced sampling
    interpolates ``p(t) = (1 - t/T) p^IB + (t/T) p^CB`` over the epochs.
``ros`` / ``rus``
    imbalanced-learn's ``RandomOverSampler`` / ``RandomUnderSampler`` run through their own
    ``fit_resample`` contract on sample *indices*; ``sample_indices_`` becomes the stream.
``aug-oversample``
    Minority over-sampling whose duplicates are *virtual indices* ``i + len(labels)``, so that
    :class:`AugmentedOversampleDataset` applies strong augmentation to them (the usual fix for
    rare DR grades: copies that are not pixel-identical).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from imblearn.over_sampling import RandomOverSampler
from imblearn.under_sampling import RandomUnderSampler
from torch.utils.data import Dataset, Sampler

__all__ = [
    "SAMPLERS",
    "SamplerSpec",
    "EpochSampler",
    "InstanceSampler",
    "ClassPowerSampler",
    "ProgressivelyBalancedSampler",
    "ImblearnIndexSampler",
    "AugmentedOversampleSampler",
    "AugmentedOversampleDataset",
    "build_sampler",
    "class_power_probabilities",
    "effective_distribution",
    "register_sampler",
    "strong_augment",
]


# --------------------------------------------------------------------------------------------
# Validation and seeding helpers
# --------------------------------------------------------------------------------------------


def _as_labels(labels: Any, num_classes: int | None) -> tuple[np.ndarray, int]:
    """Return ``labels`` as a 1-D int64 array and the number of classes, or raise ValueError."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {array.shape}")
    if array.size == 0:
        raise ValueError("labels is empty; a sampler needs at least one sample")
    if array.dtype.kind not in "iub":
        if array.dtype.kind == "f" and np.all(np.mod(array, 1) == 0):
            pass  # integral floats, e.g. labels read from a CSV
        else:
            raise ValueError(f"labels must be integer class ids, got dtype {array.dtype}")
    array = array.astype(np.int64)
    if array.min() < 0:
        raise ValueError(f"labels must be >= 0, got {int(array.min())}")
    if num_classes is None:
        num_classes = int(array.max()) + 1
    elif not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    elif array.max() >= num_classes:
        raise ValueError(
            f"label {int(array.max())} is out of range for num_classes={num_classes} "
            f"(valid: 0..{num_classes - 1})"
        )
    return array, int(num_classes)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _epoch_seed_sequence(seed: int, epoch: int) -> np.random.SeedSequence:
    """The one place an epoch's randomness comes from: a SeedSequence keyed on (seed, epoch)."""
    return np.random.SeedSequence([seed, epoch])


def _require_all_classes(counts: np.ndarray, sampler: str) -> None:
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise ValueError(
            f"class {int(empty[0])} has no samples; {sampler} sampling needs every class in "
            f"0..{counts.size - 1} present (empty classes: {empty.tolist()})"
        )


# --------------------------------------------------------------------------------------------
# Base class: epoch stream -> DDP shard
# --------------------------------------------------------------------------------------------


def _fit_length(stream: np.ndarray, size: int, seed_sequence: np.random.SeedSequence) -> np.ndarray:
    """Cut ``stream`` to ``size``, or repeat it in fresh random orders until it is that long.

    Streams are already shuffled, so a cut keeps a random subset with the stream's class mix.
    """
    if stream.size >= size:
        return stream[:size]
    rng = np.random.default_rng(seed_sequence)
    reps = [stream] + [rng.permutation(stream) for _ in range(math.ceil(size / stream.size) - 1)]
    return np.concatenate(reps)[:size]


class EpochSampler(Sampler[int]):
    """Base class: a per-epoch index stream, sharded across DDP ranks.

    Subclasses implement only :meth:`_generate` (the full stream of one epoch, given the epoch
    and its ``numpy.random.SeedSequence``); the base class handles epochs, caching, padding and
    sharding.

    Parameters
    ----------
    labels : array-like of int, shape (n_samples,)
        Class id of every sample of the dataset, in dataset order.
    seed : int, default 0
        Base seed; epoch ``e`` draws from ``SeedSequence([seed, e])``.
    num_replicas : int, default 1
        Number of DDP ranks (world size).
    rank : int, default 0
        This process's rank, ``0 <= rank < num_replicas``.
    num_classes : int, optional
        Number of classes; default ``max(labels) + 1``. Pass it so that a grade missing from the
        training split is detected instead of silently ignored.
    """

    def __init__(
        self,
        labels: Any,
        *,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.labels, self.num_classes = _as_labels(labels, num_classes)
        self.class_counts = np.bincount(self.labels, minlength=self.num_classes)
        self.seed = _check_int("seed", seed, 0)
        self.num_replicas = _check_int("num_replicas", num_replicas, 1)
        self.rank = _check_int("rank", rank, 0)
        if self.rank >= self.num_replicas:
            raise ValueError(
                f"rank {self.rank} is out of range for num_replicas={self.num_replicas} "
                f"(valid: 0..{self.num_replicas - 1})"
            )
        self.epoch = 0
        # Optional fixed epoch length (all ranks together). The trainer sets it to the training
        # set's size so that every strategy gets the same number of steps per epoch (equal
        # compute): an over-sampler's longer stream is cut, an under-sampler's short one is
        # re-shuffled and repeated. None keeps the sampler's natural epoch.
        self.epoch_size: int | None = None
        self._cache: tuple[int, np.ndarray] | None = None

    # -- the one hook ------------------------------------------------------------------------
    def _generate(self, epoch: int, seed_sequence: np.random.SeedSequence) -> np.ndarray:
        raise NotImplementedError

    # -- public API --------------------------------------------------------------------------
    def set_epoch_size(self, epoch_size: int | None) -> "EpochSampler":
        """Fix the epoch length (all ranks together); None restores the natural length."""
        self.epoch_size = None if epoch_size is None else _check_int("epoch_size", epoch_size, 1)
        self._cache = None
        return self

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose stream the next ``iter(self)`` yields."""
        self.epoch = _check_int("epoch", epoch, 0)

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """Full, unpadded index stream of one epoch (all ranks together).

        Parameters
        ----------
        epoch : int, optional
            Default: the epoch last passed to :meth:`set_epoch`.

        Returns
        -------
        numpy.ndarray of int64
            Identical on every rank for the same ``(seed, epoch)``.
        """
        epoch = self.epoch if epoch is None else _check_int("epoch", epoch, 0)
        if self._cache is None or self._cache[0] != epoch:
            seed_sequence = _epoch_seed_sequence(self.seed, epoch)
            stream = np.asarray(self._generate(epoch, seed_sequence), dtype=np.int64)
            if self.epoch_size is not None and stream.size != self.epoch_size:
                stream = _fit_length(stream, self.epoch_size, np.random.SeedSequence([self.seed, epoch, 1]))
            self._cache = (epoch, stream)
        return self._cache[1].copy()

    def padded_epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """The epoch stream padded by wrapping to a multiple of ``num_replicas``.

        This is what the ranks split: rank ``r`` yields ``padded[r::num_replicas]``.
        """
        stream = self.epoch_indices(epoch)
        total = math.ceil(stream.size / self.num_replicas) * self.num_replicas
        # np.resize repeats from the start, like DistributedSampler's `indices += indices[:pad]`.
        return np.resize(stream, total)

    def __len__(self) -> int:
        """Number of indices THIS rank yields in the current epoch."""
        return math.ceil(self.epoch_indices().size / self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        shard = self.padded_epoch_indices()[self.rank :: self.num_replicas]
        return iter(shard.tolist())

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={self.labels.size}, classes={self.num_classes}, "
            f"seed={self.seed}, rank={self.rank}/{self.num_replicas}, epoch={self.epoch})"
        )


# --------------------------------------------------------------------------------------------
# instance, class-balanced, sqrt, progressive
# --------------------------------------------------------------------------------------------


class InstanceSampler(EpochSampler):
    """Plain shuffling: every sample exactly once per epoch (instance-balanced, q=1)."""

    def _generate(self, epoch: int, seed_sequence: np.random.SeedSequence) -> np.ndarray:
        return np.random.default_rng(seed_sequence).permutation(self.labels.size)


def class_power_probabilities(class_counts: Sequence[int] | np.ndarray, q: float) -> np.ndarray:
    """Class-sampling probabilities ``p_j = n_j**q / sum_k n_k**q`` (Kang et al. 2020, Eq. 1).

    Parameters
    ----------
    class_counts : array-like of int
        Number of samples per class.
    q : float
        1 = instance-balanced, 0 = class-balanced, 0.5 = square-root sampling.

    Returns
    -------
    numpy.ndarray of float
        Probabilities summing to 1. A class with no samples gets 0 (``0**q`` with ``q > 0``);
        callers that need every class (q = 0) must check for empty classes first.

    Examples
    --------
    >>> class_power_probabilities([80, 15, 5], 0.0).round(3).tolist()
    [0.333, 0.333, 0.333]
    >>> class_power_probabilities([16, 4], 0.5).tolist()
    [0.6666666666666666, 0.3333333333333333]
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    weights = np.where(counts > 0, counts**q, 0.0)
    return weights / weights.sum()


class _ClassProbabilitySampler(EpochSampler):
    """Draws ``num_samples`` with replacement: a class by ``p_j``, then a uniform member."""

    def __init__(self, labels: Any, *, num_samples: int | None = None, **base: Any) -> None:
        super().__init__(labels, **base)
        self.num_samples = (
            self.labels.size if num_samples is None else _check_int("num_samples", num_samples, 1)
        )
        # Members grouped by class: class j owns order[starts[j] : starts[j] + counts[j]].
        self._order = np.argsort(self.labels, kind="stable")
        self._starts = np.concatenate([[0], np.cumsum(self.class_counts)[:-1]])

    def _class_probabilities(self, epoch: int) -> np.ndarray:
        raise NotImplementedError

    def _generate(self, epoch: int, seed_sequence: np.random.SeedSequence) -> np.ndarray:
        rng = np.random.default_rng(seed_sequence)
        probs = self._class_probabilities(epoch)
        classes = rng.choice(self.num_classes, size=self.num_samples, p=probs)  # (S,)
        # Uniform member of each drawn class, vectorised: floor(u * n_class) in [0, n_class).
        offsets = np.floor(rng.random(self.num_samples) * self.class_counts[classes])
        return self._order[self._starts[classes] + offsets.astype(np.int64)]


class ClassPowerSampler(_ClassProbabilitySampler):
    """Kang et al. 2020 q-sampling: class ``j`` drawn with ``p_j ∝ n_j**q``.

    Parameters
    ----------
    labels : array-like of int
        Class id per sample.
    q : float
        Exponent in ``[0, 1]``: 0 class-balanced, 0.5 square-root, 1 instance-balanced.
    num_samples : int, optional
        Draws per epoch (with replacement); default ``len(labels)``.
    **base
        ``seed``, ``num_replicas``, ``rank``, ``num_classes`` (see :class:`EpochSampler`).
    """

    def __init__(self, labels: Any, *, q: float, **kwargs: Any) -> None:
        super().__init__(labels, **kwargs)
        if not 0.0 <= float(q) <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q!r}")
        self.q = float(q)
        if self.q == 0.0:
            _require_all_classes(self.class_counts, "class-balanced")
        self._probs = class_power_probabilities(self.class_counts, self.q)

    def _class_probabilities(self, epoch: int) -> np.ndarray:
        return self._probs


class ProgressivelyBalancedSampler(_ClassProbabilitySampler):
    """Progressively-balanced sampling (Kang et al. 2020, Eq. 2).

    ``p(t) = (1 - a_t) p^IB + a_t p^CB`` with ``a_t = t / (T - 1)`` for the 0-based epoch ``t``
    and ``T = total_epochs``, so that epoch 0 is exactly instance-balanced and the last epoch
    ``T - 1`` exactly class-balanced (the paper's ``t/T`` with 1-based epochs reaches CB at the
    same point); epochs past the end stay class-balanced. With ``T = 1`` the single epoch is
    class-balanced.

    Parameters
    ----------
    labels : array-like of int
        Class id per sample.
    total_epochs : int
        ``T``, the schedule length (a config field, never a magic constant).
    num_samples : int, optional
        Draws per epoch; default ``len(labels)``.
    **base
        ``seed``, ``num_replicas``, ``rank``, ``num_classes``.
    """

    def __init__(self, labels: Any, *, total_epochs: int | None = None, **kwargs: Any) -> None:
        if total_epochs is None:
            raise ValueError("progressive sampling needs total_epochs (an int >= 1), got None")
        super().__init__(labels, **kwargs)
        self.total_epochs = _check_int("total_epochs", total_epochs, 1)
        _require_all_classes(self.class_counts, "progressive")
        self._p_instance = class_power_probabilities(self.class_counts, 1.0)
        self._p_balanced = class_power_probabilities(self.class_counts, 0.0)

    def balance_weight(self, epoch: int) -> float:
        """``a_t``: the weight of the class-balanced distribution at ``epoch``."""
        if self.total_epochs == 1:
            return 1.0
        return min(epoch / (self.total_epochs - 1), 1.0)

    def _class_probabilities(self, epoch: int) -> np.ndarray:
        a = self.balance_weight(epoch)
        return (1.0 - a) * self._p_instance + a * self._p_balanced


# --------------------------------------------------------------------------------------------
# imbalanced-learn samplers on indices
# --------------------------------------------------------------------------------------------


def _imblearn_random_state(seed_sequence: np.random.SeedSequence) -> int:
    return int(seed_sequence.generate_state(1)[0])


class ImblearnIndexSampler(EpochSampler):
    """Runs an imbalanced-learn random sampler on sample indices, re-drawn every epoch.

    ``resampler.fit_resample(indices.reshape(-1, 1), labels)`` is called with ``random_state``
    derived from ``(seed, epoch)``; its ``sample_indices_`` (indices into the dataset) are
    shuffled and become the epoch stream. This is imbalanced-learn's own bridge to deep
    learning: the resampler never sees an image, only references to them.

    Parameters
    ----------
    labels : array-like of int
        Class id per sample.
    resampler_cls : type
        ``RandomOverSampler`` or ``RandomUnderSampler`` (anything exposing ``sample_indices_``).
    sampling_strategy : str, float, dict or callable, default "auto"
        Passed through to the imbalanced-learn sampler (validated there).
    **base
        ``seed``, ``num_replicas``, ``rank``, ``num_classes``.
    """

    def __init__(
        self,
        labels: Any,
        *,
        resampler_cls: type,
        sampling_strategy: Any = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(labels, **kwargs)
        self.resampler_cls = resampler_cls
        self.sampling_strategy = sampling_strategy
        _require_all_classes(self.class_counts, resampler_cls.__name__)
        if self.num_classes < 2:
            raise ValueError(
                f"{resampler_cls.__name__} needs at least 2 classes, got {self.num_classes}"
            )

    def _resample(self, seed_sequence: np.random.SeedSequence, strategy: Any) -> np.ndarray:
        resampler = self.resampler_cls(
            sampling_strategy=strategy, random_state=_imblearn_random_state(seed_sequence)
        )
        indices = np.arange(self.labels.size)
        resampler.fit_resample(indices.reshape(-1, 1), self.labels)  # X: (n, 1) ids
        return np.asarray(resampler.sample_indices_, dtype=np.int64)

    def _generate(self, epoch: int, seed_sequence: np.random.SeedSequence) -> np.ndarray:
        resample_seq, shuffle_seq = seed_sequence.spawn(2)
        chosen = self._resample(resample_seq, self.sampling_strategy)
        return np.random.default_rng(shuffle_seq).permutation(chosen)


class AugmentedOversampleSampler(ImblearnIndexSampler):
    """Minority over-sampling whose copies are marked for strong augmentation.

    Each class with fewer than ``target`` samples is topped up to ``target`` by
    ``RandomOverSampler`` (bootstrap draws of its members); every class keeps all its
    originals. The stream yields

    * ``i`` for an original sample ``i`` (exactly once per epoch), and
    * the **virtual index** ``i + len(labels)`` for each synthetic copy of sample ``i``,

    which :class:`AugmentedOversampleDataset` maps back to ``base[i]`` with a strong transform.

    Parameters
    ----------
    labels : array-like of int
        Class id per sample.
    target : int, optional
        Count every class is raised to; default the majority count.
    ratio : float, optional
        Alternative to ``target``: ``target = ceil(ratio * majority count)``, ``0 < ratio <= 1``.
    **base
        ``seed``, ``num_replicas``, ``rank``, ``num_classes``.
    """

    def __init__(
        self,
        labels: Any,
        *,
        target: int | None = None,
        ratio: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(labels, resampler_cls=RandomOverSampler, **kwargs)
        majority = int(self.class_counts.max())
        if target is not None and ratio is not None:
            raise ValueError(f"give target or ratio, not both (got target={target}, ratio={ratio})")
        if ratio is not None:
            if not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
                raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
            target = math.ceil(ratio * majority)
        self.target = majority if target is None else _check_int("target", target, 1)
        # imbalanced-learn's dict strategy = desired count per class; only classes below target.
        self.sampling_strategy = {
            c: self.target for c in range(self.num_classes) if self.class_counts[c] < self.target
        }

    def _generate(self, epoch: int, seed_sequence: np.random.SeedSequence) -> np.ndarray:
        resample_seq, shuffle_seq = seed_sequence.spawn(2)
        n = self.labels.size
        if self.sampling_strategy:
            chosen = np.sort(self._resample(resample_seq, self.sampling_strategy))
        else:
            chosen = np.arange(n)
        # The first occurrence of each index is the original; every repeat is a copy. This does
        # not rely on the order in which RandomOverSampler lists its bootstrap draws.
        is_copy = np.ones(chosen.size, dtype=bool)
        is_copy[np.unique(chosen, return_index=True)[1]] = False
        virtual = chosen + n * is_copy
        return np.random.default_rng(shuffle_seq).permutation(virtual)


# --------------------------------------------------------------------------------------------
# Strong augmentation for the synthetic copies
# --------------------------------------------------------------------------------------------


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    return float(low + (high - low) * torch.rand((), generator=generator))


def strong_augment(
    image: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    max_angle: float = 15.0,
    brightness: float = 0.2,
    contrast: float = 0.2,
    saturation: float = 0.2,
    channel_gain: float = 0.1,
) -> torch.Tensor:
    """Strong, label-preserving augmentation of one fundus image (pure torch).

    A fundus has no canonical orientation, so any rotation and flip keeps the grade; colour
    jitter mimics the camera/illumination spread between clinics.

    Steps: a random multiple of 90° (only 0°/180° on non-square images), a small rotation in
    ``[-max_angle, max_angle]`` degrees via ``affine_grid``/``grid_sample`` (zero padding, like
    the black fundus border), horizontal and vertical flips (p = 0.5 each), then brightness,
    contrast, saturation and a per-channel gain. The result is clamped to the input's own
    value range, so it works on ``[0, 1]`` and on normalised tensors alike.

    Parameters
    ----------
    image : torch.Tensor, shape (C, H, W), floating point
        The image.
    generator : torch.Generator, optional
        Source of randomness; the output is a deterministic function of ``image`` and the
        generator's state. ``None`` uses torch's global RNG (which DataLoader seeds per worker).
    max_angle, brightness, contrast, saturation, channel_gain : float
        Strengths; each jitter factor is drawn from ``[1 - s, 1 + s]``.

    Returns
    -------
    torch.Tensor, shape (C, H, W) (H and W unchanged)

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> strong_augment(torch.rand(3, 8, 8), g).shape
    torch.Size([3, 8, 8])
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or not image.is_floating_point():
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"strong_augment expects a float tensor of shape (C, H, W), got {got}")
    lo, hi = image.min(), image.max()
    _, height, width = image.shape

    # 1. Quarter turns: free, exact, and the grade does not depend on orientation.
    quarter_choices = 4 if height == width else 2
    k = int(torch.randint(quarter_choices, (), generator=generator)) * (4 // quarter_choices)
    out = torch.rot90(image, k, dims=(1, 2))

    # 2. Small-angle rotation. affine_grid works in [-1, 1] coordinates per axis, so the
    #    off-diagonal terms carry the aspect ratio to keep the rotation rigid in pixels.
    angle = math.radians(_uniform(generator, -max_angle, max_angle))
    cos, sin = math.cos(angle), math.sin(angle)
    theta = torch.tensor(
        [[cos, -sin * height / width, 0.0], [sin * width / height, cos, 0.0]],
        dtype=out.dtype,
        device=out.device,
    ).unsqueeze(0)  # (1, 2, 3)
    grid = F.affine_grid(theta, [1, *out.shape], align_corners=False)  # (1, H, W, 2)
    # Corners uncovered by the rotation take each channel's darkest value (the black border of a
    # fundus photo), not 0, which on a normalised image would be the mean colour.
    fill = out.amin(dim=(1, 2), keepdim=True)  # (C, 1, 1)
    out = F.grid_sample(
        (out - fill).unsqueeze(0), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    ).squeeze(0) + fill  # (C, H, W)

    # 3. Flips.
    if float(torch.rand((), generator=generator)) < 0.5:
        out = out.flip(-1)
    if float(torch.rand((), generator=generator)) < 0.5:
        out = out.flip(-2)

    # 4. Colour jitter (same maths as torchvision's adjust_* on float images).
    out = out * _uniform(generator, 1 - brightness, 1 + brightness)
    if out.shape[0] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=out.dtype, device=out.device)
        gray = (out * weights[:, None, None]).sum(0, keepdim=True)  # (1, H, W)
    else:
        gray = out.mean(0, keepdim=True)
    out = (out - gray.mean()) * _uniform(generator, 1 - contrast, 1 + contrast) + gray.mean()
    out = (out - gray) * _uniform(generator, 1 - saturation, 1 + saturation) + gray
    gains = 1 + channel_gain * (2 * torch.rand(out.shape[0], generator=generator) - 1)  # (C,)
    out = out * gains.to(out)[:, None, None]
    return out.clamp(lo, hi)


class AugmentedOversampleDataset(Dataset):
    """Wraps a dataset so that virtual indices ``i >= len(base)`` are strongly augmented copies.

    Index ``i < len(base)`` returns ``base[i]`` untouched; ``len(base) <= i < 2 * len(base)``
    returns ``(strong_transform(image), label)`` for ``base[i % len(base)]``. Pair it with
    :class:`AugmentedOversampleSampler` (``build_sampler("aug-oversample", ...)``).

    Parameters
    ----------
    base_dataset : Dataset
        Items are ``(image, label)`` with ``image`` a (C, H, W) float tensor.
    strong_transform : callable, default :func:`strong_augment`
        ``Tensor -> Tensor`` applied to the image of every virtual copy.

    Examples
    --------
    >>> from torch.utils.data import TensorDataset
    >>> base = TensorDataset(torch.rand(4, 3, 8, 8), torch.tensor([0, 0, 0, 1]))
    >>> wrapped = AugmentedOversampleDataset(base, strong_augment)
    >>> len(wrapped)
    8
    """

    def __init__(
        self,
        base_dataset: Dataset,
        strong_transform: Callable[[torch.Tensor], torch.Tensor] = strong_augment,
    ) -> None:
        if not callable(strong_transform):
            raise ValueError(f"strong_transform must be callable, got {strong_transform!r}")
        self.base = base_dataset
        self.strong_transform = strong_transform

    def __len__(self) -> int:
        return 2 * len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        n = len(self.base)  # type: ignore[arg-type]
        if not 0 <= index < 2 * n:
            raise IndexError(f"index {index} out of range for 2 * {n} (originals + virtual copies)")
        image, label = self.base[index % n]
        if index >= n:
            # A base dataset with per-item generators (ScanDataset: seeded by seed, epoch and
            # index) makes each copy's augmentation reproducible whatever the worker count.
            make_generator = getattr(self.base, "item_generator", None)
            image = self.strong_transform(image, make_generator(index)) if make_generator else self.strong_transform(image)
        return image, label


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

# Arguments every builder receives from build_sampler itself (not user params).
_COMMON_ARGS = ("labels", "seed", "num_replicas", "rank")


@dataclass(frozen=True)
class SamplerSpec:
    """One registry entry: a name, a one-line description and the builder.

    ``params`` are the builder's own keyword arguments (derived from its signature), i.e.
    everything a config may set besides ``seed``, ``num_replicas`` and ``rank``.
    """

    name: str
    description: str
    builder: Callable[..., EpochSampler]
    params: tuple[str, ...]


SAMPLERS: dict[str, SamplerSpec] = {}


def register_sampler(name: str, description: str) -> Callable:
    """Decorator: register ``builder(labels, *, seed, num_replicas, rank, **params)``."""

    def decorator(builder: Callable[..., EpochSampler]) -> Callable[..., EpochSampler]:
        if name in SAMPLERS:
            raise ValueError(f"sampler {name!r} is already registered")
        params = tuple(
            p for p in inspect.signature(builder).parameters if p not in _COMMON_ARGS
        )
        SAMPLERS[name] = SamplerSpec(name, description, builder, params)
        return builder

    return decorator


@register_sampler("instance", "plain shuffle, every sample once per epoch (q=1)")
def _build_instance(labels, *, seed, num_replicas, rank, num_classes=None):
    return InstanceSampler(
        labels, seed=seed, num_replicas=num_replicas, rank=rank, num_classes=num_classes
    )


@register_sampler("class-balanced", "equal probability per class, with replacement (q=0)")
def _build_class_balanced(labels, *, seed, num_replicas, rank, num_samples=None, num_classes=None):
    return ClassPowerSampler(
        labels, q=0.0, num_samples=num_samples, seed=seed, num_replicas=num_replicas,
        rank=rank, num_classes=num_classes,
    )  # fmt: skip


@register_sampler("sqrt", "class probability proportional to sqrt(count) (q=1/2)")
def _build_sqrt(labels, *, seed, num_replicas, rank, num_samples=None, num_classes=None):
    return ClassPowerSampler(
        labels, q=0.5, num_samples=num_samples, seed=seed, num_replicas=num_replicas,
        rank=rank, num_classes=num_classes,
    )  # fmt: skip


@register_sampler(
    "progressive", "instance-balanced at epoch 0 to class-balanced at the last epoch"
)
def _build_progressive(
    labels, *, seed, num_replicas, rank, total_epochs=None, num_samples=None, num_classes=None
):
    return ProgressivelyBalancedSampler(
        labels, total_epochs=total_epochs, num_samples=num_samples, seed=seed,
        num_replicas=num_replicas, rank=rank, num_classes=num_classes,
    )  # fmt: skip


@register_sampler("ros", "imbalanced-learn RandomOverSampler on indices, re-drawn per epoch")
def _build_ros(
    labels, *, seed, num_replicas, rank, sampling_strategy="auto", num_classes=None
):
    return ImblearnIndexSampler(
        labels, resampler_cls=RandomOverSampler, sampling_strategy=sampling_strategy,
        seed=seed, num_replicas=num_replicas, rank=rank, num_classes=num_classes,
    )  # fmt: skip


@register_sampler("rus", "imbalanced-learn RandomUnderSampler on indices, re-drawn per epoch")
def _build_rus(
    labels, *, seed, num_replicas, rank, sampling_strategy="auto", num_classes=None
):
    return ImblearnIndexSampler(
        labels, resampler_cls=RandomUnderSampler, sampling_strategy=sampling_strategy,
        seed=seed, num_replicas=num_replicas, rank=rank, num_classes=num_classes,
    )  # fmt: skip


@register_sampler(
    "aug-oversample", "minority copies as virtual indices, strongly augmented by the dataset"
)
def _build_aug_oversample(
    labels, *, seed, num_replicas, rank, target=None, ratio=None, num_classes=None
):
    return AugmentedOversampleSampler(
        labels, target=target, ratio=ratio, seed=seed, num_replicas=num_replicas,
        rank=rank, num_classes=num_classes,
    )  # fmt: skip


def _spec(name: str) -> SamplerSpec:
    try:
        return SAMPLERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}") from None


def build_sampler(
    name: str,
    labels: Any,
    *,
    seed: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
    **params: Any,
) -> EpochSampler:
    """Build a registered sampler: the one entry point used by the trainer and the CLI.

    Parameters
    ----------
    name : str
        A key of :data:`SAMPLERS`.
    labels : array-like of int
        Class id of every training sample, in dataset order.
    seed : int, default 0
        Base seed; each epoch draws from ``(seed, epoch)``.
    num_replicas, rank : int
        DDP world size and this process's rank.
    **params
        The sampler's own options, ``SAMPLERS[name].params`` (e.g. ``total_epochs`` for
        ``progressive``, ``sampling_strategy`` for ``ros``/``rus``).

    Returns
    -------
    EpochSampler
        Call ``set_epoch(epoch)`` before each epoch.

    Raises
    ------
    ValueError
        Unknown name or parameter, ``rank >= num_replicas``, an empty class the sampler needs,
        ``progressive`` without ``total_epochs``.

    Examples
    --------
    >>> sampler = build_sampler("class-balanced", [0] * 8 + [1] * 2, seed=1)
    >>> len(sampler)
    10
    >>> build_sampler("ros", [0] * 8 + [1] * 2).epoch_indices().size
    16
    """
    spec = _spec(name)
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        valid = ", ".join(spec.params) or "none"
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)} for sampler {name!r}; valid: {valid}"
        )
    sampler = spec.builder(labels, seed=seed, num_replicas=num_replicas, rank=rank, **params)
    # Draw epoch 0 now (it is cached for the first epoch anyway) so that a bad option the
    # resampler validates itself, e.g. imbalanced-learn's sampling_strategy, fails at build time.
    sampler.epoch_indices(0)
    return sampler


def effective_distribution(
    name: str, labels: Any, *, seed: int = 0, epoch: int = 0, **params: Any
) -> np.ndarray:
    """Class counts that one epoch of a sampler really yields (all ranks together).

    Virtual indices of ``aug-oversample`` count toward their original's class. Used by the
    dashboard's before/after bars.

    Returns
    -------
    numpy.ndarray of int64, shape (num_classes,)

    Examples
    --------
    >>> effective_distribution("rus", [0] * 8 + [1] * 2).tolist()
    [2, 2]
    >>> effective_distribution("ros", [0] * 8 + [1] * 2).tolist()
    [8, 8]
    """
    sampler = build_sampler(name, labels, seed=seed, **params)
    stream = sampler.epoch_indices(epoch) % sampler.labels.size
    return np.bincount(sampler.labels[stream], minlength=sampler.num_classes)
