"""The model registry: every model is built from (input shape, class count) by name."""

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from imgcls.errors import ImgclsError

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    build: Builder  # build(in_shape=(C, H, W), num_classes=K, **options)
    min_size: int = 1  # smallest H/W the architecture accepts
    convolutional: bool = True  # channels_last only helps convolutions
    channels: int | None = None  # the one channel count it takes, for models built for RGB only
    size: int | None = None  # the one image side it takes (torchvision's ViTs)
    pretrained: Callable[[tuple[int, int, int]], object] | None = None  # in_shape -> its pretrained.Source, or None


MODELS: dict[str, ModelInfo] = {}
# Families of models found by name beyond the built-ins (torchvision's, timm's): name -> ModelInfo or None.
RESOLVERS: list[Callable[[str], ModelInfo | None]] = []


def register_model(name: str, description: str, min_size: int = 1, convolutional: bool = True, pretrained=None):
    def wrap(fn: Builder) -> Builder:
        MODELS[name] = ModelInfo(name, description, fn, min_size, convolutional, pretrained=pretrained)
        return fn

    return wrap


def get_model_info(name: str) -> ModelInfo:
    """A built-in model, else the first family (RESOLVERS) that has a model of that name."""
    if name in MODELS:
        return MODELS[name]
    for resolve in RESOLVERS:
        info = resolve(name)
        if info is not None:
            return info
    raise ImgclsError(
        f"unknown model '{name}': choose one of {', '.join(MODELS)}, a torchvision classification model or timm:NAME (see `imgcls models --all`)"
    )


def check_input(name: str, in_shape: tuple[int, int, int]) -> None:
    """Refuse data the model cannot take, before a run folder is made."""
    info = get_model_info(name)
    if info.channels is not None and in_shape[0] != info.channels:
        # torchvision's models: a grey-to-RGB wrapper would rename every tensor and break loading their weights.
        raise ImgclsError(f"model '{name}' takes {info.channels}-channel images, the data has {in_shape[0]}: pick a built-in model")
    if info.size is not None and tuple(in_shape[1:]) != (info.size, info.size):
        raise ImgclsError(
            f"model '{name}' takes {info.size}x{info.size} images, got {in_shape[1]}x{in_shape[2]}: pass --image-size {info.size}"
        )
    if min(in_shape[1:]) < info.min_size:
        raise ImgclsError(
            f"model '{name}' needs images of at least {info.min_size}x{info.min_size}, got {in_shape[1]}x{in_shape[2]}: pass --image-size or pick another model"
        )


def create_model(name: str, in_shape: tuple[int, int, int], num_classes: int, **options) -> nn.Module:
    check_input(name, in_shape)
    return get_model_info(name).build(in_shape=tuple(in_shape), num_classes=num_classes, **options)


def model_options(name: str) -> set[str]:
    """The keyword options a model's builder takes beyond the input shape and class count."""
    return set(inspect.signature(get_model_info(name).build).parameters) - {"in_shape", "num_classes"}


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
