"""The train options, declared once: each TrainConfig field's default, help, group, choices and limits.

The command line's flags (imgcls.cli.options), the API's checks (imgcls.config.check) and the documentation's option
table are generated from these. Nothing here imports torch: `imgcls --help` builds its parser from it quickly.
"""

import difflib
import math
from dataclasses import asdict, dataclass, field, fields

from imgcls.errors import ImgclsError

MAX_PIXELS = 50_000_000  # the decode limit (imgcls.data.images): a small file can declare a huge image, refused from its header
POOLS = ("last", "mean", "max")  # what recurrent models pool into their classifier (imgcls.models.recurrent)
OPTIMIZERS = ("sgd", "adam", "adamw", "muon")  # muon: Muon for conv filters, sgd for the rest (imgcls.training.optim)
SCHEDULES = ("cosine", "onecycle", "linear", "step", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PRETRAINED = ("auto", "on", "off")
PAD_MODES = ("zeros", "reflect")
BALANCES = ("none", "weight", "sample")
AUTO_AUGMENTS = ("none", "trivial", "rand")
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
SETUP, TRAIN = "setup", "train"  # the options of `train` and `lr-find` (setup), and of `train` alone
# The options that say how to read a dataset beyond its name: `imgcls datasets` and imgcls.check_data take them too.
READING = ("image_root", "classes", "label_delim", "label_columns", "multi_label", "image_column", "label_column")


def opt(default=None, help: str = "", group: str = SETUP, metavar: str | None = None, choices=None, limit=None):
    """A TrainConfig field and its declaration as an option: the help of its command-line flag, which commands take it
    (group), its choices, and its limit (type, allowed(value), what is allowed) for numbers. The command line's flags
    (imgcls.cli.options), the API's checks (check) and the documentation's option table all come from these."""
    return field(default=default, metadata={"help": help, "group": group, "metavar": metavar, "choices": choices, "limit": limit})


def positive(kind=int):
    return (kind, lambda v: v >= 1, "positive") if kind is int else (kind, lambda v: 0 < v < math.inf, "positive and finite")


@dataclass
class TrainConfig:
    # None means "unset": fill_defaults takes the value from the recipe for this data.
    data: str = opt(
        "mnist-sample", "dataset name (see `imgcls datasets`), an image folder path, a CSV table of image paths and labels, "
        "or a Hugging Face dataset: hf:NAME[:CONFIG] or hf:SAVED_FOLDER [mnist-sample]", metavar="NAME|PATH",
    )  # fmt: skip
    data_dir: str | None = opt(help="where named datasets live [$IMGCLS_DATA or a per-user cache folder]", metavar="DIR")
    recipe: str = opt("fast", "tuned settings for every option left unset, by kind of data [fast]", choices=("fast", "quick", "accurate"))
    model: str | None = opt(
        help="a built-in, torchvision or timm model (resnet50, tv:resnet18, timm:convnext_nano; see `imgcls models`), or your own "
        "nn.Module class (nets.py:Net, package.module:Net) [recipe: digitnet for digits, speednet for small images; photos: "
        "resnet18 when its ImageNet weights can be had, else speednet]",
        metavar="NAME",
    )  # fmt: skip
    model_args: dict | None = opt(help="your own model's constructor arguments, as JSON: '{\"hidden\": 256}'", metavar="JSON")
    batch_size: int | None = opt(help="images per step [recipe: digits 128, small images 1024, large 64]", metavar="N", limit=positive())
    optimizer: str | None = opt(
        help="sgd is SGD with Nesterov momentum (--momentum); muon: Muon for conv filters (--muon-lr), sgd for the rest [recipe: sgd]",
        choices=OPTIMIZERS,
    )  # fmt: skip
    muon_lr: float | None = opt(help="--optimizer muon: the conv filters' peak lr, each filter held at unit norm [0.24]", metavar="LR",
                                limit=positive(float))  # fmt: skip
    weight_decay: float | None = opt(
        help="weight decay, not applied to biases and norm layers [recipe: 5e-4; another optimizer: sgd 5e-4, adam 0, adamw 0.01]",
        metavar="WD", limit=(float, lambda v: 0 <= v < math.inf, "zero or more and finite"),
    )  # fmt: skip
    momentum: float | None = opt(help="sgd's Nesterov momentum [recipe: 0.85 for small colour images, else 0.9]", metavar="M",
                                 limit=(float, lambda v: 0 <= v < 1, "in [0, 1)"))  # fmt: skip
    norm_lr_mult: float | None = opt(help="norm layers' parameters learn at lr x M [recipe: 64 for small colour images, else 1]",
                                     metavar="M", limit=positive(float))  # fmt: skip
    label_smoothing: float | None = opt(
        help="cross-entropy label smoothing [recipe: digits 0.1, others 0.2]", metavar="EPS",
        limit=(float, lambda v: 0 <= v < 1, "in [0, 1)"),
    )  # fmt: skip
    seed: int = opt(0, "seed for init, splits, order and augmentation [0]", metavar="N",
                    limit=(int, lambda v: -(2**63) <= v < 2**64, "a 64-bit integer"))  # fmt: skip  # what torch.manual_seed takes
    device: str = opt("auto", "where to train [auto]", choices=("auto", "cpu", "cuda", "mps"))
    dedupe: bool = opt(
        False, "image folders: keep one copy of each group of exact or near duplicates (in test, else val, else train) and none of a "
        "picture filed under two classes; split.json lists the files dropped and why [off]",
    )  # fmt: skip
    val_fraction: float = opt(0.1, "part of train held out for validation when there is no val split [0.1]", metavar="F",
                              limit=(float, lambda v: 0 < v < 1, "between 0 and 1"))  # fmt: skip
    image_size: int | None = opt(
        help="resize the images to this square size, once, into the cache [named datasets: their own size; folders: their own "
        "if all share one up to 256 px, else 128 on a CPU, 224 on a GPU]",
        metavar="PX", limit=(int, lambda v: 1 <= v <= MAX_SIDE, f"between 1 and {MAX_SIDE:,} (the {MAX_PIXELS // 10**6}-megapixel decode limit)"),
    )  # fmt: skip
    image_root: str | None = opt(help="a table's (--data FILE.csv) image paths are relative to this folder [the table's folder]",
                                 metavar="DIR")  # fmt: skip
    classes: str | None = opt(help="a table's integer labels 0, 1, 2, ... name these classes, comma-separated: cat,dog,bird "
                              "[the integers themselves]", metavar="A,B,...")  # fmt: skip
    label_delim: str | None = opt(help="multi-label: a table's label cells hold several labels, split at this (' ', ';', '|')",
                                  metavar="DELIM")  # fmt: skip
    label_columns: str | None = opt(help="multi-label: a wide table's 0/1 label columns, comma-separated", metavar="A,B,...")
    multi_label: bool = opt(False, "multi-label: every column of a wide table but its path, split and id is a 0/1 label [off]")
    image_column: str | None = opt(help="--data hf:...: the column of the images [the one whose feature is an Image]", metavar="NAME")
    label_column: str | None = opt(help="--data hf:...: the column of the labels [the one whose feature is a ClassLabel]", metavar="NAME")
    weights: str | None = opt(help="initial weights: a run folder or a .pt/.pth/.safetensors state dict", metavar="PATH")
    pretrained: str = opt(
        "auto", "the model's ImageNet weights (torchvision: $TORCH_HOME/hub/checkpoints, timm: the Hugging Face cache): auto uses "
        "them when cached or downloadable [auto]", choices=PRETRAINED,
    )  # fmt: skip
    lr_mult: float | None = opt(help="starting from weights: the first layers learn at lr/M, rising to lr at the head [100]", metavar="M",
                                limit=(float, lambda v: 1 <= v < math.inf, "1 or more and finite"))  # fmt: skip
    dropout: float | None = opt(help="dropout probability (mlp)", metavar="P", limit=(float, lambda v: 0 <= v < 1, "in [0, 1)"))
    hidden_size: int | None = opt(help="units per layer and direction (rnn, lstm, gru) [128]", metavar="N",
                                  limit=(int, lambda v: 1 <= v <= MAX_HIDDEN, f"between 1 and {MAX_HIDDEN:,}"))  # fmt: skip
    layers: int | None = opt(help="stacked recurrent layers (rnn, lstm, gru) [1]", metavar="N",
                             limit=(int, lambda v: 1 <= v <= MAX_LAYERS, f"between 1 and {MAX_LAYERS:,}"))  # fmt: skip
    bidirectional: bool | None = opt(help="also read the rows bottom to top (rnn, lstm, gru) [off]")
    pool: str | None = opt(
        help="into the classifier: the max or mean of the outputs over the rows, or the last hidden state (rnn, lstm, gru) [max]",
        choices=POOLS,
    )  # fmt: skip
    whiten: bool | None = opt(help="speednet: frozen stem whitening 2x2 patches of the training images [recipe]")
    width: int | None = opt(help="speednet: channels of the first conv group, the others 4x [recipe]", metavar="N",
                            limit=(int, lambda v: 1 <= v <= MAX_WIDTH, f"between 1 and {MAX_WIDTH:,}"))  # fmt: skip
    dirac: bool | None = opt(help="speednet: 3x3 convs initialised as the identity [recipe]")
    bn_scale: bool | None = opt(help="speednet: batch norms with a learnt scale [recipe]")
    logit_scale: float | None = opt(help="speednet: a fixed factor on the logits [recipe: 1/9 for small colour images, else 1]",
                                    metavar="F", limit=positive(float))  # fmt: skip
    augment: bool = opt(True, "random augmentation of training batches [on]")
    crop_padding: int | None = opt(help="random shifts of up to this many pixels [recipe]", metavar="PX",
                                   limit=(int, lambda v: v >= 0, "zero or more"))  # fmt: skip
    pad_mode: str | None = opt(help="how shifts fill the border [recipe: reflect for small colour images, else zeros]", choices=PAD_MODES)
    flip: bool | None = opt(help="random horizontal flips [on, off for digits and greyscale]")
    alternate_flips: bool | None = opt(help="with --flip: each image mirrored on every other epoch [recipe]")
    rotate: float | None = opt(help="random rotation range in degrees [recipe: accurate digits 5, else 0]", metavar="DEG",
                               limit=(float, lambda v: 0 <= v <= 180, "between 0 and 180 degrees"))  # fmt: skip
    crop_scale: float | None = opt(
        help="random resized crops of at least this part of the area [recipe: fine-tuned photos 0.35, else 1: none]", metavar="F",
        limit=(float, lambda v: 0 < v <= 1, "in (0, 1]"),
    )  # fmt: skip
    auto_augment: str | None = opt(
        help="torchvision's TrivialAugmentWide (trivial) or RandAugment (rand) on the training batches [recipe: none]", choices=AUTO_AUGMENTS
    )  # fmt: skip
    mixup: float | None = opt(
        help="MixUp with this Beta alpha (e.g. 0.2): pairs of training images blended, their labels as much; 0 = off [recipe: 0]",
        metavar="ALPHA", limit=(float, lambda v: 0 <= v < math.inf, "zero (off) or more and finite"),
    )  # fmt: skip
    cutmix: float | None = opt(
        help="CutMix with this Beta alpha (e.g. 1.0): a box of another training image pasted in, the labels mixed by area; "
        "with --mixup, each batch takes one of the two; 0 = off [recipe: 0]",
        metavar="ALPHA", limit=(float, lambda v: 0 <= v < math.inf, "zero (off) or more and finite"),
    )  # fmt: skip
    clip_grad: float | None = opt(
        help="clip each step's gradient norm to NORM; 0 = off [recipe: rnn, lstm, gru 1, others off]", metavar="NORM",
        limit=(float, lambda v: 0 <= v < math.inf, "zero (off) or more and finite"),
    )  # fmt: skip
    precision: str = opt(
        "auto", "autocast dtype [auto: bf16 on GPUs and on CPUs with native bf16 (AVX512-BF16, AMX), fp16 on older GPUs, else fp32]",
        choices=PRECISIONS,
    )  # fmt: skip
    epochs: int | None = opt(help="epochs to train [recipe: sized by the number of training images]", group=TRAIN, metavar="N",
                             limit=positive())  # fmt: skip
    lr: float | None = opt(help="(peak) learning rate [recipe; another model or optimizer: sgd 0.05, adam/adamw 0.004]", group=TRAIN,
                           metavar="LR", limit=positive(float))  # fmt: skip
    schedule: str | None = opt(
        help="learning-rate schedule; linear: up from lr/5 over the first 23%%, down to 7%% [recipe]", group=TRAIN, choices=SCHEDULES
    )  # fmt: skip
    patience: int = opt(
        0, "stop after this many epochs without a better val accuracy (or the same at a lower loss); 0 = off [0]", group=TRAIN,
        metavar="N", limit=(int, lambda v: v >= 0, "zero or more"),
    )  # fmt: skip
    tta: bool | None = opt(help="evaluate on each image and its mirror image [on where flips are, off for digits]", group=TRAIN)
    tta_shift: int | None = opt(help="also evaluate on views shifted by +-PX pixels diagonally; 0 = off [recipe]", group=TRAIN,
                                metavar="PX", limit=(int, lambda v: 0 <= v <= 4, "between 0 and 4 pixels"))  # fmt: skip
    ema: float | None = opt(
        help="evaluate and save an EMA of the weights with this decay (e.g. 0.99); 0 = off [0]", group=TRAIN, metavar="DECAY",
        limit=(float, lambda v: 0 <= v < 1, "in [0, 1) (0 = off; e.g. 0.99)"),
    )  # fmt: skip
    lookahead: bool | None = opt(
        help="every 5 steps set the weights to their running average, pulled harder as the run ends (airbench's) [recipe]", group=TRAIN
    )  # fmt: skip
    compile: bool = opt(False, "torch.compile the model (pays off on GPUs for long runs) [off]", group=TRAIN)
    freeze_epochs: int | None = opt(
        help="starting from weights: epochs of the head alone on the frozen backbone's cached features, before --epochs of everything [5]",
        group=TRAIN, metavar="N", limit=(int, lambda v: v >= 0, "zero or more"),
    )  # fmt: skip
    sync_bn: bool = opt(False, "several processes: batch norm over the global batch (CUDA) [off]", group=TRAIN)
    balance: str | None = opt(
        help="correct for classes out of balance: weight the loss by each class's inverse frequency, or sample classes evenly "
        "(an epoch is then as many draws as images) [recipe: weight when the training classes are 3:1 or worse, else none]",
        group=TRAIN, choices=BALANCES,
    )  # fmt: skip
    calibrate: bool = opt(True, "fit a temperature on val after training, so the probabilities shown are calibrated (single-label) [on]",
                          group=TRAIN)  # fmt: skip
    report: bool = opt(True, "draw report.html and its plots at the end of the run [on]", group=TRAIN)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def class_names(self) -> list[str] | None:
        """--classes as a list: given comma-separated on the command line, or as a list from Python."""
        if self.classes is None:
            return None
        names = self.classes.split(",") if isinstance(self.classes, str) else list(self.classes)
        return [str(n).strip() for n in names]

    def reading(self) -> dict:
        """How to read the data beyond its name (load_dataset's keywords): a table's image root, class names and labels,
        a Hugging Face dataset's columns."""
        return {"image_root": self.image_root, "class_names": self.class_names(), "image_column": self.image_column,
                "label_column": self.label_column, "table_labels": self.table_labels()}  # fmt: skip

    def table_labels(self) -> dict:
        """How a table's labels are read: label_delim, label_columns (as a list), multi_label."""
        columns = self.label_columns.split(",") if isinstance(self.label_columns, str) else self.label_columns
        return {"label_delim": self.label_delim, "label_columns": [c.strip() for c in columns] if columns else None,
                "multi_label": bool(self.multi_label)}  # fmt: skip

    def model_options(self) -> dict:
        """What the model's builder takes besides the shape and classes: the built-ins' options, a user model's args."""
        return {name: getattr(self, name) for name in MODEL_OPTIONS if getattr(self, name) is not None} | (self.model_args or {})

    @classmethod
    def from_options(cls, **options) -> "TrainConfig":
        """A config from options under their Python names (imgcls.train's); an unknown name is an error naming the
        closest option. Values are checked by `check`, as the command line's are."""
        names = [f.name for f in fields(cls)]
        for name in options:
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1)
                hint = f"did you mean {close[0]}=?" if close else "see help(imgcls.train) for the options"
                raise ImgclsError(f"unknown option {name}=: {hint}")
        return cls(**options)


