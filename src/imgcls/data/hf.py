"""Hugging Face datasets: `--data hf:NAME_OR_PATH[:CONFIG]` (the `hf` extra).

A folder written by `save_to_disk` is read with `load_from_disk`; any other name goes to `load_dataset`, which uses
(and fills) the Hugging Face cache, so downloads stay real for users on the internet. The image column is the one whose
feature is an Image, the label column a ClassLabel (or --image-column / --label-column). The dataset's own splits are
used (train, validation or val, test); those missing are held out of train, test first. A Sequence(ClassLabel) column
makes it multi-label. The images are decoded once into the same memory-mapped cache as folders, keyed on the splits'
fingerprints.
"""

import io
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imgcls.data import mapped
from imgcls.data.core import Dataset, Split, channel_stats, hold_out_index, stratified_split
from imgcls.data.folder import TEST_FRACTION, _target_size
from imgcls.data.images import ImageReadError, decoding, is_grey, load_image
from imgcls.errors import ImgclsError, missing_extra

LOG = logging.getLogger(__name__)
SPLITS = {"train": "train", "validation": "val", "valid": "val", "val": "val", "test": "test"}
CHUNK = 256  # rows decoded at a time


def parse(spec: str) -> tuple[str, str | None]:
    """(name or path, config) of hf:NAME_OR_PATH[:CONFIG]."""
    rest = spec.partition(":")[2]  # after the scheme, "hf:" (imgcls.data.registry dispatches on it)
    name, _, config = rest.rpartition(":") if ":" in rest and not Path(rest).expanduser().exists() else (rest, "", "")
    if not name:
        raise ImgclsError(f"--data {spec}: name a Hugging Face dataset (hf:mnist, hf:user/name:config) or a save_to_disk folder (hf:path)")
    return name, config or None


def local(name: str) -> Path | None:
    path = Path(name).expanduser()
    return path.resolve() if path.exists() else None


