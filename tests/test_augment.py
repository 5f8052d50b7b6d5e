import math

import pytest
import torch
import torch.nn.functional as F

from imgcls.data.augment import Augment, prepare, random_crop, random_flip, random_rotate


def images(n=16, c=3, h=8, w=10, seed=0):
    return torch.randint(1, 256, (n, c, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_random_crop_is_a_per_image_shift_with_zero_fill():
    x = images()
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    padded = F.pad(x, (2, 2, 2, 2))
    shifts = []
    for i in range(len(x)):
        matches = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(out[i], padded[i, :, dy : dy + 8, dx : dx + 10])]
        assert matches, f"image {i} is not a crop of its padded original"
        shifts.append(matches[0])
    assert len(set(shifts)) > 3  # each image draws its own shift


def test_random_flip_mirrors_about_half_of_the_images():
    x = images(n=200)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, x)]
    assert all(f or torch.equal(o, i) for f, o, i in zip(flipped, out, x))
    assert 70 < sum(flipped) < 130


def test_rotation_of_zero_degrees_changes_nothing_and_small_rotations_keep_the_centre():
    x = images().float()
    assert torch.allclose(random_rotate(x, 0.0, torch.Generator().manual_seed(0)), x, atol=1e-4)
    disc = torch.zeros(1, 1, 21, 21)
    yy, xx = torch.meshgrid(torch.arange(21), torch.arange(21), indexing="ij")
    disc[0, 0][((yy - 10) ** 2 + (xx - 10) ** 2) <= 36] = 1.0
    rotated = random_rotate(disc.repeat(8, 1, 1, 1), 30.0, torch.Generator().manual_seed(1))
    assert torch.allclose(rotated.sum((1, 2, 3)), disc.sum().expand(8), rtol=0.05)  # a disc is rotation invariant


def test_prepare_normalises_with_mean_and_std():
    x = images(c=1)
    mean, std = torch.tensor([0.5]).view(-1, 1, 1), torch.tensor([0.25]).view(-1, 1, 1)
    out = prepare(x, mean, std)
    assert out.dtype == torch.float32
    assert torch.allclose(out, (x.float() / 255 - 0.5) / 0.25)


def test_prepare_is_reproducible_for_a_seed_and_varies_between_seeds():
    x = images()
    aug = Augment(crop_padding=2, flip=True, rotate=10)
    mean, std = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
    a = prepare(x, mean, std, aug, torch.Generator().manual_seed(5))
    b = prepare(x, mean, std, aug, torch.Generator().manual_seed(5))
    c = prepare(x, mean, std, aug, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("aug", [Augment(), Augment(crop_padding=0, flip=False, rotate=0)])
def test_inactive_augmentation_is_plain_normalisation(aug):
    x = images()
    mean, std = torch.full((3, 1, 1), 0.5), torch.full((3, 1, 1), 0.5)
    assert not aug.active
    assert torch.equal(prepare(x, mean, std, aug, torch.Generator()), prepare(x, mean, std))


def test_rotation_range_is_respected():
    g = torch.Generator().manual_seed(0)
    point = torch.zeros(64, 1, 41, 41)
    point[:, 0, 20, 38] = 1.0  # a dot 18 px right of the centre
    out = random_rotate(point, 10.0, g)
    ys = (out[:, 0].sum(2) * torch.arange(41)).sum(1) / out[:, 0].sum((1, 2))
    angles = torch.rad2deg(torch.asin((ys - 20) / 18)).abs()
    assert angles.max() <= 10.5 and angles.max() > 5
    assert not math.isnan(angles.mean())
