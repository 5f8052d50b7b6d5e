"""Dataset health: exact and near duplicates, copies across splits, odd files, class balance and likely label errors.

Pure functions of decoded uint8 images (batched in torch) and file headers; `imgcls.report.health` turns the findings
into text, health.json, picture grids and a section of report.html.

Duplicates. Exact: the same decoded pixels (BLAKE2b of the bytes) and the same original size. Near: a 64-bit DCT hash
(pHash: the signs of the 8x8 lowest frequencies of a 32x32 grey copy against their median) within NEAR_BITS bits of
another image's; an image is also sought by the hashes of its centre zoomed by ZOOMS (what a cropped copy looks like)
and, where training flips images, of its mirror image (training shows the model both). Each candidate pair is then
confirmed on the pixels at the best of small shifts: the grey copies must correlate at least NEAR_CORRELATION, and
their detail (grey less its blur) NEAR_MARGIN better than either does with itself moved by one pixel. The hash alone
matches different smooth pictures (a plane and a bird on a blue sky), and simple pictures (handwritten strokes) match
their look-alikes closely, so they must match closer. A perceptual hash, not a trained model's embeddings: it exists
before any training, costs seconds for 60,000 images on a CPU, and finds copies of one picture rather than pictures
of one subject.

The hash search is multi-index hashing: the 64 bits are cut into chunks of about log2(N) bits; two hashes within
NEAR_BITS bits agree on some chunk to within NEAR_BITS // chunks bits, so each image probes a few dozen buckets that
hold a few images each on average, and keeps its NEAREST closest candidates. The work grows with N, not N^2.
"""

import hashlib
import itertools
import math
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from imgcls.data.core import Dataset, as_label_sets
from imgcls.data.folder import each_file, scan
from imgcls.data.images import check_size, decoding, is_grey, open_image
from imgcls.files import printable
from imgcls.interrupt import during

SPLITS = ("train", "val", "test")
HASH_SIDE = 32  # the grey copy the DCT hash and the check are computed on
NEAR_BITS = 6  # of 64: hashes this close are candidates (hashes hold 31 ones, so distances are even)
NEAREST = 4  # hash candidates kept per image, the closest
BUCKET_CAP = 32  # keys of one hash bucket compared with a query, at most
NEAR_CORRELATION = 0.85  # correlation of the grey copies, at the best shift and zoom, that confirms a candidate
NEAR_MARGIN = 0.2  # and of their detail, above how alike each stays moved by a pixel: see bench/RESULTS.md
NEAR_DETAIL_ENOUGH = 0.95  # a detail correlation that confirms whatever the self-similarity
MIRROR_CORRELATION = 0.9  # grey, for a mirror image: scenes are often alike left to right (sky above, a blob in the middle)
ZOOMS = (1.0, 1.08, 1.16)  # how far one copy may be cropped from the other (1.16: about 7% off each side)
SHIFTS = (-2, -1, 0, 1, 2)  # pixels of HASH_SIDE
TINY = 16  # pixels: an image with a shorter side is too small to show a class
EXTREME_ASPECT = 4.0  # longer side over shorter: a square crop keeps a quarter of it or less
GREY_SPREAD = 2.0  # mean over pixels of the largest minus the smallest channel, below which an RGB image is grey
IMBALANCE_WARNING = 3.0  # largest over smallest class
PIXELS_PER_BATCH = 1 << 22  # uint8 values hashed per batch: 16 MB float32 working copies (a folder may be larger than memory)
PAIRS_PER_BATCH = 256  # candidate pairs checked at once: 25 shifted 16x16 copies of each
ODD_KINDS = {
    "unreadable": "unreadable",
    "tiny": f"tiny (shorter side under {TINY} px)",
    "aspect": f"extreme aspect ratio (over {EXTREME_ASPECT:g}:1)",
    "greyscale": "greyscale in a colour dataset",
    "exif_rotated": "EXIF-rotated (imgcls turns them upright; other tools may not)",
    "animated": "animated (only the first frame is used)",
}

