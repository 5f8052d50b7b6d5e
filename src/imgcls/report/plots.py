"""Matplotlib figures of a run: curves, lr finder, confusion matrix, per-class accuracy, image grids, probability bars.

Figures use the object-oriented API (no pyplot state), so they render headless with Agg. Each `*_figure`
function builds a Figure; `plot_*` functions build and save one. Images come in as uint8 N x C x H x W.
"""

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter
from PIL import Image

from imgcls.files import atomic_write, printable

DPI = 100
WRONG = "#c62828"  # red for wrong predictions
CELL = 1.6  # inches per image in grids
# For class, file and dataset names: drawn as they are written. Matplotlib would read "$...$" as math text (and
# fail on "a$b ... 50$"), or hand everything to LaTeX when a user's matplotlibrc sets text.usetex.
LITERAL = {"parse_math": False, "usetex": False}


def save(fig: Figure, path: str | Path) -> None:
    atomic_write(path, lambda f: f.write(png(fig)))


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes: a file's (save) or a page's to embed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return buffer.getvalue()


def short(name: str, width: int) -> str:
    """A class name cut to `width` characters, so long names cannot run into their neighbours; bytes that are not
    UTF-8 (a folder name from another system) escaped, as Agg cannot draw them."""
    name = printable(name)
    return name if len(name) <= width else name[: width - 1] + "…"


def to_display(image: torch.Tensor) -> np.ndarray:
    """C x H x W uint8 -> H x W (greyscale) or H x W x 3 array for imshow."""
    array = image.detach().cpu().numpy()
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def show_image(ax, image: torch.Tensor) -> None:
    ax.imshow(to_display(image), cmap="gray", vmin=0, vmax=255)
    ax.set_axis_off()


def _label_font(count: int) -> float:
    """Tick-label size that stays readable from 2 to 100+ classes."""
    return 10 if count <= 20 else 7


# --- training curves ---------------------------------------------------------------------------------


