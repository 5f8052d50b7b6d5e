"""Decoded datasets kept on disk and memory-mapped: the cache behind image folders and named datasets.

A decoded dataset is one raw file of uint8 N x C x H x W rows in the cache folder, beside a JSON file that says what
each row is (a folder's file, a named dataset's source row) and anything else its loader needs back. It is mapped
read-only, not read: processes on one machine (torchrun's workers, two runs on one folder) share one copy in the page
cache, and a dataset larger than memory still trains, its pages read as batches touch them. Read-only also means no
run can alter the cache another run reads; nothing in imgcls writes into a dataset's images.

Rows are kept in split order (train, val, test, then any a run leaves out), so each split is a contiguous slice of the
mapping: a view, never a copy. A run whose split differs rewrites the file in its order once, streaming.
"""

import hashlib
import json
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imgcls.checkpoint import WriteFailed, atomic_write
from imgcls.paths import cache_dir

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent first loads each decode, and the last write wins
    fcntl = None

VERSION = 3  # 3: raw memory-mapped rows (2: a torch.save'd tensor, read whole)
COPY_BYTES = 64 << 20  # rows are rearranged this many bytes at a time, so it takes no more memory than that


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


@contextmanager
def locked(key: str, what: str) -> Iterator[None]:
    """One process at a time decodes or rearranges an entry; the others wait, then map what it wrote instead of
    decoding again (torchrun's workers all load the data at start). A cache folder that cannot hold a lock file
    locks nothing: writes are atomic anyway, so the worst case is decoding twice."""
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        handle = open(cache_dir() / f"{key}.lock", "a")  # noqa: SIM115 - closed below
    except OSError:
        handle = None
    if handle is None or fcntl is None:
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another imgcls process to finish decoding {what}", file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _meta_path(key: str) -> Path:
    return cache_dir() / f"{key}.json"


def _map(path: Path, shape: Sequence[int]) -> torch.Tensor:
    rows = np.memmap(path, np.uint8, "r", shape=tuple(shape))
    with warnings.catch_warnings():  # "not writable": intended, see the module docstring
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(rows)


def load(key: str) -> Stored | None:
    """The entry, mapped; None when there is none (or a broken one, which the caller rebuilds)."""
    try:
        meta = json.loads(_meta_path(key).read_text())
        ids = meta.pop("ids")
        images = _map(cache_dir() / meta["file"], meta["shape"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Stored(images, ids, meta, key)


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

    tmp = cache_dir() / f".{key}.{os.getpid()}.tmp"
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        _stream(tmp, rows(), most * int(np.prod(shape)))
        if not ids:  # nothing to map: the caller says why
            tmp.unlink()
            return Stored(torch.zeros((0, *shape), dtype=torch.uint8), ids, meta, key, mapped=False)
        name = _data_file(key, ids)
        os.replace(tmp, cache_dir() / name)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise WriteFailed(f"cannot write the decoded images to {cache_dir()} ({e.strerror or e})") from None
    meta = {**meta, "file": name, "shape": [len(ids), *shape]}
    _write_meta(key, ids, meta)  # last: an entry without its JSON is no entry
    return Stored(_map(cache_dir() / name, meta["shape"]), ids, meta, key)


def in_memory(chunks: Iterable[tuple[np.ndarray, list]], shape: tuple[int, int, int], meta: dict) -> Stored:
    """The same, held in memory: for a cache folder that cannot be written."""
    parts = list(chunks)
    images = np.concatenate([p for p, _ in parts]) if parts else np.zeros((0, *shape), np.uint8)
    return Stored(torch.from_numpy(images), [i for _, ids in parts for i in ids], meta, mapped=False)


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
                print(f"{e}: going on with the splits copied into memory (or set IMGCLS_CACHE to another folder)", file=sys.stderr)
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
    name = _data_file(stored.key, order)
    tmp = cache_dir() / f".{name}.{os.getpid()}.tmp"
    try:
        _stream(tmp, _gathered(stored.images, rows), stored.images.nbytes)
        os.replace(tmp, cache_dir() / name)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise WriteFailed(f"cannot rearrange the decoded images in {cache_dir()} ({e.strerror or e})") from None
    stored.meta["file"] = name
    _write_meta(stored.key, order, stored.meta)
    stored.images = _map(cache_dir() / name, stored.meta["shape"])
    if old.name != name:
        old.unlink(missing_ok=True)
