"""Labels from a table: a CSV file (or a pandas DataFrame) of image paths and their labels, the Kaggle shape, fastai's
`from_csv` and Hugging Face's `imagefolder` metadata.csv; several labels per image (multi-label) in one cell split at
--label-delim, or as one 0/1 column per label (--label-columns, --multi-label).

Columns: a path column (`path`, `filename`, `file` or `image`) and a label column (`label` or `labels`) under a
header; without a header, the first column is the path and the second the label. An optional `split` column
(train/val/test) is honoured. Paths are relative to the table's folder, or to `image_root`. Labels are class names, or
integers, named by `classes` when given (else kept as their strings). Rows whose file is missing, whose label is empty,
or that repeat a path are skipped and listed with the unreadable images; the files are then decoded and cached as a
folder's are (imgcls.data.folder.load_files).
"""

import csv
import logging
import os
from pathlib import Path

from imgcls.data.core import Dataset
from imgcls.data.folder import SPLITS, Entry, load_files
from imgcls.errors import ImgclsError
from imgcls.files import printable

LOG = logging.getLogger(__name__)
PATH_COLUMNS = ("path", "filename", "file", "image")
LABEL_COLUMNS = ("label", "labels")


def read_rows(path: Path) -> list[list[str]]:
    """The table's rows as text cells; one line for a file that cannot be read as CSV."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    except FileNotFoundError:
        raise ImgclsError(f"table {path} does not exist: check the path") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ImgclsError(f"cannot read {path} as CSV ({type(e).__name__}: {e}): save it as comma-separated UTF-8 text") from None


def columns(header: list[str], where: str, wide: list[str] | None) -> tuple[int, list[int] | int, int | None]:
    """Indices of the path column, the label column (or the wide format's label columns), and the split column."""
    names = [h.strip().lower() for h in header]
    path = next((names.index(c) for c in PATH_COLUMNS if c in names), None)
    split = names.index("split") if "split" in names else None
    if wide is not None:  # one 0/1 column per label: those named, else every column but the path, split and id
        chosen = [c.lower() for c in wide] or [n for n in names if n not in (*PATH_COLUMNS, "split", "id")]
        missing = [c for c in chosen if c not in names]
        if path is None or missing or not chosen:
            lacking = "path" if path is None else f"label {', '.join(missing)}" if missing else "label"
            raise ImgclsError(f"{where} has no {lacking} column ({', '.join(header)}): check --label-columns")
        return path, [names.index(c) for c in chosen], split
    label = next((names.index(c) for c in LABEL_COLUMNS if c in names), None)
    if path is None or label is None:
        raise ImgclsError(
            f"{where} has no {'path' if path is None else 'label'} column ({', '.join(header)}): name them "
            f"{' or '.join(PATH_COLUMNS)} and {' or '.join(LABEL_COLUMNS)}, or drop the header (path first, label second)"
        )
    return path, label, split


TRUE = {"1", "1.0", "true", "yes", "y", "t"}


def records(rows: list[list[str]], where: str, delim: str | None = None, wide: list[str] | None = None) -> list:
    """(path, label, split or None) of each row, the header found and left out. The label is a name, or for multi-label
    tables a tuple of names: the cell split at `delim`, or the names of the wide format's columns that hold a 1."""
    if not rows:
        raise ImgclsError(f"{where} has no rows: list an image path and its label on each")
    first = [c.strip().lower() for c in rows[0]]
    if wide is not None or any(c in PATH_COLUMNS + LABEL_COLUMNS for c in first):
        path, label, split = columns(rows[0], where, wide)
        header, rows = [c.strip() for c in rows[0]], rows[1:]
    else:
        path, label, split, header = 0, 1, None, []
    out = []
    for row in rows:
        cells = [c.strip() for c in row]
        get = lambda i: cells[i] if i is not None and i < len(cells) else ""  # noqa: E731
        if isinstance(label, list):
            value = tuple(header[i] for i in label if get(i).lower() in TRUE)
        elif delim is not None:
            value = tuple(dict.fromkeys(v.strip() for v in get(label).split(delim or None) if v.strip())) or ""
        else:
            value = get(label)
        out.append((get(path), value, get(split).lower() or None))
    return out


def load_table(
    spec, *, image_root: str | Path | None = None, class_names: list[str] | None = None, seed: int = 0, val_fraction: float = 0.1,
    channels: int | None = None, image_size: int | None = None, split_files: dict[str, list[str]] | None = None, default_size: int = 128,
    label_delim: str | None = None, label_columns: list[str] | None = None, multi_label: bool = False,
) -> Dataset:  # fmt: skip
    """A dataset from a CSV file's path, or a pandas DataFrame (its paths relative to image_root, else the working folder).
    Multi-label with `label_delim` (several labels in one cell), or a wide table (one 0/1 column per label: those in
    `label_columns`, else with `multi_label` every column but the path, split and id)."""
    if hasattr(spec, "columns") and hasattr(spec, "itertuples"):  # a DataFrame
        where, folder = "the DataFrame", Path.cwd()
        rows = [list(map(str, spec.columns)), *([("" if v is None else str(v)) for v in row] for row in spec.itertuples(index=False))]
        name = "DataFrame"
    else:
        table = Path(spec).expanduser()
        where, folder, name = str(table), table.resolve().parent, table.stem
        rows = read_rows(table)
    root = Path(image_root).expanduser().resolve() if image_root else folder
    wide = label_columns if label_columns is not None else ([] if multi_label else None)
    entries, classes, skipped = _entries(records(rows, where, label_delim, wide), root, class_names, where)
    LOG.info(
        f"{printable(where)}: {len(entries) + len(skipped):,} rows, {len(entries):,} used"
        + (f", {len(skipped):,} skipped" if skipped else "")
    )
    return load_files(root, classes, entries, name, Path(where), seed=seed, val_fraction=val_fraction, channels=channels,
                      image_size=image_size, split_files=split_files, default_size=default_size, skipped=skipped)  # fmt: skip


def _entries(rows, root: Path, class_names: list[str] | None, where: str) -> tuple[list[Entry], list[str], list[str]]:
    """Entries of the usable rows, the class names, and "path: why" of each row left out."""
    skipped, seen, usable = [], set(), []
    for path, label, split in rows:
        if not path:
            skipped.append(f"(a row without a path, label {label!r}): empty path")
        elif label == "":  # an empty set of a wide table's labels is an image with none of them
            skipped.append(f"{path}: empty label")
        elif path in seen:
            skipped.append(f"{path}: listed again")
        elif split is not None and split not in SPLITS:
            skipped.append(f"{path}: unknown split {split!r} (train, val or test)")
        else:
            try:
                st = os.stat(root / path)
            except OSError as e:
                skipped.append(f"{path}: {e.strerror or e}")
                continue
            seen.add(path)
            usable.append((path, label, split, st.st_size, st.st_mtime_ns))
    if not usable:
        example = f", e.g. {skipped[0]}" if skipped else ""
        raise ImgclsError(f"{where} has no usable rows ({len(skipped)} skipped{example}): check the paths (relative to {root})")
    multi = isinstance(usable[0][1], tuple)
    found = sorted({name for _, label, *_ in usable for name in (label if multi else (label,))})
    classes = _class_names(found, class_names, where)
    index = {c: i for i, c in enumerate(classes)}

    def label_of(label):
        return tuple(sorted(index[_named(v, class_names)] for v in label)) if multi else index[_named(label, class_names)]

    entries = [Entry(path, label_of(label), split, size, mtime) for path, label, split, size, mtime in usable]
    if len(classes) < 2:
        raise ImgclsError(f"{where} has a single class ({classes[0]}): a classifier needs at least two")
    return entries, classes, skipped


def _named(label: str, class_names: list[str] | None) -> str:
    """A label as its class's name: an integer label names class_names[label] when they are given."""
    if class_names and label.lstrip("-").isdigit():
        return class_names[int(label)]
    return label


def _class_names(labels: list[str], class_names: list[str] | None, where: str) -> list[str]:
    if class_names:
        numbers = [int(v) for v in labels if v.lstrip("-").isdigit()]
        bad = [v for v in numbers if not 0 <= v < len(class_names)]
        if bad:
            raise ImgclsError(f"{where} has label {bad[0]}, but --classes names {len(class_names)} classes (0 to {len(class_names) - 1})")
        names = {_named(v, class_names) for v in labels}
        return [c for c in class_names if c in names] + sorted(names - set(class_names))
    if all(v.lstrip("-").isdigit() for v in labels):
        return sorted(labels, key=int)  # integers kept as their strings, in numeric order
    return labels
