"""Speed-run networks: small batch-norm CNNs that reach good accuracy in few epochs, even on a CPU.

The recipes (imgcls.recipes) pick these by default. Their shape follows the fastest public CIFAR-10
work (few layers, wide at low resolution, pooling early, batch norm, global max-pool): most compute
goes into 3x3 convolutions on small feature maps, which run efficiently on both CPUs and GPUs.
"""

import math

import torch
import torch.nn as nn

from imgcls.models.registry import register_model


def norm(channels: int, scale: bool = True) -> nn.BatchNorm2d:
    """Batch norm; without `scale` its weight stays 1 (airbench's choice: the following conv can learn any scale itself)."""
    bn = nn.BatchNorm2d(channels)
    bn.weight.requires_grad_(scale)
    return bn


def conv_bn(
    cin: int, cout: int, kernel: int = 3, stride: int = 1, act: type[nn.Module] = nn.GELU, bn_scale: bool = True
) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False), norm(cout, bn_scale), act()]


class ConvGroup(nn.Sequential):
    """conv > max-pool > BN > GELU > conv > BN > GELU: pooling before the norm halves the work of the norm and activation."""

    def __init__(self, cin: int, cout: int, bn_scale: bool = True):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2), norm(cout, bn_scale), nn.GELU(),
            *conv_bn(cout, cout, bn_scale=bn_scale),
        )  # fmt: skip


class PatchWhitening(nn.Conv2d):
    """A frozen conv whose filters whiten the image's k x k patches: the eigenvectors of their covariance over training
    images, each scaled by 1/sqrt(eigenvalue + eps) and also negated (so a following GELU keeps both signs), 2*c*k*k
    channels. Set by init_from_data; until then it holds PyTorch's random init. Its bias still learns."""

    def __init__(self, cin: int, kernel: int = 2, stride: int = 1, eps: float = 5e-4):
        super().__init__(cin, 2 * cin * kernel * kernel, kernel, stride=stride, bias=True)
        self.eps = eps
        self.weight.requires_grad_(False)

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> None:
        """images: normalised float N x C x H x W training images."""
        k, s = self.kernel_size[0], self.stride[0]
        patches = images.float().unfold(2, k, s).unfold(3, k, s)  # N, C, H', W', k, k
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, self.in_channels * k * k)
        values, vectors = torch.linalg.eigh(torch.cov(patches.T).double())
        filters = (vectors.T / (values.clamp(min=0) + self.eps).sqrt()[:, None]).flip(0)  # largest eigenvalue first
        self.weight.copy_(torch.cat([filters, -filters]).view_as(self.weight).to(self.weight))
        self.bias.zero_()


def data_initialised(model: nn.Module) -> list[nn.Module]:
    """The layers that set their initial weights from training images (PatchWhitening)."""
    return [m for m in model.modules() if hasattr(m, "init_from_data") and m is not model]


def init_from_data(model: nn.Module, images: torch.Tensor) -> bool:
    """Let every layer that sets its initial weights from training images do so; whether any did."""
    layers = data_initialised(model)
    for layer in layers:
        layer.init_from_data(images)
    return bool(layers)


def dirac_init(model: nn.Module) -> None:
    """Each 3x3 conv starts as the identity on its first in-channels (the rest keep their random init): a deep net then starts
    close to a shallow one, which trains fast from the first steps (airbench)."""
    for m in model.modules():
        if type(m) is nn.Conv2d and m.kernel_size == (3, 3) and m.out_channels >= m.in_channels and m.groups == 1:
            with torch.no_grad():
                nn.init.dirac_(m.weight[: m.in_channels])


class Scale(nn.Module):
    """Multiplies by a fixed factor (no parameters: checkpoints are the same with or without it)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def _stem_stride(side: int) -> int:
    """Patchify large images down to about 32 px first: the groups cost the same at any input size."""
    return 2 ** max(0, int(math.log2(side / 32)))


@register_model(
    "speednet", "fast BN-CNN: stem > 3 conv groups (W/4W/4W, W=32) > max-pool > linear; the fast recipe's net for colour images", min_size=9
)
def speednet(
    in_shape, num_classes, width: int = 32, whiten: bool = False, dirac: bool = False, bn_scale: bool = True, logit_scale: float = 1.0
) -> nn.Module:
    """width: the first group's channels, the others 4x (airbench94's is 64); whiten: a frozen patch-whitening stem
    (PatchWhitening, set from the training images) instead of a learnt conv; dirac: identity-initialised 3x3 convs;
    bn_scale=False: batch norms without a learnt scale; logit_scale: a fixed factor on the logits (airbench94's 1/9,
    which lets the head share the large lr of the convs behind norms)."""
    c, h, w = in_shape
    widths = (width, 4 * width, 4 * width)
    stride = _stem_stride(min(h, w))
    if whiten:
        kernel = max(2, stride)
        stem_layers, stem = [PatchWhitening(c, kernel, stride), nn.GELU()], 2 * c * kernel * kernel
    else:
        stem = widths[0] // 2
        stem_layers = conv_bn(c, stem, kernel=max(3, stride), stride=stride, bn_scale=bn_scale)
    model = nn.Sequential(
        *stem_layers,
        ConvGroup(stem, widths[0], bn_scale), ConvGroup(widths[0], widths[1], bn_scale), ConvGroup(widths[1], widths[2], bn_scale),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(widths[2], num_classes), *([Scale(logit_scale)] if logit_scale != 1 else []),
    )  # fmt: skip
    if dirac:
        dirac_init(model)
    return model


class FlattenChannelsLast(nn.Module):
    """Flatten in (H, W, C) order: a free view of a channels_last map, whose gradient then has the map's own layout.
    nn.Flatten copies such a map to (C, H, W) order, and the mismatched gradient layout sent the ReLU's backward pass
    down a slow strided path: together 20% of a digitnet training step on 2 CPU cores."""

    def forward(self, x):
        return x.permute(0, 2, 3, 1).flatten(1)


@register_model(
    "digitnet", "fast BN-CNN for digits: conv5x5/2(32) > pool > conv3x3(64) > fc128 > fc; the fast recipe's net for MNIST", min_size=8
)
def digitnet(in_shape, num_classes, widths: tuple[int, int] = (32, 64), hidden: int = 128) -> nn.Module:
    # A strided 5x5 stem and an early pool put the convolutions at 7x7 for MNIST; the fully connected
    # layer then does the rest as one matrix product, the cheapest kind of work on a CPU. ReLU, not GELU:
    # on 2 CPU cores GELU made this net train 1.4x slower (5,900 vs 8,200 img/s).
    c, h, w = in_shape
    maps = [(side + 1) // 2 // 2 for side in (h, w)]
    grid = [min(7, m) for m in maps]
    # Larger images are pooled to 7x7 before the dense layer; at 28 px the pool is skipped (its backward pass
    # alone took 10% of a training step). The first max-pool comes before its norm and ReLU, as in ConvGroup:
    # they then work on a quarter of the pixels (digitnet trained 1.2x faster and reached 99% in fewer images).
    pool = [nn.AdaptiveAvgPool2d(grid)] if grid != maps else []
    return nn.Sequential(
        nn.Conv2d(c, widths[0], 5, stride=2, padding=2, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(widths[0]), nn.ReLU(),
        *conv_bn(widths[0], widths[1], act=nn.ReLU),
        *pool, FlattenChannelsLast(), nn.Linear(widths[1] * grid[0] * grid[1], hidden), nn.ReLU(), nn.Linear(hidden, num_classes),
    )  # fmt: skip
