"""Decoded datasets kept on disk and memory-mapped: the cache behind image folders and named datasets.

A decoded dataset is one raw file of uint8 N x C x H x W rows in the cache folder, beside a JSON file that says what
each row is (a folder's file, a named dataset's source row) and anything else its loader needs back. It is mapped
read-only, not read: processes on one machine (torchrun's workers, two runs on one folder) share one copy in the page
cache, and a dataset larger than memory still trains, its pages read as batches touch them. Read-only also means no
run can alter the cache another run reads; nothing in imgcls writes into a dataset's images.

Rows are kept in split order (train, val, test, then any a run leaves out), so each split is a contiguous slice of the
mapping: a view, never a copy. A run whose split differs rewrites the file in its order once, streaming.

The data is fsynced before its JSON marks the entry complete, and the JSON holds a checksum of the data (over sampled
blocks, see `digest`) that is checked on every open: a file that kept its size but lost its content (a power loss
after a write that was not yet on disk) is decoded again instead of trained on.
"""

import contextlib
import hashlib
import json
import logging
import os
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imgcls.errors import ImgclsError
from imgcls.files import WriteFailed, atomic_write, locked_file, printable, remove_stale_temporaries, temporary_name
from imgcls.paths import cache_dir

LOG = logging.getLogger(__name__)

VERSION = 4  # 4: with a checksum of the data (3: raw memory-mapped rows; 2: a torch.save'd tensor, read whole)
COPY_BYTES = 64 << 20  # rows are rearranged this many bytes at a time, so it takes no more memory than that
# The checksum covers this many blocks spread evenly over the data (all of it when it is smaller): CIFAR-10's 184 MB
# cost 78 ms to checksum whole (crc32), 10% of its cached load, and 2,048 blocks of 4 KiB a few ms, while any lost
# stretch of more than 1/2,048 of the file still falls on a block.
DIGEST_BLOCKS, DIGEST_BLOCK = 2048, 4096


@dataclass
class Stored:
    images: torch.Tensor  # uint8 N x C x H x W, mapped read-only (in memory when the cache could not be written)
    ids: list  # what each row is
    meta: dict  # what the loader saved with it
    key: str = ""
    mapped: bool = True


def cache_key(*parts) -> str:
    """A cache entry's name from anything JSON can encode (paths, sizes, times, options)."""
    return hashlib.sha256(json.dumps([VERSION, *parts], default=str).encode()).hexdigest()[:32]


@contextlib.contextmanager
def locked(key: str, what: str) -> Iterator[None]:
    """One process at a time decodes or rearranges an entry; the others wait, then map what it wrote instead of
    decoding again (torchrun's workers all load the data at start). The lock dies with its holder (files.locked_file),
    so a killed process never blocks the next run. A cache folder that cannot hold a lock file locks nothing: writes
    are atomic anyway, so the worst case is decoding twice."""

    def waiting(_) -> None:
        LOG.warning(f"waiting for another imgcls process to finish decoding {printable(what)}")

    with contextlib.ExitStack() as stack:
        try:
            cache_dir().mkdir(parents=True, exist_ok=True)
            stack.enter_context(locked_file(cache_dir() / f"{key}.lock", on_wait=waiting))
        except OSError:
            pass
        else:
            remove_stale_temporaries(cache_dir())  # half-written entries of killed processes
        yield


def _meta_path(key: str) -> Path:
    return cache_dir() / f"{key}.json"


def _map(path: Path, shape: Sequence[int]) -> torch.Tensor:
    rows = np.memmap(path, np.uint8, "r", shape=tuple(shape))
    with warnings.catch_warnings():  # "not writable": intended, see the module docstring
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(rows)


