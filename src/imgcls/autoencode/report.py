"""An autoencoder run's report: loss curves, reconstructions beside originals, a PCA map of the test codes, a VAE's
samples from its prior, interpolations between test images, the most anomalous test images, and report.html."""

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from imgcls.autoencode.codes import Encoded, decode, reconstruct
from imgcls.data.core import Dataset
from imgcls.files import printable, write_text
from imgcls.models.autoencoder import AutoEncoder
from imgcls.report import plots
from imgcls.report.html import config_table, escape, image_tag, page, table
from imgcls.report.interpret import sample_indices

SHOWN = 16  # test images in the reconstructions and anomalies figures
MAP_POINTS = 5000  # test codes in the latent map (all of them go into the PCA)
SAMPLES = 32  # images drawn from a VAE's prior
PAIRS, STEPS = 4, 8  # interpolations: pairs of test images, decoded steps between their codes (both ends included)

PLOTS = {
    "curves.png": "Loss curves",
    "reconstructions.png": "Reconstructions (test images)",
    "latent_map.png": "Latent codes of the test set (PCA)",
    "prior_samples.png": "Samples from the prior (VAE)",
    "interpolations.png": "Interpolations between test images",
    "anomalies.png": "Most anomalous test images (highest reconstruction error)",
}


def curves_figure(history: list[dict], variational: bool) -> Figure:
    """Reconstruction MSE per epoch, train and validation; a VAE's KL beside it."""
    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(11 if variational else 6, 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, 2 if variational else 1))
    panels = [(axes[0], "Reconstruction error", "MSE per pixel (pixels in [0, 1])", "mse")]
    if variational:
        panels.append((axes[1], "KL divergence from the prior", "KL per image (nats)", "kl"))
    for ax, title, ylabel, key in panels:
        for split in ("train", "val"):
            ax.plot(epochs, [r[f"{split}_{key}"] for r in history], marker="o", label="validation" if split == "val" else split)
        ax.set(title=title, xlabel="epoch", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    return fig


def reconstructions_figure(images: torch.Tensor, recons: torch.Tensor, labels: list[str], errors: torch.Tensor) -> Figure:
    """Rows of originals, each with its reconstructions in the row below."""
    cells, titles = [], []
    for start in range(0, len(images), 8):
        cells += [*images[start : start + 8], *recons[start : start + 8]]
        titles += [plots.short(label, 12) for label in labels[start : start + 8]]
        titles += [f"MSE {e:.4f}" for e in errors[start : start + 8].tolist()]
    return plots.image_grid_figure(cells, titles, ["black"] * len(cells), "Test images (with their class) and their reconstructions below")


def pca_2d(codes: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """The codes projected on their two principal components, and the share of the variance each explains."""
    centred = codes.double() - codes.double().mean(0)
    _, values, vectors = torch.linalg.svd(centred, full_matrices=False)
    variance = values.square()
    share = (variance[:2] / variance.sum().clamp_min(1e-12)).tolist()
    return (centred @ vectors[:2].T).float(), share + [0.0] * (2 - len(share))


def latent_map_figure(codes: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> Figure:
    points, share = pca_2d(codes)
    shown = sample_indices(len(points), MAP_POINTS)
    points, labels = points[shown].numpy(), labels[shown].numpy()
    fig = Figure(figsize=(7.5, 6), layout="constrained")
    ax = fig.subplots()
    k = len(classes)
    cmap = plots_cmap(k)
    for i, name in enumerate(classes):
        mine = labels == i
        if mine.any():
            ax.scatter(
                points[mine, 0], points[mine, 1], s=4, alpha=0.6, color=cmap(i / max(k - 1, 1) if k > 20 else i), label=printable(name)
            )
    ax.set(
        title=f"PCA of the test set's {len(codes):,} codes ({len(points):,} shown), coloured by class",
        xlabel=f"principal component 1 ({share[0]:.0%} of the variance)",
        ylabel=f"principal component 2 ({share[1]:.0%} of the variance)",
    )
    ax.grid(alpha=0.3)
    if k <= 20:
        ax.legend(fontsize=8, markerscale=3, loc="center left", bbox_to_anchor=(1, 0.5), prop={"size": 8})
    return fig


def plots_cmap(k: int):
    from matplotlib import colormaps

    return colormaps["tab10" if k <= 10 else "tab20" if k <= 20 else "viridis"]


def interpolation_codes(codes: torch.Tensor, labels: torch.Tensor) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """PAIRS pairs of test images of different classes (where there are two classes) and STEPS codes from each first to its second."""
    order = sample_indices(len(labels), len(labels), seed=1).tolist()
    pairs = []
    for a in order:
        b = next((j for j in order if labels[j] != labels[a] and j not in (a, *(i for p in pairs for i in p))), None)
        pairs.append((a, b if b is not None else order[-1]))
        if len(pairs) == PAIRS:
            break
    t = torch.linspace(0, 1, STEPS).view(-1, 1)
    return pairs, torch.cat([(1 - t) * codes[a] + t * codes[b] for a, b in pairs])


def interpolations_figure(images: torch.Tensor, pairs, decoded: torch.Tensor, labels: list[str]) -> Figure:
    """Each row: a test image, the decoded steps between its code and another's, that other image."""
    cells, titles = [], []
    for row, (a, b) in enumerate(pairs):
        cells += [images[a], *decoded[row * STEPS : (row + 1) * STEPS], images[b]]
        titles += [plots.short(labels[a], 12), *(f"t={t:.2f}" for t in torch.linspace(0, 1, STEPS).tolist()), plots.short(labels[b], 12)]
    suptitle = "Interpolations: a test image, decodings of codes on the line from its code to another's, that image"
    return plots.image_grid_figure(cells, titles, ["black"] * len(cells), suptitle, columns=STEPS + 2)


def anomalies_figure(images: torch.Tensor, recons: torch.Tensor, labels: list[str], errors: torch.Tensor) -> Figure:
    """The worst reconstructed test images, each beside its reconstruction, worst first."""
    cells, titles, colors = [], [], []
    for rank, (image, recon, label, error) in enumerate(zip(images, recons, labels, errors.tolist()), 1):
        cells += [image, recon]
        titles += [f"#{rank} {plots.short(label, 10)}\nMSE {error:.4f}", "\nreconstruction"]
        colors += [plots.WRONG, "black"]
    return plots.image_grid_figure(
        cells, titles, colors, "Most anomalous test images (anomaly score: reconstruction MSE), each with its reconstruction"
    )


def write_report(run_dir: Path, model: AutoEncoder, data: Dataset, test: Encoded, history: list[dict], config: dict, summary: dict) -> Path:
    """Every figure and report.html, from the trained model and the test set's codes and errors."""
    test_images, names = data.test.images, [data.classes[i] for i in data.test.labels.tolist()]
    mean, std = torch.tensor(data.mean).view(-1, 1, 1), torch.tensor(data.std).view(-1, 1, 1)
    device = next(model.parameters()).device
    mean, std = mean.to(device), std.to(device)
    shown = sample_indices(len(test_images), SHOWN)
    worst = test.errors.argsort(descending=True)[:SHOWN]
    pairs, path_codes = interpolation_codes(test.codes, data.test.labels)
    figures = {
        "curves.png": lambda: curves_figure(history, model.variational),
        "reconstructions.png": lambda: reconstructions_figure(
            test_images[shown], reconstruct(model, test_images[shown], mean, std), [names[i] for i in shown], test.errors[shown]
        ),
        "latent_map.png": lambda: latent_map_figure(test.codes, data.test.labels, data.classes),
        "interpolations.png": lambda: interpolations_figure(test_images, pairs, decode(model, path_codes), names),
        "anomalies.png": lambda: anomalies_figure(
            test_images[worst], reconstruct(model, test_images[worst], mean, std), [names[i] for i in worst], test.errors[worst]
        ),
    }
    if model.variational:
        prior = torch.randn(SAMPLES, model.latent_dim, generator=torch.Generator().manual_seed(0))
        figures["prior_samples.png"] = lambda: plots.image_grid_figure(
            list(decode(model, prior)), [""] * SAMPLES, ["black"] * SAMPLES, "Images decoded from codes drawn from the prior N(0, I)"
        )
    for name, figure in figures.items():  # one figure alive at a time
        plots.save(figure(), run_dir / name)
    page = render(run_dir, {name: PLOTS[name] for name in PLOTS if name in figures}, config, summary, history)
    path = run_dir / "report.html"
    write_text(path, page)
    return path


def render(run_dir: Path, shown: dict[str, str], config: dict, summary: dict, history: list[dict]) -> str:
    kind = "variational autoencoder" if summary["kind"] == "vae" else "autoencoder"
    title = f"imgcls autoencoder report: {run_dir.name}"
    figures = [
        ("test reconstruction MSE", f"{summary['test_mse']:.5f}"),
        ("mean-image MSE (baseline)", f"{summary['mean_image_mse']:.5f}"),
        *([("test KL (nats / image)", f"{summary['test_kl']:.2f}")] if summary.get("test_kl") is not None else []),
        ("code size", str(summary["latent_dim"])),
        ("best epoch", str(summary["best_epoch"])),
        ("training time", f"{summary['train_seconds']:.1f} s"),
        ("parameters", f"{summary['num_params']:,}"),
        ("device", summary["device"]),
    ]
    boxes = "".join(f'<div class="figure">{escape(label)}<b>{escape(value)}</b></div>' for label, value in figures)
    sections = "\n".join(f"<h2>{escape(heading)}</h2>\n<p>{image_tag(run_dir / name, heading)}</p>" for name, heading in shown.items())
    kl = summary["kind"] == "vae"  # a plain autoencoder's KL columns would be all zeros
    header = ["epoch", "train MSE", *(["train KL"] if kl else []), "val MSE", *(["val KL"] if kl else []), "lr", "seconds"]
    epochs = [
        [r["epoch"], f"{r['train_mse']:.5f}", *([f"{r['train_kl']:.2f}"] if kl else []), f"{r['val_mse']:.5f}",
         *([f"{r['val_kl']:.2f}"] if kl else []), f"{r['lr']:.3g}", f"{r['seconds']:.1f}"]
        for r in history
    ]  # fmt: skip
    return page(
        title,
        f"""<p>A {escape(kind)} on {escape(summary["dataset"])}; figures on the test set with the best checkpoint (best.pt, lowest validation
loss). Reconstruction MSE is per pixel, with pixels in [0, 1]; the baseline predicts every test image as the mean training image.
A VAE's training figures decode sampled codes, its validation and test figures its mean codes. The latent map projects the
codes (a VAE's mean codes) on their first two principal components (PCA). anomalies.csv ranks every test image by its
reconstruction MSE.</p>
<div class="figures">{boxes}</div>
{sections}
<div class="columns">
<div><h2>Epochs</h2>
{table(header, epochs, numeric=set(range(len(header))))}</div>
<div><h2>Config</h2>
{config_table(config)}</div>
</div>
""",
    )
