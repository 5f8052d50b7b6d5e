"""The user's own data from Python: a map-style torch Dataset, a pair (images, labels), or a dict of splits.

Each is decoded once into the same uint8 N x C x H x W tensors that named datasets and folders become, so training
runs as fast on it. Items may be PIL images, H x W (x C) uint8 arrays, or C x H x W tensors (uint8, or floats in
[0, 1] as transforms.ToTensor gives); mixed sizes are resized as folders are. Splits that are not given are held out:
a test split of the training images when there is none, then a validation split.
"""

import logging
import numbers
from collections.abc import Mapping

import numpy as np
import torch
from PIL import Image

from imgcls.data.core import Dataset, Split, channel_stats, hold_out_index, stratified_split
from imgcls.data.folder import DEFAULT_SIZE, MAX_NATIVE_SIZE, TEST_FRACTION
from imgcls.data.images import GREY_MODES, ImageReadError, load_image
from imgcls.errors import ImgclsError

LOG = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
ITEM = "each item must be (image, label): a PIL image, an H x W x C uint8 array or a C x H x W tensor, and an int"


def is_python_object(data) -> bool:
    """Data a Python caller hands over, as opposed to a dataset's name or a folder's path."""
    return data is not None and not isinstance(data, str | bytes) and not hasattr(data, "__fspath__")


def handed_over(
    data, seed: int = 0, val_fraction: float = 0.1, image_size: int | None = None, image_root=None, class_names=None,
    table_labels: dict | None = None,
) -> Dataset:  # fmt: skip
    """A Dataset of what a Python caller handed over: a pandas DataFrame of paths and labels (imgcls.data.table), or
    images (from_python)."""
    if hasattr(data, "columns") and hasattr(data, "itertuples"):
        from imgcls.data.table import load_table

        return load_table(data, image_root=image_root, class_names=class_names, seed=seed, val_fraction=val_fraction, image_size=image_size,
                          **(table_labels or {}))  # fmt: skip
    return from_python(data, seed, val_fraction, image_size)


def from_python(data, seed: int = 0, val_fraction: float = 0.1, image_size: int | None = None, name: str | None = None) -> Dataset:
    """A Dataset of the user's data: `data` is a map-style dataset, an (images, labels) pair, or {"train": ..., "val":
    ..., "test": ...} of either; `image_size` resizes every image to that square side (as mixed sizes are anyway)."""
    parts = {s: data[s] for s in SPLITS if s in data} if isinstance(data, Mapping) else {"train": data}
    if "train" not in parts:
        raise ImgclsError(f"a dict of splits needs a 'train' split, got {', '.join(map(str, data)) or 'none'}")
    unknown = set(data) - set(SPLITS) if isinstance(data, Mapping) else set()
    if unknown:
        raise ImgclsError(f"unknown splits {', '.join(sorted(map(str, unknown)))}: use train, val and test")
    natives = {s: _natives(part, s if len(parts) > 1 else None) for s, part in parts.items()}
    classes = _classes(parts["train"], torch.cat([labels for _, labels in natives.values()]))
    channels = 3 if any(image.shape[0] == 3 for images, _ in natives.values() for image in images) else 1
    sizes = {image.shape[1:] for images, _ in natives.values() for image in images}
    side = image_size or (None if len(sizes) == 1 and max(next(iter(sizes))) <= MAX_NATIVE_SIZE else DEFAULT_SIZE)
    if image_size is None and side is not None:
        LOG.warning(f"the images have {len(sizes)} different sizes or are large: resizing to {side}x{side} (set image_size)")
    splits = {s: Split(_stack(images, channels, side), labels) for s, (images, labels) in natives.items()}
    splits = _held_out(splits, seed, val_fraction)
    mean, std = channel_stats(splits["train"].images)
    label = name or _name(parts["train"])
    return Dataset(label, classes, splits["train"], splits["val"], splits["test"], mean, std, flips_ok=channels == 3,
                   resized_to=side if image_size is None else None)  # fmt: skip


def _name(data) -> str:
    return "tensors" if isinstance(data, tuple | list) else type(data).__name__


def _natives(data, split: str | None) -> tuple[list[np.ndarray], torch.Tensor]:
    """Each image as uint8 C x H x W at its own size, and the labels."""
    where = f" of the {split} split" if split else ""
    if isinstance(data, tuple | list) and len(data) == 2 and _is_pair(data):
        images, labels = data
        if isinstance(images, torch.Tensor | np.ndarray) and images.ndim in (3, 4):  # a whole batch at once: no loop
            batch, labels = _batch(images, where), _labels(labels, where)
            if len(batch) != len(labels):
                raise ImgclsError(f"(images, labels){where}: {len(batch)} images but {len(labels)} labels")
            return list(batch), labels
        try:
            pairs = list(zip(images, labels, strict=True))
        except (TypeError, ValueError):
            raise ImgclsError(f"(images, labels){where}: two sequences of the same length are needed ({ITEM})") from None
        return _decode_all(pairs, where)
    if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        raise ImgclsError(
            f"data{where} of type {type(data).__name__} is no dataset: pass a map-style torch Dataset, (images, labels) or a dict of splits"
        )
    return _decode_all(data, where)


