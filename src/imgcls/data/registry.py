"""The dataset registry: named datasets, plus any image folder given as a path."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from imgcls.data.core import Dataset, Split, hold_out
from imgcls.errors import ImgclsError
from imgcls.paths import data_dir as resolve_data_dir

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


DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(name: str, description: str):
    def wrap(fn: Callable[[Path], Source]) -> Callable[[Path], Source]:
        DATASETS[name] = DatasetInfo(name, description, fn)
        return fn

    return wrap


def is_folder_spec(spec: str) -> bool:
    return spec not in DATASETS and ("/" in spec or "\\" in spec or spec.startswith(".") or Path(spec).exists())


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
) -> Dataset:
    """Load a named dataset or an image folder into memory, with a validation split.

    `channels` and `image_size` make a folder match a trained model; `split_files`
    replays the split a run saved, so resume and evaluate see the same images. `default_size` is the side of
    folders whose images have mixed or large sizes, when image_size is None.
    """
    if spec in DATASETS:
        src = DATASETS[spec].load(resolve_data_dir(data_dir))
        train, val = hold_out(src.train, val_fraction, seed)
        return Dataset(spec, src.classes, train, val, src.test, src.mean, src.std, src.flips_ok)
    if is_folder_spec(spec):
        from imgcls.data.folder import load_folder

        sizing = {"default_size": default_size} if default_size else {}
        return load_folder(
            Path(spec), seed=seed, val_fraction=val_fraction, channels=channels, image_size=image_size, split_files=split_files, **sizing
        )
    raise ImgclsError(f"unknown dataset '{spec}': choose one of {', '.join(DATASETS)} (see `imgcls datasets`) or pass an image folder path")


def dataset_name(spec: str) -> str:
    """Short name for run folders: the registry name, or the folder's own name."""
    return spec if spec in DATASETS else (Path(spec).resolve().name or "folder")
