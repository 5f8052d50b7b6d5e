"""timm's models by name (`--model timm:convnext_nano`, `timm:resnet18.a1_in1k` for one of its weights) and their
pretrained weights from the Hugging Face cache. timm is an optional extra (imgcls[timm]).

timm is imported only when a timm: name is used: importing it costs seconds. timm builds a model for any channel
count and class count, so grey data works too; its pretrained first convolution is then summed over RGB, as timm does.
"""

import functools
from pathlib import Path

import torch
import torch.nn as nn

from imgcls.errors import ImgclsError, missing_extra
from imgcls.models.pretrained import Source
from imgcls.models.registry import ModelInfo

PREFIX = "timm:"
FALLBACK_MIN_SIZE = 32  # when the probe cannot tell: below this the 32x-downsampling ImageNet networks have no pixels left
FILE = "model.safetensors"  # timm's own Hub repositories all have one; a pickled file is never read


def _timm(name: str):
    try:
        import timm
    except ImportError as e:
        raise missing_extra(f"model '{name}'", "timm", e) from None
    return timm


def pretrained_cfg(name: str):
    """timm's pretrained config of a --model value (its default weights, or those of its tag); ImgclsError for names timm lacks."""
    timm = _timm(name)
    base = name.removeprefix(PREFIX)
    if not timm.is_model(base):
        raise ImgclsError(f"unknown model '{name}': timm {timm.__version__} has no model '{base}' (`imgcls models --all` lists them)")
    try:
        # None for an architecture registered without one (a plugin's): timm's defaults then, and no weights.
        return timm.models.get_pretrained_cfg(base) or timm.models.PretrainedCfg()
    except RuntimeError:  # is_model ignores the tag; an unknown one fails here
        arch = base.split(".")[0]
        tags = ", ".join(n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")) or "none"
        raise ImgclsError(f"unknown model '{name}': timm's {arch} has no weights '{base.split('.', 1)[1]}' (its tags: {tags})") from None


def model_info(name: str) -> ModelInfo | None:
    """The registry entry of a timm model, or None for a name without the timm: prefix."""
    if not name.startswith(PREFIX):
        return None
    cfg = pretrained_cfg(name)
    base = name.removeprefix(PREFIX)
    # ViTs and the like: position embeddings for one size. Refused at other sizes rather than built for them (timm's
    # img_size), so that the pretrained position embeddings fit.
    size = cfg.input_size[-1] if cfg.fixed_input_size else None
    return ModelInfo(
        name,
        f"timm {base}",
        functools.partial(_build, base),
        1 if size else min_side(base, max(cfg.input_size[1:])),
        size=size,
        pretrained=functools.partial(hub_source, base) if cfg.hf_hub_id else None,
    )


@functools.cache
def min_side(base: str, input_side: int) -> int:
    """The smallest square image side the model takes, found by shape inference on the meta device (no weights, no
    arithmetic): 1 for ResNets and EfficientNets (MNIST's 28 works), 32 for ConvNeXt, 75 for Inception, 223 for DLA.
    Refusing smaller images before training beats timm's traceback in the first batch."""
    import timm

    def takes(side: int) -> bool:
        try:
            with torch.no_grad():
                net(torch.empty(1, 3, side, side, device="meta"))
            return True
        except Exception:  # noqa: BLE001 - too small: whatever the layer that runs out of pixels raises
            return False

    try:
        with torch.device("meta"):
            net = timm.create_model(base, pretrained=False, num_classes=2).eval()
    except Exception:  # noqa: BLE001 - a model that cannot be built on the meta device
        return FALLBACK_MIN_SIZE
    if takes(1):
        return 1
    if not takes(input_side):  # not even its own size: the meta device lacks something it needs
        return FALLBACK_MIN_SIZE
    fails, works = 1, input_side
    while works - fails > 1:
        side = (fails + works) // 2
        fails, works = (fails, side) if takes(side) else (side, works)
    return works


def _build(base: str, in_shape, num_classes) -> nn.Module:
    import timm

    return timm.create_model(base, pretrained=False, num_classes=num_classes, in_chans=in_shape[0])


def _per_channel(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    """RGB mean or std for `channels` inputs, matching timm's adapt_input_conv: averaged for grey, repeated otherwise."""
    if channels == 1:
        return (sum(values) / len(values),)
    return tuple(values[i % len(values)] for i in range(channels))


def hub_source(base: str, in_shape: tuple[int, int, int]) -> Source | None:
    """timm's default (or tagged) weights of a model: model.safetensors of its Hugging Face repository, read from the
    Hugging Face cache ($HF_HOME/hub, $HF_HUB_CACHE) and downloaded there first when missing."""
    import timm
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.file_download import repo_folder_name

    cfg = timm.models.get_pretrained_cfg(base)
    if cfg is None or not cfg.hf_hub_id:
        return None
    repo, channels = cfg.hf_hub_id, in_shape[0]

    def cached_file() -> str | None:
        found = try_to_load_from_cache(repo, FILE)
        return found if isinstance(found, str) else None  # None, or a marker for a file the Hub lacks

    # Not cached yet: the path the Hub's revision "main" is read from without refs/main, so a file put there by hand is used.
    where = cached_file() or str(
        Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model") / "snapshots" / "main" / FILE
    )

    def fetch() -> dict[str, torch.Tensor]:
        from huggingface_hub import hf_hub_download
        from safetensors.torch import load_file

        # A cached file is read as it is, as torch.hub does: no request to the Hub for a newer revision.
        state_dict = load_file(cached_file() or hf_hub_download(repo, FILE), device="cpu")
        pretrained_channels = cfg.input_size[0]
        first_convs = [cfg.first_conv] if isinstance(cfg.first_conv, str) else list(cfg.first_conv or ())
        for conv in first_convs:
            key = f"{conv}.weight"
            if channels != pretrained_channels and key in state_dict and state_dict[key].ndim == 4:
                state_dict[key] = timm.models.adapt_input_conv(channels, state_dict[key], base_chans=pretrained_channels)
        return state_dict

    name = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    return Source(
        f"{name} (timm)",
        f"https://huggingface.co/{repo}",
        where,
        lambda: cached_file() is not None,
        fetch,
        _per_channel(tuple(cfg.mean), channels),
        _per_channel(tuple(cfg.std), channels),
    )


def listing(pretrained_only: bool) -> list[str]:
    """One line per timm model as a --model value; with pretrained_only, the weights in the Hugging Face cache only
    (timm has thousands: these are the ones usable offline). ImportError without timm."""
    import timm

    if not pretrained_only:
        return [PREFIX + name for name in timm.list_models()]
    lines = []
    for name in timm.list_pretrained():
        src = hub_source(name, (3, 1, 1))
        if src is not None and src.cached():
            lines.append(f"{PREFIX + name:<22}  {FILE:<45}  cached")
    return lines


def hub_cache() -> str:
    """The Hugging Face cache folder timm's weights are looked for in."""
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE
