"""Which test images to show: a fixed random sample, and the top losses (fastai's interpretation)."""

import torch


def losses_of(log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy loss of each image: minus the log-probability of its true class."""
    return -log_probs.gather(1, labels.view(-1, 1)).squeeze(1)


def top_losses(log_probs: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and losses of the k images with the highest loss, highest first: the most confidently wrong."""
    losses = losses_of(log_probs, labels)
    values, index = losses.topk(min(k, len(losses)))
    return index, values


def sample_indices(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """k of n indices, the same for every report of a run so reports can be compared."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values
