"""How sure a model should be: expected calibration error, reliability bins, and temperature scaling.

Temperature scaling (Guo et al., 2017) divides the logits by one number T fitted on val to minimise the negative
log-likelihood: it changes no prediction, only how confident each is. The ECE is torchmetrics' (15 equal-width bins of
the top probability, the weighted mean of |accuracy - confidence|); the fit is a one-parameter LBFGS of our own, as no
well-kept library fits a temperature on tensors.
"""

import torch
import torch.nn.functional as F

BINS = 15
LIMITS = (0.05, 20.0)  # a temperature outside these says the val set is too small or the model degenerate


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 50) -> float:
    """The T > 0 minimising the cross-entropy of logits / T on these (validation) images; 1 without images."""
    if len(labels) == 0:
        return 1.0
    logits, labels = logits.detach().double().cpu(), labels.cpu()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)  # log T: the search stays on T > 0
    optimiser = torch.optim.LBFGS([log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimiser.step(closure)
    return float(log_t.detach().exp().clamp(*LIMITS))


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> float:
    from torchmetrics.functional.classification import multiclass_calibration_error

    if len(labels) == 0:
        return float("nan")
    return multiclass_calibration_error(probs.float(), labels.to(probs.device), probs.shape[1], n_bins=bins, norm="l1").item()


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per equal-width bin of the top probability: its images' mean confidence, their accuracy (NaN for an empty
    bin) and their number, what a reliability diagram draws."""
    confidence, predicted = probs.float().cpu().max(1)
    right = (predicted == labels.cpu()).double()
    which = (confidence * bins).long().clamp(max=bins - 1)
    counts = torch.bincount(which, minlength=bins).double()
    mean = lambda v: torch.bincount(which, weights=v, minlength=bins) / counts  # noqa: E731 - NaN where empty
    return mean(confidence.double()), mean(right), counts.long()


def figures(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict:
    """ECE before and after dividing the logits by the temperature."""
    logits = logits.float()
    return {
        "ece_uncalibrated": expected_calibration_error(logits.softmax(1), labels),
        "ece": expected_calibration_error((logits / temperature).softmax(1), labels),
    }


COVERAGES = (1.0, 0.95, 0.9, 0.8, 0.7, 0.5)  # the shares of images `evaluate --coverage` tabulates
KEEP = 0.95  # the suggested --min-confidence keeps this share of the (in-distribution) val images
MIN_IMAGES = 100  # fewer val images than this give no suggestion: their 5th percentile would be a guess


def coverage_curve(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Selective classification: with the images sorted from the most confident down, for each k the share kept (k/N),
    the accuracy on those k, and the confidence of the k-th (the --min-confidence that keeps them)."""
    confidence, predicted = probs.float().cpu().max(1)
    order = confidence.argsort(descending=True, stable=True)
    right = (predicted == labels.cpu())[order].double()
    kept = torch.arange(1, len(order) + 1, dtype=torch.float64)
    return kept / len(order), right.cumsum(0) / kept, confidence[order]


def coverage_table(probs: torch.Tensor, labels: torch.Tensor, shares=COVERAGES) -> list[dict]:
    """Accuracy and the confidence threshold at each share of the images kept, the most confident first."""
    if len(labels) == 0:
        return []
    coverage, accuracy, threshold = coverage_curve(probs, labels)
    rows = []
    for share in shares:
        k = max(1, min(len(coverage), round(share * len(coverage)))) - 1
        rows.append({"coverage": coverage[k].item(), "accuracy": accuracy[k].item(), "min_confidence": threshold[k].item()})
    return rows


def suggested_min_confidence(probs: torch.Tensor, keep: float = KEEP) -> float | None:
    """The top probability that `keep` of these (validation) images reach: a --min-confidence that abstains on about
    1 - keep of in-distribution images, and on more of what is unlike them. None below MIN_IMAGES images."""
    if len(probs) < MIN_IMAGES:
        return None
    return torch.quantile(probs.float().cpu().max(1).values, 1 - keep).item()
