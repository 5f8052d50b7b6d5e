"""Evaluating a model on an in-memory split: loss, accuracy, per-class accuracy and the confusion matrix."""

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from imgcls import checkpoint, multilabel
from imgcls.calibration import coverage_table, expected_calibration_error
from imgcls.checkpoint import load_model, normalisation
from imgcls.data import Dataset, load_dataset
from imgcls.data.augment import prepare
from imgcls.data.core import Split
from imgcls.data.registry import is_folder_spec
from imgcls.data.user import handed_over, is_python_object
from imgcls.device import amp_dtype, autocast, pick_device, use_channels_last
from imgcls.errors import ImgclsError
from imgcls.files import write_text
from imgcls.interrupt import during
from imgcls.models import get_model_info
from imgcls.options import TrainConfig
from imgcls.rundir import read_split

EVAL_VALUES = 1 << 23  # input values per evaluation batch (32 MB of floats)


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    confusion: torch.Tensor  # K x K counts, rows = true class, columns = predicted
    logits: torch.Tensor | None = field(default=None, repr=False)  # N x K, kept so the report needs no second pass
    labels: torch.Tensor | None = field(default=None, repr=False)

    def per_class_accuracy(self, classes: list[str]) -> dict[str, float | None]:
        """Recall of each class; None for a class with no samples in this split."""
        totals = self.confusion.sum(1)
        return {c: (self.confusion[i, i].item() / totals[i].item() if totals[i] else None) for i, c in enumerate(classes)}

    def per_class_precision(self, classes: list[str]) -> dict[str, float | None]:
        """The share of each class's predictions that were right; None for a class never predicted."""
        predicted = self.confusion.sum(0)
        return {c: (self.confusion[i, i].item() / predicted[i].item() if predicted[i] else None) for i, c in enumerate(classes)}

    @property
    def balanced_accuracy(self) -> float:
        """The mean of the per-class accuracies (recalls) over the classes this split has: accuracy as if every class
        were equally frequent. Exact from the confusion matrix (what scikit-learn's balanced_accuracy_score computes)."""
        totals = self.confusion.sum(1).double()
        present = totals > 0
        return (self.confusion.diagonal().double()[present] / totals[present]).mean().item() if present.any() else float("nan")

    @property
    def macro_f1(self) -> float:
        """The mean F1 over the classes that occur in this split or its predictions (scikit-learn's f1_score(average="macro")
        with zero_division=0), from the confusion matrix."""
        hits = self.confusion.diagonal().double()
        truths, predictions = self.confusion.sum(1).double(), self.confusion.sum(0).double()
        seen = (truths + predictions) > 0
        f1 = 2 * hits[seen] / (truths[seen] + predictions[seen])
        return f1.mean().item() if seen.any() else float("nan")


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    batch_size: int | None = None,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
    tta: bool = False,
    tta_shift: int = 0,
) -> torch.Tensor:
    """Float32 logits for uint8 images, batch by batch on the model's device; with `tta`, the mean of
    the logits of each image and its mirror image (for data where flips keep the class); with `tta_shift`, also of
    those views shifted by (+s, +s) and (-s, -s) pixels (edges reflected): 3x the views (airbench's multi-crop). Batches default to
    EVAL_VALUES input values: 1,024 CIFAR images, 170 at 128 px, so that large images never make a batch of gigabytes."""
    batch_size = batch_size or max(1, min(1024, EVAL_VALUES // max(1, images[0].numel() if len(images) else 1)))
    device = mean.device
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = prepare(images[start : start + batch_size].to(device, non_blocking=True), mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        views = tta_views(x, tta, tta_shift)
        with autocast(device, amp):
            logits = sum(model(v).float() for v in views) / len(views)
        out.append(logits)
    return torch.cat(out) if out else torch.empty(0)


def tta_views(x: torch.Tensor, flip: bool, shift: int) -> list[torch.Tensor]:
    """The batch, shifted by (+shift, +shift) and (-shift, -shift) pixels when shift > 0, and each of those mirrored with flip."""
    views = [x, *(shifted(x, s) for s in (shift, -shift) if shift)]
    return views + [v.flip(3) for v in views] if flip else views


def shifted(x: torch.Tensor, shift: int) -> torch.Tensor:
    """The images moved `shift` pixels down and right (up and left when negative), the edge reflected into the gap."""
    s = abs(shift)
    padded = F.pad(x, (s, s, s, s), mode="reflect")
    start = s - shift  # the window that puts pixel (i, j) of x at (i + shift, j + shift)
    return padded[..., start : start + x.shape[-2], start : start + x.shape[-1]]


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.bincount(labels * num_classes + predictions, minlength=num_classes**2).reshape(num_classes, num_classes)


def evaluate(model: nn.Module, split: Split, mean, std, num_classes: int, **kwargs) -> EvalResult:
    return metrics(predict_logits(model, split.images, mean, std, **kwargs), split.labels, num_classes)


def metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> EvalResult:
    """Loss, accuracy and confusion matrix of a split's logits."""
    if len(labels) == 0:
        return EvalResult(float("nan"), float("nan"), torch.zeros(num_classes, num_classes, dtype=torch.long))
    labels = labels.to(logits.device)
    loss = F.cross_entropy(logits, labels).item()
    predictions = logits.argmax(1)
    accuracy = (predictions == labels).float().mean().item()
    return EvalResult(loss, accuracy, confusion_matrix(labels, predictions, num_classes).cpu(), logits, labels)


def checkpoint_data(ckpt: dict, spec=None, data_dir: str | None = None) -> Dataset:
    """The data to test a checkpoint on: by default its own, with the run's saved split; another dataset, folder or
    Python dataset (imgcls.data.user) must have the model's classes, and folders are decoded to its input shape."""
    cfg = ckpt["config"]
    saved = TrainConfig.from_dict(cfg)
    names = saved.class_names()  # a table's integer labels, named as the run named them
    if is_python_object(spec):  # the user's own data, handed over from Python: split as the run split it
        data = handed_over(
            spec, cfg["seed"], cfg["val_fraction"], cfg.get("image_size"), class_names=names, table_labels=saved.table_labels()
        )
        spec = "the data"
    else:
        # Runs store a folder's absolute path; the user may name it relatively.
        same_data = (
            spec is None or spec == cfg["data"] or (is_folder_spec(spec) and os.path.abspath(Path(spec).expanduser()) == cfg["data"])
        )
        spec = spec or cfg["data"]
        channels, size = (None, cfg.get("image_size")) if same_data else (ckpt["in_shape"][0], ckpt["in_shape"][1])
        data = load_dataset(
            spec, data_dir=data_dir or cfg.get("data_dir"), seed=cfg["seed"], val_fraction=cfg["val_fraction"], channels=channels,
            image_size=size, split_files=read_split(Path(ckpt["path"]).parent) if same_data else None,
            **(saved.reading() | ({} if same_data else {"image_root": None})),
        )  # fmt: skip
    if list(data.classes) != ckpt["classes"]:
        raise ImgclsError(
            f"the model knows {len(ckpt['classes'])} classes ({', '.join(ckpt['classes'][:5])}...), {spec} has {data.num_classes} "
            f"({', '.join(data.classes[:5])}...): evaluate on data with the classes the model was trained on"
        )
    if list(data.shape) != ckpt["in_shape"]:
        shapes = "x".join(map(str, ckpt["in_shape"])), "x".join(map(str, data.shape))
        raise ImgclsError(f"the model takes {shapes[0]} images, {spec} has {shapes[1]}: use data of the model's size")
    return data


def evaluate_checkpoint(
    path: str | Path,
    spec=None,
    data_dir: str | None = None,
    split: str = "test",
    device: str = "auto",
    batch_size: int | None = None,
) -> tuple[dict, Dataset, EvalResult]:
    """Load a run's best checkpoint (or a .pt file) and evaluate it on one split of its data (or `spec`)."""
    ckpt, where = checkpoint.load(path), pick_device(device)
    model = load_model(ckpt, where)
    data = checkpoint_data(ckpt, spec, data_dir)
    mean, std = normalisation(ckpt, where)
    # Evaluate as the run did (TTA, precision, memory format), so the figures match its summary.json exactly.
    cfg = ckpt["config"]
    try:
        convolutional = get_model_info(ckpt["model"]).convolutional
    except ImgclsError:  # a user's class that cannot be imported here: its TorchScript program stands in (load_model)
        convolutional = False
    channels_last = use_channels_last(where, convolutional)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    settings = dict(
        tta=bool(cfg.get("tta")),
        tta_shift=cfg.get("tta_shift") or 0,
        amp=amp_dtype(where, cfg.get("precision", "auto")),
        channels_last=channels_last,
    )
    with during(f"evaluating on the {split} split", "nothing was written"):
        part = getattr(data, split)
        logits = predict_logits(model, part.images, mean, std, batch_size=batch_size, **settings)
        if ckpt.get("task") == "multi-label":
            return ckpt, data, multilabel.metrics(logits, part.labels, data.classes, ckpt.get("thresholds"))
        return ckpt, data, metrics(logits / ckpt.get("temperature", 1.0), part.labels, data.num_classes)  # calibrated, as in training


def format_per_class(per_class: dict[str, float | None], confusion: torch.Tensor, precision: dict[str, float | None]) -> str:
    """Per class: accuracy (recall), precision, correct and total, as a text table."""
    width = max(8, *(len(c) for c in per_class))
    lines = [f"{'class':<{width}}  {'accuracy':>8}  {'precision':>9}  {'correct':>7}  {'total':>6}"]
    for i, (name, acc) in enumerate(per_class.items()):
        shown = [("n/a" if v is None else f"{v:.2%}") for v in (acc, precision[name])]
        lines.append(f"{name:<{width}}  {shown[0]:>8}  {shown[1]:>9}  {confusion[i, i].item():>7}  {confusion[i].sum().item():>6}")
    return "\n".join(lines)


def format_per_label(per_label: dict[str, dict], thresholds: list[float]) -> str:
    """Per label: average precision, precision and recall at its threshold, and the threshold, as a text table."""
    width = max(8, *(len(c) for c in per_label))
    lines = [f"{'label':<{width}}  {'AP':>6}  {'precision':>9}  {'recall':>6}  {'threshold':>9}"]
    for (name, figures), threshold in zip(per_label.items(), thresholds):
        shown = [
            "n/a" if figures[k] is None else f"{figures[k]:.4f}" if k == "ap" else f"{figures[k]:.2%}"
            for k in ("ap", "precision", "recall")
        ]
        lines.append(f"{name:<{width}}  {shown[0]:>6}  {shown[1]:>9}  {shown[2]:>6}  {threshold:>9.3f}")
    return "\n".join(lines)


def format_confusion(confusion: torch.Tensor, classes: list[str], max_name: int = 10) -> str:
    """The confusion matrix as a text table: rows are true classes, columns predicted ones."""
    names = [c[:max_name] for c in classes]
    cell = max(len(str(confusion.max().item())), *(len(n) for n in names), 4)
    head = " " * (cell + 2) + " ".join(f"{n:>{cell}}" for n in names)
    rows = [f"{names[i]:>{cell}}  " + " ".join(f"{v:>{cell}}" for v in confusion[i].tolist()) for i in range(len(names))]
    return "true \\ predicted\n" + "\n".join([head, *rows])


def write_confusion_csv(confusion: torch.Tensor, classes: list[str], path: str | Path) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["true \\ predicted", *classes])
    for name, row in zip(classes, confusion.tolist()):
        writer.writerow([name, *row])
    write_text(Path(path), buf.getvalue())  # atomically, like every file of a run: a full disk is one line, not half a file


def read_confusion_csv(path: Path):
    """confusion_matrix.csv back: the class names and the K x K counts (rows true, columns predicted)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    classes = rows[0][1:]
    return classes, torch.tensor([[int(v) for v in row[1:]] for row in rows[1:]])


@dataclass
class Evaluation:
    """A run's model tested on one split (imgcls.evaluate): the figures, and the files written."""

    data: str  # what it was tested on: the dataset's name or folder, as in evaluation_SPLIT.json
    name: str  # the dataset's short name
    split: str
    images: int
    loss: float
    accuracy: float
    per_class_accuracy: dict[str, float | None]
    balanced_accuracy: float
    macro_f1: float
    per_class_precision: dict[str, float | None] = field(repr=False)
    confusion: torch.Tensor = field(repr=False)
    classes: list[str] = field(repr=False)
    files: list[Path] = field(default_factory=list)
    ece: float = float("nan")  # expected calibration error of the probabilities shown (after the temperature)
    temperature: float = 1.0
    coverage: list[dict] | None = None  # with coverage=True: accuracy and min_confidence at each share of images kept
    suggested_min_confidence: float | None = None  # the run's suggestion (95% of its val images), where it made one
    logits: torch.Tensor | None = field(default=None, repr=False)  # calibrated
    labels: torch.Tensor | None = field(default=None, repr=False)


def evaluate_run(
    run: str | Path, data=None, data_dir: str | None = None, split: str = "test", device: str = "auto", batch_size: int | None = None,
    out: str | Path | None = None, coverage: bool = False,
) -> Evaluation:  # fmt: skip
    """Test a run's best.pt (or a .pt file) on a split of its own data, or of `data`; write confusion_matrix_SPLIT.csv and
    evaluation_SPLIT.json into `out` (the run folder by default)."""
    from imgcls.files import write_json

    if split not in ("test", "val", "train"):
        raise ImgclsError(f"unknown split '{split}': choose test, val or train")
    ckpt, dataset, result = evaluate_checkpoint(run, data, data_dir, split, device, batch_size)
    name = data if isinstance(data, str) else ckpt["config"]["data"] if data is None else dataset.name
    folder = Path(out) if out is not None else Path(ckpt["path"]).parent
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(result, multilabel.MultiLabelResult):
        return _multilabel_evaluation(ckpt, dataset, result, name, split, folder)
    per_class = result.per_class_accuracy(dataset.classes)
    found = Evaluation(name, dataset.name, split, int(result.confusion.sum()), result.loss, result.accuracy, per_class,
                       result.balanced_accuracy, result.macro_f1, result.per_class_precision(dataset.classes), result.confusion,
                       dataset.classes)  # fmt: skip
    found.temperature, found.logits, found.labels = ckpt.get("temperature", 1.0), result.logits, result.labels
    found.ece = expected_calibration_error(result.logits.float().softmax(1), result.labels) if result.logits is not None else float("nan")
    if coverage and result.logits is not None:
        found.coverage = coverage_table(result.logits.float().softmax(1), result.labels)
        found.suggested_min_confidence = ckpt.get("suggested_min_confidence")
    csv_path, json_path = folder / f"confusion_matrix_{split}.csv", folder / f"evaluation_{split}.json"
    write_confusion_csv(result.confusion, dataset.classes, csv_path)
    write_json(json_path, {
        "checkpoint": ckpt["path"], "data": name, "split": split, "images": found.images, "loss": found.loss, "accuracy": found.accuracy,
        "balanced_accuracy": found.balanced_accuracy, "macro_f1": found.macro_f1, "per_class_accuracy": per_class,
        "per_class_precision": found.per_class_precision, "ece": found.ece, "temperature": found.temperature,
        **({"coverage": found.coverage} if found.coverage is not None else {}),
    })  # fmt: skip
    found.files = [csv_path, json_path]
    return found


@dataclass
class MultiLabelEvaluation:
    """A multi-label run's model tested on one split: mAP, F1, exact match, per-label figures, and the file written."""

    data: str
    name: str
    split: str
    images: int
    result: "multilabel.MultiLabelResult" = field(repr=False)
    files: list[Path] = field(default_factory=list)

    def __getattr__(self, name):  # loss, accuracy, mean_average_precision, f1_micro, f1_macro, per_label, thresholds
        return getattr(self.__dict__["result"], name)


def _multilabel_evaluation(ckpt: dict, dataset: Dataset, result, name: str, split: str, folder: Path) -> MultiLabelEvaluation:
    from imgcls.files import write_json

    path = folder / f"evaluation_{split}.json"
    write_json(path, {
        "checkpoint": ckpt["path"], "data": name, "split": split, "images": len(result.targets), "loss": result.loss,
        "exact_match_accuracy": result.accuracy, "mean_average_precision": result.mean_average_precision, "f1_micro": result.f1_micro,
        "f1_macro": result.f1_macro, "thresholds": result.thresholds, "per_label": result.per_label,
    })  # fmt: skip
    return MultiLabelEvaluation(name, dataset.name, split, len(result.targets), result, [path])