_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R 601, as PIL's convert("L")


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


def grey_copy(images: torch.Tensor, side: int = HASH_SIDE) -> torch.Tensor:
    """uint8 N x C x H x W -> float N x side x side luma, resized with antialiasing."""
    x = images.float()
    if x.shape[1] == 3:
        x = (x * _LUMA).sum(1, keepdim=True)
    if x.shape[-2:] != (side, side):
        x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return x[:, 0]


def _dct_rows(n: int, k: int) -> torch.Tensor:
    """The first k rows of the orthonormal n-point DCT-II matrix."""
    u, i = torch.arange(k, dtype=torch.float64).view(-1, 1), torch.arange(n, dtype=torch.float64).view(1, -1)
    m = torch.cos(math.pi * (2 * i + 1) * u / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m.float()


_DCT8 = _dct_rows(HASH_SIDE, 8)
_MIRROR = torch.tensor([(-1.0) ** v for v in range(8)])  # a mirror image negates the odd horizontal frequencies
_BIT = torch.ones(63, dtype=torch.int64) << torch.arange(63)


def _pack(low: torch.Tensor) -> torch.Tensor:
    """8x8 DCT coefficients -> 63 bits: each non-DC coefficient above the median of the 63."""
    ac = low.reshape(len(low), 64)[:, 1:]
    return ((ac > ac.median(1, keepdim=True).values).long() * _BIT).sum(1)


def dct_hash(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The perceptual hash of each image, of its mirror image, and of its centre zoomed in by each of ZOOMS[1:] (N x
    len(ZOOMS) - 1): a crop moves the low frequencies the hash holds, so a cropped copy is sought by the hash of
    what it would look like. Zooming is linear, so each zoomed hash costs what the plain one does: its
    interpolation is folded into the DCT matrix."""
    grey = grey_copy(images)
    low = _DCT8 @ grey @ _DCT8.T
    zoomed = [_pack(m @ grey @ m.T) for m in _DCT8_ZOOMED]
    return _pack(low), _pack(low * _MIRROR), torch.stack(zoomed, 1)


def _zoom_matrix(n: int, z: float) -> torch.Tensor:
    """n x n: the centre n/z pixels of a row, linearly interpolated up to n (rows of weights, edges clamped)."""
    where = ((torch.arange(n) + 0.5 - n / 2) / z + n / 2 - 0.5).clamp(0, n - 1)
    low = where.floor().long().clamp(max=n - 2)
    frac = where - low
    m = torch.zeros(n, n)
    m[torch.arange(n), low] = 1 - frac
    m[torch.arange(n), low + 1] += frac
    return m


_DCT8_ZOOMED = [_DCT8 @ _zoom_matrix(HASH_SIDE, z) for z in ZOOMS[1:]]


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


def popcount(x: torch.Tensor) -> torch.Tensor:
    """Set bits of each non-negative int64 (SWAR: a dozen whole-tensor operations, no lookup table)."""
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return (x * 0x0101010101010101) >> 56


# --- near pairs by multi-index hashing ---------------------------------------------------------------------


def hamming_pairs(
    queries: torch.Tensor, keys: torch.Tensor, max_bits: int, upper: bool = False, block: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (i, j) with queries[i] and keys[j] (63-bit hashes) within max_bits bits, without comparing all pairs;
    with `upper`, only i < j (for queries and keys that are the same hashes).

    The hashes are cut into `chunks` chunks of `width` bits, width log2(len(keys)) - 4 but at least 16, so that a
    bucket holds 16 keys at most on average: for up to a million images, 4 chunks of 16 bits, each probed with its 16
    one-bit variants. Two hashes within max_bits bits differ in at most max_bits // chunks bits of some chunk (pigeonhole), so
    looking up each query's chunks and their variants within that radius finds every such pair. The buckets are a
    dense table (start and count per chunk value); queries go in blocks, which bounds the memory. A crowded bucket
    (thousands of alike handwritten 1s share some chunks) is looked at up to its first BUCKET_CAP keys only: that keeps
    the work linear, and can only miss pairs among such crowds."""
    width = min(22, max(16, math.ceil(math.log2(max(2, len(keys)))) - 4))
    chunks = 64 // width
    radius = max_bits // chunks
    mask = (1 << width) - 1
    flips = torch.tensor(
        [sum(1 << b for b in bits) for r in range(radius + 1) for bits in itertools.combinations(range(width), r)], dtype=torch.int64
    )

    def buckets(h: torch.Tensor) -> torch.Tensor:  # N x chunks bucket numbers, each chunk in its own range
        return torch.stack([((h >> (width * c)) & mask) + (c << width) for c in range(chunks)], 1)

    stored = buckets(keys).reshape(-1)
    owner = stored.argsort() // chunks  # keys by bucket
    count = torch.bincount(stored, minlength=chunks << width)
    start = count.cumsum(0) - count
    found_i, found_j = [], []
    for first in range(0, len(queries), block):
        q = queries[first : first + block]
        probes = (buckets(q).unsqueeze(2) ^ flips).reshape(-1)  # a flip never leaves its chunk's range
        hits = count[probes].clamp_max(BUCKET_CAP)
        i = torch.arange(first, first + len(q)).repeat_interleave(chunks * len(flips)).repeat_interleave(hits)
        # The hits of a probe are the keys at start[probe], start[probe] + 1, ... in the bucket order.
        j = owner[torch.arange(int(hits.sum())) + (start[probes] - hits.cumsum(0) + hits).repeat_interleave(hits)]
        keep = i < j if upper else slice(None)
        i, j = i[keep], j[keep]
        close = popcount(queries[i] ^ keys[j]) <= max_bits
        code = torch.unique(i[close] * len(keys) + j[close])  # a pair found through several chunks counts once
        found_i.append(code // len(keys))
        found_j.append(code % len(keys))
    if not found_i:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return torch.cat(found_i), torch.cat(found_j)


# ZOOMS x V: each zoom with every shift of SHIFTS in both directions.
_THETAS = torch.tensor(
    [[[[1 / z, 0, 2 * dx / HASH_SIDE], [0, 1 / z, 2 * dy / HASH_SIDE]] for dx in SHIFTS for dy in SHIFTS] for z in ZOOMS]
)
_GRIDS: dict[tuple[int, int], torch.Tensor] = {}


def _shifted(x: torch.Tensor, zoom: int) -> torch.Tensor:
    """Grey copies (N x S x S) zoomed in by ZOOMS[zoom] under every shift: N x V x S x S. The images ride in the
    channel dimension, so that each of the V grids serves them all."""
    side = x.shape[-1]
    if (side, zoom) not in _GRIDS:
        _GRIDS[side, zoom] = F.affine_grid(_THETAS[zoom], (_THETAS.shape[1], 1, side, side), align_corners=False)
    grid = _GRIDS[side, zoom]
    return F.grid_sample(x.unsqueeze(0).expand(len(grid), *x.shape), grid, padding_mode="border", align_corners=False).transpose(0, 1)


def _warp_each(x: torch.Tensor, thetas: torch.Tensor) -> torch.Tensor:
    """Grey copies (N x S x S), each under its own shift and zoom (N x 2 x 3)."""
    grid = F.affine_grid(thetas, (len(x), 1, *x.shape[-2:]), align_corners=False)
    return F.grid_sample(x.unsqueeze(1), grid, padding_mode="border", align_corners=False)[:, 0]


def _standardised(x: torch.Tensor) -> torch.Tensor:
    """The centre of each copy (an eighth of the side off each edge, where shifted copies hold padding), zero mean and
    unit norm: a dot product of two is their correlation, blind to brightness and contrast."""
    m = x.shape[-1] // 8
    x = x[..., m:-m, m:-m].flatten(-2)
    x = x - x.mean(-1, keepdim=True)
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def _detail(x: torch.Tensor) -> torch.Tensor:
    """N x S x S grey copies less their 5x5 box blur (sums of shifted slices: a convolution costs more on these small
    tensors): the edges and texture, without the layout of light and dark."""
    side = x.shape[-1]
    padded = F.pad(x.unsqueeze(1), (2, 2, 2, 2), mode="replicate")[:, 0]
    rows = sum(padded[:, :, k : k + side] for k in range(5))
    return x - sum(rows[:, k : k + side] for k in range(5)) / 25


def self_similarity(grey: torch.Tensor) -> torch.Tensor:
    """How alike each grey copy's detail stays when moved by one pixel (the mean over four directions): near 1 for
    smooth or simple pictures (a stroke, a blob), lower for detailed ones. A look-alike of a simple picture matches it
    about this well by chance; a copy must do better. (Rolled, not shifted: the wrapped edge lies outside the centre
    that _standardised keeps.)"""
    detail = _detail(grey)
    d = _standardised(detail)
    return torch.stack([(_standardised(torch.roll(detail, step, dim)) * d).sum(-1) for step in (1, -1) for dim in (-1, -2)]).mean(0)


def similarity(a: torch.Tensor, b: torch.Tensor, zoom: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two correlations of each pair of images (uint8 N x C x H x W each), a zoomed in by ZOOMS[zoom] and shifted by
    the best of SHIFTS: of their grey copies, and of their detail. The search runs on half-size copies; both
    correlations are then taken at full size. The grey layout alone matches different smooth pictures (a plane and a
    bird on a blue sky, two ships on water); copies also agree in detail."""
    ga, gb = grey_copy(a), grey_copy(b)
    small_a, small_b = F.avg_pool2d(ga.unsqueeze(1), 2)[:, 0], F.avg_pool2d(gb.unsqueeze(1), 2)[:, 0]
    best = (_standardised(_shifted(small_a, zoom)) * _standardised(small_b).unsqueeze(1)).sum(-1).argmax(1)
    warped = _warp_each(ga, _THETAS[zoom][best])
    grey = (_standardised(warped) * _standardised(gb)).sum(-1)
    detail = (_standardised(_detail(warped)) * _standardised(_detail(gb))).sum(-1)
    return grey, detail


def confirmed(a: torch.Tensor, b: torch.Tensor, zoom: torch.Tensor, mirrored: torch.Tensor, chance: torch.Tensor) -> torch.Tensor:
    """Which pairs of images are copies, a zoomed in by ZOOMS[zoom] (per pair) and b mirrored where `mirrored`: grey
    correlation at least NEAR_CORRELATION (MIRROR_CORRELATION for a mirror image), and detail correlation NEAR_MARGIN
    above `chance`, the larger self-similarity of the two (or NEAR_DETAIL_ENOUGH: a copy of a very smooth picture
    cannot beat its self-similarity by the margin)."""
    b = torch.where(mirrored.view(-1, 1, 1, 1), b.flip(-1), b)
    grey, detail = torch.empty(len(a)), torch.empty(len(a))
    for z in zoom.unique().tolist():
        pick = zoom == z
        grey[pick], detail[pick] = similarity(a[pick], b[pick], z)
    needed = (chance + NEAR_MARGIN).clamp_max(NEAR_DETAIL_ENOUGH)
    return (grey >= torch.where(mirrored, MIRROR_CORRELATION, NEAR_CORRELATION)) & (detail >= needed)


def _nearest(i: torch.Tensor, j: torch.Tensor, distance: torch.Tensor, k: int) -> torch.Tensor:
    """Which pairs (i, j) are among the k closest (by distance) of i or of j: mask of the pairs."""
    ends, others = torch.cat([i, j]), torch.arange(len(i)).repeat(2)
    order = torch.argsort(ends * 65 + distance.repeat(2), stable=True)  # by image, then distance (at most 64 bits)
    _, counts = torch.unique_consecutive(ends[order], return_counts=True)
    rank = torch.arange(len(order)) - (counts.cumsum(0) - counts).repeat_interleave(counts)
    keep = torch.zeros(len(i), dtype=torch.bool)
    keep[others[order[rank < k]]] = True
    return keep


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
