"""Image folders: class subfolders, optional train/val/test splits, decoded once and cached on disk."""

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np
import torch

from imgcls.data import mapped
from imgcls.data.core import Dataset, Split, channel_stats, class_counts, stratified_split
from imgcls.data.images import ImageReadError, is_grey, peek, read_image
from imgcls.errors import ImgclsError
from imgcls.files import WriteFailed, printable
from imgcls.interrupt import STOP_SIGNALS, CtrlC, during, stopped
from imgcls.progress import progress_bar

LOG = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
FLAT_FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
TEST_FRACTION = 0.2  # held out of train/ when a split folder has no test/
DEFAULT_SIZE = 128  # square side for folders of mixed or large image sizes (on a CPU; training passes its own)
MAX_NATIVE_SIZE = 256  # folders of one size up to this are kept at their own size
CHUNK = 256  # files per pool task
CHUNK_BYTES = 16 << 20  # and at most this many decoded bytes per task: they wait in memory until written to the cache
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies

T = TypeVar("T")


class Entry(NamedTuple):
    rel: str  # path relative to the dataset root, with forward slashes
    label: int | tuple[int, ...]  # its class, or for multi-label data the tuple of its labels
    split: str | None  # the split folder it came from, None for a flat folder
    size: int
    mtime_ns: int


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(root: Path, folder: Path) -> list[tuple[str, int, int]]:
    """(path relative to root, size, mtime) of every non-hidden file below folder, sorted.

    Symbolic links are followed, but a folder already seen (a link loop, or two links to one folder) is listed once,
    with a line saying so: following a loop would recurse until the path is too long (ELOOP).
    os.scandir, whose entries carry their type, instead of Path.rglob: five times faster on 60,000 files."""
    found = []
    seen = {_identity(folder)}
    pending = [(str(folder), folder.relative_to(root).as_posix())]
    while pending:
        path, prefix = pending.pop()
        try:
            entries = list(os.scandir(path))
        except OSError as e:
            LOG.warning(f"skipping {prefix}/: cannot list it ({e.strerror or e})")
            continue
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir():
                    if _identity(e.path) in seen:
                        LOG.warning(f"skipping {prefix}/{e.name}: a link to a folder already scanned (a loop?)")
                        continue
                    seen.add(_identity(e.path))
                    pending.append((e.path, f"{prefix}/{e.name}"))
                else:  # special files too (FIFOs, sockets, devices): the header pass skips and lists them
                    st = e.stat()
                    found.append((f"{prefix}/{e.name}", st.st_size, st.st_mtime_ns))
            except OSError as err:  # a link loop onto itself, a file removed while scanning
                LOG.warning(f"skipping {prefix}/{e.name}: {err.strerror or err}")
    return sorted(found)


