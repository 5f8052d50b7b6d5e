"""The end-of-run report: plots of the run and its test set, and report.html that shows them all.

`write_report` draws from test logits the engine already has; `report_run` recomputes them from best.pt
for `imgcls report RUN`. Matplotlib is imported here on use only, so `import imgcls` stays fast.
"""

from pathlib import Path

import torch

from imgcls.data.core import Dataset
from imgcls.errors import ImgclsError
from imgcls.files import read_json, write_text
from imgcls.rundir import read_metrics

SAMPLES = 32  # test images in samples.png
TOP_LOSSES = 16  # images in top_losses.png

PLOTS = {
    "curves.png": "Training curves",
    "confusion_matrix.png": "Confusion matrix",
    "per_class_accuracy.png": "Per-class accuracy",
    "samples.png": "Test samples",
    "top_losses.png": "Top losses, each beside where the model looked for its prediction",
    "reliability.png": "Calibration: accuracy against confidence (val and test, after the temperature)",
    "coverage.png": "Accuracy against coverage: answering only the most confident images (imgcls predict --min-confidence)",
}


def write_report(
    run_dir: str | Path,
    classes: list[str],
    images: torch.Tensor,
    labels: torch.Tensor,
    logits: torch.Tensor,
    history: list[dict] | None = None,
    config: dict | None = None,
    summary: dict | None = None,
    data: Dataset | None = None,
    val_logits: torch.Tensor | None = None,
    predictor=None,
) -> Path:
    """Write every plot and report.html into the run folder from the test set's uint8 images, labels and logits.

    history, config and summary default to the run folder's metrics.csv, config.json and summary.json. `data`, the
    run's dataset, adds a dataset health section when it is a folder (imgcls.report.health). The logits are calibrated
    (divided by the run's temperature), as are `val_logits`, which add val to the reliability diagram. `predictor`
    (an imgcls.inference.Predictor of the model) adds where the model looked to the top losses.
    """
    from imgcls.evaluation import confusion_matrix
    from imgcls.report import html, plots
    from imgcls.report.calibration import coverage_figure, reliability_figure
    from imgcls.report.interpret import losses_of, sample_indices, top_losses

    run_dir = Path(run_dir)
    history = read_metrics(run_dir / "metrics.csv") if history is None else history
    config = _read_optional(run_dir / "config.json") if config is None else config
    summary = _read_optional(run_dir / "summary.json") if summary is None else summary
    if labels.ndim == 2:  # multi-label: its own figures and page
        from imgcls import multilabel
        from imgcls.report import multilabel as report

        result = multilabel.metrics(logits, labels, classes, summary.get("thresholds"))
        return report.write_report(run_dir, classes, images, result, history, config, summary, predictor)
    labels, log_probs = labels.cpu(), logits.detach().float().cpu().log_softmax(1)
    probs = log_probs.exp()
    predictions = probs.argmax(1)
    confusion = confusion_matrix(labels, predictions, len(classes))
    shown = sample_indices(len(labels), SAMPLES)
    worst, losses = top_losses(log_probs, labels, TOP_LOSSES)
    figures = {
        "curves.png": lambda: plots.curves_figure(history),
        "confusion_matrix.png": lambda: plots.confusion_figure(confusion, classes),
        "per_class_accuracy.png": lambda: plots.per_class_figure(confusion, classes),
        "samples.png": lambda: plots.samples_figure(images[shown], labels[shown], predictions[shown], classes),
        "top_losses.png": lambda: plots.top_losses_figure(
            images[worst], labels[worst], probs[worst], losses, classes, _heatmaps(predictor, images[worst], predictions[worst])
        ),  # fmt: skip
        "reliability.png": lambda: reliability_figure(
            {"val": (val_logits, data.val.labels if data is not None else None), "test": (logits, labels)}, summary.get("temperature", 1.0)
        ),
        "coverage.png": lambda: coverage_figure(logits, labels, summary.get("suggested_min_confidence")),
    }
    for name, figure in figures.items():  # one figure alive at a time
        plots.save(figure(), run_dir / name)
    test = {
        "accuracy": (predictions == labels).float().mean().item(),
        "loss": losses_of(log_probs, labels).mean().item(),
        "images": len(labels),
    }
    health = ""
    if data is not None and data.split_files is not None:
        from imgcls.report.health import run_health

        health = run_health(run_dir, data, probs)
    page = html.render(run_dir, PLOTS, config, summary, test, confusion, classes, history, health)
    path = run_dir / "report.html"
    write_text(path, page)
    return path


