import math

import pytest
import torch
import torch.nn.functional as F

from imgcls.data.augment import Augment, prepare, random_crop, random_flip, random_resized_crop, random_rotate
from imgcls.errors import ImgclsError


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
    aug = Augment(crop_padding=2, flip=True, rotate=10, crop_scale=0.5)
    mean, std = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
    a = prepare(x, mean, std, aug, torch.Generator().manual_seed(5))
    b = prepare(x, mean, std, aug, torch.Generator().manual_seed(5))
    c = prepare(x, mean, std, aug, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("aug", [Augment(), Augment(crop_padding=0, flip=False, rotate=0, crop_scale=1.0)])
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


def ramps(n, h, w, channels=2):
    """Images whose channel 0 is the column index + 1 and channel 1 the row index + 1: a pixel's value says where it came from."""
    cols = torch.arange(1, w + 1.0).expand(n, 1, h, w)
    rows = torch.arange(1, h + 1.0)[:, None].expand(n, 1, h, w)
    return torch.cat([cols, rows][:channels], 1).contiguous()


def boxes(out, axis):
    """Per image, the box (start, size) in pixels along one axis that a crop-and-resize of a ramp along it came from.

    Output pixel k samples the input at start + (k + 0.5) * size / length, in pixel-edge coordinates; inside the image
    a ramp interpolates exactly, so two samples away from the edges give the box."""
    ramp = out[:, axis, 0, :] if axis == 0 else out[:, axis, :, 0]
    length = ramp.shape[1]
    a, b = length // 4, 3 * length // 4
    step = (ramp[:, b] - ramp[:, a]) / (b - a)
    start = ramp[:, a] - 0.5 - (a + 0.5) * step
    return start, step * length


def test_resized_crop_of_a_full_scale_augment_is_the_plain_path():
    x = images()
    mean, std = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
    with_off = prepare(x, mean, std, Augment(flip=True, crop_scale=1.0), torch.Generator().manual_seed(3))
    assert torch.equal(with_off, prepare(x, mean, std, Augment(flip=True), torch.Generator().manual_seed(3)))
    assert not torch.equal(with_off, prepare(x, mean, std, Augment(flip=True, crop_scale=0.9), torch.Generator().manual_seed(3)))


def test_describe_and_active_count_the_resized_crop():
    assert Augment(crop_scale=0.35).active and not Augment(crop_scale=1.0).active
    assert Augment(flip=True, crop_scale=0.35, rotate=5).describe() == "flip, resized crop 35-100%, rotate±5°"
    assert Augment(crop_scale=1.0).describe() == "none"


def test_each_resized_crop_is_a_box_inside_its_image_with_the_requested_area_and_ratios():
    n, h, w = 400, 48, 64
    out = random_resized_crop(ramps(n, h, w), 0.35, torch.Generator().manual_seed(0))
    x0, bw = boxes(out, 0)
    y0, bh = boxes(out, 1)
    # a resize of a box: each channel varies along its own axis only, linearly away from the edges
    assert torch.allclose(out[:, 0], out[:, 0, :1].expand(n, h, w)) and torch.allclose(out[:, 1], out[:, 1, :, :1].expand(n, h, w))
    k = torch.arange(w)[2:-2]
    assert torch.allclose(out[:, 0, 0, 2:-2], x0[:, None] + (k + 0.5) * bw[:, None] / w + 0.5, atol=1e-3)
    assert out[:, 0].amin() >= 1 and out[:, 0].amax() <= w and out[:, 1].amin() >= 1 and out[:, 1].amax() <= h
    eps = 1e-3
    assert (x0 >= -eps).all() and (x0 + bw <= w + eps).all() and (y0 >= -eps).all() and (y0 + bh <= h + eps).all()
    area, ratio = bw * bh / (h * w), bw / bh
    assert area.min() >= 0.35 - eps and area.max() <= 1 + eps
    assert area.min() < 0.37 and area.max() > 0.97 and 0.6 < area.mean() < 0.75  # uniform in [0.35, 1]: mean 0.675
    assert ratio.min() >= 3 / 4 - eps and ratio.max() <= 4 / 3 + eps
    assert ratio.min() < 0.8 and ratio.max() > 1.25
    # the box is placed uniformly: its left edge spans the free room, on both sides of the middle
    room = x0 / (w - bw).clamp(min=1e-6)
    assert room[bw < w - 1].min() < 0.1 and room[bw < w - 1].max() > 0.9


def test_each_image_gets_its_own_resized_crop_and_a_seed_repeats_them():
    x = ramps(64, 32, 32)
    a = random_resized_crop(x, 0.2, torch.Generator().manual_seed(7))
    assert torch.equal(a, random_resized_crop(x, 0.2, torch.Generator().manual_seed(7)))
    assert not torch.equal(a, random_resized_crop(x, 0.2, torch.Generator().manual_seed(8)))
    (x0, bw), (y0, bh) = boxes(a, 0), boxes(a, 1)
    assert len({tuple(b) for b in torch.stack([x0, bw, y0, bh], 1).mul(100).round().tolist()}) == 64


def test_resized_crops_leave_no_dark_border():
    ones = torch.ones(256, 3, 8, 10)  # a constant image stays constant unless the sampling reaches past the image
    assert torch.allclose(random_resized_crop(ones, 0.35, torch.Generator().manual_seed(0)), ones, atol=1e-6)
    x = images(n=64, h=12, w=12)
    mean, std = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
    out = prepare(x, mean, std, Augment(crop_scale=0.1), torch.Generator().manual_seed(0))
    assert out.amin() >= x.amin() / 255 - 1e-6


def test_resized_crop_of_one_channel_wide_images():
    n, h, w = 200, 12, 40  # 10:3: a box of area fraction >= 0.4 fits only at a ratio over 4/3, so it is full height, scale wide
    out = random_resized_crop(ramps(n, h, w, channels=1), 0.5, torch.Generator().manual_seed(0))
    assert out.shape == (n, 1, h, w)
    x0, bw = boxes(out, 0)
    assert (x0 >= -1e-3).all() and (x0 + bw <= w + 1e-3).all()
    assert bw.min() >= 0.5 * w - 1e-3 and bw.min() < 0.52 * w and bw.max() > 0.98 * w
    mean, std = torch.zeros(1, 1, 1), torch.ones(1, 1, 1)
    prepared = prepare(images(n=4, c=1, h=12, w=40), mean, std, Augment(crop_scale=0.5, flip=True), torch.Generator().manual_seed(0))
    assert prepared.shape == (4, 1, 12, 40)


def test_resized_crop_of_channels_last_batches_matches_contiguous_ones():
    x = images(h=16, w=24)
    mean, std = torch.full((3, 1, 1), 0.5), torch.full((3, 1, 1), 0.25)
    aug = Augment(flip=True, crop_scale=0.35)
    plain = prepare(x, mean, std, aug, torch.Generator().manual_seed(2))
    last = prepare(x.contiguous(memory_format=torch.channels_last), mean, std, aug, torch.Generator().manual_seed(2))
    assert torch.allclose(plain, last, atol=1e-5)


@pytest.mark.parametrize("scale", [0.0, -0.5, 1.5, math.nan])
def test_resized_crop_rejects_an_area_fraction_outside_0_to_1(scale):
    with pytest.raises(ImgclsError, match=r"in \(0, 1\], got"):
        random_resized_crop(torch.rand(2, 3, 8, 8), scale, torch.Generator())
