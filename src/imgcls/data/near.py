"""Perceptual matching of images: the grey copy, the DCT hash, the search for hashes within a few bits of each other,
and the confirmation of a candidate pair on the pixels.

Pure functions of uint8 images (N x C x H x W, batched in torch) that know nothing of datasets;
`imgcls.data.duplicates` applies them to a dataset's images.

Near duplicates: a 64-bit DCT hash (pHash: the signs of the 8x8 lowest frequencies of a 32x32 grey copy against their
median) within NEAR_BITS bits of another image's; an image is also sought by the hashes of its centre zoomed by ZOOMS
(what a cropped copy looks like) and, where training flips images, of its mirror image (training shows the model both).
Each candidate pair is then confirmed on the pixels at the best of small shifts: the grey copies must correlate at
least NEAR_CORRELATION, and their detail (grey less its blur) NEAR_MARGIN better than either does with itself moved by
one pixel. The hash alone matches different smooth pictures (a plane and a bird on a blue sky), and simple pictures
(handwritten strokes) match their look-alikes closely, so they must match closer. A perceptual hash, not a trained
model's embeddings: it exists before any training, costs seconds for 60,000 images on a CPU, and finds copies of one
picture rather than pictures of one subject.

The hash search is multi-index hashing: the 64 bits are cut into chunks of about log2(N) bits; two hashes within
NEAR_BITS bits agree on some chunk to within NEAR_BITS // chunks bits, so each image probes a few dozen buckets that
hold a few images each on average, and keeps its NEAREST closest candidates. The work grows with N, not N^2.
"""

import itertools
import math

import torch
import torch.nn.functional as F

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

_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R 601, as PIL's convert("L")


# --- the perceptual hash ---------------------------------------------------------------------------------------


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


# --- confirmation on the pixels --------------------------------------------------------------------------------


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