def _heatmaps(predictor, images: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor | None:
    from imgcls.explain import heatmaps

    return heatmaps(predictor, images, predictions.tolist()) if predictor is not None and len(images) else None


def _read_optional(path: Path) -> dict:
    return read_json(path) if path.exists() else {}


def report_run(run: str | Path, data_dir: str | None = None, device: str = "auto", batch_size: int | None = None) -> Path:
    """Regenerate a run's plots and report.html from its best.pt, on the test split of its own data."""
    from imgcls.evaluation import evaluate_checkpoint

    run_dir = Path(run).expanduser()
    if not run_dir.is_dir():
        raise ImgclsError(f"{run_dir} is not a run folder: pass a folder made by `imgcls train` (runs/NAME)")
    if not (run_dir / "best.pt").is_file():
        hint = (
            f"it stopped before its first epoch ended; finish it with `imgcls train --resume {run_dir}`"
            if (run_dir / "last.pt").is_file()
            else "pass a run folder made by `imgcls train` (runs/NAME)"
        )
        raise ImgclsError(f"{run_dir} holds no best.pt: {hint}")
    from imgcls.inference import Predictor

    _, data, result = evaluate_checkpoint(run_dir / "best.pt", data_dir=data_dir, device=device, batch_size=batch_size)
    val = None if data.multi_label else evaluate_checkpoint(run_dir / "best.pt", data_dir=data_dir, split="val", device=device,
                                                            batch_size=batch_size)[2].logits  # fmt: skip
    predictor = Predictor.from_checkpoint(run_dir / "best.pt", device)
    if data.multi_label:
        from imgcls.report import multilabel as report

        return report.write_report(run_dir, data.classes, data.test.images, result, read_metrics(run_dir / "metrics.csv"),
                                   _read_optional(run_dir / "config.json"), _read_optional(run_dir / "summary.json"), predictor)  # fmt: skip
    return write_report(run_dir, data.classes, data.test.images, data.test.labels, result.logits, data=data, val_logits=val,
                        predictor=predictor)  # fmt: skip


def format_class_counts(data: Dataset) -> str:
    """Images per class and split as a text table, with totals: a wrong folder shows at a glance."""
    splits = {"train": data.train, "val": data.val, "test": data.test}
    counts = {name: torch.bincount(split.labels, minlength=data.num_classes).tolist() for name, split in splits.items()}
    width = max(5, *(len(c) for c in data.classes))
    lines = [f"{'class':<{width}}" + "".join(f"  {name:>7}" for name in splits)]
    for i, c in enumerate(data.classes):
        lines.append(f"{c:<{width}}" + "".join(f"  {counts[name][i]:>7,}" for name in splits))
    lines.append(f"{'total':<{width}}" + "".join(f"  {len(split):>7,}" for split in splits.values()))
    return "\n".join(lines)


def write_preview(data: Dataset, path: str | Path, per_class: int = 8) -> None:
    """A grid of the first `per_class` training images of every class, each row named with its class and count."""
    from imgcls.report import plots

    title = f"{data.name}: the first {per_class} training images of each class\n(class name and its number of training images)"
    plots.save(plots.preview_figure(data.train.images, data.train.labels, data.classes, per_class, title), path)
