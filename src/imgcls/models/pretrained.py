"""Pretrained (ImageNet) weights: where a model's come from, and what `--pretrained {auto,on,off}` makes of them.

Each family of models says where its weights live (torchvision: torch.hub's cache, timm: the Hugging Face cache) by
giving a Source; the decision to use them, and the one line or error when they cannot be had, is the same for all.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from imgcls.errors import ImgclsError
from imgcls.models.registry import get_model_info
from imgcls.models.weights import Weights
from imgcls.paths import offline

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """One model's pretrained weights: what they are, where they are cached, and how to get them."""

    name: str  # "resnet18 (torchvision IMAGENET1K_V1)"
    origin: str  # where they are downloaded from
    where: str  # where the loader looks first: the file to put there by hand when offline
    cached: Callable[[], bool]
    fetch: Callable[[], dict[str, torch.Tensor]]  # the state dict, downloaded into the cache first when missing
    mean: tuple[float, ...]
    std: tuple[float, ...]


def source(model: str | None, in_shape: tuple[int, int, int]) -> Source | None:
    """Where the pretrained weights of `model` for this input come from; None when it has none."""
    if model is None:
        return None
    info = get_model_info(model)
    return info.pretrained(tuple(in_shape)) if info.pretrained else None


def pretrained_weights(
    model: str | None, in_shape: tuple[int, int, int], pretrained: str, weights_file: str | None
) -> tuple[Weights | None, str]:
    """--pretrained resolved: the weights to start from (or None) and 'on' or 'off'. `on` without them is an error;
    `auto` says in one line why it trains from scratch instead."""
    if pretrained == "off":
        return None, "off"
    if weights_file:
        if pretrained == "on":
            raise ImgclsError("--pretrained on and --weights both give initial weights: pass one of them")
        return None, "off"
    src = source(model, in_shape)
    if src is None:
        if pretrained == "on":
            raise ImgclsError(
                f"--pretrained on: model '{model or 'the recipe default'}' has no pretrained weights for {'x'.join(map(str, in_shape))} images: "
                "pick a torchvision or timm model (`imgcls models --pretrained`)"
            )
        return None, "off"
    try:
        if not src.cached() and offline():
            raise OSError("IMGCLS_OFFLINE is set, so nothing is downloaded")
        state_dict = src.fetch()
    except Exception as e:  # noqa: BLE001 - no network, a refused download or a damaged file all mean: no weights
        problem = (
            f"--pretrained {pretrained}: no ImageNet weights for {src.name} ({src.origin} -> {src.where}: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}); put the file at that path"
        )
        if pretrained == "on":
            raise ImgclsError(f"{problem}, or use --pretrained auto to train from scratch") from None
        LOG.warning(f"imgcls: {problem}; training from scratch instead")
        return None, "off"
    return Weights(src.where, state_dict, model), "on"


def pretrained_normalised(data, model: str, pretrained: str):
    """The dataset with the pretrained weights' mean and std (ImageNet's) when the model starts from them; the
    checkpoint records them, so predict, export and serve need nothing else."""
    src = source(model, data.shape) if pretrained == "on" else None
    return replace(data, mean=src.mean, std=src.std) if src else data
