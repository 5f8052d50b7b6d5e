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
        path = base / f"{dataset}-{model.replace(':', '-')}-{n}"  # tv:resnet18: no colons in folder names (Windows)
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


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


def write_metrics(path: Path, history: list[dict]) -> None:
    write_rows(path, METRIC_COLUMNS, history)


def read_metrics(path: Path) -> list[dict]:
    """metrics.csv back as rows of numbers ([] when the file is missing)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]


class Run:
    """A run folder as an object (what imgcls.train returns; `Run.open(path)` for an existing one): its files read
    when asked for, so it shows the run as it is on disk."""

    def __init__(self, path: str | os.PathLike, interrupted=None, summary: dict | None = None):
        self.dir = Path(path)
        self.interrupted = interrupted  # imgcls.interrupt.Interrupted when it stopped early (Ctrl-C, a callback): resumable
        self._summary = summary  # what training returned: the summary of a process that writes no files (a torchrun rank)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Run":
        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise ImgclsError(f"{path} is not a run folder (no config.json): pass a folder made by `imgcls train` or imgcls.train")
        return cls(path)

    @property
    def summary(self) -> dict:
        """summary.json: test accuracy and loss, best epoch, seconds, ...; {} until the run has finished."""
        path = self.dir / "summary.json"
        return read_json(path) if path.is_file() else dict(self._summary or {})

    @property
    def history(self) -> list[dict]:
        """One dict per epoch, as metrics.csv."""
        return read_metrics(self.dir / "metrics.csv")

    @property
    def config(self) -> dict:
        """config.json: every setting, the recipe's defaults filled in."""
        return read_json(self.dir / "config.json")

    @property
    def finished(self) -> bool:
        return (self.dir / "summary.json").is_file()

    def predictor(self, device: str | None = None):
        """The run's best model, ready to predict (imgcls.load)."""
        from imgcls.inference import Predictor

        return Predictor.open(self.dir, device=device or "auto")

    def plot(self) -> dict:
        """Matplotlib figures of the run: "curves" (loss and accuracy per epoch) and, once it has finished,
        "confusion_matrix" (of the test set)."""
        from imgcls.report import plots

        figures = {"curves": plots.curves_figure(self.history)}
        confusion = self.dir / "confusion_matrix.csv"
        if confusion.is_file():
            classes, counts = read_confusion_csv(confusion)
            figures["confusion_matrix"] = plots.confusion_figure(counts, classes)
        return figures

    def __repr__(self) -> str:
        summary = self.summary
        state = (
            f"test accuracy {summary['test_accuracy']:.2%}"
            if summary
            else f"stopped ({self.interrupted.why})"
            if self.interrupted
            else "unfinished"
        )
        return f"Run('{self.dir}', {state})"

    def _repr_html_(self) -> str:
        """A notebook shows the run's headline figures and its curves."""
        from imgcls.report.html import escape, image_tag

        summary = self.summary
        facts = [("run", str(self.dir))]
        if summary:
            facts += [
                ("test accuracy", f"{summary['test_accuracy']:.2%}"), ("best val accuracy", f"{summary['best_val_accuracy']:.2%}"),
                ("best epoch", f"{summary['best_epoch']} of {summary['epochs_run']}"), ("training", f"{summary['train_seconds']:.1f} s"),
                ("model", f"{summary['model']}, {summary['num_params']:,} parameters"),
            ]  # fmt: skip
        else:
            facts.append(
                ("state", f"stopped ({self.interrupted.why}): imgcls.resume(run) continues it" if self.interrupted else "unfinished")
            )
        rows = "".join(f"<tr><th style='text-align:left'>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in facts)
        curves = self.dir / "curves.png"
        return f"<table>{rows}</table>" + (image_tag(curves, "training curves") if curves.is_file() else "")


def read_confusion_csv(path: Path):
    """confusion_matrix.csv back: the class names and the K x K counts (rows true, columns predicted)."""
    import torch

    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    classes = rows[0][1:]
    return classes, torch.tensor([[int(v) for v in row[1:]] for row in rows[1:]])
