"""Training configuration: what the user set, filled in with defaults that suit the dataset and optimizer."""

from dataclasses import asdict, dataclass, fields

from imgcls.data.augment import Augment
from imgcls.data.core import Dataset
from imgcls.device import pick_device
from imgcls.errors import ImgclsError
from imgcls.models import MODELS, get_model_info, model_options
from imgcls.recipes import RECIPES, recipe_settings

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "onecycle", "step", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# For an optimizer other than the recipe's, whose tuned lr and decay would not fit it.
DEFAULT_LR = {"sgd": 0.05, "adam": 4e-3, "adamw": 4e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adam": 0.0, "adamw": 0.01}


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
    momentum: float = 0.9
    weight_decay: float | None = None
    schedule: str | None = None
    label_smoothing: float | None = None
    patience: int = 0  # epochs without a better val accuracy before stopping; 0 = never stop early
    seed: int = 0
    device: str = "auto"
    val_fraction: float = 0.1
    image_size: int | None = None
    dropout: float | None = None
    augment: bool = True
    crop_padding: int | None = None
    flip: bool | None = None
    rotate: float | None = None
    tta: bool | None = None  # evaluate on each image and its mirror image, averaging the logits
    precision: str = "auto"  # auto: bf16 autocast on GPUs and on CPUs with native bf16, else fp32
    compile: bool = False  # torch.compile the model for training

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def augmentation(self) -> Augment:
        if not self.augment:
            return Augment()
        return Augment(crop_padding=self.crop_padding or 0, flip=bool(self.flip), rotate=self.rotate or 0.0)

    def model_options(self) -> dict:
        return {} if self.dropout is None else {"dropout": self.dropout}


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
    ):
        if value is not None and value not in choices:
            raise ImgclsError(f"unknown {name} '{value}': choose one of {', '.join(choices)}")
    for name, low in (("epochs", 1), ("batch_size", 1), ("patience", 0)):
        value = getattr(cfg, name)
        if value is not None and value < low:
            raise ImgclsError(f"--{name.replace('_', '-')} must be {'positive' if low else 'zero or more'}, got {value}")
    if cfg.lr is not None and not cfg.lr > 0:
        raise ImgclsError(f"--lr must be positive, got {cfg.lr}")
    if not 0 < cfg.val_fraction < 1:
        raise ImgclsError(f"--val-fraction must be between 0 and 1, got {cfg.val_fraction}")
    if cfg.label_smoothing is not None and not 0 <= cfg.label_smoothing < 1:
        raise ImgclsError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.dropout is not None and cfg.model is not None and "dropout" not in model_options(cfg.model):
        with_dropout = [name for name in MODELS if "dropout" in model_options(name)]
        raise ImgclsError(f"--dropout applies to: {', '.join(with_dropout)}; model '{cfg.model}' has no dropout option")


def fill_defaults(cfg: TrainConfig, data: Dataset) -> TrainConfig:
    """Every unset option from the recipe's settings for this data; lr and weight decay follow the
    optimizer when the user picked another one than the recipe's."""
    values = cfg.to_dict()
    recipe = recipe_settings(cfg.recipe, data, {k: v for k, v in values.items() if v is not None})
    own_optimizer = cfg.optimizer is not None and cfg.optimizer != recipe["optimizer"]
    if own_optimizer:
        recipe.update(lr=DEFAULT_LR[cfg.optimizer], weight_decay=DEFAULT_WEIGHT_DECAY[cfg.optimizer])
    for key, value in recipe.items():
        if values[key] is None:
            values[key] = value
    filled = TrainConfig.from_dict(values)
    check(filled)  # again, now that the model is known
    return filled
