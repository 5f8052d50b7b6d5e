"""The page of `imgcls compare`: several runs' validation curves overlaid, their per-class test figures side by side,
the settings that differ and their summaries, in one self-contained HTML file (the figures embedded as data URLs).

A run keeps its colour (matplotlib's C0, C1, ...) in every figure."""

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from imgcls.experiments.table import SHOWN, setting, shown, shown_columns
from imgcls.files import write_text
from imgcls.report import plots
from imgcls.report.html import escape, page, png_tag, table

BARS_UP_TO = 40  # classes drawn as grouped bars; past that the bars are unreadable and the table alone shows them
CURVES = [("val_acc", "Validation accuracy"), ("val_loss", "Validation loss"), ("val_map", "Validation mAP")]


def _legend(fig: Figure, ax) -> None:
    """One legend of the runs below the figure's panels, clear of the lines and bars."""
    handles, labels = ax.get_legend_handles_labels()
    legend = fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=9)
    for text in legend.get_texts():
        text.update(plots.LITERAL)  # run names drawn as written, never as math text


def curves_figure(runs: list) -> Figure:
    """Validation accuracy and loss per epoch, a line per run (and validation mAP where a multi-label run has it)."""
    panels = CURVES[:2] + [panel for panel in CURVES[2:] if any(panel[0] in row for r in runs for row in r.history)]
    fig = Figure(figsize=(5.2 * len(panels), 4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (key, title) in zip(axes, panels):
        for i, run in enumerate(runs):
            rows = [row for row in run.history if key in row]
            ax.plot([row["epoch"] for row in rows], [row[key] for row in rows], marker="o", markersize=3, color=f"C{i}",
                    label=plots.short(run.name, 40))  # fmt: skip
        ax.set(title=title, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if key == "val_acc":
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    _legend(fig, axes[0])
    return fig


def per_class_figure(runs: list, classes: list[str]) -> Figure:
    """Each class's test accuracy (a multi-label run's average precision) as horizontal bars, one per run."""
    tested = [(i, run) for i, run in enumerate(runs) if run.per_class]  # an unfinished run has no bars, and keeps its colour
    k, n = len(classes), len(tested)
    height = 0.8 / n
    fig = Figure(figsize=(7, max(2.5, k * (0.1 * n + 0.12) + 1.3)), layout="constrained")
    ax = fig.subplots()
    rows = np.arange(k)
    for j, (i, run) in enumerate(tested):
        values = [run.per_class.get(c) or 0.0 for c in classes]  # a class it lacks or never saw: no bar
        ax.barh(rows + (j - (n - 1) / 2) * height, values, height=height, color=f"C{i}", label=plots.short(run.name, 40))
    ax.set_yticks(rows, [plots.short(c, 24) for c in classes], fontsize=10 if k <= 20 else 8, **plots.LITERAL)
    ax.set_ylim(k - 0.5, -0.5)  # first class on top, as in the table
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(axis="x", alpha=0.3)
    ax.set(title=f"Per-class {_measure(runs)} (test set)")
    _legend(fig, ax)
    return fig


def _measure(runs: list) -> str:
    measures = {r.measure for r in runs if r.per_class}
    return "accuracy" if measures <= {"accuracy"} else "average precision" if measures == {"AP"} else "accuracy (AP for multi-label runs)"


def _per_class_cell(run, name: str) -> str:
    if name not in run.per_class:
        return "-"  # not one of its classes, or it has not been tested
    value = run.per_class[name]
    return "no images" if value is None else f"{value:.2%}" if run.measure == "accuracy" else f"{value:.4f}"


def _summary_cell(key: str, value) -> str:
    if isinstance(value, float) and "accuracy" in key:
        return f"{value:.2%}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "-" if value is None else str(value)


def render(comparison) -> str:
    runs, names = comparison.runs, comparison.names
    columns = shown_columns(comparison.rows)
    folders = any(str(r.dir) != r.name for r in runs)  # the folders as given, where the names do not say them already
    headline = table([SHOWN[k] for k in columns] + ["folder"] * folders, [[shown(r.row, k) for k in columns] + [r.dir] * folders for r in runs],
                     numeric=set(range(5, len(columns))))  # fmt: skip
    if comparison.differing:
        rows = [[key, *map(setting, values)] for key, values in comparison.differing.items()]
        settings = table(["setting", *names], rows)
    else:
        settings = "<p>None: the runs were trained with the same settings.</p>"
    classes = comparison.classes
    if classes:
        bars = (
            f"<div>{png_tag(plots.png(per_class_figure(runs, classes)), 'per-class test figures')}</div>"
            if len(classes) <= BARS_UP_TO
            else ""
        )
        cells = [[name, *(_per_class_cell(r, name) for r in runs)] for name in classes]
        per_class = f'<div class="columns">{bars}<div>{table(["class", *names], cells, numeric=set(range(1, len(runs) + 1)))}</div></div>'
    else:
        per_class = "<p>No run has been tested yet.</p>"
    summaries = [[key, *(_summary_cell(key, (r.summary or {}).get(key)) for r in runs)] for key in comparison.summary_keys]
    return page(
        f"imgcls compare: {' vs '.join(names)}",
        f"""<p>{len(runs)} runs. Test figures are each run's best checkpoint on its own test set; "-" marks what a run
does not have (an unfinished run has no test figures).</p>
<h2>Runs</h2>
<div style="overflow-x: auto; white-space: nowrap">{headline}</div>
<h2>Validation curves</h2>
<p>{png_tag(plots.png(curves_figure(runs)), "validation accuracy and loss per epoch")}</p>
<h2>Settings that differ</h2>
{settings}
<h2>Per-class {escape(_measure(runs))}</h2>
{per_class}
<h2>Summaries</h2>
{table(["", *names], summaries, numeric=set(range(1, len(runs) + 1))) if summaries else "<p>No run has finished yet.</p>"}
""",
    )


def write_page(comparison, out: Path) -> Path:
    write_text(out, render(comparison))
    return out
