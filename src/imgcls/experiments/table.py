"""The table of a folder's runs (`imgcls runs`, imgcls.runs): one row per run found a few levels down (runs/NAME,
and the trials of a study, runs/tune-STUDY/trial-N), sorted, and written as a text table, CSV, JSON or Markdown.

It reads the run folders' files only (config.json, summary.json, metrics.csv), so listing runs loads no torch."""

import csv
import io
import json
import re
from datetime import datetime
from pathlib import Path

from imgcls.errors import ImgclsError
from imgcls.files import printable, read_json
from imgcls.rundir import in_use, read_metrics

DEPTH = 2  # folder levels searched below DIR: runs/NAME, and a study's trials runs/tune-STUDY/trial-N
COLUMNS = ["name", "status", "dataset", "model", "recipe", "task", "epochs", "max_epochs", "test_acc", "best_val_acc", "test_map",
           "seconds", "params", "date", "path", "problem"]  # fmt: skip
TEXT = {"name", "status", "dataset", "model", "recipe", "task"}  # sorted A to Z; numbers and dates largest first
SORT_KEYS = [c for c in COLUMNS if c not in ("path", "problem")]
FORMATS = ["table", "csv", "json", "markdown"]
# The text table's columns and headings; test_map only where a multi-label run has one.
SHOWN = {"name": "name", "status": "status", "dataset": "dataset", "model": "model", "recipe": "recipe", "epochs": "epochs",
         "test_acc": "test acc %", "best_val_acc": "best val acc %", "test_map": "test mAP", "seconds": "seconds",
         "params": "params", "date": "date"}  # fmt: skip
STATES = {True: "training", False: "interrupted", None: "unfinished"}  # an unfinished run by in_use(): who holds its lock


class Damaged(Exception):
    """A run file that cannot be read: the message says which and why."""


def find_runs(root: Path, depth: int = DEPTH) -> list[tuple[str, Path]]:
    """(name, folder) of each folder with a config.json at most `depth` levels below root (root itself included),
    named by its path under root; a run's own subfolders are not searched."""
    found = []

    def walk(folder: Path, level: int) -> None:
        if (folder / "config.json").is_file():
            found.append((folder.relative_to(root).as_posix() if folder != root else folder.resolve().name, folder))
            return
        if level < depth:
            try:
                children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:  # a folder this user may not read: not a run of theirs
                return
            for child in children:
                walk(child, level + 1)

    walk(root, 0)
    return found


def _json(path: Path) -> dict:
    try:
        value = read_json(path)
    except (OSError, ValueError) as e:  # ValueError: not JSON, or bytes that are not UTF-8
        raise Damaged(f"{path.name} cannot be read ({getattr(e, 'strerror', None) or e})") from None
    if not isinstance(value, dict):
        raise Damaged(f"{path.name} holds no object, but {type(value).__name__}")
    return value


def _history(path: Path) -> list[dict]:
    try:
        return read_metrics(path)
    except (OSError, ValueError, TypeError, csv.Error) as e:  # TypeError: a short row's missing fields
        raise Damaged(f"{path.name} cannot be read ({getattr(e, 'strerror', None) or e})") from None


def is_run_config(config: dict) -> bool:
    """config.json of a classification run (`imgcls train`), not of a GAN's or an autoencoder's."""
    return {"data", "model", "recipe", "epochs"} <= config.keys()


def _date(run_dir: Path) -> str | None:
    """When the run last wrote its results: the summary, else its last epoch, else its start."""
    for name in ("summary.json", "metrics.csv", "config.json"):
        try:
            return datetime.fromtimestamp((run_dir / name).stat().st_mtime).strftime("%Y-%m-%d %H:%M")
        except OSError:
            continue
    return None


def _percent(fraction) -> float | None:
    return None if fraction is None else round(100 * fraction, 2)  # as the run printed it, 2 decimals


def read_files(run_dir: Path) -> tuple[dict, dict | None, list[dict]]:
    """A run folder's config.json, summary.json (None until it has finished) and metrics.csv rows; Damaged says which
    cannot be read."""
    config = _json(run_dir / "config.json")
    summary = _json(run_dir / "summary.json") if (run_dir / "summary.json").exists() else None
    return config, summary, _history(run_dir / "metrics.csv")


def read_row(run_dir: Path, name: str) -> dict | None:
    """The row of a run folder; None for a folder that is not a classification run. A file that cannot be read makes
    the row "damaged", with the reason in "problem"."""
    try:
        config, summary, history = read_files(run_dir)
    except Damaged as e:  # a summary that cannot be read is written anew by resuming the finished run, which tests it again
        fix = f": `imgcls train --resume {run_dir}` tests the run again and writes it anew" if "summary.json" in str(e) else ""
        return dict.fromkeys(COLUMNS) | {"name": name, "path": str(run_dir), "status": "damaged", "problem": f"{e}{fix}",
                                         "date": _date(run_dir)}  # fmt: skip
    return row_of(run_dir, name, config, summary, history) if is_run_config(config) else None