def load(key: str, what: str = "") -> Stored | None:
    """The entry, mapped; None when there is none, or a broken or damaged one, which the caller rebuilds."""
    try:
        meta = json.loads(_meta_path(key).read_text())
        ids = meta.pop("ids")
        path = cache_dir() / meta["file"]
        images = _map(path, meta["shape"])
        intact = meta.get("digest") == digest(path)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not intact:
        LOG.warning(f"the cached decode of {printable(what or key)} in {cache_dir()} is damaged (its checksum differs): decoding it again")
        return None
    return Stored(images, ids, meta, key)


def digest(path: Path) -> str:
    """A checksum of a data file: crc32 over DIGEST_BLOCKS blocks spread evenly from its start to its end (all of
    it when smaller), and its size."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= DIGEST_BLOCKS * DIGEST_BLOCK:
            starts = range(0, size, DIGEST_BLOCK)
        else:
            starts = np.linspace(0, size - DIGEST_BLOCK, DIGEST_BLOCKS).astype(np.int64).tolist()
        crc = 0
        for start in starts:
            f.seek(start)
            crc = zlib.crc32(f.read(DIGEST_BLOCK), crc)
    return f"crc32 {crc:08x} of {size} bytes"


def _write_meta(key: str, ids: list, meta: dict) -> None:
    atomic_write(_meta_path(key), lambda f: f.write(json.dumps({**meta, "ids": ids}).encode()))


def _stream(path: Path, rows: Iterable[np.ndarray], most: int) -> int:
    """Write rows to a new file, reserving `most` bytes first so that a full disk fails here, not in the middle.
    Returns the bytes written."""
    written = 0
    with open(path, "wb") as f:
        if hasattr(os, "posix_fallocate") and most:
            os.posix_fallocate(f.fileno(), 0, most)
        for chunk in rows:
            f.write(np.ascontiguousarray(chunk).data)
            written += chunk.nbytes
        f.truncate(written)
        f.flush()
        os.fsync(f.fileno())
    return written


def _data_file(key: str, ids: list) -> str:
    """The rows' file is named after their order too, so a rearranged file never replaces one a process has mapped."""
    return f"{key}-{hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:8]}.u8"


def save(key: str, chunks: Iterable[tuple[np.ndarray, list]], shape: tuple[int, int, int], most: int, meta: dict) -> Stored:
    """Stream (rows, their ids) chunks into the cache, holding one chunk at a time; map the result. `most` is an upper
    bound on the rows; `meta` is read once the chunks are done, so a loader may add to it while they stream. Raises WriteFailed (nothing half-written is left) when the cache cannot take it."""
    ids: list = []

    def rows():
        for pixels, chunk_ids in chunks:
            ids.extend(chunk_ids)
            yield pixels

    written = _write_data(key, rows(), most * int(np.prod(shape)), lambda: _data_file(key, ids), "write the decoded images")
    if written is None:  # nothing to map: the caller says why
        return Stored(torch.zeros((0, *shape), dtype=torch.uint8), ids, meta, key, mapped=False)
    name, check = written
    meta = {**meta, "file": name, "shape": [len(ids), *shape], "digest": check}
    _write_meta(key, ids, meta)  # last: an entry without its JSON is no entry
    return Stored(_map(cache_dir() / name, meta["shape"]), ids, meta, key)


def _write_data(key: str, rows: Iterable[np.ndarray], most: int, name: Callable[[], str], doing: str) -> tuple[str, str] | None:
    """Rows into a new data file of the entry through a temporary file, which nothing outlives (a full disk, Ctrl-C,
    SIGTERM); the file is named by name() once the rows are written. Its name and checksum, or None without rows."""
    tmp = cache_dir() / temporary_name(key)
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        if not _stream(tmp, rows, most):
            tmp.unlink()
            return None
        check, final = digest(tmp), name()
        os.replace(tmp, cache_dir() / final)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise WriteFailed(f"cannot {doing} in {cache_dir()} ({e.strerror or e})") from None
        raise
    return final, check


