"""A multi-label run's report: per-label average precision, precision-recall curves, the label pairs most often
confused, and test images with their true and predicted label sets; report.html shows them with the per-label table."""

from pathlib import Path

import torch
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
}
SAMPLES = 24
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


def write_report(run_dir: Path, classes: list[str], images: torch.Tensor, result: multilabel.MultiLabelResult, history, config: dict,
                 summary: dict) -> Path:  # fmt: skip
    figures = {
        "curves.png": lambda: plots.curves_figure(history),
        "per_label_ap.png": lambda: per_label_ap_figure(result, classes),
        "pr_curves.png": lambda: pr_curves_figure(result, classes),
        "samples.png": lambda: samples_figure(images, result, classes),
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
