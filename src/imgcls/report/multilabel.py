"""A multi-label run's report: per-label average precision, precision-recall curves, the label pairs most often
confused, and test images with their true and predicted label sets; report.html shows them with the per-label table."""

from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from imgcls import multilabel
from imgcls.files import write_text
from imgcls.report import html, plots
from imgcls.report.interpret import sample_indices

PLOTS = {
    "curves.png": "Training curves",
    "per_label_ap.png": "Average precision of each label (test set)",
    "pr_curves.png": "Precision-recall curves (test set; the dot: each label's threshold)",
    "samples.png": "Test samples: true and predicted label sets",
    "top_losses.png": "Top losses: the test images whose labels the model got most wrong, and where it looked",
}
SAMPLES = 24
TOP_LOSSES = 12  # images in top_losses.png
CURVES_SHOWN = 12  # labels drawn in the precision-recall figure, the most frequent first


def per_label_ap_figure(result: multilabel.MultiLabelResult, classes: list[str]) -> Figure:
    k = len(classes)
    fig = Figure(figsize=(8, max(2.5, 0.3 * k + 1)))
    ax = fig.subplots()
    values = [result.per_label[c]["ap"] or 0.0 for c in classes]
    rows = list(range(k))[::-1]
    ax.barh(rows, values, color="#1f77b4")
    ax.set_yticks(rows, [plots.short(c, 24) for c in classes], **plots.LITERAL)
    ax.set_xlim(0, 1)
    ax.axvline(result.mean_average_precision, color="grey", linestyle="--")
    ax.set(xlabel="average precision", title=f"Average precision per label (dashed: mean {result.mean_average_precision:.3f})")
    fig.tight_layout()
    return fig


def pr_curves_figure(result: multilabel.MultiLabelResult, classes: list[str]) -> Figure:
    from torchmetrics.functional.classification import multilabel_precision_recall_curve

    probs, targets = result.logits.float().sigmoid(), result.targets.long()
    with multilabel.quiet():
        precisions, recalls, cuts = multilabel_precision_recall_curve(probs, targets, num_labels=len(classes))
    shown = targets.sum(0).argsort(descending=True)[:CURVES_SHOWN].tolist()
    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
    for i in shown:
        if targets[:, i].sum() == 0:
            continue
        (line,) = ax.plot(recalls[i].cpu(), precisions[i].cpu(), label=plots.short(classes[i], 20))
        at = int((cuts[i] < result.thresholds[i]).sum().clamp(max=len(cuts[i]) - 1))
        ax.plot(recalls[i][at].item(), precisions[i][at].item(), "o", color=line.get_color())
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title="Precision-recall per label")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def samples_figure(images: torch.Tensor, result: multilabel.MultiLabelResult, classes: list[str]) -> Figure:
    shown = sample_indices(len(images), SAMPLES)
    truth = multilabel.label_sets(result.targets[shown].cpu(), classes)
    decided = multilabel.label_sets(result.decisions()[shown].cpu(), classes)
    titles = [f"true {plots.short(t, 18)}\npred {plots.short(d, 18)}" for t, d in zip(truth, decided)]
    colors = ["black" if t == d else plots.WRONG for t, d in zip(truth, decided)]
    return plots.image_grid_figure(
        [images[i] for i in shown.tolist()], titles, colors, "Test images: true and predicted label sets (red: not the same set)"
    )


