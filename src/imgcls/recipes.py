"""Recipes: tuned training settings per kind of data, applied to every option the user leaves unset.

`fast` (the default) gets to a good model in the least time; `quick` to a first one in half of it or less;
`accurate` trains longer with more augmentation for the last fraction of a percent. Each recipe sizes its training by the number of
images to show, so a 9,000-image folder gets more epochs than 54,000 MNIST digits. A recipe sees the options the
user set, so what it derives from them (shifts from the epoch count, TTA from flips) fits the run that will happen.
The figures behind these settings are in bench/RESULTS.md.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

from imgcls.data.core import Dataset, imbalance
from imgcls.errors import ImgclsError
from imgcls.models.recurrent import CELLS

MAX_EPOCHS = 100
MUON_LR = 0.24  # --optimizer muon's filters: airbench94_muon's, for filters held at unit norm (imgcls.training.optim)
PRETRAINED_BACKBONE = "resnet18"  # what photos are fine-tuned from when its ImageNet weights can be had


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    settings: Callable[[Dataset, dict], dict]  # (data, options the user set) -> TrainConfig values


RECIPES: dict[str, Recipe] = {}


def register_recipe(name: str, description: str):
    def wrap(fn):
        RECIPES[name] = Recipe(name, description, fn)
        return fn

    return wrap


def data_kind(data: Dataset) -> str:
    """digits (no flips, small), small (colour up to 64 px, CIFAR-like) or large (photos)."""
    side = min(data.shape[1:])
    if not data.flips_ok and side <= 32:
        return "digits"
    return "small" if side <= 64 else "large"


def epochs_for(images: int, train_size: int, least: int = 1) -> int:
    """Epochs that show about `images` training images."""
    return max(least, min(MAX_EPOCHS, round(images / max(train_size, 1))))


def backbone(data: Dataset) -> str | None:
    """The model a recipe fine-tunes on this data when its pretrained weights can be had: photos only."""
    return PRETRAINED_BACKBONE if data_kind(data) == "large" else None


def fine_tuning(given: dict) -> bool:
    return bool(given.get("weights")) or given.get("pretrained") == "on"


def recurrent(given: dict) -> bool:
    return given.get("model") in CELLS


def _fine_tune(data: Dataset, given: dict, settings: dict) -> dict:
    """Starting from weights (--pretrained, --weights), as fastai's fine_tune: the head alone first, then everything, the first
    layers at lr / lr_mult, AdamW one-cycle. The head trains on cached features, so its epochs cost next to nothing: about
    20,000 images' worth (450 airplane/bird images pretrained on CIFAR-8: 5 epochs left val at 50-80%, 50 at 86-88%; the
    final test accuracy was within noise either way, bench/RESULTS.md). Photos get random resized crops."""
    settings = {**settings, "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01, "label_smoothing": 0.1, "batch_size": 64,
                "epochs": epochs_for(6_000, len(data.train), 3), "freeze_epochs": epochs_for(20_000, len(data.train), 5), "lr_mult": 100.0,
                "crop_scale": 1.0}  # fmt: skip
    if data_kind(data) == "large":
        settings.update(model=PRETRAINED_BACKBONE, crop_padding=0, crop_scale=0.35)
    return settings


def _recurrent(data: Dataset, given: dict, settings: dict) -> dict:
    """rnn, lstm, gru from scratch: Adam one-cycle (SGD's lr and schedule suit the CNNs). About 300,000 images of digits
    (6 epochs of MNIST: an LSTM 98.8-98.9% over seeds), 900,000 of colour images (20 epochs of CIFAR-10: an LSTM 61.3% with
    flips, 57.9% without; shifts added nothing). Label smoothing, AdamW, or Adam's lr halved or 2.5x changed MNIST by
    0.2 points at most (bench/RESULTS.md)."""
    digits = data_kind(data) == "digits"
    flip = given.get("flip", not digits)
    return {**settings, "model": given["model"], "epochs": given.get("epochs") or epochs_for(300_000 if digits else 900_000, len(data.train)),
            "batch_size": 128, "optimizer": "adam", "lr": 4e-3, "weight_decay": 0.0, "schedule": "onecycle", "label_smoothing": 0.0,
            "crop_padding": 0, "flip": flip, "tta": flip}  # fmt: skip


def _finish(data: Dataset, given: dict, settings: dict) -> dict:
    """A kind of data's settings for a run from weights (fine-tuning), of a recurrent model, or of any other from scratch.
    Recurrent models get their gradient norm clipped, which keeps an exploding gradient from undoing their training."""
    if fine_tuning(given):
        settings = _fine_tune(data, given, settings)
    else:
        scratch = _recurrent(data, given, settings) if recurrent(given) else settings
        settings = {**scratch, "crop_scale": 1.0, "freeze_epochs": 0, "lr_mult": 1.0}
    # What only some settings use, at the value that leaves the others as they were.
    rest = {
        "momentum": 0.9,
        "norm_lr_mult": 1.0,
        "lookahead": False,
        "muon_lr": MUON_LR,
        "auto_augment": "none",
        "mixup": 0.0,
        "cutmix": 0.0,
    }
    return {**rest, **settings, "clip_grad": 1.0 if recurrent(given) else 0.0}


@register_recipe(
    "fast", "least time to a good model: digitnet/speednet, SGD-Nesterov (Muon for small colour images' filters), short schedules"
)
def fast(data: Dataset, given: dict) -> dict:
    kind, n = data_kind(data), len(data.train)
    if kind == "digits":
        epochs = given.get("epochs") or epochs_for(120_000, n)
        flip = given.get("flip", False)
        # Shifts pay off once each digit is seen several times (small datasets); in one pass they only slow learning
        # (one epoch of the sample: 67-96% test accuracy over seeds with shifts, 95% without).
        # Label smoothing 0.1 took MNIST to 99% in 60,000-75,000 images instead of 90,000 (0.03-0.1 all did; bench/RESULTS.md).
        settings = dict(model="digitnet", epochs=epochs, batch_size=128, optimizer="sgd", lr=0.2, weight_decay=5e-4, schedule="onecycle",
                        label_smoothing=0.1, crop_padding=2 if epochs >= 4 else 0, flip=flip, rotate=0.0, tta=flip)  # fmt: skip
        return _finish(data, given, settings)
    flip = given.get("flip", True)
    if kind == "small" and given.get("model", "speednet") == "speednet" and not fine_tuning(given):
        return _finish(data, given, _airbench(data, given, flip))
    settings = dict(model="speednet", epochs=epochs_for(450_000 if kind == "small" else 120_000, n, 4), batch_size=512 if kind == "small" else 64,
                    optimizer="sgd", lr=0.2, weight_decay=5e-4, schedule="onecycle", label_smoothing=0.2,
                    crop_padding=2 if kind == "small" else min(data.shape[1:]) // 16, flip=flip, rotate=0.0, tta=flip)  # fmt: skip
    return _finish(data, given, settings)


def _airbench(data: Dataset, given: dict, flip: bool) -> dict:
    """Small colour images from scratch, after airbench94 (Jordan 2024): speednet 64/256/256 with a frozen whitening
    stem, identity-initialised convs, norms without scale whose biases learn 64x faster, and logits scaled by 1/9;
    Muon for the conv filters (airbench94_muon's) and SGD-Nesterov at momentum 0.85 for the rest, on batches of 1,024
    with a linear warm-up and decay, Lookahead, alternating flips, shifts of 2 px, and flip x shift TTA. airbench's lr
    11.5 and decay 0.0153 are per 1,024 summed losses: on mean losses, lr 1.5 per 1,024 images of batch and decay
    1.33e-3. 540,000 images, 12 CIFAR-10 epochs: its 9.9 (11 here) left the JPEG copy at 90.0-90.1% test with sgd
    alone; Muon took 12 epochs from 90.12% to 90.75%, 3 from 81.5% to 86.3%. What each part gave: bench/RESULTS.md."""
    n = len(data.train)
    batch = given.get("batch_size") or min(1024, max(64, 2 ** int(math.log2(max(n, 1) / 16))))  # a small folder still gets steps
    return dict(model="speednet", width=64, whiten=True, dirac=True, bn_scale=False, logit_scale=1 / 9, epochs=epochs_for(540_000, n, 4), batch_size=batch,
                optimizer="muon", lr=1.5 * batch / 1024, momentum=0.85, weight_decay=1.33e-3, norm_lr_mult=64.0, schedule="linear",
                label_smoothing=0.2, crop_padding=2, pad_mode="reflect", flip=flip, alternate_flips=flip, rotate=0.0, tta=flip, tta_shift=1 if flip else 0,
                lookahead=True)  # fmt: skip


@register_recipe("quick", "a first model in half the fast recipe's time or less: half its epochs; small colour images at width 32")
def quick(data: Dataset, given: dict) -> dict:
    """The fast recipe over half its images, so what it derives from the epoch count (shifts) fits the shorter run.
    Small colour images also get speednet at width 32 (2.4x the images/s of 64) and no Lookahead, which cost 2 points
    at 3 epochs: CIFAR-10 JPEG 85.5% in 108 s of training, 6 epochs with sgd, 86.2% in 102 s (benchmark clock) with
    Muon (bench/RESULTS.md)."""
    epochs = given.get("epochs") or max(1, math.ceil(fast(data, given)["epochs"] / 2))
    settings = {**fast(data, {**given, "epochs": epochs}), "epochs": epochs}
    if settings.get("whiten"):  # the airbench-style recipe
        settings.update(width=32, lookahead=False)
    return settings


@register_recipe("accurate", "the last fraction of a percent: about 10x (digits) or 3x (others) longer, with more augmentation")
def accurate(data: Dataset, given: dict) -> dict:
    settings = fast(data, given)
    if recurrent(given) and not fine_tuning(given):
        settings.update(epochs=given.get("epochs") or min(MAX_EPOCHS, settings["epochs"] * 3))
    elif data_kind(data) == "digits" and not fine_tuning(given):
        epochs = given.get("epochs") or epochs_for(600_000, len(data.train))
        shifts = epochs >= 4  # as in fast: augmentation only pays off over several passes
        settings.update(epochs=epochs, lr=0.1, crop_padding=2 if shifts else 0, rotate=5.0 if shifts else 0.0)
    else:
        settings.update(epochs=min(MAX_EPOCHS, settings["epochs"] * 3))
    return settings


IMBALANCE = 3.0  # the ratio of the largest training class to the smallest from which every recipe weights the loss


def recipe_settings(name: str, data: Dataset, given: dict | None = None) -> dict:
    """The recipe's value of every option for this data, derived from the options in `given` (the user's) where they bear on it.
    Every recipe weights the loss by class (--balance weight) when the training classes are 3:1 or worse: on CIFAR-10
    with five classes cut to a tenth, it took the quick recipe from 70.4% to 80.2% and 70.2% to 81.2% (seeds 0, 1),
    sampling classes evenly to 78.2% and 77.7% (bench/RESULTS.md)."""
    if name not in RECIPES:
        raise ImgclsError(f"unknown recipe '{name}': choose one of {', '.join(RECIPES)}")
    skewed = imbalance(data.train.labels, data.num_classes)[0] >= IMBALANCE
    return {"balance": "weight" if skewed else "none", **RECIPES[name].settings(data, given or {})}
