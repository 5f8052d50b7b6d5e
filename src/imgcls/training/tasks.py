"""The task seam of the Trainer: what a kind of label makes of the one training loop.

A task says how logits and targets give the loss a step minimises, the running figure the epoch lines show, the
evaluation of a split, the figure that picks the best epoch, and how logits become the probabilities a user sees.
The loop itself (batches, augmentation, precision, checkpoints, callbacks) is the same for every task.
"""

import torch
import torch.nn.functional as F

from imgcls import calibration, multilabel
from imgcls.data.core import class_counts
from imgcls.evaluation import EvalResult, metrics


class Task:
    name = "task"
    columns: tuple[str, ...] = ()  # metrics.csv's columns beyond epoch, train_loss/acc, val_loss/acc, lr, seconds

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def hits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The running figure's numerator over a batch (its denominator is the batch's size), left on the device."""
        raise NotImplementedError

    def evaluate(self, logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> EvalResult:
        raise NotImplementedError

    def score(self, result: EvalResult) -> tuple[float, ...]:
        """What picks the best epoch: the highest score wins."""
        raise NotImplementedError

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def calibrated(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits as the settled task reads them (single-label: divided by the temperature); as they are by default."""
        return logits

    def row(self, result) -> dict:
        """What an epoch's validation adds to its metrics.csv row, beyond val_loss and val_acc."""
        return {}

    def settle(self, val_logits: torch.Tensor, val_targets: torch.Tensor) -> dict:
        """What the task decides on the validation split once training is done, saved in best.pt (none by default)."""
        return {}

    def summary(self, result, classes: list[str]) -> dict:
        """The test figures of summary.json."""
        raise NotImplementedError

    def best(self, score: list[float] | None) -> dict:
        """What summary.json says of the best epoch's val score, beyond best_val_accuracy."""
        return {}


