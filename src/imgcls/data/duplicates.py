"""Copies in a dataset: exact and near duplicates of its images, grouped, the copies that cross splits, and what
`imgcls train --dedupe` keeps of a folder.

Exact: the same decoded pixels (BLAKE2b of the bytes) and the same original size. Near: perceptual hashes within a few
bits of each other, confirmed on the pixels (imgcls.data.near, which explains the method). Pairs of copies join into
groups, the connected components of the pairs; `imgcls.data.health` tells a group's kind (duplicate, leak, conflict).
"""

import hashlib
import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from imgcls.data.core import Dataset
from imgcls.data.near import NEAR_BITS, NEAREST, ZOOMS, _nearest, confirmed, dct_hash, grey_copy, hamming_pairs, popcount, self_similarity

SPLITS = ("train", "val", "test")
GREY_SPREAD = 2.0  # mean over pixels of the largest minus the smallest channel, below which an RGB image is grey
PIXELS_PER_BATCH = 1 << 22  # uint8 values hashed per batch: 16 MB float32 working copies (a folder may be larger than memory)
PAIRS_PER_BATCH = 256  # candidate pairs checked at once: 25 shifted 16x16 copies of each


# --- the images of a dataset ------------------------------------------------------------------------------


@dataclass
class Items:
    """Every image of a dataset, train then val then test, as views of the split tensors (nothing is copied)."""

    tensors: list[torch.Tensor]  # uint8 N x C x H x W, one per split
    labels: torch.Tensor  # int64, all splits
    splits: list[str]  # of each image
    names: list[str]  # files relative to the folder, or "train[12]" for a named dataset
    from_files: bool

    @classmethod
    def of(cls, data: Dataset) -> "Items":
        parts = [(s, getattr(data, s)) for s in SPLITS]
        if data.split_files is not None:
            names = [f for s, _ in parts for f in data.split_files[s]]
        else:
            names = [f"{s}[{i}]" for s, split in parts for i in range(len(split))]
        return cls(
            tensors=[split.images for _, split in parts],
            labels=torch.cat([split.labels for _, split in parts]),
            splits=[s for s, split in parts for _ in range(len(split))],
            names=names,
            from_files=data.split_files is not None,
        )

    def __len__(self) -> int:
        return len(self.labels)

    def offset(self, split: str) -> int:
        """Index of the split's first image."""
        return sum(len(t) for s, t in zip(SPLITS, self.tensors) if SPLITS.index(s) < SPLITS.index(split))

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """The images at these indices, in their order."""
        bounds = torch.tensor([0, *itertools.accumulate(len(t) for t in self.tensors)])
        part = torch.searchsorted(bounds[1:], index, right=True)
        out = torch.empty((len(index), *self.tensors[0].shape[1:]), dtype=torch.uint8)
        for p, tensor in enumerate(self.tensors):
            where = torch.nonzero(part == p).flatten()
            if len(where):
                out[where] = tensor[index[where] - bounds[p]]
        return out

    def batches(self) -> list[torch.Tensor]:
        """All images in order, in batches of about PIXELS_PER_BATCH values."""
        out = []
        for tensor in self.tensors:
            step = max(1, PIXELS_PER_BATCH // max(1, tensor[0].numel())) if len(tensor) else 1
            out += [tensor[i : i + step] for i in range(0, len(tensor), step)]
        return out


# --- fingerprints ------------------------------------------------------------------------------------------


class Fingerprints(NamedTuple):
    exact: torch.Tensor  # N x 2 int64: 128 bits of BLAKE2b of the pixels
    phash: torch.Tensor  # N int64: 63 DCT sign bits
    mirrored: torch.Tensor  # N int64: the hash of the mirror image
    cropped: torch.Tensor  # N x len(ZOOMS) - 1 int64: the hashes of the image's centre zoomed by ZOOMS[1:]
    grey: torch.Tensor  # N bool: a colour image whose channels are (nearly) equal


def fingerprints(items: Items) -> Fingerprints:
    """Every image's exact digest, hashes and greyness, batch by batch."""
    digests, hashes, mirrors, crops, greys = [], [], [], [], []
    for batch in items.batches():
        array = batch.numpy()
        digests += [hashlib.blake2b(array[i].tobytes(), digest_size=16).digest() for i in range(len(array))]
        h, m, c = dct_hash(batch)
        hashes.append(h)
        mirrors.append(m)
        crops.append(c)
        if batch.shape[1] == 3:
            greys.append((batch.amax(1) - batch.amin(1)).float().mean((1, 2)) < GREY_SPREAD)
        else:
            greys.append(torch.zeros(len(batch), dtype=torch.bool))
    exact = torch.from_numpy(np.frombuffer(b"".join(digests), dtype=np.int64).copy()).view(-1, 2)
    return Fingerprints(exact, torch.cat(hashes), torch.cat(mirrors), torch.cat(crops), torch.cat(greys))


# --- near pairs ------------------------------------------------------------------------------------------------


def near_pairs(items: Items, fp: Fingerprints, candidates: torch.Tensor, flips: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs of near duplicates among the images at `candidates`, as indices of items: hashes within NEAR_BITS (an
    image's own, or those of its zoomed centre, or with `flips` of its mirror image, against the others' own), each
    image's NEAREST closest only, then confirmed() at the zoom or mirroring that found them.

    The cap keeps the work linear where pictures are alike by nature (handwritten 1s: each has hundreds of hash
    neighbours); a larger group of copies stays one group through the copies' own links."""
    h = fp.phash[candidates]
    queries = [(h, 0, False), *((fp.cropped[candidates, z - 1], z, False) for z in range(1, len(ZOOMS)))]
    queries += [(fp.mirrored[candidates], 0, True)] if flips else []
    found = []
    for q, zoom, mirror in queries:
        i, j = hamming_pairs(q, h, NEAR_BITS, upper=q is h)
        other = i != j  # a symmetric picture matches its own mirror image, a plain one its own zoomed centre
        i, j = i[other], j[other]
        found.append((i, j, popcount(q[i] ^ h[j]), torch.full((len(i),), zoom), torch.full((len(i),), mirror)))
    i, j, distance, zoom, mirrored = (torch.cat(parts) for parts in zip(*found))
    keep = _nearest(torch.minimum(i, j), torch.maximum(i, j), distance, NEAREST)
    i, j, zoom, mirrored = i[keep], j[keep], zoom[keep], mirrored[keep]
    _, first = _unique_first(((i * len(candidates) + j) * len(ZOOMS) + zoom) * 2 + mirrored)  # a pair found twice
    i, j, zoom, mirrored = i[first], j[first], zoom[first], mirrored[first]
    involved = torch.unique(torch.cat([i, j]))
    alike = torch.zeros(len(candidates))  # self-similarity, once per image however many pairs it is in
    for s in range(0, len(involved), PAIRS_PER_BATCH):
        part = involved[s : s + PAIRS_PER_BATCH]
        alike[part] = self_similarity(grey_copy(items.take(candidates[part])))
    ok = torch.zeros(len(i), dtype=torch.bool)
    for s in range(0, len(i), PAIRS_PER_BATCH):
        x, y = i[s : s + PAIRS_PER_BATCH], j[s : s + PAIRS_PER_BATCH]
        pair = slice(s, s + PAIRS_PER_BATCH)
        chance = torch.maximum(alike[x], alike[y])
        ok[pair] = confirmed(items.take(candidates[x]), items.take(candidates[y]), zoom[pair], mirrored[pair], chance)
    a, b = candidates[torch.minimum(i, j)[ok]], candidates[torch.maximum(i, j)[ok]]
    return a, b


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread: the checks' tensors are small, and OpenMP threads that wait for each other cost 7 times
    the time on a busy machine (measured: bench/RESULTS.md)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _unique_first(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct values and the index of the first occurrence of each."""
    unique, inverse = torch.unique(values, return_inverse=True)
    first = torch.full((len(unique),), len(values), dtype=torch.long).scatter_reduce(0, inverse, torch.arange(len(values)), "amin")
    return unique, first


# --- groups ------------------------------------------------------------------------------------------------


def components(n: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The connected components of n nodes joined by edges (a[k], b[k]): each node's smallest member, by label
    propagation with pointer jumping (a few vectorised rounds, however long the chains)."""
    parent = torch.arange(n)
    while True:
        low = torch.minimum(parent[a], parent[b])
        new = parent.scatter_reduce(0, parent[a], low, "amin").scatter_reduce(0, parent[b], low, "amin")
        while not torch.equal(new[new], new):
            new = new[new]
        if torch.equal(new, parent):
            return parent
        parent = new


@dataclass(frozen=True)
class Group:
    """Copies of one picture: indices into the dataset's images (train, val, test order), smallest first."""

    members: tuple[int, ...]
    exact: bool  # every member has the same pixels and original size


def find_duplicates(items: Items, fp: Fingerprints, flips: bool, sizes: torch.Tensor | None = None) -> list[Group]:
    """Groups of exact and near duplicates, largest first. `sizes` (N x 2, the files' own height and width) keeps a
    resized copy, which decodes to the same pixels at the common size, from counting as exact."""
    key = fp.exact if sizes is None else torch.cat([fp.exact, sizes], 1)
    _, exact_id = torch.unique(key, dim=0, return_inverse=True)
    _, first = _unique_first(exact_id)
    representative = first[exact_id]  # each image's first exact copy
    a, b = near_pairs(items, fp, first.sort().values, flips)
    everyone = torch.arange(len(items))
    root = components(len(items), torch.cat([everyone, a]), torch.cat([representative, b]))
    order = torch.argsort(root, stable=True)
    roots, counts = torch.unique_consecutive(root[order], return_counts=True)
    groups = []
    for members in order.split(counts.tolist()):
        if len(members) > 1:
            groups.append(Group(tuple(members.tolist()), bool((exact_id[members] == exact_id[members[0]]).all())))
    return sorted(groups, key=lambda g: (-len(g.members), g.members[0]))


def duplicate_file_groups(data: Dataset) -> list[list[str]]:
    """The duplicate groups of a folder dataset as files relative to its root (what `imgcls train --dedupe` keeps one of)."""
    items = Items.of(data)
    with one_thread():
        return [[items.names[i] for i in g.members] for g in find_duplicates(items, fingerprints(items), data.flips_ok)]


def dedupe(data: Dataset) -> tuple[dict[str, list[str]], list[dict]]:
    """What `imgcls train --dedupe` keeps of a folder dataset, split by split, and each file it drops with why.

    One copy of each duplicate group stays, the first by name in the last split the group reaches (test, val, train): a leak
    then costs training a copy, not the test set an image, and no picture is in two splits or twice in one. A group
    whose copies carry different labels ("conflict") loses every copy: which label is right cannot be told."""
    split_of = {f: s for s in SPLITS for f in data.split_files[s]}
    class_of = {f: data.classes[y] for s in SPLITS for f, y in zip(data.split_files[s], getattr(data, s).labels.tolist())}
    dropped = []
    for files in duplicate_file_groups(data):
        conflict = len({class_of[f] for f in files}) > 1
        kept = None if conflict else min(files, key=lambda f: (-SPLITS.index(split_of[f]), f))  # the first by name: any seed
        for f in files:
            if f != kept:
                reason = "conflict" if conflict else "leak" if split_of[f] != split_of[kept] else "duplicate"
                dropped.append({"file": f, "split": split_of[f], "class": class_of[f], "reason": reason, "kept": kept})
    gone = {d["file"] for d in dropped}
    return {s: [f for f in data.split_files[s] if f not in gone] for s in SPLITS}, dropped


def dedupe_line(dropped: list[dict], kept: dict[str, list[str]]) -> str:
    """The counts of a --dedupe, in one line."""
    n = {reason: sum(d["reason"] == reason for d in dropped) for reason in ("duplicate", "leak", "conflict")}
    return (
        f"--dedupe dropped {len(dropped):,} images: {n['duplicate']:,} extra copies within a split, {n['leak']:,} copies of an image "
        f"kept in a later split, {n['conflict']:,} copies of pictures filed under two classes (none kept); "
        f"{', '.join(f'{len(kept[s]):,} {s}' for s in SPLITS)} left (split.json lists the dropped files)"
    )


def with_copy_in(groups: Sequence[Group], items: Items, split: str, source: str) -> torch.Tensor:
    """Per image of `split`: whether a copy of it lies in `source` (a test image with a copy in train: a leak)."""
    flag = torch.zeros(len(items), dtype=torch.bool)
    for g in groups:
        if any(items.splits[i] == source for i in g.members):
            flag[[i for i in g.members if items.splits[i] == split]] = True
    start = items.offset(split)
    return flag[start : start + items.splits.count(split)]