def top_losses(result: multilabel.MultiLabelResult, k: int = TOP_LOSSES) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k images with the highest loss (binary cross-entropy summed over the labels), highest first: their indices,
    losses, and the label each is most wrong about (a label it missed, or one it gave that is not there)."""
    per_label = F.binary_cross_entropy_with_logits(result.logits.float(), result.targets.float(), reduction="none").cpu()
    losses, index = per_label.sum(1).topk(min(k, len(per_label)))
    return index, losses, per_label[index].argmax(1)


def top_losses_figure(
    images: torch.Tensor, result: multilabel.MultiLabelResult, classes: list[str], top: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    heatmaps: torch.Tensor | None = None,
) -> Figure:  # fmt: skip
    """fastai's plot_top_losses for label sets: the worst test images (`top`, from top_losses) with their true and
    predicted sets and loss, and the label each is most wrong about with its probability; with `heatmaps` (one per
    image, for that label), each is followed by where the model looked for it."""
    index, losses, worst = top
    probs, targets = result.logits.float().sigmoid().cpu(), result.targets.cpu()
    truth = multilabel.label_sets(targets[index], classes)
    decided = multilabel.label_sets(result.decisions()[index].cpu(), classes)
    cells, titles, colors = [], [], []
    for n, (i, loss, j) in enumerate(zip(index.tolist(), losses.tolist(), worst.tolist())):
        why = "missed" if targets[i, j] else "not there"
        cells.append(images[i])
        titles.append(f"true {plots.short(truth[n], 18)}\npred {plots.short(decided[n], 18)}\nloss {loss:.2f}")
        colors.append("black" if truth[n] == decided[n] else plots.WRONG)
        if heatmaps is not None:
            cells.append(plots.heatmap_cell(images[i], heatmaps[n]))
            titles.append(f"where it looked for\n{plots.short(classes[j], 12)} ({probs[i, j]:.2f})\n{why}")
            colors.append("black")
    beside = (
        "; beside each, where the model looked for the label it is most wrong about (Grad-CAM or occlusion)" if heatmaps is not None else ""
    )
    return plots.image_grid_figure(
        cells, titles, colors, f"Top losses: true and predicted label sets (red: not the same set), loss{beside}"
    )


def _heatmaps(predictor, images: torch.Tensor, index: torch.Tensor, worst: torch.Tensor) -> torch.Tensor | None:
    """Where the model looked in each top-loss image, for the label it is most wrong about; None without a predictor."""
    from imgcls.explain import heatmaps

    return heatmaps(predictor, images[index], worst.tolist()) if predictor is not None and len(index) else None


def write_report(run_dir: Path, classes: list[str], images: torch.Tensor, result: multilabel.MultiLabelResult, history, config: dict,
                 summary: dict, predictor=None) -> Path:  # fmt: skip
    """A multi-label run's plots and report.html; `predictor` (an imgcls.inference.Predictor of the model) adds where
    the model looked to the top losses."""
    top = top_losses(result)  # once, for the figure and its heatmaps
    index, _, worst = top
    figures = {
        "curves.png": lambda: plots.curves_figure(history),
        "per_label_ap.png": lambda: per_label_ap_figure(result, classes),
        "pr_curves.png": lambda: pr_curves_figure(result, classes),
        "samples.png": lambda: samples_figure(images, result, classes),
        "top_losses.png": lambda: top_losses_figure(images, result, classes, top, _heatmaps(predictor, images, index, worst)),
    }
    for name, figure in figures.items():
        plots.save(figure(), run_dir / name)
    facts = [
        ("test mAP", f"{result.mean_average_precision:.4f}"), ("F1 micro", f"{result.f1_micro:.4f}"), ("F1 macro", f"{result.f1_macro:.4f}"),
        ("exact match", f"{result.accuracy:.2%}"), ("test images", f"{len(images):,}"),
        *((label, fmt.format(summary[key])) for key, label, fmt in (("best_val_map", "best val mAP", "{:.4f}"), ("best_epoch", "best epoch", "{}"),
                                                                  ("epochs_run", "epochs run", "{}")) if key in summary),
    ]  # fmt: skip
    boxes = "".join(f'<div class="figure">{html.escape(k)}<b>{html.escape(v)}</b></div>' for k, v in facts)
    per_label = [
        [c, *("n/a" if result.per_label[c][k] is None else f"{result.per_label[c][k]:.3f}" for k in ("ap", "precision", "recall")),
         f"{t:.3f}", int(result.targets[:, i].sum())]
        for i, (c, t) in enumerate(zip(classes, result.thresholds))
    ]  # fmt: skip
    pairs = multilabel.confused_pairs(result, classes)
    pictures = "\n".join(
        f"<h2>{html.escape(heading)}</h2>\n<p>{html.image_tag(run_dir / name, heading)}</p>" for name, heading in PLOTS.items()
    )
    body = f"""<p>{html.escape(f"data {config.get('data')}, model {config.get('model')}")}; multi-label: each label decided by its own
threshold (chosen on val for the best F1); everything below is on the test set with the best checkpoint.</p>
<div class="figures">{boxes}</div>
{pictures}
<div class="columns">
<div><h2>Per label</h2>
{html.table(["label", "AP", "precision", "recall", "threshold", "test images"], per_label, numeric={1, 2, 3, 4, 5})}</div>
<div><h2>Most confused label pairs</h2>
{html.table(["label missed", "label given instead", "images"], pairs, numeric={2}) if pairs else "<p>none</p>"}</div>
</div>
<h2>Config</h2>
{html.config_table(config)}
"""
    path = run_dir / "report.html"
    write_text(path, html.page(f"imgcls report: {run_dir.name}", body))
    return path
