"""Named datasets: the embedded MNIST sample, and torchvision's MNIST and CIFAR-10."""

from importlib import resources
from pathlib import Path

import numpy as np
import torch

from imgcls.data.core import Split
from imgcls.data.registry import CIFAR_MEAN, CIFAR_STD, MNIST_MEAN, MNIST_STD, Source, register_dataset
from imgcls.errors import ImgclsError
from imgcls.paths import offline

DIGITS = [str(d) for d in range(10)]
SAMPLE = "mnist_sample.npz"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _sample_file(_: Path) -> list[Path]:
    return [Path(str(resources.files("imgcls.assets").joinpath(SAMPLE)))]


def _mnist_files(root: Path) -> list[Path]:
    return [
        root / "MNIST" / "raw" / f"{name}-ubyte"
        for name in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")
    ]


def _cifar_files(root: Path) -> list[Path]:
    return [root / "cifar-10-batches-py" / name for name in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")]


@register_dataset("mnist-sample", "10,000 train + 2,000 test real MNIST digits shipped inside imgcls (works offline)", _sample_file)
def mnist_sample(_: Path) -> Source:
    with resources.files("imgcls.assets").joinpath(SAMPLE).open("rb") as f:
        arrays = dict(np.load(f))

    def split(name: str) -> Split:
        images = torch.from_numpy(arrays[f"{name}_images"]).unsqueeze(1)
        return Split(images, torch.from_numpy(arrays[f"{name}_labels"]).long())

    return Source(split("train"), split("test"), DIGITS, MNIST_MEAN, MNIST_STD, flips_ok=False)


def _torchvision_split(cls, root: Path, train: bool, where: str, how: str):
    """Load a torchvision dataset, downloading it only when it is missing and we may."""
    try:
        return cls(str(root), train=train, download=False)
    except RuntimeError:
        if offline():
            raise ImgclsError(f"{cls.__name__} not found in {where} and downloads are off (IMGCLS_OFFLINE): {how}") from None
    try:
        return cls(str(root), train=train, download=True)
    except Exception as e:  # noqa: BLE001 - any network or archive failure means the same thing to the user
        raise ImgclsError(f"{cls.__name__} not found in {where} and the download failed ({type(e).__name__}: {e}): {how}") from None


@register_dataset("mnist", "MNIST handwritten digits, 60,000 train + 10,000 test, 1x28x28 (downloads to the data dir)", _mnist_files)
def mnist(root: Path) -> Source:
    from torchvision.datasets import MNIST  # imported on use: torchvision adds seconds to every start-up

    where = root / "MNIST" / "raw"
    how = f"put the four MNIST idx files in {where}, or point --data-dir / IMGCLS_DATA at a folder holding MNIST/raw"

    def split(train: bool) -> Split:
        ds = _torchvision_split(MNIST, root, train, str(where), how)
        return Split(ds.data.unsqueeze(1).contiguous(), ds.targets.long())

    return Source(split(True), split(False), DIGITS, MNIST_MEAN, MNIST_STD, flips_ok=False)


@register_dataset("cifar10", "CIFAR-10, 50,000 train + 10,000 test, 3x32x32, 10 classes (downloads to the data dir)", _cifar_files)
def cifar10(root: Path) -> Source:
    from torchvision.datasets import CIFAR10

    where = root / CIFAR10.base_folder
    how = f"extract cifar-10-python.tar.gz into {root}, or point --data-dir / IMGCLS_DATA at a folder holding {CIFAR10.base_folder}"

    def split(train: bool) -> Split:
        ds = _torchvision_split(CIFAR10, root, train, str(where), how)
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return Split(images, torch.tensor(ds.targets, dtype=torch.long))

    return Source(split(True), split(False), list(CIFAR_CLASSES), CIFAR_MEAN, CIFAR_STD, flips_ok=True)


CIFAR2_CLASSES = ("airplane", "bird")


@register_dataset("cifar2", "CIFAR-10 reduced to airplane vs bird (labels 0/1), 10,000 train + 2,000 test", _cifar_files)
def cifar2(root: Path) -> Source:
    full = cifar10(root)
    keep = [CIFAR_CLASSES.index(c) for c in CIFAR2_CLASSES]

    def reduce(split: Split) -> Split:
        mask = torch.isin(split.labels, torch.tensor(keep))
        labels = split.labels[mask]
        return Split(split.images[mask], torch.searchsorted(torch.tensor(keep), labels))

    return Source(reduce(full.train), reduce(full.test), list(CIFAR2_CLASSES), CIFAR_MEAN, CIFAR_STD, flips_ok=True)
