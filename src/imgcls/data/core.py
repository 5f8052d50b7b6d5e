"""In-memory datasets: every split is a uint8 N x C x H x W tensor plus int64 labels."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from imgcls.errors import ImgclsError


@dataclass
class Split:
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64 N (a class each), or for multi-label data uint8 N x K (1 where the image has that label)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> "Split":
        return Split(self.images[index], self.labels[index])


@dataclass
class Dataset:
    name: str
    classes: list[str]
    train: Split
    val: Split
    test: Split
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flips_ok: bool = True  # False for digits: a mirrored 2 is not a 2
    skipped: list[str] = field(default_factory=list)  # unreadable files, "path: reason"
    split_files: dict[str, list[str]] | None = None  # folder datasets: which file went where
    dropped: list[dict] | None = None  # folder datasets under --dedupe: the files left out, and why (duplicates.dedupe)
    resized_to: int | None = None  # folder datasets: the square side they were resized to for want of --image-size
    root: Path | None = None  # folder and table datasets: the folder their file names (split_files) are relative to

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def multi_label(self) -> bool:
        """Several labels per image (labels N x K), as opposed to one class each."""
        return self.train.labels.ndim == 2


def as_label_sets(data: "Dataset") -> "Dataset":
    """Multi-label data seen as one class per distinct label set ("cat+dog"), for what compares labels image by image
    (the health check's conflicts, --dedupe): the same picture under two label sets is a conflict. Other data as it is."""
    if not data.multi_label:
        return data
    from dataclasses import replace

    rows = torch.cat([data.train.labels, data.val.labels, data.test.labels])
    sets, index = torch.unique(rows, dim=0, return_inverse=True)
    names = ["+".join(data.classes[i] for i in torch.nonzero(row).flatten().tolist()) or "(none)" for row in sets]
    cut = [len(data.train), len(data.train) + len(data.val)]
    train, val, test = index[: cut[0]], index[cut[0] : cut[1]], index[cut[1] :]
    return replace(data, classes=names, train=Split(data.train.images, train), val=Split(data.val.images, val),
                   test=Split(data.test.images, test))  # fmt: skip


def class_counts(labels, num_classes: int) -> torch.Tensor:
    """Images of each class: a class index per image, or multi-hot rows (N x K), or a list of either (ints, tuples)."""
    if not isinstance(labels, torch.Tensor):
        flat = [c for label in labels for c in (label if isinstance(label, tuple | list) else (label,))]
        return torch.bincount(torch.tensor(flat, dtype=torch.long), minlength=num_classes)
    if labels.ndim == 2:
        return labels.long().sum(0)
    return torch.bincount(labels.long(), minlength=num_classes)


def strata(labels: torch.Tensor) -> torch.Tensor:
    """What a stratified split keeps in proportion: the class of each image; for multi-label rows, the first label each
    has (K for none), so every label's first holders are spread over the splits."""
    if labels.ndim == 1:
        return labels
    has = labels.bool()
    return torch.where(has.any(1), has.float().argmax(1), torch.full((len(labels),), labels.shape[1]))


def stratified_split(labels: torch.Tensor, fractions: Sequence[float], seed: int) -> list[torch.Tensor]:
    """Split indices into len(fractions) parts, class by class, reproducibly for a seed.

    Each class is cut by cumulative rounding, so every part gets its share of every class
    that has enough samples and no sample is lost or duplicated.
    """
    generator = torch.Generator().manual_seed(seed)
    labels = strata(labels)
    bounds = torch.tensor([0.0, *fractions]).cumsum(0)
    bounds = bounds / bounds[-1]
    parts: list[list[torch.Tensor]] = [[] for _ in fractions]
    for cls in labels.unique(sorted=True):
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        cuts = (bounds * len(idx)).round().long().tolist()
        for part, lo, hi in zip(parts, cuts[:-1], cuts[1:]):
            part.append(idx[lo:hi])
    return [torch.cat(p).sort().values if p else torch.empty(0, dtype=torch.long) for p in parts]


def hold_out_index(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the images kept for training and of a stratified validation split carved out of them."""
    keep, val = stratified_split(labels, [1 - fraction, fraction], seed)
    if len(val) == 0 or len(keep) == 0:
        raise ImgclsError(
            f"cannot hold out {fraction:.0%} of {len(labels)} training images for validation: add images or provide a val/ folder"
        )
    return keep, val


STATS_BYTES = 64 << 20  # channel_stats reads this many bytes of images at a time: the set may be larger than memory


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in [0, 1] units, exactly, from a 256-bin histogram per channel,
    counted a chunk of images at a time (no float copy of the set, nor a whole copy of one channel)."""
    counts = torch.zeros(images.shape[1], 256, dtype=torch.float64)
    step = max(1, STATS_BYTES // max(1, images[0].numel()))
    for start in range(0, len(images), step):
        chunk = images[start : start + step]
        for c in range(images.shape[1]):
            counts[c] += torch.bincount(chunk[:, c].reshape(-1), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for per_value in counts:
        mean = (per_value * values).sum() / per_value.sum()
        var = (per_value * (values - mean) ** 2).sum() / per_value.sum()
        means.append(round(mean.item(), 4))
        stds.append(round(max(var.sqrt().item(), 1e-3), 4))
    return tuple(means), tuple(stds)


def imbalance(labels: torch.Tensor, num_classes: int) -> tuple[float, int, int]:
    """(the largest class's count over the smallest's, the largest class, the smallest) among classes with images."""
    counts = class_counts(labels.cpu(), num_classes)
    present = torch.nonzero(counts).flatten()
    big, small = present[counts[present].argmax()].item(), present[counts[present].argmin()].item()
    return counts[big].item() / max(counts[small].item(), 1), big, small
