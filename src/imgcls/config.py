"""Training configuration: what the user set, filled in with defaults that suit the dataset and optimizer."""

import math
import numbers
from dataclasses import asdict, dataclass, fields
from types import SimpleNamespace

from imgcls.data.augment import Augment
from imgcls.data.core import Dataset
from imgcls.data.images import MAX_PIXELS
from imgcls.device import pick_device
from imgcls.errors import ImgclsError
from imgcls.models import MODELS, check_input, get_model_info, model_options
from imgcls.models.recurrent import POOLS
from imgcls.recipes import RECIPES, fine_tuning, recipe_settings

OPTIMIZERS = ("sgd", "adam", "adamw", "muon")  # muon: Muon for conv filters, sgd for the rest (imgcls.optim)
SCHEDULES = ("cosine", "onecycle", "linear", "step", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PRETRAINED = ("auto", "on", "off")
PAD_MODES = ("zeros", "reflect")
# Options of the model's builder (imgcls.models), saved in checkpoints so that every later use rebuilds the same model.
MODEL_OPTIONS = (  # what the model builders take
    "dropout", "hidden_size", "layers", "bidirectional", "pool", "width", "whiten", "dirac", "bn_scale", "logit_scale",
)  # fmt: skip
# For an optimizer other than the recipe's, whose tuned lr and decay would not fit it; the lr also for a model other
# than the recipe's (its lr 0.2, tuned for speednet, left the tutorial cnn at 10-53% after 2 CIFAR-10 epochs over seeds,
# against 47-48% at 0.05).
DEFAULT_LR = {"sgd": 0.05, "adam": 4e-3, "adamw": 4e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adam": 0.0, "adamw": 0.01}
# Sizes past these build models or batches no machine holds (a width of 10,000 is 10^10 weights in one conv): refused
# before any allocation, whose failure would be a traceback. They are far above any useful value.
MAX_SIDE = math.isqrt(MAX_PIXELS)  # 7,071 px: an image side whose square is over the decode limit is never decoded
MAX_WIDTH, MAX_HIDDEN, MAX_LAYERS = 4096, 65536, 100
# The type and values of each numeric setting, and how to say so. NaN fails every comparison, so it is refused too.
LIMITS = {
    "epochs": (int, lambda v: v >= 1, "positive"),
    "batch_size": (int, lambda v: v >= 1, "positive"),
    "lr": (float, lambda v: 0 < v < math.inf, "positive and finite"),
    "momentum": (float, lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (float, lambda v: 0 <= v < math.inf, "zero or more and finite"),
    "label_smoothing": (float, lambda v: 0 <= v < 1, "in [0, 1)"),
    "patience": (int, lambda v: v >= 0, "zero or more"),
    "seed": (int, lambda v: -(2**63) <= v < 2**64, "a 64-bit integer"),  # what torch.manual_seed takes
    "val_fraction": (float, lambda v: 0 < v < 1, "between 0 and 1"),
    "image_size": (int, lambda v: 1 <= v <= MAX_SIDE, f"between 1 and {MAX_SIDE:,} (the {MAX_PIXELS // 10**6}-megapixel decode limit)"),
    "dropout": (float, lambda v: 0 <= v < 1, "in [0, 1)"),
    "hidden_size": (int, lambda v: 1 <= v <= MAX_HIDDEN, f"between 1 and {MAX_HIDDEN:,}"),
    "layers": (int, lambda v: 1 <= v <= MAX_LAYERS, f"between 1 and {MAX_LAYERS:,}"),
    "clip_grad": (float, lambda v: 0 <= v < math.inf, "zero (off) or more and finite"),
    "crop_padding": (int, lambda v: v >= 0, "zero or more"),
    "rotate": (float, lambda v: 0 <= v <= 180, "between 0 and 180 degrees"),
    "crop_scale": (float, lambda v: 0 < v <= 1, "in (0, 1]"),
    "freeze_epochs": (int, lambda v: v >= 0, "zero or more"),
    "lr_mult": (float, lambda v: 1 <= v < math.inf, "1 or more and finite"),
    "norm_lr_mult": (float, lambda v: 0 < v < math.inf, "positive and finite"),
    "muon_lr": (float, lambda v: 0 < v < math.inf, "positive and finite"),
    "width": (int, lambda v: 1 <= v <= MAX_WIDTH, f"between 1 and {MAX_WIDTH:,}"),
    "logit_scale": (float, lambda v: 0 < v < math.inf, "positive and finite"),
    "ema": (float, lambda v: 0 <= v < 1, "in [0, 1) (0 = off; e.g. 0.99)"),
    "tta_shift": (int, lambda v: 0 <= v <= 4, "between 0 and 4 pixels"),
}


@dataclass
class TrainConfig:
    # None means "unset": fill_defaults takes the value from the recipe for this data.
    data: str = "mnist-sample"
    data_dir: str | None = None
    recipe: str = "fast"
    model: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    momentum: float | None = None  # sgd's (Nesterov) momentum
    weight_decay: float | None = None
    schedule: str | None = None
    label_smoothing: float | None = None
    patience: int = 0  # epochs without a better val accuracy (or the same at a lower loss) before stopping; 0 = never stop early
    seed: int = 0
    device: str = "auto"
    val_fraction: float = 0.1
    image_size: int | None = None
    dropout: float | None = None
    hidden_size: int | None = None  # recurrent models: units per direction and layer
    layers: int | None = None  # recurrent models: stacked layers
    bidirectional: bool | None = None  # recurrent models: also read the rows bottom to top
    pool: str | None = None  # recurrent models: last hidden state, or the mean or max of the outputs over the rows
    augment: bool = True
    crop_padding: int | None = None
    pad_mode: str | None = None  # how shifts fill the border: zeros or reflect
    flip: bool | None = None
    rotate: float | None = None
    crop_scale: float | None = None  # random resized crops of at least this part of the image's area; 1 = none
    tta: bool | None = None  # evaluate on each image and its mirror image, averaging the logits
    tta_shift: int | None = None  # also on those views shifted diagonally by +-this many pixels; 0 = off
    alternate_flips: bool | None = None  # with flip: each image mirrored on every other epoch instead of at random
    ema: float | None = None  # evaluate and save an EMA of the weights with this decay; 0 = off
    lookahead: bool | None = None  # every 5 steps the weights move to an average of their past (airbench's Lookahead)
    width: int | None = None  # speednet: the first conv group's channels (the others 4x)
    whiten: bool | None = None  # speednet: a frozen stem that whitens 2x2 patches, set from the training images
    dirac: bool | None = None  # speednet: 3x3 convs start as the identity
    bn_scale: bool | None = None  # speednet: batch norms with a learnt scale (off: fixed at 1)
    logit_scale: float | None = None  # speednet: a fixed factor on the logits
    precision: str = "auto"  # auto: bf16 autocast on GPUs and on CPUs with native bf16, else fp32
    compile: bool = False  # torch.compile the model for training
    sync_bn: bool = False  # several processes: batch-norm statistics over the global batch (SyncBatchNorm; CUDA only)
    weights: str | None = None  # initial weights (imgcls.models.weights): a run folder, checkpoint or state dict file
    pretrained: str = "auto"  # the model's ImageNet weights (torchvision, timm); a run's config.json holds the outcome, on or off
    freeze_epochs: int | None = None  # starting from weights: epochs of the head alone (backbone frozen) before the rest
    lr_mult: float | None = None  # starting from weights: the first layers learn at lr / lr_mult, the head at lr
    clip_grad: float | None = None  # largest gradient norm of a step (clip_grad_norm_); 0 = no clipping
    norm_lr_mult: float | None = None  # biases and norm weights learn at lr * this
    muon_lr: float | None = None  # --optimizer muon: the conv filters' (peak) lr
    dedupe: bool = False  # folders: one copy of each duplicate group, none of a conflict (data.health.dedupe)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def augmentation(self) -> Augment:
        if not self.augment:
            return Augment()
        return Augment(
            crop_padding=self.crop_padding or 0, pad_mode=self.pad_mode or "zeros", flip=bool(self.flip), rotate=self.rotate or 0.0, crop_scale=self.crop_scale or 1.0,
            alternate_flips=bool(self.alternate_flips),
        )  # fmt: skip

    def model_options(self) -> dict:
        return {name: getattr(self, name) for name in MODEL_OPTIONS if getattr(self, name) is not None}


def check(cfg: TrainConfig) -> None:
    """Reject values no run can use, before any data is loaded."""
    if cfg.recipe not in RECIPES:
        raise ImgclsError(f"unknown recipe '{cfg.recipe}': choose one of {', '.join(RECIPES)}")
    if cfg.model is not None:
        get_model_info(cfg.model)
    pick_device(cfg.device)
    for name, value, choices in (
        ("optimizer", cfg.optimizer, OPTIMIZERS),
        ("schedule", cfg.schedule, SCHEDULES),
        ("precision", cfg.precision, PRECISIONS),
        ("pretrained", cfg.pretrained, PRETRAINED),
        ("pool", cfg.pool, POOLS),
        ("pad mode", cfg.pad_mode, PAD_MODES),
    ):
        if value is not None and value not in choices:
            raise ImgclsError(f"unknown {name} '{value}': choose one of {', '.join(choices)}")
    check_limits(cfg, LIMITS)
    if cfg.sync_bn and pick_device(cfg.device).type != "cuda":
        raise ImgclsError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only): drop it, or train with --device cuda")
    if cfg.precision == "fp16" and pick_device(cfg.device).type == "cpu":
        # Refused rather than warned about: CPU fp16 autocast has no fast kernels and trains ~90x slower than fp32,
        # so the run would look hung and a warning scrolls away; nothing is lost by asking for another precision.
        raise ImgclsError("--precision fp16 runs ~90x slower than fp32 on a CPU: use --precision auto (bf16 where the CPU has it) or fp32")
    if cfg.bidirectional is not None and not isinstance(cfg.bidirectional, bool):
        raise ImgclsError(f"--bidirectional must be true or false, got {cfg.bidirectional!r}")
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
