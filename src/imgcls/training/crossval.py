"""Likely label errors of a whole dataset, before any run: `imgcls datasets --check DATA --label-errors`.

Confident learning wants out-of-sample probabilities for every image. K-fold cross-validation gives them: the images
of all splits are cut into K stratified folds, and K quick models (the fast recipe's, from scratch, for a share of its
epochs) each train on K-1 folds and predict the fold they never saw. `health.label_issues` then ranks the images, as
it ranks a run's test predictions.
"""

import logging
import math
import tempfile
import time
from dataclasses import replace

import torch

from imgcls.config import TrainConfig, fill_defaults
from imgcls.data.core import Dataset, Split, channel_stats, stratified_split
from imgcls.data.duplicates import Items
from imgcls.data.health import CrossValidated, label_issues
from imgcls.errors import ImgclsError
from imgcls.evaluation import predict_logits
from imgcls.training.trainer import Trainer

LOG = logging.getLogger(__name__)

EPOCH_SHARE = 0.25  # of the fast recipe's epochs: held-out probabilities need a fair model, not its best
MIN_EPOCHS = 3
MAX_FOLDS = 20
MIN_STEPS = 8  # per epoch
MIN_BATCH = 32


def cross_validated(data: Dataset, folds: int, seed: int = 0, device: str = "auto") -> CrossValidated:
    """Every image's class probabilities from the model that did not train on it, ranked into label issues."""
    check_folds(folds)
    items = Items.of(data)
    images, labels = items.take(torch.arange(len(items))), items.labels
    if len(labels) < 2 * folds:
        raise ImgclsError(f"{data.name} has {len(labels)} images, too few for {folds} folds: use fewer --folds")
    parts = stratified_split(labels, [1.0] * folds, seed)
    probs = torch.zeros(len(labels), data.num_classes)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="imgcls-folds-") as scratch:  # a Trainer's run folder: nothing is kept
        for k, held in enumerate(parts):
            rest = torch.cat([p for i, p in enumerate(parts) if i != k])
            train = Split(images[rest], labels[rest])
            fold = Dataset(data.name, data.classes, train, Split(images[:0], labels[:0]), Split(images[held], labels[held]),
                           *channel_stats(train.images), flips_ok=data.flips_ok)  # fmt: skip
            # No Lookahead: over a few epochs it cost 2 points of CIFAR-10 accuracy (bench/RESULTS.md) and missed planted errors.
            given = TrainConfig(data=data.name, seed=seed + k, device=device, pretrained="off", label_smoothing=0.0, lookahead=False)
            recipe = fill_defaults(given, fold)
            cfg = fill_defaults(replace(given, epochs=short(recipe.epochs), batch_size=batch_for(recipe.batch_size, len(rest))), fold)
            LOG.warning(f"fold {k + 1}/{folds}: {cfg.model}, {cfg.epochs} epochs on {len(rest):,} images, predicting {len(held):,}")
            model, trainer = train_quietly(cfg, fold, scratch)
            logits = predict_logits(model, fold.test.images, trainer.mean, trainer.std, amp=trainer.amp, channels_last=trainer.channels_last,
                                    tta=bool(cfg.tta))  # fmt: skip
            probs[held] = logits.softmax(1).cpu()
    accuracy = (probs.argmax(1) == labels).float().mean().item()
    return CrossValidated(label_issues(probs, labels), folds, cfg.epochs, cfg.model, accuracy, time.perf_counter() - start)


def batch_for(batch_size: int, images: int) -> int:
    """The recipe's batch, smaller for a small fold: a model of 150 images in batches of 512 takes one step an epoch."""
    return max(MIN_BATCH, min(batch_size, 2 ** int(math.log2(max(1, images // MIN_STEPS)))))


def check_folds(folds: int) -> None:
    if not 2 <= folds <= MAX_FOLDS:
        raise ImgclsError(f"--folds must be between 2 and {MAX_FOLDS}, got {folds}")


def short(epochs: int) -> int:
    return max(MIN_EPOCHS, math.ceil(epochs * EPOCH_SHARE))


def train_quietly(cfg: TrainConfig, data: Dataset, scratch: str) -> tuple[torch.nn.Module, Trainer]:
    """The Trainer's own epochs (augmentation, schedule, precision), without validation, checkpoints or a report."""
    trainer = Trainer(cfg, data, scratch)
    p = trainer.progress
    for _ in range(cfg.epochs):
        trainer.train_epoch()
        if trainer.scheduler and not trainer.schedule_per_step:
            trainer.scheduler.step()
        p.epoch, p.step, p.totals, p.seconds = p.epoch + 1, 0, [0.0, 0.0, 0.0], 0.0
    return trainer.evaluated, trainer
