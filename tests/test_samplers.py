"""Tests for training/samplers.py: count the labels a real DataLoader yields."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from training.samplers import (
    SAMPLERS,
    AugmentedOversampleDataset,
    ClassPowerSampler,
    EpochSampler,
    build_sampler,
    class_power_probabilities,
    effective_distribution,
    strong_augment,
)

LABELS = np.array([0] * 80 + [1] * 15 + [2] * 5)  # 16:3:1, like DR grade 0 vs 1 vs 4
COUNTS = np.array([80, 15, 5])
N = LABELS.size

# Extra params a registry entry needs to be built (everything else uses defaults).
REQUIRED_PARAMS = {"progressive": {"total_epochs": 5}}


def loader_label_counts(sampler, labels=LABELS, batch_size=16):
    """Class counts of the labels that really come out of a DataLoader driven by ``sampler``."""
    dataset = TensorDataset(torch.as_tensor(labels))
    counts = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    for (batch,) in DataLoader(dataset, sampler=sampler, batch_size=batch_size):
        counts += np.bincount(batch.numpy(), minlength=counts.size)
    return counts


def loader_indices(sampler):
    """All indices the DataLoader asks the dataset for (one per item), via an index dataset."""
    dataset = TensorDataset(torch.arange(4 * N))  # covers virtual indices of aug-oversample
    batches = DataLoader(dataset, sampler=sampler, batch_size=7)
    return np.concatenate([batch.numpy() for (batch,) in batches])


# --------------------------------------------------------------------------------------------
# Per-sampler behaviour through a real DataLoader
# --------------------------------------------------------------------------------------------


def test_instance_yields_every_sample_once():
    sampler = build_sampler("instance", LABELS, seed=3)
    assert len(sampler) == N
    np.testing.assert_array_equal(loader_label_counts(sampler), COUNTS)
    np.testing.assert_array_equal(np.sort(loader_indices(sampler)), np.arange(N))
    assert not np.array_equal(sampler.epoch_indices(), np.arange(N))  # really shuffled


def test_class_balanced_is_about_uniform():
    sampler = build_sampler("class-balanced", LABELS, seed=0, num_samples=3000)
    assert len(sampler) == 3000
    fractions = loader_label_counts(sampler) / 3000
    np.testing.assert_allclose(fractions, [1 / 3] * 3, atol=0.04)
    # draws are members of the right class: every index of the rare class shows up
    indices = loader_indices(sampler)
    assert set(indices[LABELS[indices] == 2]) == set(range(95, 100))


def test_class_balanced_default_num_samples_is_dataset_size():
    sampler = build_sampler("class-balanced", LABELS)
    assert len(sampler) == N
    assert loader_label_counts(sampler).sum() == N


def test_sqrt_is_proportional_to_sqrt_counts():
    sampler = build_sampler("sqrt", LABELS, seed=1, num_samples=4000)
    fractions = loader_label_counts(sampler) / 4000
    expected = np.sqrt(COUNTS) / np.sqrt(COUNTS).sum()  # ~ [0.597, 0.258, 0.145]
    np.testing.assert_allclose(fractions, expected, atol=0.03)


def test_class_power_probabilities_literal():
    np.testing.assert_allclose(class_power_probabilities([16, 4, 0], 0.5), [2 / 3, 1 / 3, 0])
    np.testing.assert_allclose(class_power_probabilities(COUNTS, 1.0), COUNTS / 100)


def test_progressive_moves_from_instance_to_balanced():
    total = 10
    sampler = build_sampler("progressive", LABELS, seed=2, total_epochs=total, num_samples=4000)
    first = loader_label_counts(sampler) / 4000  # epoch 0
    np.testing.assert_allclose(first, COUNTS / N, atol=0.03)

    sampler.set_epoch(total - 1)
    last = loader_label_counts(sampler) / 4000
    np.testing.assert_allclose(last, [1 / 3] * 3, atol=0.04)

    sampler.set_epoch(3)  # a = 3/9: a third of the way to balanced
    middle = loader_label_counts(sampler) / 4000
    a = 3 / 9
    np.testing.assert_allclose(middle, (1 - a) * COUNTS / N + a / 3, atol=0.03)


def test_ros_gives_exactly_equal_counts_and_keeps_every_original():
    sampler = build_sampler("ros", LABELS, seed=0)
    assert len(sampler) == 240
    np.testing.assert_array_equal(loader_label_counts(sampler), [80, 80, 80])
    assert set(loader_indices(sampler)) == set(range(N))
    # re-drawn per epoch: the bootstrap copies change
    assert not np.array_equal(np.sort(sampler.epoch_indices(0)), np.sort(sampler.epoch_indices(1)))


def test_ros_passes_sampling_strategy_to_imblearn():
    sampler = build_sampler("ros", LABELS, sampling_strategy={1: 40, 2: 20})
    np.testing.assert_array_equal(loader_label_counts(sampler), [80, 40, 20])


def test_rus_gives_exactly_min_count_per_class():
    sampler = build_sampler("rus", LABELS, seed=0)
    assert len(sampler) == 15
    np.testing.assert_array_equal(loader_label_counts(sampler), [5, 5, 5])
    indices = loader_indices(sampler)
    assert len(set(indices)) == 15  # without replacement
    assert set(indices[LABELS[indices] == 2]) == set(range(95, 100))
    # the kept majority samples are re-drawn each epoch
    assert set(sampler.epoch_indices(0)) != set(sampler.epoch_indices(1))


# --------------------------------------------------------------------------------------------
# aug-oversample: virtual indices + the augmenting dataset wrapper
# --------------------------------------------------------------------------------------------


def _image_dataset():
    images = torch.rand(N, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    return TensorDataset(images, torch.as_tensor(LABELS))


def test_aug_oversample_yields_virtual_indices_for_copies():
    sampler = build_sampler("aug-oversample", LABELS, seed=0)
    indices = loader_indices(sampler)
    assert indices.size == 240
    originals, virtual = indices[indices < N], indices[indices >= N]
    np.testing.assert_array_equal(np.sort(originals), np.arange(N))  # each original once
    assert virtual.max() < 2 * N
    assert virtual.size == (80 - 15) + (80 - 5)
    np.testing.assert_array_equal(np.bincount(LABELS[virtual - N], minlength=3), [0, 65, 75])


def test_aug_oversample_target_and_ratio():
    by_target = effective_distribution("aug-oversample", LABELS, target=40)
    np.testing.assert_array_equal(by_target, [80, 40, 40])
    by_ratio = effective_distribution("aug-oversample", LABELS, ratio=0.25)
    np.testing.assert_array_equal(by_ratio, [80, 20, 20])
    # nothing below target: the stream is just the shuffled originals
    plain = build_sampler("aug-oversample", LABELS, target=5)
    np.testing.assert_array_equal(np.sort(plain.epoch_indices()), np.arange(N))


def test_aug_oversample_through_wrapper_dataloader():
    base = _image_dataset()
    wrapped = AugmentedOversampleDataset(base, strong_augment)
    assert len(wrapped) == 2 * N
    sampler = build_sampler("aug-oversample", LABELS, seed=4)
    counts = np.zeros(3, dtype=np.int64)
    for images, labels in DataLoader(wrapped, sampler=sampler, batch_size=32):
        assert images.shape[1:] == (3, 8, 8)
        counts += np.bincount(labels.numpy(), minlength=3)
    np.testing.assert_array_equal(counts, [80, 80, 80])


def test_wrapper_augments_copies_and_leaves_originals_unchanged():
    base = _image_dataset()
    generator = torch.Generator().manual_seed(7)
    wrapped = AugmentedOversampleDataset(base, lambda img: strong_augment(img, generator))
    for i in (0, 81, 97):
        original_image, original_label = base[i]
        image, label = wrapped[i]
        assert torch.equal(image, original_image) and label == original_label
        copy, copy_label = wrapped[i + N]
        assert copy_label == original_label
        assert copy.shape == original_image.shape
        assert not torch.allclose(copy, original_image)
    assert torch.equal(base[0][0], wrapped[0][0])  # the base image was not modified in place


def test_strong_augment_is_deterministic_given_generator():
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1))
    a = strong_augment(image, torch.Generator().manual_seed(5))
    b = strong_augment(image, torch.Generator().manual_seed(5))
    c = strong_augment(image, torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.min() >= image.min() and a.max() <= image.max()  # stays in the input's range


def test_strong_augment_non_square_and_grayscale_keep_shape():
    generator = torch.Generator().manual_seed(0)
    for shape in [(3, 8, 12), (1, 10, 10)]:
        for _ in range(8):  # several draws, so odd quarter turns would have shown up
            assert strong_augment(torch.rand(*shape), generator).shape == shape


def test_strong_augment_pure_quarter_turn_and_flip_when_jitter_off():
    """With all strengths 0 the output is a rotation/flip of the input: same pixels."""
    image = torch.rand(3, 8, 8)
    out = strong_augment(
        image, torch.Generator().manual_seed(3), max_angle=0.0, brightness=0.0,
        contrast=0.0, saturation=0.0, channel_gain=0.0,
    )  # fmt: skip
    torch.testing.assert_close(out.flatten().sort().values, image.flatten().sort().values)


# --------------------------------------------------------------------------------------------
# Determinism, epochs and DDP sharding (parametrised over the registry)
# --------------------------------------------------------------------------------------------


def _build(name, **kwargs):
    return build_sampler(name, LABELS, **REQUIRED_PARAMS.get(name, {}), **kwargs)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_same_seed_and_epoch_give_same_stream(name):
    a, b = _build(name, seed=11), _build(name, seed=11)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    np.testing.assert_array_equal(a.epoch_indices(2), b.epoch_indices())
    assert not np.array_equal(a.epoch_indices(2), a.epoch_indices(3))
    assert not np.array_equal(a.epoch_indices(2), _build(name, seed=12).epoch_indices(2))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_set_epoch_changes_what_the_loader_yields(name):
    sampler = _build(name, seed=0)
    first = loader_indices(sampler)
    sampler.set_epoch(1)
    second = loader_indices(sampler)
    assert not np.array_equal(first, second)
    sampler.set_epoch(0)
    np.testing.assert_array_equal(loader_indices(sampler), first)


@pytest.mark.parametrize("name", [n for n in SAMPLERS if n != "instance"])
def test_every_rebalancing_sampler_changes_the_class_distribution(name):
    sampler = _build(name, seed=0)
    sampler.set_epoch(4)  # progressive: last epoch of 5
    counts = np.bincount(LABELS[loader_indices(sampler) % N], minlength=3)
    fractions = counts / counts.sum()
    assert fractions[2] > 2 * COUNTS[2] / N  # the rarest class is clearly boosted


@pytest.mark.parametrize("num_replicas", [2, 3])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_ddp_ranks_share_one_epoch_stream(name, num_replicas):
    ranks = [_build(name, seed=5, num_replicas=num_replicas, rank=r) for r in range(num_replicas)]
    for sampler in ranks:
        sampler.set_epoch(3)
    stream = ranks[0].epoch_indices()
    for sampler in ranks[1:]:  # every rank generates the identical full stream
        np.testing.assert_array_equal(sampler.epoch_indices(), stream)

    shares = [loader_indices(sampler) for sampler in ranks]
    per_rank = -(-stream.size // num_replicas)
    assert all(len(share) == per_rank == len(s) for share, s in zip(shares, ranks))

    padded = np.resize(stream, per_rank * num_replicas)  # wrap-around pad, as DistributedSampler
    np.testing.assert_array_equal(ranks[0].padded_epoch_indices(), padded)
    # disjoint by position: rank r holds exactly positions r, r+R, r+2R, ... of the padded stream
    for r, share in enumerate(shares):
        np.testing.assert_array_equal(share, padded[r::num_replicas])
    # union as a multiset equals the padded stream
    np.testing.assert_array_equal(np.sort(np.concatenate(shares)), np.sort(padded))


def test_ddp_padding_wraps_from_the_start():
    labels = np.array([0] * 4 + [1] * 3)  # 7 samples over 2 ranks -> one padded element
    rank0 = build_sampler("instance", labels, num_replicas=2, rank=0)
    rank1 = build_sampler("instance", labels, num_replicas=2, rank=1)
    stream = rank0.epoch_indices()
    assert len(rank0) == len(rank1) == 4
    assert list(rank1)[-1] == stream[0]  # the 8th element is the first one again


# --------------------------------------------------------------------------------------------
# effective_distribution (dashboard before/after bars)
# --------------------------------------------------------------------------------------------


def test_effective_distribution_literals():
    np.testing.assert_array_equal(effective_distribution("instance", LABELS), [80, 15, 5])
    np.testing.assert_array_equal(effective_distribution("ros", LABELS, epoch=3), [80, 80, 80])
    np.testing.assert_array_equal(effective_distribution("rus", LABELS), [5, 5, 5])
    np.testing.assert_array_equal(effective_distribution("aug-oversample", LABELS), [80, 80, 80])
    cb = effective_distribution("class-balanced", LABELS, num_samples=300)
    assert cb.sum() == 300 and cb.min() > 70
    padded = effective_distribution("instance", LABELS, num_classes=5)
    np.testing.assert_array_equal(padded, [80, 15, 5, 0, 0])


def test_effective_distribution_matches_the_loader():
    for name in SAMPLERS:
        params = REQUIRED_PARAMS.get(name, {})
        expected = effective_distribution(name, LABELS, seed=9, epoch=2, **params)
        sampler = build_sampler(name, LABELS, seed=9, **params)
        sampler.set_epoch(2)
        counts = np.bincount(LABELS[loader_indices(sampler) % N], minlength=3)
        np.testing.assert_array_equal(counts, expected)


# --------------------------------------------------------------------------------------------
# Registry and bad input
# --------------------------------------------------------------------------------------------


def test_registry_entries_are_described_and_build_epoch_samplers():
    assert list(SAMPLERS) == [
        "instance", "class-balanced", "sqrt", "progressive", "ros", "rus", "aug-oversample",
    ]  # fmt: skip
    for name, spec in SAMPLERS.items():
        assert spec.name == name and spec.description
        assert "seed" not in spec.params and "labels" not in spec.params
        assert isinstance(_build(name), EpochSampler)
    assert SAMPLERS["progressive"].params == ("total_epochs", "num_samples", "num_classes")


def test_unknown_sampler_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown sampler 'x'; valid: instance, class-balanced, "
                       r"sqrt, progressive, ros, rus, aug-oversample"):  # fmt: skip
        build_sampler("x", LABELS)
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        effective_distribution("nope", LABELS)


def test_unknown_param_names_valid_params():
    with pytest.raises(
        ValueError, match=r"unknown parameter\(s\) q for sampler 'ros'; valid: sampling_strategy, "
        r"num_classes",
    ):  # fmt: skip
        build_sampler("ros", LABELS, q=0.5)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) a, b for sampler 'instance'"):
        build_sampler("instance", LABELS, b=1, a=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_replicas": 2, "rank": 2}, r"rank 2 is out of range for num_replicas=2 \(valid: 0"),
        ({"num_replicas": 0}, r"num_replicas must be an int >= 1, got 0"),
        ({"rank": -1}, r"rank must be an int >= 0, got -1"),
        ({"seed": -3}, r"seed must be an int >= 0, got -3"),
        ({"seed": 1.5}, r"seed must be an int >= 0, got 1.5"),
    ],
)
def test_bad_distribution_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_sampler("instance", LABELS, **kwargs)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.zeros((2, 3), dtype=int), r"labels must be 1-D, got shape \(2, 3\)"),
        ([], "labels is empty"),
        ([0, -1, 1], "labels must be >= 0, got -1"),
        ([0.0, 0.5], "labels must be integer class ids, got dtype float64"),
        (["a", "b"], "labels must be integer class ids, got dtype <U1"),
    ],
)
def test_bad_labels(labels, message):
    with pytest.raises(ValueError, match=message):
        build_sampler("instance", labels)


def test_labels_accept_tensors_and_integral_floats():
    from_tensor = build_sampler("rus", torch.as_tensor(LABELS)).epoch_indices()
    from_floats = build_sampler("rus", LABELS.astype(float)).epoch_indices()
    np.testing.assert_array_equal(from_tensor, from_floats)


def test_label_outside_num_classes():
    with pytest.raises(ValueError, match=r"label 2 is out of range for num_classes=2 \(valid: 0.."):
        build_sampler("instance", LABELS, num_classes=2)
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
        build_sampler("instance", LABELS, num_classes=0)


@pytest.mark.parametrize(
    ("name", "params", "sampler_word"),
    [
        ("class-balanced", {}, "class-balanced"),
        ("progressive", {"total_epochs": 3}, "progressive"),
        ("ros", {}, "RandomOverSampler"),
        ("rus", {}, "RandomUnderSampler"),
        ("aug-oversample", {}, "RandomOverSampler"),
    ],
)
def test_empty_class_is_rejected_where_it_matters(name, params, sampler_word):
    labels = [0, 0, 0, 2, 2]  # class 1 missing
    with pytest.raises(ValueError, match=rf"class 1 has no samples; {sampler_word} sampling needs"):
        build_sampler(name, labels, **params)
    # a grade absent from the split is caught when num_classes says it should exist
    with pytest.raises(ValueError, match=r"class 3 has no samples.*\(empty classes: \[3, 4\]\)"):
        build_sampler(name, [0, 1, 2, 2], num_classes=5, **params)


def test_empty_class_is_fine_where_it_does_not_matter():
    labels = np.array([0, 0, 0, 2, 2])
    assert len(build_sampler("instance", labels)) == 5
    sqrt = build_sampler("sqrt", labels, num_samples=200)  # q > 0: an empty class gets p = 0
    np.testing.assert_array_equal(np.unique(labels[sqrt.epoch_indices()]), [0, 2])


def test_progressive_needs_total_epochs():
    with pytest.raises(ValueError, match="progressive sampling needs total_epochs"):
        build_sampler("progressive", LABELS)
    with pytest.raises(ValueError, match="total_epochs must be an int >= 1, got 0"):
        build_sampler("progressive", LABELS, total_epochs=0)


def test_other_bad_params():
    with pytest.raises(ValueError, match="num_samples must be an int >= 1, got 0"):
        build_sampler("sqrt", LABELS, num_samples=0)
    with pytest.raises(ValueError, match=r"q must be in \[0, 1\], got 2"):
        ClassPowerSampler(LABELS, q=2)
    with pytest.raises(ValueError, match="give target or ratio, not both"):
        build_sampler("aug-oversample", LABELS, target=10, ratio=0.5)
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\], got 1.5"):
        build_sampler("aug-oversample", LABELS, ratio=1.5)
    with pytest.raises(ValueError, match="target must be an int >= 1, got 0"):
        build_sampler("aug-oversample", LABELS, target=0)
    with pytest.raises(ValueError, match="RandomUnderSampler needs at least 2 classes, got 1"):
        build_sampler("rus", [0, 0, 0])
    with pytest.raises(ValueError, match="sampling_strategy"):  # imbalanced-learn's own check
        build_sampler("ros", LABELS, sampling_strategy="sideways")
    with pytest.raises(ValueError, match="epoch must be an int >= 0, got -1"):
        build_sampler("instance", LABELS).set_epoch(-1)


def test_bad_augmentation_inputs():
    with pytest.raises(ValueError, match=r"float tensor of shape \(C, H, W\), got \(8, 8\)"):
        strong_augment(torch.rand(8, 8))
    with pytest.raises(ValueError, match=r"got \(3, 4, 4\)"):
        strong_augment(torch.zeros(3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="strong_transform must be callable, got 3"):
        AugmentedOversampleDataset(_image_dataset(), 3)
    wrapped = AugmentedOversampleDataset(_image_dataset())
    with pytest.raises(IndexError, match=r"index 200 out of range for 2 \* 100"):
        wrapped[200]


@pytest.mark.parametrize("name", ["ros", "rus", "aug-oversample", "class-balanced"])
def test_fixed_epoch_size_keeps_the_class_mix(name):
    labels = np.array([0] * 80 + [1] * 15 + [2] * 5)
    natural = build_sampler(name, labels, seed=3)
    fixed = build_sampler(name, labels, seed=3).set_epoch_size(labels.size)
    for epoch in (0, 1):
        stream = fixed.epoch_indices(epoch)
        assert stream.size == labels.size
        counts = np.bincount(labels[stream % labels.size], minlength=3)
        if name in ("ros", "rus"):  # a balanced stream stays (near) balanced when cut or repeated
            assert counts.min() >= 0.6 * counts.max(), counts
    assert len(natural) != labels.size or name == "class-balanced"
    # two ranks still split the fixed-length stream into disjoint equal shares
    r0 = build_sampler(name, labels, seed=3, num_replicas=2, rank=0).set_epoch_size(100)
    r1 = build_sampler(name, labels, seed=3, num_replicas=2, rank=1).set_epoch_size(100)
    assert len(r0) == len(r1) == 50
    assert sorted(list(r0) + list(r1)) == sorted(r0.epoch_indices().tolist())
