"""Run folders: runs/<dataset>-<model>-<n> with config, metrics, checkpoints and summary."""

import csv
import io
import json
from pathlib import Path

from imgcls.checkpoint import atomic_write
from imgcls.errors import ImgclsError

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]


def new_run_dir(dataset: str, model: str, out: str | None, root: str = "runs") -> Path:
    """The --out folder (which must not hold a run already), else the next free runs/<dataset>-<model>-<n>."""
    if out:
        path = Path(out).expanduser()
        if (path / "last.pt").exists() or (path / "best.pt").exists():
            raise ImgclsError(f"{path} already holds a run: resume it with `imgcls train --resume {path}` or choose another --out")
        path.mkdir(parents=True, exist_ok=True)
        return path
    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        path = base / f"{dataset}-{model}-{n}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


def write_text(path: Path, text: str) -> None:
    """Atomic text write, so a reader never sees half a file."""
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def read_split(run_dir: Path) -> dict[str, list[str]] | None:
    """The file-level split a folder run saved (split.json), or None for named datasets."""
    path = Path(run_dir) / "split.json"
    return read_json(path) if path.exists() else None


def write_metrics(path: Path, history: list[dict]) -> None:

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(path, buf.getvalue())


def read_metrics(path: Path) -> list[dict]:
    """metrics.csv back as rows of numbers ([] when the file is missing)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]