def _batch(images, where: str) -> np.ndarray:
    """A batch as uint8 N x C x H x W: from N x H x W (grey), N x C x H x W or N x H x W x C; floats in [0, 1] scaled."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu()
        images = ((images * 255).round().clamp(0, 255).to(torch.uint8) if images.is_floating_point() else images).numpy()
    if images.dtype != np.uint8:
        raise ImgclsError(f"images{where}: an array batch must be uint8 (0-255), got {images.dtype}")
    if images.ndim == 3:
        return images[:, None]
    if images.shape[1] in (1, 3):
        return images
    if images.shape[-1] in (1, 3):
        return images.transpose(0, 3, 1, 2)
    raise ImgclsError(f"images{where} of shape {tuple(images.shape)}: give N x C x H x W or N x H x W x C, with 1 or 3 channels")


def _labels(labels, where: str) -> torch.Tensor:
    values = torch.as_tensor(np.asarray(labels))
    if values.ndim != 1 or values.is_floating_point() or values.dtype == torch.bool or (len(values) and values.min() < 0):
        raise ImgclsError(f"labels{where}: one class number (0, 1, 2, ...) per image is needed")
    return values.long()


def _is_pair(data) -> bool:
    """(images, labels), as opposed to a list of two (image, label) items: the second is a sequence of class numbers."""
    labels = data[1]
    if isinstance(labels, torch.Tensor | np.ndarray):
        return labels.ndim == 1
    return isinstance(labels, tuple | list) and all(isinstance(v, numbers.Integral | np.integer) for v in labels)


def _decode_all(items, where: str) -> tuple[list[np.ndarray], torch.Tensor]:
    images, labels = [], []
    for i in range(len(items)):
        try:
            item = items[i]
        except Exception as e:  # noqa: BLE001 - whatever the user's __getitem__ raises
            raise ImgclsError(f"item {i}{where} failed: {type(e).__name__}: {e}") from None
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise ImgclsError(f"item {i}{where} is a {type(item).__name__}: {ITEM}")
        images.append(_pixels(item[0], i, where))
        labels.append(_label(item[1], i, where))
    if not images:
        raise ImgclsError(f"the data{where} is empty: add images")
    return images, torch.tensor(labels, dtype=torch.long)


def _pixels(image, i: int, where: str) -> np.ndarray:
    """One image as uint8 C x H x W (1 or 3 channels) at its own size."""
    if isinstance(image, Image.Image):
        try:
            image = load_image(image, 1 if image.mode in GREY_MODES else 3, None)
        except ImageReadError as e:
            raise ImgclsError(f"item {i}{where}: its image cannot be read ({e})") from None
        return image
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu()
        array = (array * 255).round().clamp(0, 255).to(torch.uint8) if array.is_floating_point() else array
        array = array.numpy()
        array = array[None] if array.ndim == 2 else array  # C x H x W
    elif isinstance(image, np.ndarray):
        array = image[None] if image.ndim == 2 else image.transpose(2, 0, 1) if image.ndim == 3 else image  # H x W x C
        if array.dtype != np.uint8:
            raise ImgclsError(f"item {i}{where}: an array image must be uint8 (0-255), got {array.dtype}")
    else:
        raise ImgclsError(f"item {i}{where}: its image is a {type(image).__name__}: {ITEM}")
    if array.ndim != 3 or array.shape[0] not in (1, 3, 4) or min(array.shape[1:]) < 1:
        raise ImgclsError(f"item {i}{where}: an image of shape {tuple(array.shape)}; {ITEM}")
    return np.ascontiguousarray(array[:3].astype(np.uint8, copy=False))


def _label(label, i: int, where: str) -> int:
    if isinstance(label, torch.Tensor) and label.numel() == 1 and not label.is_floating_point():
        label = label.item()
    if isinstance(label, bool) or not isinstance(label, numbers.Integral | np.integer) or label < 0:
        raise ImgclsError(f"item {i}{where}: its label is {label!r}: labels are class numbers 0, 1, 2, ...")
    return int(label)


def _classes(data, labels: torch.Tensor) -> list[str]:
    """The dataset's `classes` when it has them, else the class numbers as names."""
    count = int(labels.max()) + 1
    named = getattr(data, "classes", None)
    if named is not None:
        names = [str(c) for c in named]
        if len(names) < count:
            raise ImgclsError(f"the data's labels go up to {count - 1}, but its classes name only {len(names)}: {', '.join(names)}")
        return names
    return [str(c) for c in range(count)]


def _stack(images: list[np.ndarray], channels: int, side: int | None) -> torch.Tensor:
    """uint8 N x C x H x W: grey images made RGB where others are colour, all resized to side x side when given."""
    if side is not None:
        images = [load_image(Image.fromarray(i[0] if i.shape[0] == 1 else i.transpose(1, 2, 0)), channels, (side, side)) for i in images]
    stacked = np.stack([np.broadcast_to(i, (channels, *i.shape[1:])) if i.shape[0] != channels else i for i in images])
    return torch.from_numpy(stacked)


def _held_out(splits: dict[str, Split], seed: int, val_fraction: float) -> dict[str, Split]:
    """The splits given, and those not given held out of train, stratified and seeded: test first, then val."""
    train = splits["train"]
    if "test" not in splits:
        keep, test = stratified_split(train.labels, [1 - TEST_FRACTION, TEST_FRACTION], seed)
        if len(test) == 0:
            raise ImgclsError(f"cannot hold out a test split of {len(train)} images: add images, or pass a test split")
        splits["test"], train = train.subset(test), train.subset(keep)
    if "val" not in splits:
        keep, val = hold_out_index(train.labels, val_fraction, seed)
        splits["val"], train = train.subset(val), train.subset(keep)
    return {**splits, "train": train}