LIMITS = {f.name: f.metadata["limit"] for f in fields(TrainConfig) if f.metadata.get("limit")}


def options_from_file(path) -> dict:
    """The train options a YAML or JSON file holds under their Python names, as config.json writes them (so that a
    run's config.json trains the same run again); unknown names are an error naming the file and the closest option."""
    import json
    from pathlib import Path

    path = Path(path).expanduser()
    if not path.is_file():
        raise ImgclsError(f"--config {path}: no such file: give a YAML or JSON file of train options, such as a run's config.json")
    text = path.read_text(errors="replace")
    import yaml

    try:
        values = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)  # YAML reads JSON too
    except (ValueError, yaml.YAMLError) as e:
        mark = getattr(e, "problem_mark", None)  # YAML's errors say what and where on several lines
        detail = f"{e.problem}, line {mark.line + 1}" if mark is not None else str(e).splitlines()[0]
        raise ImgclsError(
            f"--config {path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'} ({detail}): fix the file"
        ) from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ImgclsError(f"--config {path} holds a {type(values).__name__}, not a mapping of option names to values: "
                          "write one option per line, such as `lr: 0.1`")  # fmt: skip
    names = [f.name for f in fields(TrainConfig)]
    for name in values:
        if name not in names:
            close = difflib.get_close_matches(str(name), names, n=1)
            raise ImgclsError(f"--config {path}: unknown option '{name}'{f': did you mean {close[0]}?' if close else ''}")
    return values