def available_memory() -> int | None:
    """Bytes of memory that can be allocated without swapping (Linux's MemAvailable); None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def in_memory(chunks: Iterable[tuple[np.ndarray, list]], shape: tuple[int, int, int], meta: dict, most: int | None = None) -> Stored:
    """The same, held in memory: for a cache folder that cannot be written. With `most`, an upper bound on the rows,
    images that memory cannot hold either are refused before the first is decoded, rather than left to the kernel's
    out-of-memory killer."""
    need, free = (most or 0) * int(np.prod(shape)), available_memory()
    if free is not None and need > free:
        raise ImgclsError(
            f"the decoded images take {need / 1e9:,.1f} GB: more than the cache folder {cache_dir()} could take, and more than the "
            f"{free / 1e9:,.1f} GB of memory free: use a smaller --image-size, or set IMGCLS_CACHE to a folder on a larger disk"
        )
    parts = list(chunks)
    images = np.concatenate([p for p, _ in parts]) if parts else np.zeros((0, *shape), np.uint8)
    return Stored(torch.from_numpy(images), [i for _, ids in parts for i in ids], meta, mapped=False)


def cached(key: str | None, chunks: Callable[[], Iterable[tuple[np.ndarray, list]]], shape: tuple[int, int, int], most: int,
           meta: dict, what: str) -> Stored:  # fmt: skip
    """save() the chunks into the cache, or, where it cannot take them (or without a key), hold them in memory
    (in_memory: refused when memory cannot hold them either) with a line saying so. `chunks` is called again for
    that, since a failed write has consumed some."""
    if key is not None:
        try:
            return save(key, chunks(), shape, most, meta)
        except WriteFailed as e:
            LOG.warning(f"could not cache {what}, going on without: {e} (or set IMGCLS_CACHE to another folder)")
    return in_memory(chunks(), shape, meta, most)


def _gathered(images: torch.Tensor, rows: torch.Tensor) -> Iterator[np.ndarray]:
    step = max(1, COPY_BYTES // max(1, images[0].numel()))
    for start in range(0, len(rows), step):
        yield images[rows[start : start + step]].numpy()


def arrange(stored: Stored, parts: dict[str, list]) -> dict[str, torch.Tensor]:
    """Each part's rows (given by id, in order) as a contiguous slice of the entry, rewriting the file in that order
    first when it is in another. Ids in no part go last. Without a writable cache, each part is gathered in memory."""
    position = {i: row for row, i in enumerate(stored.ids)}
    wanted = [i for ids in parts.values() for i in ids]
    if len(wanted) < len(stored.ids):
        taken = set(wanted)
        wanted += [i for i in stored.ids if i not in taken]
    order = wanted
    if order != stored.ids:
        rows = torch.tensor([position[i] for i in order], dtype=torch.long)
        if stored.mapped:
            try:
                _rewrite(stored, order, rows)
            except WriteFailed as e:
                LOG.warning(f"{e}: going on with the splits copied into memory (or set IMGCLS_CACHE to another folder)")
                stored.images, stored.mapped = stored.images[rows], False
        else:
            stored.images = stored.images[rows]
        stored.ids = order
    out, start = {}, 0
    for name, ids in parts.items():
        out[name] = stored.images[start : start + len(ids)]
        start += len(ids)
    return out


def _rewrite(stored: Stored, order: list, rows: torch.Tensor) -> None:
    """Write the entry's rows in a new order beside the old file, point the JSON at it, then remove the old one
    (a process that has it mapped keeps reading it: removing a file unlinks only its name)."""
    old = cache_dir() / stored.meta["file"]
    name, check = _write_data(
        stored.key,
        _gathered(stored.images, rows),
        stored.images.nbytes,
        lambda: _data_file(stored.key, order),
        "rearrange the decoded images",
    )
    stored.meta.update(file=name, digest=check)
    _write_meta(stored.key, order, stored.meta)
    stored.images = _map(cache_dir() / name, stored.meta["shape"])
    if old.name != name:
        old.unlink(missing_ok=True)
