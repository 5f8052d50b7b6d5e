"""Dataset health: exact and near duplicates, copies across splits, odd files, class balance and likely label errors.

Pure functions of decoded uint8 images (batched in torch) and file headers; `imgcls.report.health` turns the findings
into text, health.json, picture grids and a section of report.html.

What the check covers: duplicate groups and whether each is a plain duplicate, a leak across splits or a conflict
between classes (found by imgcls.data.duplicates, with the perceptual hash and pixel check of imgcls.data.near); odd
files, from their headers (ODD_KINDS); images per class and the imbalance of the training split; and likely label
errors by confident learning, on a run's test predictions or on cross-validated ones (imgcls.training.crossval).
"""

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from imgcls.data.core import Dataset, as_label_sets
from imgcls.data.duplicates import SPLITS, Group, Items, find_duplicates, fingerprints, one_thread
from imgcls.data.folder import each_file, scan
from imgcls.data.images import check_size, decoding, is_grey, open_image
from imgcls.files import printable
from imgcls.interrupt import during

TINY = 16  # pixels: an image with a shorter side is too small to show a class
EXTREME_ASPECT = 4.0  # longer side over shorter: a square crop keeps a quarter of it or less
IMBALANCE_WARNING = 3.0  # largest over smallest class
ODD_KINDS = {
    "unreadable": "unreadable",
    "tiny": f"tiny (shorter side under {TINY} px)",
    "aspect": f"extreme aspect ratio (over {EXTREME_ASPECT:g}:1)",
    "greyscale": "greyscale in a colour dataset",
    "exif_rotated": "EXIF-rotated (imgcls turns them upright; other tools may not)",
    "animated": "animated (only the first frame is used)",
}


# --- odd files -----------------------------------------------------------------------------------------------


class Header(NamedTuple):
    format: str | None
    mode: str
    width: int
    height: int
    orientation: int  # EXIF orientation, 1 = as stored
    animated: bool


def read_header(path: str | Path) -> Header:
    """What the file's header says, decoding no pixel; any failure is an ImageReadError."""
    with decoding(), open_image(path) as image:
        check_size(image)
        orientation = image.getexif().get(0x0112, 1)
        return Header(
            image.format, image.mode, image.width, image.height, int(orientation or 1), bool(getattr(image, "is_animated", False))
        )


def read_headers(root: Path, rels: list[str]) -> dict[str, Header | str]:
    """Each file's Header, or why it cannot be opened."""
    return dict(zip(rels, each_file(read_header, root, rels, "reading headers")))


def odd_files(
    items: Items, grey: torch.Tensor, headers: dict[str, Header | str] | None, skipped: Sequence[str]
) -> dict[str, list[tuple[str, str]]]:
    """(name, detail) of the odd files of each kind in ODD_KINDS. `headers` covers every file of the folder, decoded
    or not; without them (a named dataset) only greyscale images are found, from their pixels. `skipped` holds the
    loader's "file: reason" lines of the files it could not decode."""
    odd: dict[str, list[tuple[str, str]]] = {kind: [] for kind in ODD_KINDS}
    colour = items.tensors[0].shape[1] == 3
    if colour:
        odd["greyscale"] = [(items.names[i], "grey pixels") for i in torch.nonzero(grey).flatten().tolist()]
    if headers is None:
        return odd
    decoded, reasons = set(items.names), _reasons(skipped, set(headers))
    grey_names = {name for name, _ in odd["greyscale"]}
    for rel, h in headers.items():
        if isinstance(h, str) or rel not in decoded:
            odd["unreadable"].append((rel, h if isinstance(h, str) else reasons.get(rel, "could not be decoded")))
            continue
        if min(h.width, h.height) < TINY:
            odd["tiny"].append((rel, f"{h.width}x{h.height}"))
        if max(h.width, h.height) > EXTREME_ASPECT * min(h.width, h.height):
            odd["aspect"].append((rel, f"{h.width}x{h.height}"))
        if colour and is_grey(h.mode) and rel not in grey_names:
            odd["greyscale"].append((rel, f"mode {h.mode}"))
        if h.orientation != 1:
            odd["exif_rotated"].append((rel, f"orientation {h.orientation}"))
        if h.animated:
            odd["animated"].append((rel, f"{h.format}"))
    for found in odd.values():
        found.sort()
    return odd


def _reasons(skipped: Sequence[str], names: set[str]) -> dict[str, str]:
    """ "file: reason" lines split where the text before ": " is a known file (a name may hold ": " itself)."""
    out = {}
    for line in skipped:
        for colon in re.finditer(": ", line):
            if line[: colon.start()] in names:
                out[line[: colon.start()]] = line[colon.end() :]
                break
    return out


# --- balance and label errors ---------------------------------------------------------------------------------


def class_counts(items: Items, num_classes: int) -> dict[str, list[int]]:
    """Images per class in each split, and in all ("total")."""
    out = {}
    for split in SPLITS:
        start = items.offset(split)
        out[split] = torch.bincount(items.labels[start : start + items.splits.count(split)], minlength=num_classes).tolist()
    out["total"] = torch.bincount(items.labels, minlength=num_classes).tolist()
    return out


