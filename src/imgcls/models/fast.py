"""Speed-run networks: small batch-norm CNNs that reach good accuracy in few epochs, even on a CPU.

The recipes (imgcls.recipes) pick these by default. Their shape follows the fastest public CIFAR-10
work (few layers, wide at low resolution, pooling early, batch norm, global max-pool): most compute
goes into 3x3 convolutions on small feature maps, which run efficiently on both CPUs and GPUs.
"""

import math

import torch.nn as nn

from imgcls.models.registry import register_model


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, act: type[nn.Module] = nn.GELU) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout), act()]


class ConvGroup(nn.Sequential):
    """conv > max-pool > BN > GELU > conv > BN > GELU: pooling before the norm halves the work of the norm and activation."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(cout), nn.GELU(),
            *conv_bn(cout, cout),
        )  # fmt: skip


def _stem_stride(side: int) -> int:
    """Patchify large images down to about 32 px first: the groups cost the same at any input size."""
    return 2 ** max(0, int(math.log2(side / 32)))


@register_model(
    "speednet", "fast BN-CNN: stem > 3 conv groups (32/128/128) > max-pool > linear; the fast recipe's net for colour images", min_size=8
)
def speednet(in_shape, num_classes, widths: tuple[int, int, int] = (32, 128, 128)) -> nn.Module:
    c, h, w = in_shape
    stride = _stem_stride(min(h, w))
    stem = widths[0] // 2
    return nn.Sequential(
        *conv_bn(c, stem, kernel=max(3, stride), stride=stride),
        ConvGroup(stem, widths[0]), ConvGroup(widths[0], widths[1]), ConvGroup(widths[1], widths[2]),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(widths[2], num_classes),
    )  # fmt: skip


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
