"""torchvision's classification models by name (`--model resnet50`, `--model tv:resnet18`) and their ImageNet weights.

torchvision is imported only when a name is not a built-in: it adds seconds to start-up. A plain name reaches torchvision
when no built-in has it; `tv:NAME` (or `torchvision:NAME`) always does, so a shadowed one (resnet18) stays reachable.
"""

import functools
import sys
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn as nn

from imgcls.models.pretrained import Source
from imgcls.models.registry import ModelInfo

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
    return ModelInfo(
        name,
        f"torchvision {base} (ImageNet architecture)",
        functools.partial(_build, base),
        MIN_SIZE,
        channels=3,
        size=size,
        pretrained=lambda in_shape: imagenet_source(base),
    )


def _build(base: str, in_shape, num_classes) -> nn.Module:
    import torchvision.models as tvm

    return tvm.get_model(base, weights=None, num_classes=num_classes)


def default_weights(base: str):
    """torchvision's default (ImageNet) weights enum member of a model, or None for a model without weights."""
    import torchvision.models as tvm

    return tvm.get_model_weights(base_name(base)).DEFAULT


def cache_path(weights) -> Path:
    """Where torch.hub.load_state_dict_from_url keeps (and first looks for) a weights file: $TORCH_HOME/hub/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def imagenet_source(base: str) -> Source | None:
    """torchvision's default ImageNet weights of a model, read from torch.hub's cache (downloaded there first)."""
    weights = default_weights(base)
    if weights is None:
        return None
    path = cache_path(weights)
    # weights_only, as every file imgcls reads: torch.hub's default would unpickle whatever the file holds.
    fetch = functools.partial(
        torch.hub.load_state_dict_from_url, weights.url, map_location="cpu", progress=sys.stderr.isatty(), weights_only=True
    )
    return Source(f"{base} (torchvision {weights.name})", weights.url, str(path), path.is_file, fetch, IMAGENET_MEAN, IMAGENET_STD)


def listing(pretrained_only: bool) -> list[str]:
    """One line per torchvision classification model; with pretrained_only, those with weights, their file and whether it is cached."""
    lines = []
    for base in classification_models():
        if not pretrained_only:
            lines.append(base)
            continue
        src = imagenet_source(base)
        if src is not None:
            lines.append(f"{base:<22}  {Path(src.where).name:<45}  {'cached' if src.cached() else 'not cached'}")
    return lines
