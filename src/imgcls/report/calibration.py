"""The report's reliability diagram: for val and test, the accuracy of the images in each bin of confidence against
that confidence (a calibrated model's bars sit on the diagonal), with each split's ECE before and after the temperature."""

import torch
from matplotlib.figure import Figure

from imgcls import calibration


def reliability_figure(splits: dict[str, tuple[torch.Tensor, torch.Tensor]], temperature: float) -> Figure:
    """splits: name -> (calibrated logits, labels), each drawn in a panel of its own."""
    shown = {name: pair for name, pair in splits.items() if pair[0] is not None and len(pair[1])}
    fig = Figure(figsize=(5 * max(1, len(shown)), 4.8), layout="constrained")
    axes = fig.subplots(1, max(1, len(shown)), squeeze=False)[0]
    width = 1 / calibration.BINS
    for ax, (name, (logits, labels)) in zip(axes, shown.items()):
        probs = logits.float().cpu().softmax(1)
        confidence, accuracy, counts = calibration.reliability(probs, labels)
        centres = (torch.arange(calibration.BINS) + 0.5) * width
        filled = counts > 0
        centres, confidence, accuracy = centres[filled].numpy(), confidence[filled].numpy(), accuracy[filled].numpy()
        ax.bar(centres, accuracy, width=width * 0.95, color="#1f77b4", label="accuracy in the bin")
        ax.bar(centres, confidence, width=width * 0.95, fill=False, edgecolor="#c62828", label="its mean confidence")
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        figures = calibration.figures(logits.float().cpu() * temperature, labels.cpu(), temperature)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)", ylabel="accuracy",
               title=f"{name}: ECE {figures['ece']:.3f}\n(before the temperature {temperature:.2f}: {figures['ece_uncalibrated']:.3f})")  # fmt: skip
        ax.legend(loc="upper left", fontsize=8)
    return fig


def coverage_figure(logits: torch.Tensor, labels: torch.Tensor, suggested: float | None = None, split: str = "test") -> Figure:
    """Selective classification: the accuracy on the most confident share of the images, against that share; the
    suggested --min-confidence marked where it cuts this split."""
    coverage, accuracy, threshold = calibration.coverage_curve(logits.float().cpu().softmax(1), labels)
    fig = Figure(figsize=(6.5, 4.8), layout="constrained")
    ax = fig.subplots()
    ax.plot(coverage.numpy(), accuracy.numpy(), color="#1f77b4")
    if suggested is not None and len(threshold):
        k = max(1, int((threshold >= suggested).sum())) - 1
        ax.plot(coverage[k].item(), accuracy[k].item(), "o", color="#c62828",
                label=f"--min-confidence {suggested:.2f}: keeps {coverage[k].item():.1%}, accuracy {accuracy[k].item():.2%}")  # fmt: skip
        ax.legend(loc="lower left", fontsize=9)
    low = accuracy.min().item() if len(accuracy) else 0.0
    ax.set(xlim=(0, 1.01), ylim=(max(0.0, low - 0.02), 1.005), xlabel="coverage (share of images answered, the most confident first)",
           ylabel="accuracy on them", title=f"Accuracy against coverage ({split})")  # fmt: skip
    return fig