def imbalance(counts: Sequence[int]) -> float:
    """Images of the largest class over the smallest (infinity when a class has none)."""
    return max(counts) / min(counts) if min(counts) > 0 else math.inf


class LabelIssues(NamedTuple):
    """Images whose given label the model finds unlikely, most likely errors first."""

    index: torch.Tensor  # into the probabilities' rows
    given: torch.Tensor
    suggested: torch.Tensor  # the class the model is confident of instead
    given_prob: torch.Tensor
    suggested_prob: torch.Tensor


def label_issues(probs: torch.Tensor, labels: torch.Tensor) -> LabelIssues:
    """Confident learning (Northcutt et al. 2021, cleanlab's confident joint) on out-of-sample probabilities (N x K):
    each class's threshold is the mean probability the model gives it on the images labelled with it; an image is an
    issue when another class reaches its own threshold, and that class (the most probable such) is suggested. Issues
    are ranked by the probability of the given label, lowest first (self-confidence)."""
    probs, labels = probs.float().cpu(), labels.cpu()
    k = probs.shape[1]
    sums = torch.zeros(k).index_add(0, labels, probs[torch.arange(len(labels)), labels])
    counts = torch.bincount(labels, minlength=k).float()
    thresholds = torch.where(counts > 0, sums / counts.clamp_min(1), torch.inf)  # a class never given is never confident
    confident = probs >= thresholds
    confident[torch.arange(len(labels)), labels] = False
    suggested = torch.where(confident, probs, -1.0).argmax(1)
    flagged = torch.nonzero(confident.any(1)).flatten()
    given_prob = probs[flagged, labels[flagged]]
    flagged = flagged[torch.argsort(given_prob, stable=True)]
    return LabelIssues(flagged, labels[flagged], suggested[flagged], probs[flagged, labels[flagged]], probs[flagged, suggested[flagged]])


class CrossValidated(NamedTuple):
    """Likely label errors of every image, from the predictions of models that did not train on it (imgcls.training.crossval)."""

    issues: LabelIssues  # index: into the dataset's images, train then val then test
    folds: int
    epochs: int
    model: str
    accuracy: float  # of the held-out predictions
    seconds: float


# --- the whole check ------------------------------------------------------------------------------------------


@dataclass
class Health:
    """What is wrong with a dataset: its duplicate groups and odd files, with what they are measured against."""

    name: str
    classes: list[str]
    items: Items
    groups: list[Group]
    odd: dict[str, list[tuple[str, str]]]
    flips: bool  # mirror images counted as copies
    files_checked: bool  # headers read (a folder), or pixels only (a named dataset)
    seconds: dict[str, float] = field(default_factory=dict)
    label_errors: CrossValidated | None = None  # when asked for (--label-errors)
    out: Path | None = None  # where its findings were written (imgcls.check_data)
    written: list[str] = field(default_factory=list)  # the pictures written there

    def counts(self) -> dict[str, list[int]]:
        return class_counts(self.items, len(self.classes))

    def imbalance(self) -> float:
        """Of the training split, which is what the model learns the classes' frequencies from."""
        return imbalance(self.counts()["train"])

    def kind(self, group: Group) -> str:
        """ "conflict" (two or more classes), "leak" (one class, two or more splits) or "duplicate" (neither)."""
        if len({int(self.items.labels[i]) for i in group.members}) > 1:
            return "conflict"
        return "leak" if len({self.items.splits[i] for i in group.members}) > 1 else "duplicate"


def check(data: Dataset, root: Path | None = None) -> Health:
    """Every finding of a loaded dataset; `root`, the folder it was loaded from, adds the checks of the files' headers."""
    items = Items.of(data)
    seconds = {}
    start = time.perf_counter()
    headers = read_headers(root, [e.rel for e in scan(root)[1]]) if root is not None and items.from_files else None
    seconds["headers"] = time.perf_counter() - start
    with one_thread():
        start = time.perf_counter()
        fp = fingerprints(items)
        seconds["hashing"] = time.perf_counter() - start
        start = time.perf_counter()
        sizes = None
        if headers is not None:
            sizes = torch.tensor([[h.height, h.width] if isinstance(h, Header) else [0, 0] for h in (headers[n] for n in items.names)])
        groups = find_duplicates(items, fp, data.flips_ok, sizes)
        seconds["grouping"] = time.perf_counter() - start
    odd = odd_files(items, fp.grey, headers, data.skipped)
    return Health(data.name, list(data.classes), items, groups, odd, data.flips_ok, headers is not None, seconds)


def check_dataset(spec: str, data_dir: str | None = None, **reading) -> tuple[Dataset, Health]:
    """Load a named dataset, folder or table as training would (same split, same cache) and check it; `reading` says
    how (load_dataset's keywords: a table's labels, a Hugging Face dataset's columns)."""
    from imgcls.data.registry import load_dataset

    start = time.perf_counter()
    data = load_dataset(spec, data_dir=data_dir, **reading)
    loaded = time.perf_counter() - start
    with during(f"checking {printable(spec)}", "no findings were written"):
        health = check(as_label_sets(data), data.root)
    health.seconds = {"load": loaded, **health.seconds}
    return data, health
