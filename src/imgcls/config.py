"""Training configuration: what the user set, filled in with defaults that suit the dataset and optimizer."""

from dataclasses import asdict, dataclass, fields

from imgcls.data.augment import Augment
from imgcls.data.core import Dataset
from imgcls.device import pick_device
from imgcls.errors import ImgclsError
from imgcls.models import MODELS, get_model_info, model_options

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "onecycle", "step", "none")
DEFAULT_LR = {"sgd": 0.05, "adam": 4e-3, "adamw": 4e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adam": 0.0, "adamw": 0.01}
DEFAULT_EPOCHS = {"mnist-sample": 10, "mnist": 5, "cifar10": 20, "cifar2": 20}
FOLDER_EPOCHS = 20


@dataclass
class TrainConfig:
    data: str = "mnist-sample"
    data_dir: str | None = None
    model: str = "cnn"
    epochs: int | None = None
    batch_size: int = 128
    lr: float | None = None
    optimizer: str = "adamw"
    momentum: float = 0.9
    weight_decay: float | None = None
    schedule: str = "onecycle"
    label_smoothing: float = 0.0
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
    get_model_info(cfg.model)
    pick_device(cfg.device)
    if cfg.optimizer not in OPTIMIZERS:
        raise ImgclsError(f"unknown optimizer '{cfg.optimizer}': choose one of {', '.join(OPTIMIZERS)}")
    if cfg.schedule not in SCHEDULES:
        raise ImgclsError(f"unknown schedule '{cfg.schedule}': choose one of {', '.join(SCHEDULES)}")
    for name, low in (("epochs", 1), ("batch_size", 1), ("patience", 0)):
        value = getattr(cfg, name)
        if value is not None and value < low:
            raise ImgclsError(f"--{name.replace('_', '-')} must be {'positive' if low else 'zero or more'}, got {value}")
    if cfg.lr is not None and not cfg.lr > 0:
        raise ImgclsError(f"--lr must be positive, got {cfg.lr}")
    if not 0 < cfg.val_fraction < 1:
        raise ImgclsError(f"--val-fraction must be between 0 and 1, got {cfg.val_fraction}")
    if not 0 <= cfg.label_smoothing < 1:
        raise ImgclsError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.dropout is not None and "dropout" not in model_options(cfg.model):
        with_dropout = [name for name in MODELS if "dropout" in model_options(name)]
        raise ImgclsError(f"--dropout applies to: {', '.join(with_dropout)}; model '{cfg.model}' has no dropout option")


def fill_defaults(cfg: TrainConfig, data: Dataset) -> TrainConfig:
    """Defaults that depend on the data: epochs, learning rate and decay, and augmentation."""
    values = cfg.to_dict()
    if cfg.epochs is None:
        values["epochs"] = DEFAULT_EPOCHS.get(cfg.data, FOLDER_EPOCHS)
    if cfg.lr is None:
        values["lr"] = DEFAULT_LR[cfg.optimizer]
    if cfg.weight_decay is None:
        values["weight_decay"] = DEFAULT_WEIGHT_DECAY[cfg.optimizer]
    side = min(data.shape[1:])
    if cfg.crop_padding is None:
        values["crop_padding"] = max(1, side // 14) if not data.flips_ok else max(1, side // 8)  # MNIST: 2 px, CIFAR: 4 px
    if cfg.flip is None:
        values["flip"] = data.flips_ok
    if cfg.rotate is None:
        values["rotate"] = 5.0 if not data.flips_ok else 0.0
    return TrainConfig.from_dict(values)
