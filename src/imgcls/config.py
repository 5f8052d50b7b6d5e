"""Training configuration: what the user set, filled in with defaults that suit the dataset and optimizer."""

import numbers
from dataclasses import fields
from types import SimpleNamespace

from imgcls.data.core import Dataset
from imgcls.device import pick_device
from imgcls.errors import ImgclsError
from imgcls.models import MODELS, check_input, get_model_info, model_options
from imgcls.options import (  # noqa: F401 - TrainConfig and its constants are imported from here too
    DEFAULT_LR,
    DEFAULT_WEIGHT_DECAY,
    LIMITS,
    MAX_HIDDEN,
    MAX_LAYERS,
    MAX_SIDE,
    MAX_WIDTH,
    MODEL_OPTIONS,
    OPTIMIZERS,
    PAD_MODES,
    POOLS,
    PRECISIONS,
    PRETRAINED,
    SCHEDULES,
    SETUP,
    TRAIN,
    TrainConfig,
)
from imgcls.recipes import RECIPES, fine_tuning, recipe_settings


def check(cfg: TrainConfig) -> None:
    """Reject values no run can use, before any data is loaded."""
    if cfg.recipe not in RECIPES:
        raise ImgclsError(f"unknown recipe '{cfg.recipe}': choose one of {', '.join(RECIPES)}")
    if cfg.model is not None:
        get_model_info(cfg.model)
    pick_device(cfg.device)
    for f in fields(cfg):
        value, choices = getattr(cfg, f.name), f.metadata.get("choices")
        if choices and f.name not in ("recipe", "device") and value is not None and value not in choices:
            raise ImgclsError(f"unknown {f.name.replace('_', ' ')} '{value}': choose one of {', '.join(choices)}")
        if f.type in (bool, bool | None) and value is not None and not isinstance(value, bool):
            raise ImgclsError(f"--{f.name.replace('_', '-')} must be true or false, got {value!r}")
    if cfg.model_args is not None and not (isinstance(cfg.model_args, dict) and all(isinstance(k, str) for k in cfg.model_args)):
        raise ImgclsError(f"--model-args must be a JSON object of named arguments, such as '{{\"hidden\": 256}}', got {cfg.model_args!r}")
    check_limits(cfg, LIMITS)
    if cfg.sync_bn and pick_device(cfg.device).type != "cuda":
        raise ImgclsError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only): drop it, or train with --device cuda")
    if cfg.precision == "fp16" and pick_device(cfg.device).type == "cpu":
        # Refused rather than warned about: CPU fp16 autocast has no fast kernels and trains ~90x slower than fp32,
        # so the run would look hung and a warning scrolls away; nothing is lost by asking for another precision.
        raise ImgclsError("--precision fp16 runs ~90x slower than fp32 on a CPU: use --precision auto (bf16 where the CPU has it) or fp32")
    for option in MODEL_OPTIONS:
        if getattr(cfg, option) is not None and cfg.model is not None and option not in model_options(cfg.model):
            flag = "--" + option.replace("_", "-")
            takers = [name for name in MODELS if option in model_options(name)]
            raise ImgclsError(f"{flag} applies to: {', '.join(takers)}; model '{cfg.model}' has no {option.replace('_', ' ')} option")


def check_limits(cfg, limits: dict) -> None:
    """Each numeric setting of `cfg` named in `limits` (as LIMITS) of the right type and in range; None is unset."""
    for name, (kind, allowed, wanted) in limits.items():
        value, flag = getattr(cfg, name), "--" + name.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral if kind is int else numbers.Real):
            raise ImgclsError(f"{flag} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
        if not allowed(value):
            raise ImgclsError(f"{flag} must be {wanted}, got {value}")


def saved_model_options(model: str, options, source: str) -> dict:
    """A checkpoint's model_options, checked as a user's options are: one its model does not take, or a value out of
    range, is one line naming the file, not an error about an option the user never passed."""
    fix = "it was edited or written by another version; retrain, or use the run's own best.pt"
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ImgclsError(f"{source} holds model options that are not a dict: {fix}")
    unknown = sorted(map(str, set(options) - model_options(model)))
    if unknown:
        raise ImgclsError(f"{source} holds model options that model '{model}' does not take ({', '.join(unknown)}): {fix}")
    try:
        check_limits(SimpleNamespace(**options), {k: v for k, v in LIMITS.items() if k in options})
    except ImgclsError as e:
        raise ImgclsError(f"{source} holds a model option out of range ({str(e).removeprefix('--')}): {fix}") from None
    return options


def base_optimizer(name: str) -> str:
    """The optimizer whose lr and decay `name` takes: muon steps all but the conv filters as sgd does."""
    return {"muon": "sgd"}.get(name, name)


def fill_defaults(cfg: TrainConfig, data: Dataset) -> TrainConfig:
    """Every unset option from the recipe's settings for this data; lr and weight decay follow the
    optimizer when the user picked another one than the recipe's, and the lr does for another model."""
    values = cfg.to_dict()
    recipe = recipe_settings(cfg.recipe, data, {k: v for k, v in values.items() if v is not None})
    own_optimizer = cfg.optimizer is not None and base_optimizer(cfg.optimizer) != base_optimizer(recipe["optimizer"])
    if own_optimizer:
        base = base_optimizer(cfg.optimizer)
        recipe.update(lr=DEFAULT_LR[base], weight_decay=DEFAULT_WEIGHT_DECAY[base])
    elif cfg.model is not None and cfg.model != recipe["model"] and not fine_tuning(values):
        recipe.update(lr=DEFAULT_LR[base_optimizer(recipe["optimizer"])])  # fine-tuning's lr suits any pretrained model
    for key, value in recipe.items():
        if values[key] is None:
            values[key] = value
    if not fine_tuning(values):
        values.update(freeze_epochs=0, lr_mult=1.0)  # fine-tuning settings mean nothing without weights to start from
    filled = TrainConfig.from_dict(values)
    check(filled)  # again, now that the model is known
    check_input(filled.model, data.shape)
    if filled.pad_mode == "reflect" and filled.crop_padding and filled.crop_padding >= min(data.shape[1:]):
        raise ImgclsError(
            f"--crop-padding {filled.crop_padding} with --pad-mode reflect needs images larger than that: lower it or use zeros"
        )
    return filled
