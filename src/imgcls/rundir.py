"""Run folders: runs/<dataset>-<model>-<n> with config, metrics, checkpoints and summary."""

import contextlib
import csv
import io
import os
from pathlib import Path

from imgcls.errors import ImgclsError
from imgcls.files import locked_file, printable, read_json, remove_stale_temporaries, write_text

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
        path = base / f"{dataset}-{folder_name(model)}-{n}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


def folder_name(model: str) -> str:
    """A model's part of a run folder's name: tv-resnet18 (no colons in folder names, for Windows), and the class name
    of a user's model (nets.py:Net, package.module:Net, __main__:Net), whose spec holds a path."""
    if ":" in model and not model.startswith(("tv:", "torchvision:", "timm:")):
        return model.rpartition(":")[2]
    return model.replace(":", "-")


@contextlib.contextmanager
def lock_run(run_dir: Path):
    """Hold RUN/.lock while training into a run, so that a second process (two --resume, or two runs with one
    --out) gets an error instead of writing the same files. The lock ends with its process (files.locked_file), so
    none goes stale; what a killed process left half-written in the folder is removed once the lock is held."""

    def refuse(f) -> None:
        holder = str(os.getpid())  # another thread of this process
        if f is not None:
            f.seek(0)
            holder = f.read().strip() or "unknown"
        message = f"{printable(run_dir)} is in use by another imgcls process (pid {holder}): wait for it to end or choose another --out"
        raise ImgclsError(message)

    with contextlib.ExitStack() as stack:
        try:
            f = stack.enter_context(locked_file(Path(run_dir) / ".lock", block=False, on_wait=refuse))
        except OSError as e:
            raise ImgclsError(f"cannot write in {printable(run_dir)} ({e.strerror}): free some space there or make it writable") from None
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        remove_stale_temporaries(Path(run_dir))
        yield


def in_use(run_dir: Path) -> bool | None:
    """Whether a live process holds RUN/.lock (lock_run): it is training into the run. None when the lock cannot be
    tested (a folder this user may not write); False where no lock was ever taken. Testing takes the lock for an instant
    through locked_file, which also sees a holder in this very process without dropping its lock."""
    path = Path(run_dir) / ".lock"
    if not path.is_file():
        return False
    try:
        with locked_file(path, block=False):
            return False
    except BlockingIOError:
        return True
    except OSError:
        return None


def read_split(run_dir: Path) -> dict[str, list[str]] | None:
    """The file-level split a folder run saved (split.json), or None for named datasets."""
    path = Path(run_dir) / "split.json"
    return read_json(path) if path.exists() else None


def write_rows(path: Path, columns: list[str], rows: list[dict]) -> None:
    """Rows as a CSV file with these columns (others ignored), floats to 6 significant digits."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(path, buf.getvalue())


def write_metrics(path: Path, history: list[dict], extra: tuple[str, ...] = ()) -> None:
    """metrics.csv: the columns every run has, with a task's own (multi-label's val_map) before lr and seconds."""
    write_rows(path, [*METRIC_COLUMNS[:5], *extra, *METRIC_COLUMNS[5:]], history)


def read_metrics(path: Path) -> list[dict]:
    """metrics.csv back as rows of numbers ([] when the file is missing)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]