def _identity(path: str | Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def scan(root: Path) -> tuple[list[str], list[Entry]]:
    """Class names and an Entry for every file under root."""
    if not root.exists():
        raise ImgclsError(f"data folder {root} does not exist: check the path, or use a named dataset (see `imgcls datasets`)")
    if not root.is_dir():
        raise ImgclsError(f"{root} is a file, not a folder: pass a folder of class subfolders (ROOT/cat/1.jpg, ROOT/dog/2.jpg)")
    present = [s for s in SPLITS if (root / s).is_dir()]
    if present and "train" not in present:
        raise ImgclsError(f"{root} has {'/, '.join(present)}/ but no train/ folder: add train/<class>/ images")
    tops = {s: root / s for s in present} if present else {None: root}
    classes = _class_dirs(tops.get("train", root))
    if not classes:
        loose = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
        hint = "it has image files but no class folders" if loose else "it is empty"
        raise ImgclsError(
            f"{tops.get('train', root)} has no class folders ({hint}): put each class in its own subfolder, e.g. {root}/cat/1.jpg"
        )
    if len(classes) < 2:
        raise ImgclsError(f"{tops.get('train', root)} has only one class ({classes[0]}): a classifier needs at least two class folders")
    entries = []
    for split, top in tops.items():
        unknown = sorted(set(_class_dirs(top)) - set(classes))
        if unknown:
            raise ImgclsError(f"{top} has classes that train/ lacks ({', '.join(unknown)}): every class needs training images")
        for index, name in enumerate(classes):
            if (top / name).is_dir():
                entries += [Entry(rel, index, split, size, mtime) for rel, size, mtime in _files(root, top / name)]
    if not entries:
        raise ImgclsError(f"{root} has class folders but no files in them: add images to each class folder")
    train_top = tops.get("train", root)
    _check_every_class_has_training_images(classes, [e.label for e in entries if e.split in (None, "train")], train_top, "files")
    return classes, entries


def _check_every_class_has_training_images(classes: list[str], labels, where: Path, what: str) -> None:
    """A class with no training images cannot be learnt and would only skew the metrics."""
    counts = class_counts(labels, len(classes)).tolist()
    empty = [f"{where / c}" if where.is_dir() else f"class {c} of {where}" for i, c in enumerate(classes) if counts[i] == 0]
    if empty:
        them = "them" if len(empty) > 1 else "it"
        raise ImgclsError(f"{', '.join(empty)} {'have' if len(empty) > 1 else 'has'} no {what}: add images to {them} or remove {them}")


def _warn_small_classes(classes: list[str], index: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
    """A class with too few images to reach val or test is trained on but never measured: say so."""
    for s in ("val", "test"):
        missing = torch.nonzero(class_counts(labels[index[s]], len(classes)) == 0).flatten().tolist()
        if missing:
            names, them = ", ".join(classes[i] for i in missing), "them" if len(missing) > 1 else "it"
            LOG.warning(f"warning: too few images to put any of {names} in {s}: {s} accuracy leaves {them} out; add images")


def _pool(workers: int):
    """Worker processes where fork makes them cheap (Linux: the decoders are Python-bound, so threads
    contend for the GIL and ran slower than one thread); threads elsewhere."""
    if sys.platform == "linux":
        context = multiprocessing.get_context("fork")
        return ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_start, initargs=(os.getpid(),))
    return ThreadPoolExecutor(workers)


def _worker_start(parent: int) -> None:
    """A decode worker leaves Ctrl-C, SIGTERM and SIGHUP to its parent, which stops the pool at once, and dies with
    its parent however that ends (even kill -9): a worker that outlived it would go on decoding, holding its
    caller's stderr open."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):  # prctl is Linux's
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _map_chunks(fn, chunks: list[list[str]], desc: str) -> Iterator:
    """fn over chunks of files in order, in parallel when there is more than one chunk, with a progress bar.

    Chunks, not single files: handing out one task per file costs as much as decoding a 32x32 JPEG. At most two
    chunks per worker are in flight, so results wait in memory only until the caller has taken them (to disk).
    A stop signal (Ctrl-C, SIGTERM, SIGHUP) is taken once the chunk in hand is done, and the pool is shut down before
    it is raised, so no worker outlives the pass."""
    workers = min(8, os.cpu_count() or 1, len(chunks))
    with progress_bar(total=sum(map(len, chunks)), desc=desc, unit="img", **({} if len(chunks) > 8 else {"disable": True})) as bar:
        if workers <= 1:
            for chunk in chunks:
                yield fn(chunk)
                bar.update(len(chunk))
            return
        pool = _pool(workers)
        try:
            with CtrlC(signals=STOP_SIGNALS) as ctrl_c:
                pending = deque(pool.submit(fn, chunk) for chunk in chunks[: 2 * workers])
                for i, chunk in enumerate(chunks):
                    try:
                        result = pending.popleft().result()
                    except BrokenProcessPool:
                        if ctrl_c.pressed:
                            break
                        raise ImgclsError(
                            f"a worker process died while {desc} images (killed, or out of memory): run the command again"
                        ) from None
                    if ctrl_c.pressed:
                        break
                    if i + 2 * workers < len(chunks):
                        pending.append(pool.submit(fn, chunks[i + 2 * workers]))
                    bar.update(len(chunk))
                    yield result
        finally:
            pool.shutdown(cancel_futures=True)
        if ctrl_c.pressed:
            raise stopped(ctrl_c.signum)


def each_file(read: Callable[[Path], T], root: Path, rels: list[str], desc: str) -> list[T | str]:
    """read(file) of each file in order, in parallel chunks, or why it cannot be read. Nothing may escape `read`: in a
    worker process it would end the whole pass, so every failure is the file's ImageReadError (images.py)."""
    return [out for chunk in _map_chunks(partial(_read_each, read, root), _batched(rels, CHUNK), desc) for out in chunk]


def _read_each(read: Callable[[Path], T], root: Path, rels: list[str]) -> list[T | str]:
    out = []
    for rel in rels:
        try:
            out.append(read(root / rel))
        except ImageReadError as e:
            out.append(str(e))
    return out


def _read_chunk(root: Path, channels: int, size: tuple[int, int], rels: list[str]) -> tuple[np.ndarray, list[str | None]]:
    """The files' pixels as uint8 N x C x H x W, and None or the reason for each file that failed."""
    pixels = np.zeros((len(rels), channels, *size), np.uint8)
    failures: list[str | None] = []
    for i, rel in enumerate(rels):
        try:
            pixels[i] = read_image(root / rel, channels, size)
            failures.append(None)
        except ImageReadError as e:
            failures.append(str(e))
    return pixels, failures


def _target_size(root: Path, sizes: Counter, image_size: int | None, default_size: int) -> tuple[int, int]:
    """--image-size if given; else the images' own size when they all share one small enough to hold
    in memory; else default_size square (a folder of phone photos would need gigabytes at full size)."""
    if image_size is not None:
        return image_size, image_size
    if len(sizes) == 1 and max(next(iter(sizes))) <= MAX_NATIVE_SIZE:
        return next(iter(sizes))
    h, w = sizes.most_common(1)[0][0]
    why = f"have {len(sizes)} different sizes" if len(sizes) > 1 else f"are {w}x{h}, large to hold in memory"
    LOG.warning(f"images in {root} {why}: resizing to {default_size}x{default_size} (set --image-size)")
    return default_size, default_size


class Plan(NamedTuple):
    """What the header pass decided: the files to decode, into how many channels, at what size."""

    names: list[str]
    channels: int
    size: tuple[int, int]
    skipped: list[str]  # "path: reason" for files that cannot be opened; decoding adds those it fails on
    resized_to: int | None  # the side images were resized to for want of --image-size


def plan(root: Path, rels: list[str], channels: int | None, image_size: int | None, default_size: int = DEFAULT_SIZE) -> Plan:
    """A header pass (mode and size, no pixels) decides the channel count and the common size."""
    headers = each_file(peek, root, rels, "scanning")
    skipped = [f"{rel}: {h}" for rel, h in zip(rels, headers) if isinstance(h, str)]
    good = [(rel, h) for rel, h in zip(rels, headers) if not isinstance(h, str)]
    if not good:
        raise ImgclsError(f"no readable images in {root} ({len(skipped)} files could not be opened, e.g. {skipped[0]})")
    if channels is None:
        channels = 1 if all(is_grey(mode) for _, (mode, _) in good) else 3
    size = _target_size(root, Counter(s for _, (_, s) in good), image_size, default_size)
    resized = size[0] if image_size is None and size == (default_size, default_size) else None
    return Plan([rel for rel, _ in good], channels, size, skipped, resized)


def decoded_rows(root: Path, p: Plan) -> Iterator[tuple[np.ndarray, list[str]]]:
    """(pixels, their files) chunk by chunk, as p says: a folder's decode never holds more than a few chunks.
    Files that fail to decode are left out and added to p.skipped."""
    chunks = _batched(p.names, max(1, min(CHUNK, CHUNK_BYTES // (p.channels * p.size[0] * p.size[1]))))
    for names, (pixels, failures) in zip(chunks, _map_chunks(partial(_read_chunk, root, p.channels, p.size), chunks, "decoding")):
        p.skipped.extend(f"{name}: {failure}" for name, failure in zip(names, failures) if failure is not None)
        ok = [i for i, failure in enumerate(failures) if failure is None]
        yield (pixels if len(ok) == len(names) else pixels[ok]), [names[i] for i in ok]


def _batched(rels: list[str], size: int) -> list[list[str]]:
    return [rels[i : i + size] for i in range(0, len(rels), size)]


def decode(root: Path, rels: list[str], channels: int | None, image_size: int | None, default_size: int = DEFAULT_SIZE) -> mapped.Stored:
    """Decode files into memory (a cache folder that cannot be written); unreadable ones are listed in meta["skipped"]."""
    p = plan(root, rels, channels, image_size, default_size)
    meta = {"skipped": p.skipped, "resized_to": p.resized_to}
    return _found(root, mapped.in_memory(decoded_rows(root, p), (p.channels, *p.size), meta, most=len(p.names)))


def _found(root: Path, stored: mapped.Stored) -> mapped.Stored:
    if not stored.ids:
        skipped = stored.meta["skipped"]
        raise ImgclsError(f"no readable images in {root} ({len(skipped)} files could not be decoded, e.g. {skipped[0]})")
    return stored


def decode_cached(root: Path, rels: list[str], key: str, channels: int | None, image_size: int | None, default_size: int) -> mapped.Stored:
    """The folder's decoded images from the cache, mapped; decoded into it first when it has none."""
    stored = mapped.load(key, str(root))
    if stored is not None:
        return stored
    with during(f"decoding {printable(root)}", "nothing was cached, the next run decodes it again"):
        p = plan(root, rels, channels, image_size, default_size)
        meta = {"skipped": p.skipped, "resized_to": p.resized_to}  # skipped grows while decoding
        try:
            return _found(root, mapped.save(key, decoded_rows(root, p), (p.channels, *p.size), len(p.names), meta))
        except WriteFailed as e:  # a cache is an optimisation: without it the next run decodes again
            LOG.warning(f"could not cache the decoded images, going on without: {e} (or set IMGCLS_CACHE to another folder)")
            return decode(root, rels, channels, image_size, default_size)


def _assign(labels: torch.Tensor, splits: list[str | None], seed: int, val_fraction: float) -> dict[str, torch.Tensor]:
    """Indices of each split: from the split folders, with missing splits held out of train, stratified and seeded."""
    by_folder = {s: torch.tensor([i for i, x in enumerate(splits) if x == s], dtype=torch.long) for s in SPLITS}
    if all(s is None for s in splits):
        fractions = dict(FLAT_FRACTIONS)
        pool = torch.arange(len(labels))
    else:
        fractions = {"val": val_fraction if len(by_folder["val"]) == 0 else 0, "test": TEST_FRACTION if len(by_folder["test"]) == 0 else 0}
        fractions["train"] = 1 - fractions["val"] - fractions["test"]
        pool = by_folder["train"]
    names = [s for s in SPLITS if fractions[s] > 0]
    parts = stratified_split(labels[pool], [fractions[s] for s in names], seed)
    out = {s: by_folder[s] for s in SPLITS}
    out.update({s: pool[p] for s, p in zip(names, parts)})
    return out


def load_folder(
    root: Path,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    channels: int | None = None,
    image_size: int | None = None,
    split_files: dict[str, list[str]] | None = None,
    default_size: int = DEFAULT_SIZE,
) -> Dataset:
    root = root.expanduser()
    classes, entries = scan(root)
    train_top = root / "train" if (root / "train").is_dir() else root
    return load_files(root, classes, entries, root.resolve().name, train_top, seed=seed, val_fraction=val_fraction, channels=channels,
                      image_size=image_size, split_files=split_files, default_size=default_size)  # fmt: skip


def load_files(
    root: Path,
    classes: list[str],
    entries: list[Entry],
    name: str,
    where: Path,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    channels: int | None = None,
    image_size: int | None = None,
    split_files: dict[str, list[str]] | None = None,
    default_size: int = DEFAULT_SIZE,
    skipped: list[str] = (),
) -> Dataset:
    """The files of `entries` (paths relative to root, their labels and split folders, from a folder's classes or a
    table's rows), decoded once into the cache, and split: by their split folder or column, else held out, or as a
    run's split.json says (split_files). `where` is what errors name; `skipped` lists entries left out already."""
    key = mapped.cache_key(
        str(root.resolve()), channels, image_size or f"default {default_size}", [(e.rel, e.size, e.mtime_ns) for e in entries]
    )
    with mapped.locked(key, str(where)):
        stored = decode_cached(root, [e.rel for e in entries], key, channels, image_size, default_size)
        meta = {e.rel: (e.label, e.split) for e in entries}
        readable = set(stored.ids)
        files = [e.rel for e in entries if e.rel in readable]
        labels = _labels([meta[rel][0] for rel in files], len(classes))
        if split_files is None:
            index = _assign(labels, [meta[rel][1] for rel in files], seed, val_fraction)
        else:
            index = _replayed(where, files, split_files)
        for s in SPLITS:
            if len(index[s]) == 0:
                raise ImgclsError(f"{where} leaves no images for the {s} split: add more images per class")
        if split_files is None:  # a replayed split (resume, evaluate) is checked against the run's classes instead
            _check_every_class_has_training_images(classes, labels[index["train"]], where, "readable training images")
            _warn_small_classes(classes, index, labels)
        names = {s: [files[i] for i in index[s].tolist()] for s in SPLITS}
        images = mapped.arrange(stored, names)
    parts = {s: Split(images[s], labels[index[s]]) for s in SPLITS}
    mean, std = channel_stats(parts["train"].images)
    return Dataset(
        name=name,
        classes=classes,
        train=parts["train"],
        val=parts["val"],
        test=parts["test"],
        mean=mean,
        std=std,
        flips_ok=images["train"].shape[1] == 3,
        skipped=[*skipped, *stored.meta["skipped"]],
        split_files=names,
        resized_to=stored.meta.get("resized_to"),
        root=root,
    )


def _labels(labels: list, num_classes: int) -> torch.Tensor:
    """int64 classes, or uint8 N x K multi-hot rows where the labels are tuples (multi-label data)."""
    if labels and isinstance(labels[0], tuple):
        rows = torch.zeros(len(labels), num_classes, dtype=torch.uint8)
        for i, label in enumerate(labels):
            rows[i, list(label)] = 1
        return rows
    return torch.tensor(labels, dtype=torch.long)


def _replayed(root: Path, files: list[str], split_files: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    """The indices of a run's saved split (split.json) among the readable files."""
    position = {rel: i for i, rel in enumerate(files)}
    missing = [rel for s in SPLITS for rel in split_files.get(s, []) if rel not in position]
    if missing:
        raise ImgclsError(
            f"the run's split.json lists {len(missing)} files no longer readable in {root} (e.g. {missing[0]}): restore them or start a new run"
        )
    return {s: torch.tensor([position[rel] for rel in split_files.get(s, [])], dtype=torch.long) for s in SPLITS}
