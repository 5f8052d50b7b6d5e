"""The dataset registry: named datasets, plus any image folder given as a path."""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from imgcls.data import mapped
from imgcls.data.core import Dataset, Split, hold_out_index
from imgcls.errors import ImgclsError
from imgcls.paths import data_dir as resolve_data_dir

LOG = logging.getLogger(__name__)

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class Source(NamedTuple):
    """What a named dataset's loader returns: train and test splits and how to normalise them."""

    train: Split
    test: Split
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flips_ok: bool


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    load: Callable[[Path], Source]
    files: Callable[[Path], list[Path]]  # what load reads under the data dir (or ships with imgcls): the cache is keyed on them


DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(name: str, description: str, files: Callable[[Path], list[Path]]):
    def wrap(fn: Callable[[Path], Source]) -> Callable[[Path], Source]:
        DATASETS[name] = DatasetInfo(name, description, fn, files)
        return fn

    return wrap


PYTHON = "python:"  # a run's data that a Python caller handed over (imgcls.data.user): python:<its name>


def is_folder_spec(spec: str) -> bool:
    return (
        spec not in DATASETS
        and not is_python_data(spec)
        and not is_hf(spec)
        and ("/" in spec or "\\" in spec or spec.startswith(".") or Path(spec).exists())
    )


HF = "hf:"  # a Hugging Face dataset (imgcls.data.hf)


def is_hf(spec: str) -> bool:
    return isinstance(spec, str) and spec.startswith(HF)


def is_table(spec: str) -> bool:
    """A CSV file of image paths and labels (imgcls.data.table)."""
    return str(spec).lower().endswith(".csv")


def is_python_data(spec: str) -> bool:
    return spec.startswith(PYTHON)


def load_dataset(
    spec: str,
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    channels: int | None = None,
    image_size: int | None = None,
    split_files: dict[str, list[str]] | None = None,
    default_size: int | None = None,
    image_root: str | Path | None = None,
    class_names: list[str] | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    table_labels: dict | None = None,
) -> Dataset:
    """Load a named dataset or an image folder into memory, with a validation split.

    `channels` and `image_size` make a folder match a trained model; `split_files`
    replays the split a run saved, so resume and evaluate see the same images. `default_size` is the side of
    folders whose images have mixed or large sizes, when image_size is None.
    """
    if spec in DATASETS:
        return load_named(DATASETS[spec], resolve_data_dir(data_dir), seed, val_fraction, image_size)
    if is_python_data(spec):
        raise ImgclsError(
            f"the run trained on a Python dataset ({spec.removeprefix(PYTHON)}), which only Python can hand over: pass it "
            "again, as in imgcls.resume(run, data=...) or imgcls.evaluate(run, data=...)"
        )
    if is_hf(spec):
        from imgcls.data.hf import load_hf

        sizing = {"default_size": default_size} if default_size else {}
        return load_hf(spec, seed=seed, val_fraction=val_fraction, channels=channels, image_size=image_size, image_column=image_column,
                       label_column=label_column, **sizing)  # fmt: skip
    if is_table(spec):
        from imgcls.data.table import load_table

        sizing = {"default_size": default_size} if default_size else {}
        return load_table(spec, image_root=image_root, class_names=class_names, seed=seed, val_fraction=val_fraction, channels=channels,
                          image_size=image_size, split_files=split_files, **sizing, **(table_labels or {}))  # fmt: skip
    if is_folder_spec(spec):
        from imgcls.data.folder import load_folder

        sizing = {"default_size": default_size} if default_size else {}
        return load_folder(
            Path(spec), seed=seed, val_fraction=val_fraction, channels=channels, image_size=image_size, split_files=split_files, **sizing
        )
    raise ImgclsError(f"unknown dataset '{spec}': choose one of {', '.join(DATASETS)} (see `imgcls datasets`) or pass an image folder path")