def _open(name: str, config: str | None) -> dict:
    """Our split name -> the Hugging Face dataset of it."""
    try:
        import datasets
    except ImportError as e:
        raise missing_extra("--data hf:...", "hf", e) from None
    path = local(name)
    try:
        found = datasets.load_from_disk(str(path)) if path is not None else datasets.load_dataset(name, config)
    except Exception as e:  # noqa: BLE001 - offline, unknown names, damaged folders: whatever datasets raises
        where = f"the folder {path}" if path is not None else f"the Hugging Face dataset {name}{f' ({config})' if config else ''}"
        raise ImgclsError(f"cannot load {where} ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if isinstance(found, datasets.Dataset):
        return {"train": found}
    splits = {}
    for theirs, part in found.items():
        ours = SPLITS.get(theirs.lower())
        if ours is None or ours in splits:
            LOG.warning(f"{name}: split '{theirs}' left out (imgcls takes train, validation or val, and test)")
            continue
        splits[ours] = part
    if "train" not in splits:
        raise ImgclsError(f"{name} has no train split ({', '.join(found)}): imgcls needs one to train on")
    return splits


def columns(features, image_column: str | None, label_column: str | None, name: str) -> tuple[str, str, list[str]]:
    """The image and label columns and the class names, found by their features or as given."""
    import datasets

    def find(kind, given, what):
        if given is not None:
            if given not in features:
                raise ImgclsError(f"{name} has no column '{given}' ({', '.join(features)}): check --{what}-column")
            return given
        found = [c for c, f in features.items() if kind(f)]
        if not found:
            raise ImgclsError(f"{name} has no {what} column that imgcls recognises ({', '.join(features)}): name it with --{what}-column")
        return found[0]

    image = find(lambda f: isinstance(f, datasets.Image), image_column, "image")
    label = find(lambda f: isinstance(f, datasets.ClassLabel) or isinstance(getattr(f, "feature", None), datasets.ClassLabel),
                 label_column, "label")  # fmt: skip
    feature = features[label]
    feature = getattr(feature, "feature", feature)  # Sequence(ClassLabel): several labels per image, multi-label
    if not isinstance(feature, datasets.ClassLabel):
        raise ImgclsError(f"{name}'s '{label}' column is no ClassLabel ({features[label]}): imgcls needs class labels")
    return image, label, list(feature.names)


def load_hf(
    spec: str, *, seed: int = 0, val_fraction: float = 0.1, channels: int | None = None, image_size: int | None = None,
    default_size: int = 128, image_column: str | None = None, label_column: str | None = None,
) -> Dataset:  # fmt: skip
    name, config = parse(spec)
    splits = _open(name, config)
    image, label, classes = columns(splits["train"].features, image_column, label_column, name)
    fingerprints = [(s, getattr(part, "_fingerprint", None), len(part)) for s, part in splits.items()]
    key = mapped.cache_key("hf", name, config, image, label, channels, image_size or f"default {default_size}", fingerprints)
    with mapped.locked(key, spec):
        stored = mapped.load(key, spec) or _decode(splits, image, label, key, spec, channels, image_size, default_size)
        label_of = stored.meta["labels"]
        # In the dataset's own order, whatever order the cache holds the rows in: the held-out splits depend on it.
        ordered = sorted(stored.ids, key=lambda i: (i.split("/")[0], int(i.split("/")[1])))
        ids = {s: [i for i in ordered if i.split("/")[0] == s] for s in ("train", "val", "test")}
        ids = _held_out(ids, label_of, len(classes), seed, val_fraction, spec)
        images = mapped.arrange(stored, ids)
    parts = {s: Split(images[s], _labels([label_of[i] for i in ids[s]], len(classes))) for s in ids}
    mean, std = channel_stats(parts["train"].images)
    if stored.meta["skipped"]:
        LOG.warning(f"{spec}: {len(stored.meta['skipped'])} images could not be decoded and are left out, e.g. {stored.meta['skipped'][0]}")
    return Dataset(Path(name).name or name, classes, parts["train"], parts["val"], parts["test"], mean, std,
                   flips_ok=images["train"].shape[1] == 3, resized_to=stored.meta.get("resized_to"))  # fmt: skip


def _decode(splits: dict, image: str, label: str, key: str, spec: str, channels, image_size, default_size) -> mapped.Stored:
    """Every split's images into the cache (headers first: the common size and channels), their labels in meta."""
    import datasets

    headers, skipped = {}, []
    for s, part in splits.items():
        raw = part.cast_column(image, datasets.Image(decode=False)).select_columns([image])
        for i, row in enumerate(raw):
            try:
                with decoding(), Image.open(_source(row[image])) as opened:
                    headers[f"{s}/{i}"] = (opened.mode, (opened.height, opened.width))
            except ImageReadError as e:
                skipped.append(f"{s}/{i}: {e}")
    if not headers:
        raise ImgclsError(f"no readable images in {spec} ({len(skipped)} could not be opened, e.g. {skipped[0]})")
    channels = channels or (1 if all(is_grey(m) for m, _ in headers.values()) else 3)
    size = _target_size(Path(spec), Counter(s for _, s in headers.values()), image_size, default_size)
    meta = {"labels": {}, "skipped": skipped, "resized_to": size[0] if image_size is None and size == (default_size,) * 2 else None}

    def rows():
        for s, part in splits.items():
            for start in range(0, len(part), CHUNK):
                batch = part[start : start + CHUNK]
                pixels, ids = [], []
                for offset, (picture, target) in enumerate(zip(batch[image], batch[label])):
                    row = f"{s}/{start + offset}"
                    if row not in headers:
                        continue
                    try:
                        pixels.append(load_image(picture, channels, size))
                    except ImageReadError as e:
                        skipped.append(f"{row}: {e}")
                        continue
                    ids.append(row)
                    meta["labels"][row] = [int(t) for t in target] if isinstance(target, list) else int(target)
                if ids:
                    yield np.stack(pixels), ids

    return mapped.cached(key, rows, (channels, *size), len(headers), meta, spec)


def _source(cell: dict):
    """What Image.open reads of an undecoded Image cell: its bytes, else its file."""
    return io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell["path"]


def _labels(values: list, num_classes: int) -> torch.Tensor:
    """Class indices, or multi-hot rows where the values are lists of labels (a Sequence(ClassLabel) column)."""
    if values and isinstance(values[0], list):
        rows = torch.zeros(len(values), num_classes, dtype=torch.uint8)
        for i, labels in enumerate(values):
            rows[i, labels] = 1
        return rows
    return torch.tensor(values, dtype=torch.long)


def _held_out(
    ids: dict[str, list[str]], label_of: dict, num_classes: int, seed: int, val_fraction: float, spec: str
) -> dict[str, list[str]]:
    """The splits the dataset has, and those it lacks held out of train, stratified and seeded: test, then val."""
    train = ids["train"]
    labels = _labels([label_of[i] for i in train], num_classes)
    if not ids["test"]:
        keep, test = stratified_split(labels, [1 - TEST_FRACTION, TEST_FRACTION], seed)
        ids["test"], train, labels = [train[i] for i in test.tolist()], [train[i] for i in keep.tolist()], labels[keep]
    if not ids["val"]:
        keep, val = hold_out_index(labels, val_fraction, seed)
        ids["val"], train = [train[i] for i in val.tolist()], [train[i] for i in keep.tolist()]
    if not (train and ids["val"] and ids["test"]):
        raise ImgclsError(f"{spec} leaves no images for a split: add images")
    return {**ids, "train": train}
