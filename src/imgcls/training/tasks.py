"""The task seam of the Trainer: what a kind of label makes of the one training loop.

A task says how logits and targets give the loss a step minimises, the running figure the epoch lines show, the
evaluation of a split, the figure that picks the best epoch, and how logits become the probabilities a user sees.
The loop itself (batches, augmentation, precision, checkpoints, callbacks) is the same for every task.
"""

import torch
import torch.nn.functional as F

from imgcls.evaluation import EvalResult, metrics


class Task:
    name = "task"
    metric = "acc"  # the running figure's column: train_acc, val_acc in metrics.csv

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


class SingleLabel(Task):
    """One class per image: cross-entropy with label smoothing, accuracy; the best epoch has the highest val
    accuracy, ties going to the lower val loss (a 50-image val set ties often, and the first of equals is the least
    trained)."""

    name = "single-label"

    def __init__(self, label_smoothing: float = 0.0, weight: torch.Tensor | None = None):
        self.label_smoothing, self.weight = label_smoothing, weight  # weight: a class's loss weight (--balance weight)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, weight=self.weight, label_smoothing=self.label_smoothing)

    def hits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (logits.argmax(1) == targets).sum()

    def evaluate(self, logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> EvalResult:
        return metrics(logits, targets, num_classes)

    def score(self, result: EvalResult) -> tuple[float, ...]:
        return result.accuracy, -result.loss

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(1)


def class_weights(labels: torch.Tensor, num_classes: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Each class's weight as the inverse of its share of the labels, 1 on average over the images (scikit-learn's
    "balanced"): N / (K x count). A class without images gets 0."""
    counts = torch.bincount(labels.cpu(), minlength=num_classes).double()
    weights = torch.where(counts > 0, len(labels) / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    return weights.float().to(device)
