"""Multi-label figures: several labels per image, each decided by its own threshold on a sigmoid probability.

The metrics are torchmetrics' (average precision, F1, precision, recall, the precision-recall curve): they compute on
the tensors the evaluation already holds, on its device, and torchmetrics tests them against scikit-learn's.
"""

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

DEFAULT_THRESHOLD = 0.5


@contextmanager
def quiet():
    """torchmetrics warns of a label without positives; ours are reported as None (n/a) instead."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No positive samples", category=UserWarning)
        yield


@dataclass
class MultiLabelResult:
    loss: float  # binary cross-entropy, averaged over images and labels
    accuracy: float  # exact match: images whose whole label set is right
    mean_average_precision: float  # mean over the labels that occur of their average precision (threshold-free)
    f1_micro: float
    f1_macro: float
    per_label: dict[str, dict[str, float | None]]  # label -> ap, precision, recall (None where undefined)
    thresholds: list[float]
    logits: torch.Tensor | None = field(default=None, repr=False)
    targets: torch.Tensor | None = field(default=None, repr=False)

    def decisions(self) -> torch.Tensor:
        """The label sets decided: N x K booleans."""
        return self.logits.float().sigmoid() >= torch.tensor(self.thresholds, device=self.logits.device)


def metrics(logits: torch.Tensor, targets: torch.Tensor, classes: list[str], thresholds: list[float] | None = None) -> MultiLabelResult:
    from torchmetrics.functional.classification import (
        multilabel_average_precision,
        multilabel_f1_score,
        multilabel_precision,
        multilabel_recall,
    )

    k = len(classes)
    thresholds = list(thresholds) if thresholds is not None else [DEFAULT_THRESHOLD] * k
    if len(targets) == 0:
        return MultiLabelResult(float("nan"), float("nan"), float("nan"), float("nan"), float("nan"), {}, thresholds)
    logits, target = logits.float(), targets.to(logits.device).long()
    probs = logits.sigmoid()
    decided = (probs >= torch.tensor(thresholds, device=logits.device)).long()
    present = target.sum(0) > 0
    with quiet():
        ap = multilabel_average_precision(probs, target, num_labels=k, average=None)
    precision = multilabel_precision(decided, target, num_labels=k, average=None, threshold=0.5, zero_division=0)
    recall = multilabel_recall(decided, target, num_labels=k, average=None, threshold=0.5, zero_division=0)
    predicted = decided.sum(0) > 0
    per_label = {
        c: {"ap": ap[i].item() if present[i] else None, "precision": precision[i].item() if predicted[i] else None,
            "recall": recall[i].item() if present[i] else None}
        for i, c in enumerate(classes)
    }  # fmt: skip
    return MultiLabelResult(
        loss=F.binary_cross_entropy_with_logits(logits, target.float()).item(),
        accuracy=(decided == target).all(1).float().mean().item(),
        mean_average_precision=ap[present].mean().item() if present.any() else float("nan"),
        f1_micro=multilabel_f1_score(decided, target, num_labels=k, average="micro", threshold=0.5, zero_division=0).item(),
        f1_macro=multilabel_f1_score(decided, target, num_labels=k, average="macro", threshold=0.5, zero_division=0).item(),
        per_label=per_label,
        thresholds=thresholds,
        logits=logits,
        targets=target,
    )


def best_thresholds(logits: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Each label's threshold with the highest F1 on these (validation) images, from its precision-recall curve; 0.5 for
    a label without positives there."""
    from torchmetrics.functional.classification import multilabel_precision_recall_curve

    k = targets.shape[1]
    if len(targets) == 0:
        return [DEFAULT_THRESHOLD] * k
    probs, target = logits.float().sigmoid(), targets.to(logits.device).long()
    with quiet():
        precisions, recalls, cuts = multilabel_precision_recall_curve(probs, target, num_labels=k)
    out = []
    for i in range(k):
        if target[:, i].sum() == 0:
            out.append(DEFAULT_THRESHOLD)
            continue
        p, r = precisions[i][:-1], recalls[i][:-1]  # the last point is (1, 0) without a threshold
        f1 = 2 * p * r / (p + r).clamp(min=1e-12)
        out.append(cuts[i][f1.argmax()].item())
    return out


def confused_pairs(result: MultiLabelResult, classes: list[str], most: int = 10) -> list[tuple[str, str, int]]:
    """(a label missed, a label wrongly given instead, on how many images), the most frequent first."""
    decided, target = result.decisions().long(), result.targets.long()
    missed, extra = (target & (1 - decided)).float(), (decided & (1 - target)).float()
    counts = missed.T @ extra  # K x K: images missing label i and wrongly given label j
    counts.fill_diagonal_(0)
    flat = counts.flatten()
    order = flat.argsort(descending=True)[:most]
    k = len(classes)
    return [(classes[i // k], classes[i % k], int(flat[i])) for i in order.tolist() if flat[i] > 0]


def label_sets(rows: torch.Tensor, classes: list[str]) -> list[str]:
    """Each multi-hot row as its labels' names joined by '+' ('(none)' for an empty set)."""
    return ["+".join(classes[i] for i in torch.nonzero(row).flatten().tolist()) or "(none)" for row in rows]