def dataset_name(spec: str) -> str:
    """Short name for run folders: the registry name, or the folder's own name."""
    if spec in DATASETS or is_python_data(spec):
        return spec.removeprefix(PYTHON)
    if is_table(spec):
        return Path(spec).stem
    if is_hf(spec):
        return Path(spec[len(HF) :].rpartition(":")[0] or spec[len(HF) :]).name or "hf"
    return Path(spec).resolve().name or "folder"


def _named_key(info: DatasetInfo, root: Path) -> str | None:
    """The cache entry of a named dataset's files as they are now; None while any is missing (not yet downloaded)."""
    try:
        stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in info.files(root)]
    except OSError:
        return None
    return mapped.cache_key("named", info.name, stats)


def _stored(info: DatasetInfo, root: Path) -> mapped.Stored:
    """The dataset's train and test images (rows 0..n-1 and n..) from the cache, loaded (downloaded) into it first when
    it has none."""
    key = _named_key(info, root)
    stored = mapped.load(key, info.name) if key else None
    if stored is not None:
        return stored
    src = info.load(root)
    labels = torch.cat([src.train.labels, src.test.labels])
    meta = {"labels": labels.tolist(), "train": len(src.train), "classes": src.classes, "mean": src.mean, "std": src.std,
            "flips_ok": src.flips_ok}  # fmt: skip
    shape = tuple(src.train.images.shape[1:])
    rows = [(split.images.numpy(), list(range(start, start + len(split)))) for split, start in ((src.train, 0), (src.test, len(src.train)))]
    return mapped.cached(_named_key(info, root), lambda: rows, shape, len(labels), meta, info.name)


def _resized(stored: mapped.Stored, name: str, side: int) -> mapped.Stored:
    """The entry's images resized to side x side (antialiased, as folders are decoded), cached beside it: resized once,
    then mapped like the original, so that a pretrained backbone's 224 px or a GAN's 64 px costs nothing per batch."""
    key = mapped.cache_key("resized", stored.key, side) if stored.key else None  # an entry held in memory is resized there
    resized = mapped.load(key, f"{name} at {side} px") if key else None
    if resized is not None:
        return resized
    from torchvision.transforms.v2.functional import resize  # imported on use: torchvision adds seconds to every start-up

    channels, n = stored.images.shape[1], len(stored.images)
    LOG.info(f"resizing {name} to {side}x{side} once into the cache ({n * channels * side * side / 1e6:,.0f} MB)")
    step = max(1, mapped.COPY_BYTES // (channels * side * side))

    def chunks():
        for i in range(0, n, step):
            yield resize(stored.images[i : i + step], [side, side], antialias=True).numpy(), stored.ids[i : i + step]

    meta = {k: v for k, v in stored.meta.items() if k not in ("file", "shape", "digest")}
    return mapped.cached(key, chunks, (channels, side, side), n, meta, f"{name} at {side} px")


def load_named(info: DatasetInfo, root: Path, seed: int, val_fraction: float, image_size: int | None = None) -> Dataset:
    """A named dataset with a validation split held out of its training images, each split a slice of the cache's mapping;
    with `image_size`, its images resized to that square side. Under a lock, so that torchrun's workers load (and
    download) it once."""
    with mapped.locked(mapped.cache_key("named", info.name, str(root.resolve())), info.name):
        stored = _stored(info, root)
        if image_size and tuple(stored.images.shape[2:]) != (image_size, image_size):
            stored = _resized(stored, info.name, image_size)
        labels = torch.tensor(stored.meta["labels"])
        n_train = stored.meta["train"]
        keep, val = hold_out_index(labels[:n_train], val_fraction, seed)
        index = {"train": keep, "val": val, "test": torch.arange(n_train, len(labels))}
        images = mapped.arrange(stored, {s: i.tolist() for s, i in index.items()})
    meta = stored.meta
    train, val, test = (Split(images[s], labels[i]) for s, i in index.items())
    return Dataset(info.name, meta["classes"], train, val, test, tuple(meta["mean"]), tuple(meta["std"]), meta["flips_ok"])
