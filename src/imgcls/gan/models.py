"""DCGAN-style generator and discriminator, built for the data's image shape, class-conditional when given classes.

The generator turns noise (and a class) into a small feature map that transposed convolutions double in size until it
reaches the image; the discriminator mirrors it with strided convolutions and scores its whole last feature map (a
linear layer on all of it, as DCGAN's does): pooling the map would leave a discriminator that sees only 12 px patches of a
28 px digit, which judged stroke texture and never digit shape. Conditioning: the generator's batch norms take a scale
and shift per class (conditional batch norm); the discriminator scores how well its features match the class's
embedding (a projection discriminator, Miyato & Koyama 2018) and has a classifier head trained on the real images,
whose verdict on generated ones the generator also learns from (AC-GAN's auxiliary classifier). Every discriminator
layer but that head is spectrally normalised, the Lipschitz bound that keeps the hinge loss stable without a gradient
penalty.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from imgcls.errors import ImgclsError

MIN_START, MAX_SIDE = 3, 128  # smallest feature map the generator starts from; the largest image side supported


def upsamplings(shape: tuple[int, int, int]) -> int:
    """How many times the generator doubles its starting map: as often as both sides halve evenly, down to MIN_START."""
    _, h, w = shape
    if max(h, w) > MAX_SIDE:
        raise ImgclsError(
            f"imgcls gan builds for images up to {MAX_SIDE} px, got {h}x{w}: pass --image-size {min(64, MAX_SIDE)} or smaller"
        )
    n = 0
    while h % 2 == 0 and w % 2 == 0 and min(h, w) // 2 >= MIN_START:
        h, w, n = h // 2, w // 2, n + 1
    if n < 2:
        raise ImgclsError(
            f"imgcls gan needs image sides that are multiples of 4 (at least 12 px), got {shape[1]}x{shape[2]}: pass --image-size 32"
        )
    return n


def widths(width: int, n: int) -> list[int]:
    """Channels from the smallest map to the largest: doubling towards the small maps, as in DCGAN."""
    return [width * 2 ** (n - i) for i in range(n + 1)]


class ConditionalNorm(nn.Module):
    """Batch norm whose scale and shift come from the class (plain batch norm without classes)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=num_classes == 0)
        if num_classes:
            self.scale = nn.Embedding(num_classes, channels)
            self.shift = nn.Embedding(num_classes, channels)
            nn.init.ones_(self.scale.weight)
            nn.init.zeros_(self.shift.weight)
        self.conditional = num_classes > 0

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        x = self.norm(x)
        if not self.conditional:
            return x
        return x * self.scale(y)[:, :, None, None] + self.shift(y)[:, :, None, None]


class Generator(nn.Module):
    def __init__(self, shape: tuple[int, int, int], num_classes: int = 0, z_dim: int = 128, width: int = 32):
        super().__init__()
        n = upsamplings(shape)
        self.shape, self.num_classes, self.z_dim = tuple(shape), num_classes, z_dim
        self.start = (shape[1] >> n, shape[2] >> n)
        chans = widths(width, n)
        self.project = nn.Linear(z_dim, chans[0] * self.start[0] * self.start[1])
        self.norms = nn.ModuleList(ConditionalNorm(c, num_classes) for c in chans)
        self.ups = nn.ModuleList(nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False) for a, b in zip(chans[:-1], chans[1:]))
        self.to_image = nn.Conv2d(chans[-1], shape[0], 3, padding=1)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [-1, 1] for noise z (N x z_dim) and, when conditional, classes y (N)."""
        x = self.project(z).view(len(z), -1, *self.start)
        x = F.relu(self.norms[0](x, y))
        for up, norm in zip(self.ups, self.norms[1:]):
            x = F.relu(norm(up(x), y))
        return torch.tanh(self.to_image(x))


class Discriminator(nn.Module):
    def __init__(self, shape: tuple[int, int, int], num_classes: int = 0, width: int = 32):
        super().__init__()
        n = upsamplings(shape)
        chans = widths(width, n)[::-1]
        features = chans[-1] * (shape[1] >> n) * (shape[2] >> n)
        self.stem = spectral_norm(nn.Conv2d(shape[0], chans[0], 3, padding=1))
        self.downs = nn.ModuleList(spectral_norm(nn.Conv2d(a, b, 4, 2, 1)) for a, b in zip(chans[:-1], chans[1:]))
        self.score = spectral_norm(nn.Linear(features, 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, features)) if num_classes else None
        # Not normalised: its logits must grow past spectral norm's bound to classify confidently.
        self.classify = nn.Linear(features, num_classes) if num_classes else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, logits: bool = False):
        """One realness score per image (N): higher means more real, for its class when conditional. With logits=True
        (conditional only), also the classifier head's class logits (N x classes)."""
        h = F.leaky_relu(self.stem(x), 0.1)
        for down in self.downs:
            h = F.leaky_relu(down(h), 0.1)
        h = h.flatten(1)
        out = self.score(h).squeeze(1)
        if self.embed is not None:
            out = out + (self.embed(y) * h).sum(1)
        return (out, self.classify(h)) if logits else out