def curves_figure(history: Sequence[dict]) -> Figure:
    """Loss, accuracy and learning rate per epoch; the best validation epoch is marked."""
    epochs = [int(r["epoch"]) for r in history]
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)
    best = max(history, key=lambda r: float(r["val_acc"]))["epoch"] if history else None
    panels = [
        (axes[0], "Loss", "cross-entropy loss", [("train_loss", "train"), ("val_loss", "validation")]),
        (axes[1], "Accuracy", "accuracy", [("train_acc", "train"), ("val_acc", "validation")]),
        (axes[2], "Learning rate", "learning rate (end of epoch)", [("lr", "lr")]),
    ]
    for ax, title, ylabel, series in panels:
        for key, label in series:
            ax.plot(epochs, [float(r[key]) for r in history], marker="o", label=label)
        if best is not None:
            ax.axvline(int(best), color="grey", linestyle=":", label=f"best epoch ({best})")
        ax.set(title=title, xlabel="epoch", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    axes[1].yaxis.set_major_formatter(PercentFormatter(1.0))
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    return fig


def lr_find_figure(rows: Sequence[dict], suggested: float, minimum: float) -> Figure:
    """`imgcls lr-find`'s loss against a log lr axis: each step's loss faint, the smoothed loss, the two suggestions marked."""
    lrs = [r["lr"] for r in rows]
    smoothed = [r["smoothed_loss"] for r in rows]
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.plot(lrs, [r["loss"] for r in rows], color="#9ecae1", linewidth=1, label="loss of each step")
    ax.plot(lrs, smoothed, color="#1f77b4", linewidth=2, label="smoothed loss")
    ax.axvline(suggested, color=WRONG, linestyle="--", label=f"suggested: steepest descent, lr {suggested:.2g}")
    ax.axvline(minimum, color="grey", linestyle=":", label=f"minimum loss / 10, lr {minimum:.2g}")
    finite = [v for v in smoothed if np.isfinite(v)]
    low, high = min(finite), max(finite)
    margin = 0.05 * (high - low) or 0.05 * abs(high) or 0.05
    ax.set_ylim(low - margin, high + margin)  # a diverging step's loss would squash the curve into a line
    ax.set_xscale("log")
    ax.set(title="Learning rate finder", xlabel="learning rate (log scale)", ylabel="training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return fig


def plot_lr_find(rows: Sequence[dict], suggested: float, minimum: float, path) -> None:
    save(lr_find_figure(rows, suggested, minimum), path)


# --- confusion matrix and per-class accuracy ---------------------------------------------------------


def normalise_rows(confusion: torch.Tensor) -> torch.Tensor:
    """Each true class's row as fractions of its images (a class without images stays all zero)."""
    totals = confusion.sum(1, keepdim=True).clamp_min(1)
    return confusion.double() / totals


def confusion_figure(confusion: torch.Tensor, classes: Sequence[str]) -> Figure:
    k = len(classes)
    names = [short(c, 18) for c in classes]
    side = 0.13 * k if k > 20 else max(4.5, 0.55 * k)  # inches for the matrix itself
    extra = 0.075 * max(len(n) for n in names) + 1.5  # room for the names
    fig = Figure(figsize=(side + extra + 1.2, side + extra + 0.5), layout="constrained")
    ax = fig.subplots()
    share = normalise_rows(confusion).numpy()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    font = _label_font(k)
    ax.set_xticks(range(k), names, fontsize=font, rotation=90 if k > 6 or max(map(len, names)) > 5 else 0, **LITERAL)
    ax.set_yticks(range(k), names, fontsize=font, **LITERAL)
    ax.set(xlabel="predicted class", ylabel="true class", title="Confusion matrix (test set, each row sums to 100%)")
    if k <= 15:  # numbers in the cells stay legible only for a few classes
        for i in range(k):
            for j in range(k):
                value = share[i, j]
                if value > 0:
                    ax.text(j, i, "100%" if value == 1 else f"{value:.1%}", ha="center", va="center", fontsize=9 if k <= 10 else 7,
                            color="white" if value > 0.5 else "black")  # fmt: skip
    fig.colorbar(im, ax=ax, format=PercentFormatter(1.0), shrink=0.8, label="share of the true class")
    return fig


def per_class_figure(confusion: torch.Tensor, classes: Sequence[str]) -> Figure:
    """Horizontal bars (names stay horizontal and readable) of each class's test accuracy."""
    k = len(classes)
    totals = confusion.sum(1)
    accuracy = [(confusion[i, i] / totals[i]).item() if totals[i] else None for i in range(k)]
    overall = (confusion.diag().sum() / confusion.sum().clamp_min(1)).item()
    names = [short(c, 24) for c in classes]
    fig = Figure(figsize=(8, max(2.5, 0.3 * k + 1.3) if k <= 20 else 0.16 * k + 1.3), layout="constrained")
    ax = fig.subplots()
    rows = np.arange(k)
    ax.axvline(overall, color="black", linestyle="--", linewidth=1, zorder=0.5)  # behind the bars, seen between them
    ax.barh(rows, [a or 0 for a in accuracy], color=["#1f77b4" if a is not None else "#bbbbbb" for a in accuracy])
    ax.set_yticks(rows, names, fontsize=_label_font(k), **LITERAL)
    ax.set_ylim(k - 0.5, -0.5)  # first class on top, as in the tables; no empty margin
    for row, a in zip(rows, accuracy):
        ax.text((a or 0) + 0.01, row, "no images" if a is None else f"{a:.1%}", va="center", fontsize=_label_font(k) - 1,
                bbox=dict(facecolor="white", edgecolor="none", pad=0.5))  # fmt: skip
    ax.set_xlim(0, 1.15)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set(
        xlabel="accuracy (share of the class's test images predicted right)",
        title=f"Per-class accuracy (test set; dashed line: overall {overall:.1%})",
    )
    return fig


# --- image grids ---------------------------------------------------------------------------------------


def image_grid_figure(
    images: Sequence[torch.Tensor | None], titles: Sequence[str], colors: Sequence[str], suptitle: str, columns: int = 8
) -> Figure:
    """Images with a title each, `columns` to a row, all drawn on one axes measured in inches: one axes per
    image would cost seconds of tick and layout work for a few dozen images. A None image leaves its cell empty
    (a row shorter than the others)."""
    n = len(images)
    cols = max(1, min(columns, n))
    rows = -(-n // cols)
    titles, suptitle = [printable(t) for t in titles], printable(suptitle)  # file names, as in short()
    lines = max((t.count("\n") + 1 for t in titles), default=1)
    head, label, gap = 0.2 + 0.2 * (suptitle.count("\n") + 1), 0.15 * lines + 0.08, 0.1  # inches: title, image titles, spacing
    width, height = cols * CELL, head + rows * (label + CELL)
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set(xlim=(0, width), ylim=(0, height))
    ax.set_axis_off()
    ax.text(width / 2, height - 0.12, suptitle, ha="center", va="top", fontsize=11, **LITERAL)
    side = CELL - gap
    for i, (image, title, color) in enumerate(zip(images, titles, colors)):
        if image is None:
            continue
        r, c = divmod(i, cols)
        top = height - head - r * (label + CELL) - label
        h, w = image.shape[1:]
        dx, dy = side * min(1, w / h) / 2, side * min(1, h / w) / 2  # keep the image's aspect ratio in its square
        cx, cy = c * CELL + CELL / 2, top - side / 2
        ax.imshow(to_display(image), cmap="gray", vmin=0, vmax=255, extent=(cx - dx, cx + dx, cy - dy, cy + dy), aspect="auto")
        ax.text(cx, top + 0.04, title, ha="center", va="bottom", fontsize=8, color=color, **LITERAL)
    return fig


def samples_figure(images: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor, classes: Sequence[str]) -> Figure:
    titles, colors = [], []
    for true, pred in zip(labels.tolist(), predictions.tolist()):
        wrong = true != pred
        titles.append(f"true {short(classes[true], 14)}\npred {short(classes[pred], 14)}{' ✗' if wrong else ''}")
        colors.append(WRONG if wrong else "black")
    return image_grid_figure(images, titles, colors, "Test images: true and predicted class (wrong ones in red, marked ✗)")


def heatmap_cell(image: torch.Tensor, heatmap: torch.Tensor) -> torch.Tensor:
    """A uint8 C x H x W image with its heatmap (in [0, 1]) laid over it, as a grid cell."""
    from imgcls.explain import overlay

    picture = Image.fromarray(np.ascontiguousarray(to_display(image)))
    overlaid = np.array(overlay(picture, heatmap.numpy()))  # a copy: PIL's buffer is read-only, which torch warns of
    return torch.from_numpy(overlaid).permute(2, 0, 1)


def top_losses_figure(
    images: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor, losses: torch.Tensor, classes: Sequence[str],
    heatmaps: torch.Tensor | None = None,
) -> Figure:  # fmt: skip
    """fastai's plot_top_losses: prediction, true class, loss and probabilities of the worst test images; with
    `heatmaps` (in [0, 1], one per image), each image is followed by where the model looked for its prediction."""
    cells, titles, colors = [], [], []
    for i, (true, p, loss) in enumerate(zip(labels.tolist(), probs, losses.tolist())):
        pred = int(p.argmax())
        cells.append(images[i])
        titles.append(f"pred {short(classes[pred], 10)} ({p[pred]:.2f})\ntrue {short(classes[true], 10)} ({p[true]:.2f})\nloss {loss:.2f}")
        colors.append(WRONG if pred != true else "black")
        if heatmaps is not None:
            cells.append(heatmap_cell(images[i], heatmaps[i]))
            titles.append(f"where it looked\nfor {short(classes[pred], 10)}\n")
            colors.append("black")
    why = "; beside each, where the model looked for its prediction (Grad-CAM or occlusion)" if heatmaps is not None else ""
    return image_grid_figure(
        cells, titles, colors, f"Top losses: predicted class (its probability), true class (its probability), loss{why}"
    )


# --- class probabilities per image (the seeds' view_classify) -----------------------------------------


def predictions_figure(images: torch.Tensor, probs: torch.Tensor, classes: Sequence[str], titles=None, top_k: int = 5) -> Figure:
    n, k = len(images), min(top_k, len(classes))
    cols = 1 if n <= 3 else 2 if n <= 8 else 4
    rows = -(-n // cols)
    row_height = max(2.0, 0.28 * k + 0.9)
    fig = Figure(figsize=(cols * 5.2, rows * row_height), layout="constrained")
    grid = fig.add_gridspec(rows, 2 * cols, width_ratios=[1.6, 3.6] * cols)
    for i in range(n):
        r, c = divmod(i, cols)
        image_ax, bar_ax = fig.add_subplot(grid[r, 2 * c]), fig.add_subplot(grid[r, 2 * c + 1])
        show_image(image_ax, images[i])
        values, index = probs[i].float().topk(k)
        bar_ax.barh(range(k), values.tolist(), color=["#1f77b4"] + ["#9ecae1"] * (k - 1))
        bar_ax.set_yticks(range(k), [short(classes[j], 16) for j in index.tolist()], fontsize=8, **LITERAL)
        bar_ax.invert_yaxis()
        for row, v in enumerate(values.tolist()):
            bar_ax.text(v + 0.02, row, f"{v:.1%}", va="center", fontsize=8)
        bar_ax.set_xlim(0, 1.3)
        bar_ax.set_xticks([0, 0.5, 1])
        bar_ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        bar_ax.tick_params(axis="x", labelsize=8)
        bar_ax.set_title(short(titles[i], 44) if titles is not None else f"image {i + 1}", fontsize=9, loc="left", **LITERAL)
    fig.suptitle(f"Top {k} class probabilities of each image", fontsize=11)
    return fig


def plot_predictions(images: torch.Tensor, probs: torch.Tensor, classes: Sequence[str], path, titles=None, top_k: int = 5) -> None:
    """Each image (uint8 N x C x H x W, C = 1 or 3) beside a bar chart of its top_k class probabilities, in one PNG."""
    save(predictions_figure(images, probs, classes, titles, top_k), path)


def plot_file_predictions(results, classes: Sequence[str], path, top_k: int = 5) -> None:
    """plot_predictions of the files `imgcls predict` kept the images of (inference.FileResult), titled by file name."""
    shown = [r for r in results if r.image is not None]
    images, probs = torch.from_numpy(np.stack([r.image for r in shown])), torch.stack([r.probs for r in shown])
    plot_predictions(images, probs, classes, path, titles=[r.file.name for r in shown], top_k=top_k)


# --- dataset preview -----------------------------------------------------------------------------------

PREVIEW_ROWS = 25  # classes per column block of the preview


def mosaic(images: torch.Tensor, columns: int, shape: Sequence[int], pad: int = 2) -> np.ndarray:
    """Up to `columns` images of `shape` (C, H, W) side by side as one H x W x 3 uint8 array, white between and after them."""
    h, w = shape[1:]
    out = np.full((h, columns * (w + pad), 3), 255, dtype=np.uint8)
    for i, image in enumerate(images[:columns]):
        out[:, i * (w + pad) : i * (w + pad) + w] = image.expand(3, h, w).permute(1, 2, 0).numpy()
    return out


def preview_figure(images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], per_class: int, title: str) -> Figure:
    """One row of sample images per class, with the class name and its image count; many classes wrap into blocks."""
    k = len(classes)
    counts = torch.bincount(labels, minlength=k).tolist()
    rows = [mosaic(images[labels == i][:per_class], per_class, images.shape[1:]) for i in range(k)]
    blocks = -(-k // PREVIEW_ROWS)
    per_block = -(-k // blocks)
    name_width = 0.07 * max(len(short(c, 20)) + len(f" ({n:,})") for c, n in zip(classes, counts)) + 0.3
    fig = Figure(figsize=(max(5.0, blocks * (per_class * 0.5 + name_width)), max(2.2, per_block * 0.5 + 0.8)), layout="constrained")
    fig.suptitle(printable(title), fontsize=10, **LITERAL)
    for b, ax in enumerate(np.atleast_1d(fig.subplots(1, blocks))):
        chunk = range(b * per_block, min(k, (b + 1) * per_block))
        strip = np.concatenate([rows[i] for i in chunk])
        ax.imshow(strip, cmap="gray", vmin=0, vmax=255)
        height = strip.shape[0] / len(chunk)
        ax.set_yticks([height * (j + 0.5) for j in range(len(chunk))], [f"{short(classes[i], 20)} ({counts[i]:,})" for i in chunk],
                      fontsize=8, **LITERAL)  # fmt: skip
        ax.set_xticks([])
        for side in ax.spines.values():
            side.set_visible(False)
        ax.tick_params(length=0)
    return fig


# --- dataset health --------------------------------------------------------------------------------------


def balance_figure(counts: dict[str, Sequence[int]], classes: Sequence[str], title: str) -> Figure:
    """Images per class as horizontal bars, stacked by split (train, val, test)."""
    k = len(classes)
    fig = Figure(figsize=(8, max(2.5, 0.3 * k + 1.3) if k <= 20 else 0.16 * k + 1.3), layout="constrained")
    ax = fig.subplots()
    rows, left = np.arange(k), np.zeros(k)
    for split, color in (("train", "#1f77b4"), ("val", "#9ecae1"), ("test", "#ff7f0e")):
        ax.barh(rows, counts[split], left=left, color=color, label=split)
        left += np.asarray(counts[split])
    ax.set_yticks(rows, [short(c, 24) for c in classes], fontsize=_label_font(k), **LITERAL)
    ax.set_ylim(k - 0.5, -0.5)
    ax.set_xlim(0, left.max() * 1.25)  # room for the legend
    ax.set(xlabel="images", title=printable(title))
    ax.legend(fontsize=9, loc="lower right")
    return fig
