"""torchvision's classification models by name (`--model resnet50`, `--model tv:resnet18`) and their ImageNet weights.

torchvision is imported only when a name is not a built-in: it adds seconds to start-up. A plain name reaches torchvision
when no built-in has it; `tv:NAME` (or `torchvision:NAME`) always does, so a shadowed one (resnet18) stays reachable.
"""

import functools
import sys
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn as nn

from imgcls.errors import ImgclsError
from imgcls.models.registry import ModelInfo
from imgcls.models.weights import Weights
from imgcls.paths import offline

PREFIXES = ("tv:", "torchvision:")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MIN_SIZE = 32  # below this the 32x-downsampling ImageNet networks have no pixels left


def base_name(name: str) -> str:
    """torchvision's own name of a --model value."""
    for prefix in PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


@functools.cache
def classification_models() -> tuple[str, ...]:
    import torchvision.models as tvm

    return tuple(tvm.list_models(module=tvm))  # the top-level module holds only the classification models


def model_info(name: str) -> ModelInfo | None:
    """The registry entry of a torchvision classification model, or None when torchvision has no such model."""
    base = base_name(name)
    if base not in classification_models():
        return None
    size = 224 if base.startswith("vit_") else None  # position embeddings for one size: torchvision's default
    return ModelInfo(name, f"torchvision {base} (ImageNet architecture)", functools.partial(_build, base), MIN_SIZE, channels=3, size=size)


def _build(base: str, in_shape, num_classes) -> nn.Module:
    import torchvision.models as tvm

    return tvm.get_model(base, weights=None, num_classes=num_classes)


def default_weights(name: str):
    """torchvision's default (ImageNet) weights enum member of a model, or None (built-ins, and models without weights)."""
    from imgcls.models.registry import MODELS

    if name in MODELS or model_info(name) is None:
        return None
    import torchvision.models as tvm

    return tvm.get_model_weights(base_name(name)).DEFAULT


def cache_path(weights) -> Path:
    """Where torch.hub.load_state_dict_from_url keeps (and first looks for) a weights file: $TORCH_HOME/hub/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def pretrained_weights(model: str | None, pretrained: str, weights_file: str | None) -> tuple[Weights | None, str]:
    """--pretrained resolved: the ImageNet weights to start from (or None) and 'on' or 'off'. `on` without them is an
    error; `auto` says in one line why it trains from scratch instead. model None is the recipe's (built-in) model."""
    if pretrained == "off":
        return None, "off"
    if weights_file:
        if pretrained == "on":
            raise ImgclsError("--pretrained on and --weights both give initial weights: pass one of them")
        return None, "off"
    weights = default_weights(model) if model else None
    if weights is None:
        if pretrained == "on":
            raise ImgclsError(
                f"--pretrained on: model '{model or 'the recipe default'}' has no pretrained weights: pick a torchvision model (`imgcls models --pretrained`)"
            )
        return None, "off"
    path = cache_path(weights)
    try:
        if not path.is_file() and offline():
            raise OSError("IMGCLS_OFFLINE is set, so nothing is downloaded")
        # weights_only, as every file imgcls reads: torch.hub's default would unpickle whatever the file holds.
        state_dict = torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", progress=sys.stderr.isatty(), weights_only=True)
    except Exception as e:  # noqa: BLE001 - no network, a refused download or a damaged file all mean: no weights
        problem = (
            f"--pretrained {pretrained}: no ImageNet weights for {base_name(model)} ({weights.url} -> {path}: {str(e).splitlines()[0] or type(e).__name__}); "
            f"put the file at that path"
        )
        if pretrained == "on":
            raise ImgclsError(f"{problem}, or use --pretrained auto to train from scratch") from None
        print(f"imgcls: {problem}; training from scratch instead", file=sys.stderr)
        return None, "off"
    return Weights(path, state_dict, model), "on"


def imagenet_normalised(data, pretrained: str):
    """The dataset with ImageNet's mean and std when the model starts from ImageNet weights (the checkpoint records them)."""
    return replace(data, mean=IMAGENET_MEAN, std=IMAGENET_STD) if pretrained == "on" else data


def listing(pretrained_only: bool) -> list[str]:
    """One line per torchvision classification model; with pretrained_only, those with weights, their file and whether it is cached."""
    import torchvision.models as tvm

    lines = []
    for base in classification_models():
        if not pretrained_only:
            lines.append(base)
            continue
        weights = tvm.get_model_weights(base).DEFAULT
        path = cache_path(weights)
        lines.append(f"{base:<22}  {path.name:<45}  {'cached' if path.is_file() else 'not cached'}")
    return lines
