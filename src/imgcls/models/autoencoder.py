"""Convolutional autoencoders (plain and variational, trained by `imgcls autoencode`) and `aenet`, the classifier whose encoder is theirs.

The encoder halves the image with strided 3x3 conv-BN-ReLU blocks until its smaller side is at most 8 px, then maps the
flattened map to the code with one linear layer (`code`; a VAE adds `logvar`). The decoder mirrors it with 4x4 stride-2
transposed convs, each doubling the side, and crops to H x W (odd sides overshoot), ending in pixel logits.
aenet names its encoder's tensors as the autoencoder does, so `imgcls train --weights AE_RUN` loads them.
"""

import torch
import torch.nn as nn

from imgcls.models.fast import FlattenChannelsLast, conv_bn

SMALLEST_MAP = 8  # the encoder halves until the map's smaller side is at most this
WIDTHS = (32, 64, 128, 128, 128, 128)  # channels after each halving


def default_latent_dim(in_shape) -> int:
    """16 numbers hold a digit well; colour images need more."""
    return 16 if in_shape[0] == 1 else 64


def map_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """(H, W) of the image and after each halving (3x3, stride 2, padding 1): at least two halvings."""
    sizes = [(h, w)]
    while len(sizes) < 3 or min(sizes[-1]) > SMALLEST_MAP:
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    return sizes


class Encoder(nn.Module):
    """Image -> code (N x latent_dim); variational: also the log-variance of each code number."""

    def __init__(self, in_shape, latent_dim: int, variational: bool = False):
        super().__init__()
        c, h, w = in_shape
        sizes = map_sizes(h, w)
        channels = [c, *WIDTHS[: len(sizes) - 1]]
        blocks = [layer for cin, cout in zip(channels, channels[1:]) for layer in conv_bn(cin, cout, stride=2, act=nn.ReLU)]
        self.features = nn.Sequential(*blocks, FlattenChannelsLast())
        flat = channels[-1] * sizes[-1][0] * sizes[-1][1]
        self.code = nn.Linear(flat, latent_dim)
        self.logvar = nn.Linear(flat, latent_dim) if variational else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        features = self.features(x)
        return self.code(features), self.logvar(features) if self.logvar is not None else None


def up(cin: int, cout: int, last: bool = False) -> list[nn.Module]:
    """A 4x4 stride-2 transposed conv (twice the side; a kernel the stride divides, so no checkerboard), then BN-ReLU
    unless last."""
    conv = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=last)
    return [conv] if last else [conv, nn.BatchNorm2d(cout), nn.ReLU()]


class Decoder(nn.Module):
    """Code -> pixel logits (N x C x H x W); sigmoid gives pixels in [0, 1]."""

    def __init__(self, in_shape, latent_dim: int):
        super().__init__()
        c, h, w = in_shape
        sizes = map_sizes(h, w)
        channels = [c, *WIDTHS[: len(sizes) - 1]]
        self.grid, self.size = (channels[-1], *sizes[-1]), (h, w)
        self.expand = nn.Sequential(nn.Linear(latent_dim, channels[-1] * sizes[-1][0] * sizes[-1][1]), nn.ReLU())
        self.body = nn.Sequential(*(layer for i in range(len(sizes) - 2, -1, -1) for layer in up(channels[i + 1], channels[i], i == 0)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c, h, w = self.grid
        # (H, W, C) order, as the encoder flattens: the map comes out channels_last, the layout its convs run fastest in
        x = self.body(self.expand(z).view(-1, h, w, c).permute(0, 3, 1, 2))
        return x[:, :, : self.size[0], : self.size[1]]  # doubling overshoots odd sides by a pixel or more


class AutoEncoder(nn.Module):
    def __init__(self, in_shape, latent_dim: int, variational: bool = False):
        super().__init__()
        self.in_shape, self.latent_dim, self.variational = tuple(in_shape), latent_dim, variational
        self.encoder = Encoder(in_shape, latent_dim, variational)
        self.decoder = Decoder(in_shape, latent_dim)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None):
        """Normalised images -> (pixel logits, code, log-variance). A VAE decodes code + exp(logvar / 2) * noise when
        given noise (training), its mean code otherwise."""
        code, logvar = self.encoder(x)
        z = code if noise is None or logvar is None else code + (0.5 * logvar).exp() * noise
        return self.decoder(z), code, logvar


class AENet(nn.Module):
    """The autoencoder's encoder and a linear head on its code."""

    def __init__(self, in_shape, num_classes: int):
        super().__init__()
        latent = default_latent_dim(in_shape)
        self.encoder = Encoder(in_shape, latent)
        self.head = nn.Linear(latent, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)[0])
