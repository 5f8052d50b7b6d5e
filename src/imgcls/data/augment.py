"""Normalisation and augmentation of whole uint8 batches on the training device.

torchvision's transforms v2 draw one random parameter set per call, so per-image randomness
would need a Python loop over the batch; these ops draw per-image parameters and run as a
handful of tensor ops per batch instead.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    crop_padding: int = 0  # random crop of the zero-padded image, i.e. shifts of up to this many pixels
    flip: bool = False  # horizontal flip with probability 1/2
    rotate: float = 0.0  # uniform rotation in [-rotate, +rotate] degrees

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.flip or self.rotate > 0

    def describe(self) -> str:
        parts = [f"crop±{self.crop_padding}"] if self.crop_padding else []
        parts += ["flip"] if self.flip else []
        parts += [f"rotate±{self.rotate:g}°"] if self.rotate else []
        return ", ".join(parts) or "none"


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Each image shifted by its own (dy, dx) in [-padding, padding], filled with zeros, as one gather."""
    n, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
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


def random_rotate(images: torch.Tensor, degrees: float, generator: torch.Generator) -> torch.Tensor:
    """Per-image rotation of float images about the centre (bilinear, zero fill)."""
    n = images.shape[0]
    angle = (torch.rand(n, generator=generator, device=generator.device).to(images.device) * 2 - 1) * math.radians(degrees)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def prepare(images: torch.Tensor, mean, std, aug: Augment | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 batch -> augmented, normalised float batch. Shifts and flips run on uint8 (cheaper); rotation on float.

    Zero padding and zero fill happen before normalisation, so empty borders are black as in torchvision's RandomCrop.
    """
    if aug is not None and aug.active:
        if aug.crop_padding > 0:
            images = random_crop(images, aug.crop_padding, generator)
        if aug.flip:
            images = random_flip(images, generator)
    x = images.float().div_(255)
    if aug is not None and aug.rotate > 0:
        x = random_rotate(x, aug.rotate, generator)
    return x.sub_(mean).div_(std)


def denormalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """The inverse of prepare's normalisation: a normalised float batch back to uint8 pixels (exact for unaugmented images)."""
    return x.mul(std).add_(mean).mul_(255).round_().clamp_(0, 255).to(torch.uint8)
