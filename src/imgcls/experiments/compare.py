"""What `imgcls compare` (imgcls.compare) puts side by side: several runs' headline figures, the settings in which their
config.json differ, their summaries, their per-class test figures over the union of their classes, and their epochs
(the page itself is drawn by imgcls.experiments.compare_page)."""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from imgcls.errors import ImgclsError
from imgcls.experiments.table import SHOWN, Damaged, aligned, is_run_config, read_files, row_of, setting, shown, shown_columns
from imgcls.files import printable

DEFAULT_PAGE = "compare.html"  # in the current folder


@dataclass
class Compared:
    """One run of a comparison: its files as read, and its row of the runs table (imgcls.experiments.table)."""

    name: str  # its folder's name, with as many parent folders as tell it from the others
    dir: Path
    config: dict
    summary: dict | None  # None until it has finished
    history: list[dict]  # metrics.csv
    row: dict

    @property
    def per_class(self) -> dict[str, float | None]:
        """Each class's test accuracy (None: no test images of it); a multi-label run's average precision per label."""
        summary = self.summary or {}
        if "per_label" in summary:
            return {label: figures.get("ap") for label, figures in summary["per_label"].items()}
        return summary.get("per_class_accuracy") or {}

    @property
    def measure(self) -> str:
        return "AP" if "per_label" in (self.summary or {}) else "accuracy"


@dataclass
class Comparison:
    """What imgcls.compare returns: the runs, the config keys whose values differ (key -> each run's value, None where
    a run lacks the key), and the page written."""

    runs: list[Compared]
    differing: dict[str, list] = field(default_factory=dict)
    page: Path | None = None

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.runs]

    @property
    def rows(self) -> list[dict]:
        """The runs' rows of the runs table: status, test and best val accuracy (%), epochs, seconds, params, ..."""
        return [r.row for r in self.runs]

    @property
    def classes(self) -> list[str]:
        """The union of the runs' classes, in the order the runs name them."""
        return list(dict.fromkeys(c for r in self.runs for c in r.per_class))

    @property
    def summary_keys(self) -> list[str]:
        """The summaries' keys with a single value (not the per-class lists), in the order the runs give them."""
        return list(dict.fromkeys(k for r in self.runs for k, v in (r.summary or {}).items() if not isinstance(v, (list, dict))))

    def table(self) -> str:
        """The headline figures and the settings that differ, a column per run, as text."""
        rows = self.rows
        cells = [[SHOWN[k], *(shown(row, k) for row in rows)] for k in shown_columns(rows) if k != "name"]
        if self.differing:
            cells += [["settings that differ:", *[""] * len(rows)]]
            cells += [[key, *map(setting, values)] for key, values in self.differing.items()]
        else:
            cells += [["settings: all the same", *[""] * len(rows)]]
        return aligned(["run", *map(printable, self.names)], cells, left=len(rows) + 1)


def unique_names(folders: list[Path]) -> list[str]:
    """Each folder's name, with parent folders added to those that share one until none do (a/trial-1, b/trial-1)."""
    parts = [folder.resolve().parts for folder in folders]  # distinct folders: their whole paths differ
    depths = [1] * len(parts)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depths)]
        shared = {name for name in names if names.count(name) > 1}
        if not shared:
            return names
        depths = [d + (name in shared) for d, name in zip(depths, names)]


def _open(run) -> tuple[Path, dict, dict | None, list[dict]]:
    """A run folder (a path, or an imgcls.Run) and its files; ImgclsError for what is not a classification run."""
    folder = Path(run.dir if hasattr(run, "dir") else run).expanduser()
    if not (folder / "config.json").is_file():
        raise ImgclsError(f"{printable(folder)} is not a run folder (no config.json): pass folders made by `imgcls train` "
                          "(`imgcls runs` lists them)")  # fmt: skip
    try:
        config, summary, history = read_files(folder)
    except Damaged as e:
        raise ImgclsError(f"{printable(folder)} is damaged: {e}: leave it out of the comparison") from None
    if not is_run_config(config):
        raise ImgclsError(f"{printable(folder)} is not a run of `imgcls train` (its config.json has no model or recipe): compare "
                          "classification runs")  # fmt: skip
    return folder, config, summary, history


def gather(runs) -> Comparison:
    """The comparison of `runs` (run folders or imgcls.Run objects, two or more), without its page."""
    runs = [runs] if isinstance(runs, (str, os.PathLike)) or hasattr(runs, "dir") else list(runs)
    if len(runs) < 2:
        raise ImgclsError(f"compare needs two runs or more, got {len(runs)}: name their folders (`imgcls runs` lists them)")
    opened = [_open(run) for run in runs]
    seen = {}
    for folder, *_ in opened:
        if seen.setdefault(folder.resolve(), folder) is not folder:
            raise ImgclsError(f"{printable(folder)} is given twice: name each run once")
    names = unique_names([folder for folder, *_ in opened])
    compared = [Compared(name, folder, config, summary, history, row_of(folder, name, config, summary, history))
                for name, (folder, config, summary, history) in zip(names, opened)]  # fmt: skip
    keys = dict.fromkeys(k for r in compared for k in r.config)
    values = {k: [r.config.get(k) for r in compared] for k in keys}
    differing = {k: v for k, v in values.items() if len({json.dumps(x, sort_keys=True) for x in v}) > 1}
    return Comparison(compared, differing)


def compare(runs, out: str | os.PathLike | None = None) -> Comparison:
    """Compare runs (run folders or imgcls.Run objects, two or more) on one self-contained HTML page, written to `out`
    (compare.html in the current folder): their validation accuracy and loss curves overlaid, the config keys whose
    values differ, their summaries side by side and their per-class test accuracy (a multi-label run's per-label
    average precision) over the union of their classes. Returns the Comparison: `page`, `differing`, `rows` (the runs
    table's), `runs` (each run's config, summary and history) and `table()`, the text `imgcls compare` prints."""
    from imgcls.experiments.compare_page import write_page

    found = gather(runs)
    found.page = write_page(found, Path(out if out is not None else DEFAULT_PAGE).expanduser())
    return found
