"""Normalisation and augmentation of whole uint8 batches on the training device.

torchvision's transforms v2 draw one random parameter set per call, so per-image randomness
would need a Python loop over the batch; these ops draw per-image parameters and run as a
handful of tensor ops per batch instead.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from imgcls.errors import ImgclsError


@dataclass(frozen=True)
class Augment:
    crop_padding: int = 0  # random crop of the padded image, i.e. shifts of up to this many pixels
    pad_mode: str = "zeros"  # how the shifts fill the border: zeros (black) or reflect (the image mirrored at its edge)
    flip: bool = False  # horizontal flip with probability 1/2
    alternate_flips: bool = False  # with flip: each image mirrored on every other epoch instead of at random
    rotate: float = 0.0  # uniform rotation in [-rotate, +rotate] degrees
    crop_scale: float = 1.0  # smallest area fraction of a random resized crop; 1.0 = off
    auto_augment: str = "none"  # torchvision's TrivialAugmentWide ("trivial") or RandAugment ("rand") on uint8 images

    @classmethod
    def of(cls, cfg) -> "Augment":
        """The batch augmentation a TrainConfig asks for (none with augment off); the options it reads are its fields'
        namesakes, unset ones (None) off."""
        if not cfg.augment:
            return cls()
        return cls(
            crop_padding=cfg.crop_padding or 0, pad_mode=cfg.pad_mode or "zeros", flip=bool(cfg.flip), rotate=cfg.rotate or 0.0, crop_scale=cfg.crop_scale or 1.0,
            alternate_flips=bool(cfg.alternate_flips), auto_augment=cfg.auto_augment or "none",
        )  # fmt: skip

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.flip or self.rotate > 0 or self.crop_scale < 1 or self.auto_augment != "none"

    def describe(self) -> str:
        parts = [f"crop±{self.crop_padding}" + (f" ({self.pad_mode})" if self.pad_mode != "zeros" else "")] if self.crop_padding else []
        parts += [("alternating " if self.alternate_flips else "") + "flip"] if self.flip else []
        parts += [f"resized crop {self.crop_scale * 100:g}-100%"] if self.crop_scale < 1 else []
        parts += [f"rotate±{self.rotate:g}°"] if self.rotate else []
        parts += [{"trivial": "TrivialAugmentWide", "rand": "RandAugment"}[self.auto_augment]] if self.auto_augment != "none" else []
        return ", ".join(parts) or "none"


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator, mode: str = "zeros") -> torch.Tensor:
    """Each image shifted by its own (dy, dx) in [-padding, padding], the border filled with zeros or the image reflected
    at its edge (airbench's: no dark frame for the net to learn), as one gather."""
    n, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4, mode="constant" if mode == "zeros" else mode)
    dy = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=generator.device).to(images.device)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=generator.device).to(images.device)
    rows = (dy + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (dx + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    chans = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(images.shape[0], generator=generator, device=generator.device).to(images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def alternating_flip(images: torch.Tensor, index: torch.Tensor, epoch: int) -> torch.Tensor:
    """Images mirrored where (a fixed pseudo-random bit of their dataset index + epoch) is odd: every image is seen both
    ways in any two consecutive epochs, half of them mirrored in each, where random flips repeat a side a quarter of the time."""
    bit = (index.to(images.device, torch.int64) * 2654435761 >> 16) & 1  # Knuth's multiplicative hash: a spread of bits
    flip = (bit + epoch) % 2 == 1
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def random_rotate(images: torch.Tensor, degrees: float, generator: torch.Generator) -> torch.Tensor:
    """Per-image rotation of float images about the centre (bilinear, zero fill)."""
    n = images.shape[0]
    angle = (torch.rand(n, generator=generator, device=generator.device).to(images.device) * 2 - 1) * math.radians(degrees)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_resized_crop(images: torch.Tensor, min_scale: float, generator: torch.Generator) -> torch.Tensor:
    """Each float image cropped to its own box and resized back to its size, as torchvision's RandomResizedCrop
    (area fraction uniform in [min_scale, 1], aspect ratio log-uniform in [3/4, 4/3], box placed uniformly, bilinear).

    torchvision's v2 RandomResizedCrop draws one box per call, so per-image boxes would need a Python loop;
    here all boxes are one affine_grid + grid_sample. Unlike torchvision, boxes are continuous (not whole pixels),
    and where a ratio would make the box wider or taller than the image, the ratio is drawn only from the part of
    [3/4, 4/3] where the box fits (torchvision redraws instead), so the area fraction stays as drawn and the box
    inside the image; an image whose own ratio lies far outside the range gets the nearest ratio that fits.
    """
    if not 0 < min_scale <= 1:
        raise ImgclsError(f"the resized crop's smallest area fraction must be in (0, 1], got {min_scale}: use e.g. 0.35")
    n, _, h, w = images.shape
    u = torch.rand(n, 4, generator=generator, device=generator.device).to(images.device)
    scale = min_scale + (1 - min_scale) * u[:, 0]
    # box width / image width = sqrt(scale * ratio / image ratio) <= 1 and likewise for the height
    log_image_ratio = math.log(w / h)
    fits_lo, fits_hi = scale.log() + log_image_ratio, log_image_ratio - scale.log()
    lo = torch.clamp(torch.full_like(scale, math.log(3 / 4)), fits_lo, fits_hi)
    hi = torch.clamp(torch.full_like(scale, math.log(4 / 3)), fits_lo, fits_hi)
    log_ratio = lo + (hi - lo) * u[:, 1]
    fw = (scale * (log_ratio - log_image_ratio).exp()).sqrt().clamp(max=1)
    fh = (scale / (log_ratio - log_image_ratio).exp()).sqrt().clamp(max=1)
    # affine_grid maps the output's [-1, 1] onto [centre - f, centre + f], with the centre placed so that the box fits
    cx, cy = (2 * u[:, 2] - 1) * (1 - fw), (2 * u[:, 3] - 1) * (1 - fh)
    zero = torch.zeros_like(fw)
    theta = torch.stack([torch.stack([fw, zero, cx], 1), torch.stack([zero, fh, cy], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    # Border padding: the outermost samples lie up to half a pixel past the edge pixels' centres, where F.interpolate
    # repeats the edge too; zero padding would darken it. The box is never larger than the output: no antialiasing needed.
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


AUTO_GROUPS = 16  # a batch's images take AUTO_GROUPS draws of the policy, a group each


def auto_augment(images: torch.Tensor, policy: str) -> torch.Tensor:
    """torchvision's TrivialAugmentWide or RandAugment on a uint8 batch. They draw one op (and magnitude) per call and
    apply it to every image of the call, so the batch goes in AUTO_GROUPS groups, each with its own draw: the ops stay
    torchvision's, at 16 calls a batch instead of a Python loop over its images. They draw from torch's global
    generator, which last.pt saves, so a resumed run draws the same."""
    from torchvision.transforms import v2  # imported on use: torchvision adds a second to start-up

    op = v2.TrivialAugmentWide() if policy == "trivial" else v2.RandAugment()
    return torch.cat([op(group) for group in images.chunk(AUTO_GROUPS)])


def prepare(
    images: torch.Tensor,
    mean,
    std,
    aug: Augment | None = None,
    generator: torch.Generator | None = None,
    index: torch.Tensor | None = None,
    epoch: int = 0,
) -> torch.Tensor:
    """uint8 batch -> augmented, normalised float batch. Shifts and flips run on uint8 (cheaper); resized crops and rotation on float.
    Alternating flips need the images' dataset `index` and the `epoch`.

    Zero padding and zero fill happen before normalisation, so empty borders are black as in torchvision's RandomCrop.
    """
    if aug is not None and aug.active:
        if aug.auto_augment != "none":
            images = auto_augment(images, aug.auto_augment)
        if aug.crop_padding > 0:
            images = random_crop(images, aug.crop_padding, generator, aug.pad_mode)
        if aug.flip and aug.alternate_flips:
            images = alternating_flip(images, index, epoch)
        elif aug.flip:
            images = random_flip(images, generator)
    x = images.float().div_(255)
    if aug is not None and aug.crop_scale < 1:
        x = random_resized_crop(x, aug.crop_scale, generator)
    if aug is not None and aug.rotate > 0:
        x = random_rotate(x, aug.rotate, generator)
    return x.sub_(mean).div_(std)


def mix_rows(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, mixup: float = 0.0, cutmix: float = 0.0):
    """MixUp or CutMix (one at random when both alphas are given) of a float batch and its multi-hot targets, which
    torchvision's v2 transforms (class indices only) do not take: each image blended with, or a box pasted from, the
    batch's image in reversed order, the targets mixed by the same share. The share is drawn from torch's global
    generator (saved in last.pt) as torchvision's v2 draw theirs, the choice and the box from the run's."""
    device = generator.device
    use_cutmix = cutmix > 0 and (mixup <= 0 or torch.rand((), generator=generator, device=device).item() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = torch.distributions.Beta(alpha, alpha).sample().item()  # torch's global generator, as torchvision's v2 draw theirs
    other, targets = x.flip(0), y.float()
    if use_cutmix:
        h, w = x.shape[-2:]
        ch, cw = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
        cy, cx = (torch.randint(0, n, (), generator=generator, device=device).item() for n in (h, w))
        top, bottom, left, right = max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[..., top:bottom, left:right] = other[..., top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (h * w)
    else:
        x = x * lam + other * (1 - lam)
    return x, targets * lam + targets.flip(0) * (1 - lam)


def denormalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """The inverse of prepare's normalisation: a normalised float batch back to uint8 pixels (exact for unaugmented images)."""
    return x.mul(std).add_(mean).mul_(255).round_().clamp_(0, 255).to(torch.uint8)
