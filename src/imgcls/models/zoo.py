"""The built-in models: the tutorials' MLP, small CNN and LeNet-5, a ResNet-18 for small images and photos, and aenet."""

import math
from collections import OrderedDict

import torch.nn as nn

from imgcls.models.autoencoder import AENet
from imgcls.models.registry import register_model
from imgcls.models.torchvision_models import imagenet_source

SMALL_SIDE = 64  # up to this image side, ResNet-18 keeps the resolution of its first blocks (small-image variant)


def _conv_out(size: int, kernel: int) -> int:
    """Side of a valid (unpadded) convolution followed by a 2x2 max-pool."""
    return (size - kernel + 1) // 2


@register_model("mlp", "fully connected 512-256-128-64 with ReLU (the MNIST tutorial net)", convolutional=False)
def mlp(in_shape, num_classes, hidden=(512, 256, 128, 64), dropout: float = 0.0) -> nn.Module:
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    width = math.prod(in_shape)
    for i, h in enumerate(hidden, 1):
        layers += [(f"fc{i}", nn.Linear(width, h)), (f"relu{i}", nn.ReLU(inplace=True))]
        if dropout > 0:
            layers.append((f"drop{i}", nn.Dropout(dropout)))
        width = h
    layers.append(("head", nn.Linear(width, num_classes)))
    return nn.Sequential(OrderedDict(layers))


@register_model("cnn", "conv5x5(8) > pool > conv3x3(16) > pool > fc128 > fc (76,922 params on CIFAR-10)", min_size=12)
def cnn(in_shape, num_classes) -> nn.Module:
    c, h, w = in_shape
    flat = 16 * _conv_out(_conv_out(h, 5), 3) * _conv_out(_conv_out(w, 5), 3)
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(c, 8, 5)), ("relu1", nn.ReLU(inplace=True)), ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(8, 16, 3)), ("relu2", nn.ReLU(inplace=True)), ("pool2", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()), ("fc1", nn.Linear(flat, 128)), ("relu3", nn.ReLU(inplace=True)),
        ("head", nn.Linear(128, num_classes)),
    ]))  # fmt: skip


@register_model("lenet5", "LeNet-5 of the PyTorch CIFAR-10 tutorial: conv6 > pool > conv16 > pool > 120 > 84", min_size=16)
def lenet5(in_shape, num_classes) -> nn.Module:
    c, h, w = in_shape
    flat = 16 * _conv_out(_conv_out(h, 5), 5) * _conv_out(_conv_out(w, 5), 5)
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(c, 6, 5)), ("relu1", nn.ReLU(inplace=True)), ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(6, 16, 5)), ("relu2", nn.ReLU(inplace=True)), ("pool2", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()), ("fc1", nn.Linear(flat, 120)), ("relu3", nn.ReLU(inplace=True)),
        ("fc2", nn.Linear(120, 84)), ("relu4", nn.ReLU(inplace=True)), ("head", nn.Linear(84, num_classes)),
    ]))  # fmt: skip


def _resnet18_weights(in_shape):
    """torchvision's ImageNet weights fit the ImageNet architecture only: above SMALL_SIDE px, on colour images."""
    return imagenet_source("resnet18") if in_shape[0] == 3 and min(in_shape[1:]) > SMALL_SIDE else None


@register_model(
    "resnet18",
    f"ResNet-18 (11.2M params): torchvision's ImageNet architecture above {SMALL_SIDE} px; up to {SMALL_SIDE} px the small-image variant (3x3 stem, no max-pool)",
    pretrained=_resnet18_weights,
)
def resnet18(in_shape, num_classes) -> nn.Module:
    from torchvision.models import resnet18 as tv_resnet18  # imported on use: torchvision adds seconds to start-up

    model = tv_resnet18(weights=None, num_classes=num_classes)
    if min(in_shape[1:]) <= SMALL_SIDE:
        # The CIFAR-style stem: a 7x7/2 conv and a max-pool would shrink a 32x32 image to 8x8 before the first block.
        model.conv1 = nn.Conv2d(in_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_shape[0] != 3:
        model.conv1 = nn.Conv2d(in_shape[0], 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


@register_model("aenet", "`imgcls autoencode`'s encoder (strided conv-BN-ReLU > linear code) > linear head; --weights AE_RUN loads it")
def aenet(in_shape, num_classes) -> nn.Module:
    return AENet(in_shape, num_classes)
