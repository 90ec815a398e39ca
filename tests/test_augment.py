import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cifar_pipeline.data.augment import cutout_mask, gather_views, normalizer, reflect, to_float
from cifar_pipeline.data.batches import TrainBatches, eval_batches


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g)


def test_no_augmentation_is_plain_indexing(images):
    idx = torch.tensor([3, 0, 5])
    assert torch.equal(gather_views(images, idx), images[idx])
    zero = torch.zeros(3, 2, dtype=torch.long)
    assert torch.equal(gather_views(images, idx, zero, torch.zeros(3, dtype=torch.bool)), images[idx])


@pytest.mark.parametrize("dy,dx", [(0, 0), (2, -1), (-2, 2), (1, 1), (-3, 0)])
def test_a_crop_is_a_translation_of_the_reflect_padded_source(images, dy, dx):
    idx = torch.arange(len(images))
    shifts = torch.tensor([[dy, dx]] * len(images))
    out = gather_views(images, idx, shifts)
    padded = F.pad(images.float(), (3, 3, 3, 3), mode="reflect")
    expected = padded[:, :, 3 + dy:35 + dy, 3 + dx:35 + dx]
    assert torch.equal(out.float(), expected)


def test_flip_mirrors_left_right_and_combines_with_translation(images):
    idx = torch.arange(len(images))
    flips = torch.tensor([True, False] * 4)
    out = gather_views(images, idx, flips=flips)
    assert torch.equal(out[0], images[0].flip(-1)) and torch.equal(out[1], images[1])
    shifts = torch.tensor([[1, 2]] * 8)
    both = gather_views(images, idx, shifts, flips)
    translated = gather_views(images, idx, shifts)
    # The shift is taken in source coordinates: translate, then mirror.
    assert torch.equal(both[0], translated[0].flip(-1)) and torch.equal(both[1], translated[1])


def test_reflect_keeps_indices_inside():
    index = torch.arange(-4, 36)
    out = reflect(index, 32)
    assert out.min() >= 0 and out.max() <= 31
    assert out[:5].tolist() == [4, 3, 2, 1, 0] and out[-4:].tolist() == [30, 29, 28, 27]


def test_cutout_masks_one_square_per_image():
    corners = torch.tensor([[0, 0], [10, 20], [24, 24]])
    mask = cutout_mask(corners, 8)
    assert mask.shape == (3, 1, 32, 32)
    assert mask.sum(dim=(1, 2, 3)).tolist() == [64, 64, 64]
    assert mask[1, 0, 10:18, 20:28].all()


def test_normalisation_ranges(images):
    unit = to_float(images, *normalizer("unit"), channels_last=True)
    assert unit.min() >= 0 and unit.max() <= 1 and unit.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(unit, images.float() / 255)
    std = to_float(images, *normalizer("standardize"), channels_last=False)
    assert abs(std.mean().item()) < 0.5 and 1.0 < std.std().item() < 1.6  # uniform noise: std ~ 1.2


def _batches(seed, **kw):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 64)
    return TrainBatches(x, y, batch_size=16, seed=seed, **kw)


def test_epoch_order_and_augmentation_are_reproducible_per_seed_and_epoch():
    kw = dict(translate=2, flip="random", cutout=4, normalize="standardize")
    a = [x for x, _ in _batches(0, **kw).epoch(3)]
    b = [x for x, _ in _batches(0, **kw).epoch(3)]
    c = [x for x, _ in _batches(1, **kw).epoch(3)]
    d = [x for x, _ in _batches(0, **kw).epoch(4)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[0], d[0])


def test_every_image_is_seen_once_per_epoch_and_labels_follow_images():
    batches = _batches(0)
    seen = torch.cat([y for _, y in batches.epoch(0)])
    assert len(seen) == 64 and sorted(seen.tolist()) == sorted(batches.labels.tolist())
    for x, y in batches.epoch(1):
        # Unaugmented: each batch row must be exactly one source image with that label.
        for row, label in zip(x, y):
            matches = (batches.images == (row * 255).round().to(torch.uint8)).flatten(1).all(1).nonzero().flatten()
            assert len(matches) == 1 and batches.labels[matches[0]] == label


def test_alternate_flip_flips_each_image_every_other_epoch():
    batches = _batches(0, flip="alternate")
    p0, p1, p2 = batches.plan(0), batches.plan(1), batches.plan(2)
    assert torch.equal(p0["flips"], ~p1["flips"]) and torch.equal(p0["flips"], p2["flips"])
    assert 0.3 < p0["flips"].float().mean() < 0.7


def test_last_partial_batch_is_dropped():
    rng = np.random.default_rng(0)
    batches = TrainBatches(rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8), np.zeros(50), batch_size=16)
    assert len(batches) == 3 and sum(len(y) for _, y in batches.epoch(0)) == 48


def test_eval_batches_keep_order():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    y = np.arange(10) % 10
    out = list(eval_batches(x, y, batch_size=4))
    assert [len(b) for b, _ in out] == [4, 4, 2]
    assert torch.cat([labels for _, labels in out]).tolist() == y.tolist()
    torch.testing.assert_close(out[0][0][1], torch.from_numpy(x[1]).permute(2, 0, 1).float() / 255)