class SingleLabel(Task):
    """One class per image: cross-entropy with label smoothing, accuracy; the best epoch has the highest val
    accuracy, ties going to the lower val loss (a 50-image val set ties often, and the first of equals is the least
    trained). Once training is done, a temperature fitted on val (--calibrate) scales every probability after it."""

    name = "single-label"

    def __init__(self, label_smoothing: float = 0.0, weight: torch.Tensor | None = None, calibrate: bool = True):
        self.label_smoothing, self.weight = label_smoothing, weight  # weight: a class's loss weight (--balance weight)
        self.calibrate, self.temperature, self.val_figures, self.suggested = calibrate, 1.0, {}, None

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, weight=self.weight, label_smoothing=self.label_smoothing)

    def hits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (logits.argmax(1) == targets).sum()

    def evaluate(self, logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> EvalResult:
        return metrics(self.calibrated(logits), targets, num_classes)

    def score(self, result: EvalResult) -> tuple[float, ...]:
        return result.accuracy, -result.loss

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return self.calibrated(logits).float().softmax(1)

    def calibrated(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.temperature if self.temperature != 1.0 else logits

    def settle(self, val_logits: torch.Tensor, val_targets: torch.Tensor) -> dict:
        """The temperature (--calibrate), and a --min-confidence to suggest (what keeps 95% of the val images), both saved
        in best.pt for evaluate and predict."""
        if self.calibrate:
            self.temperature = calibration.fit_temperature(val_logits, val_targets)
            self.val_figures = calibration.figures(val_logits, val_targets, self.temperature)
        self.suggested = calibration.suggested_min_confidence((val_logits.float() / self.temperature).softmax(1))
        settled = {"temperature": self.temperature} if self.calibrate else {}
        return settled | ({"suggested_min_confidence": self.suggested} if self.suggested is not None else {})

    def summary(self, result: EvalResult, classes: list[str]) -> dict:
        """The test figures, with the ECE before and after the temperature (the result's logits are calibrated), and the
        val ECE the temperature was fitted on."""
        test = (calibration.figures(result.logits.float() * self.temperature, result.labels, self.temperature) if result.logits is not None
                else {"ece_uncalibrated": float("nan"), "ece": float("nan")})  # fmt: skip
        val = {f"val_{k}": v for k, v in self.val_figures.items()}
        return {"test_accuracy": result.accuracy, "balanced_accuracy": result.balanced_accuracy, "macro_f1": result.macro_f1,
                "test_loss": result.loss, "temperature": self.temperature, **test, **val, "suggested_min_confidence": self.suggested,
                "per_class_accuracy": result.per_class_accuracy(classes)}  # fmt: skip


class MultiLabel(Task):
    """Several labels per image (multi-hot targets): a sigmoid per label with binary cross-entropy (label smoothing pulls
    targets towards 1/2), each label decided by its own threshold, chosen on val for the best F1 once training is done.
    The running figure is exact match (the whole label set right at 0.5); the best epoch has the highest val mean
    average precision (threshold-free), ties to the lower loss."""

    name = "multi-label"
    columns = ("val_map",)

    def __init__(self, classes: list[str], label_smoothing: float = 0.0, pos_weight: torch.Tensor | None = None):
        self.classes, self.label_smoothing, self.pos_weight = classes, label_smoothing, pos_weight
        self.thresholds: list[float] | None = None

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.float()
        if self.label_smoothing:
            targets = targets * (1 - self.label_smoothing) + self.label_smoothing / 2
        return F.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=self.pos_weight)

    def hits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return ((logits > 0) == (targets > 0.5)).all(1).sum()

    def evaluate(self, logits: torch.Tensor, targets: torch.Tensor, num_classes: int):
        return multilabel.metrics(logits, targets, self.classes, self.thresholds)

    def score(self, result) -> tuple[float, ...]:
        return result.mean_average_precision, -result.loss

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid()

    def row(self, result) -> dict:
        return {"val_map": result.mean_average_precision}

    def settle(self, val_logits: torch.Tensor, val_targets: torch.Tensor) -> dict:
        self.thresholds = multilabel.best_thresholds(val_logits, val_targets)
        return {"thresholds": self.thresholds}

    def best(self, score: list[float] | None) -> dict:
        return {"best_val_map": score[0]} if score else {}

    def summary(self, result, classes: list[str]) -> dict:
        return {"test_accuracy": result.accuracy, "mean_average_precision": result.mean_average_precision, "f1_micro": result.f1_micro,
                "f1_macro": result.f1_macro, "test_loss": result.loss, "per_label": result.per_label, "thresholds": result.thresholds}  # fmt: skip


def task_for(cfg, data, device) -> Task:
    """The task of this data: multi-label where its labels are multi-hot rows; --balance weight weights the loss."""
    weight = class_weights(data.train.labels, data.num_classes, device) if cfg.balance == "weight" else None
    if data.multi_label:
        return MultiLabel(list(data.classes), cfg.label_smoothing or 0.0, weight)
    return SingleLabel(cfg.label_smoothing or 0.0, weight, calibrate=cfg.calibrate is not False)


def class_weights(labels: torch.Tensor, num_classes: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Each class's weight as the inverse of its share of the labels, 1 on average over the images (scikit-learn's
    "balanced"): N / (K x count); a class without images gets 0. For multi-label rows, each label's positive weight
    (BCE's pos_weight): its negatives over its positives."""
    counts = class_counts(labels.cpu(), num_classes).double()
    if labels.ndim == 2:
        weights = torch.where(counts > 0, (len(labels) - counts) / counts.clamp(min=1), torch.ones_like(counts))
    else:
        weights = torch.where(counts > 0, len(labels) / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    return weights.float().to(device)


def image_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """How likely --balance sample draws each image: its class's inverse frequency, or for multi-label rows its rarest
    label's (1 / count); an image without labels as one of the most common label."""
    counts = class_counts(labels.cpu(), num_classes).double().clamp(min=1)
    if labels.ndim == 1:
        return 1 / counts[labels.cpu()]
    rows = labels.cpu().bool()
    rarest = torch.where(rows, 1 / counts, torch.zeros_like(counts)).amax(1)
    return torch.where(rows.any(1), rarest, 1 / counts.max())