def row_of(run_dir: Path, name: str, config: dict, summary: dict | None, history: list[dict]) -> dict:
    """The row of a run from its files (read_files)."""
    # The data's short name as the summary and run folders give it: a named dataset's, a folder's own name ("python:" is
    # data.registry.PYTHON, whose import would load torch).
    data = str(config["data"]).removeprefix("python:")
    row = dict.fromkeys(COLUMNS) | {"name": name, "path": str(run_dir), "dataset": Path(data).name or data, "model": config["model"],
                                    "recipe": config["recipe"], "max_epochs": config["epochs"], "date": _date(run_dir)}  # fmt: skip
    if summary is not None:
        return row | {
            "status": "finished", "dataset": summary.get("dataset", row["dataset"]), "task": summary.get("task"),
            "epochs": summary.get("epochs_run"), "test_acc": _percent(summary.get("test_accuracy")),
            "best_val_acc": _percent(summary.get("best_val_accuracy")),
            "test_map": None if summary.get("mean_average_precision") is None else round(summary["mean_average_precision"], 4),
            "seconds": summary.get("train_seconds"), "params": summary.get("num_params"),
        }  # fmt: skip
    return row | {  # unfinished: what its metrics.csv holds so far
        "status": STATES[in_use(run_dir)], "task": "multi-label" if history and "val_map" in history[0] else None,
        "epochs": history[-1]["epoch"] if history else 0, "best_val_acc": _percent(max(r["val_acc"] for r in history)) if history else None,
        "seconds": round(sum(r["seconds"] for r in history), 3),
    }  # fmt: skip


def _natural(text: str) -> list:
    """run-2 before run-10."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", text) if part]


def sort_rows(rows: list[dict], key: str = "name", reverse: bool = False) -> list[dict]:
    """Rows by `key`: names and other text A to Z (run-2 before run-10), numbers and dates largest and newest first;
    `reverse` turns that round. Rows without the value (an unfinished run's test accuracy) come last either way."""
    if key not in SORT_KEYS:
        raise ImgclsError(f"cannot sort by '{key}': choose one of {', '.join(SORT_KEYS)}")
    have = [r for r in rows if r[key] is not None]
    lacking = [r for r in rows if r[key] is None]
    ascending = key in TEXT
    ordered = sorted(have, key=lambda r: _natural(r[key]) if ascending else r[key], reverse=not ascending)
    return (ordered[::-1] if reverse else ordered) + lacking


def collect(root: str | Path = "runs", sort: str = "name", reverse: bool = False) -> list[dict]:
    """The rows of the runs under `root`, sorted (sort_rows)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise ImgclsError(f"{printable(root)} {what}: name the folder that holds your runs (`imgcls train` writes them into runs/)")
    rows = [row for name, path in find_runs(root) if (row := read_row(path, name)) is not None]
    return sort_rows(sort_rows(rows), sort, reverse)  # by name first: the order of equals, and of those without the value


def runs(dir: str | Path = "runs", sort: str = "name", reverse: bool = False):
    """The runs under `dir` and up to two folder levels below it (so a study's trials are found too), one row each:
    name, status (finished, training, interrupted, unfinished, or damaged with the reason in "problem"), dataset, model,
    recipe, task, epochs (run so far) and max_epochs, test_acc and best_val_acc (in %, as the run printed them;
    multi-label: exact match), test_map (multi-label), seconds (training), params, date (of its last result) and path.
    A pandas DataFrame where pandas is installed, else a list of dicts. `sort`: a column, names A to Z and numbers
    largest first (`reverse` turns it round)."""
    rows = collect(dir, sort, reverse)
    try:
        import pandas
    except ImportError:
        return rows
    return pandas.DataFrame(rows, columns=COLUMNS)


def shown_columns(rows: list[dict]) -> list[str]:
    """The text table's columns (SHOWN): test mAP only where a multi-label run has one."""
    return [k for k in SHOWN if k != "test_map" or any(r["test_map"] is not None for r in rows)]


def shown(row: dict, key: str) -> str:
    """A row's value as the text table shows it."""
    value = row[key]
    if key == "epochs":  # epochs run, and of how many where that is fewer (an unfinished run, an early stop)
        planned = row["max_epochs"]
        return "-" if value is None else f"{value}/{planned}" if planned is not None and value != planned else str(value)
    if value is None:
        return "-"
    if key in ("test_acc", "best_val_acc"):
        return f"{value:.2f}"
    if key == "test_map":
        return f"{value:.4f}"
    if key == "seconds":
        return f"{value:.1f}"
    if key == "params":
        return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.0f}K" if value >= 1e3 else str(value)
    return printable(str(value))


def _shown(rows: list[dict]) -> tuple[list[str], list[list[str]], list[str]]:
    """The text table's headings, its cells, and one line per damaged run."""
    columns = shown_columns(rows)
    cells = [[shown(r, k) for k in columns] for r in rows if r["status"] != "damaged"]
    damaged = [f"{printable(r['name'])}: damaged: {printable(r['problem'])}" for r in rows if r["status"] == "damaged"]
    return [SHOWN[k] for k in columns], cells, damaged


def aligned(header: list[str], cells: list[list[str]], left: int = 1) -> str:
    """A text table: the first `left` columns aligned left (names), the others right (figures)."""
    widths = [max(len(v) for v in column) for column in zip(header, *cells)]
    return "\n".join(
        "  ".join(v.ljust(w) if i < left else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths))).rstrip()
        for line in [header, *cells]
    )


def format_rows(rows: list[dict], fmt: str = "table") -> str:
    """The rows as a text table (damaged runs as a line each below it), CSV or JSON (every column, values as in the
    rows), or a Markdown table (as the text table)."""
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().rstrip("\n")
    header, cells, damaged = _shown(rows)
    if fmt == "markdown":  # a blank line ends the table, so that the damaged runs' lines are not read as rows of it
        lines = [header, ["---"] * len(header), *cells]
        table = "\n".join("| " + " | ".join(v.replace("|", "\\|") for v in line) + " |" for line in lines)
        return "\n\n".join([table, *(["\n".join(damaged)] if damaged else [])])
    return "\n".join(part for part in ((aligned(header, cells, left=5) if cells else ""), *damaged) if part)


def setting(value) -> str:
    """A config value as text: JSON for lists and dicts, '-' where a run lacks the key or leaves it unset (null)."""
    if value is None:
        return "-"
    return printable(json.dumps(value) if isinstance(value, (list, dict)) else f"{value:g}" if isinstance(value, float) else str(value))
