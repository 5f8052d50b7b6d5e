"""The page of an `imgcls tune` study (tune.html in its folder): the trials, the optimisation history, and which
parameters mattered (Optuna's importances). Every worker redraws it after each of its trials."""

import logging
import os
import warnings
from pathlib import Path

from matplotlib.figure import Figure

from imgcls.experiments.space import describe
from imgcls.files import write_text
from imgcls.report import plots
from imgcls.report.html import escape, image_tag, page, table

LOG = logging.getLogger(__name__)


def trial_rows(study) -> list[dict]:
    """One dict per trial: number, state, value, each parameter, then the run's figures and folder."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        rows.append({
            "number": t.number, "state": t.state.name, "value": t.value, **t.params,
            "test_accuracy": attrs.get("test_accuracy"), "epochs_run": attrs.get("epochs_run"),
            "train_seconds": attrs.get("train_seconds"), "run": attrs.get("run"), "host": attrs.get("host"),
            "recipe_defaults": bool(attrs.get("recipe_defaults")),
        })  # fmt: skip
    return rows


def history_figure(study, objective: str) -> Figure:
    """Each finished trial's value (pruned ones at the best figure they reached) and the best so far."""
    fig = Figure(figsize=(7, 3.6))
    ax = fig.add_subplot()
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    pruned = [t for t in study.get_trials(deepcopy=False) if t.state.name == "PRUNED" and t.intermediate_values]
    ax.scatter([t.number for t in done], [t.value for t in done], color="#1565c0", label="complete", zorder=3)
    ax.scatter([t.number for t in pruned], [max(t.intermediate_values.values()) for t in pruned], color="#9e9e9e", marker="x",
               label="pruned (best epoch so far)", zorder=3)  # fmt: skip
    best, xs, ys = -float("inf"), [], []
    for t in sorted(done, key=lambda t: t.number):
        best = max(best, t.value)
        xs.append(t.number)
        ys.append(best)
    ax.step(xs, ys, where="post", color="#c62828", label="best so far")
    ax.set(xlabel="trial", ylabel=objective.replace("_", " "), title="optimisation history")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


def importance_figure(importances: dict) -> Figure:
    fig = Figure(figsize=(7, 1.6 + 0.4 * len(importances)))
    ax = fig.add_subplot()
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="#1565c0")
    ax.set(xlabel="importance (Optuna's PED-ANOVA: what sets the best trials apart)", title="parameter importances")
    fig.tight_layout()
    return fig


def _importances(study) -> tuple[dict | None, str]:
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return None, "parameter importances need two complete trials"
    try:
        with warnings.catch_warnings():  # with few trials: "importances will be equal", which the figure shows
            warnings.simplefilter("ignore", UserWarning)
            return optuna.importance.get_param_importances(study), ""
    except (ValueError, RuntimeError) as e:  # e.g. a parameter that never varied
        return None, f"no parameter importances: {e}"


def write_tune_report(study, rows: list[dict], out: Path, space: dict, objective: str) -> Path:
    """tune.html from the study and its trial_rows."""
    names = list(space)
    header = ["trial", "state", objective.replace("_", " "), *names, "test accuracy", "epochs", "seconds", "run"]

    def cell(value, digits=4):
        return "" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else value

    body = [
        [f"{r['number']} (recipe)" if r["recipe_defaults"] else r["number"], r["state"].lower(), cell(r["value"]), *(cell(r.get(n)) for n in names), cell(r["test_accuracy"]),
         cell(r["epochs_run"]), cell(r["train_seconds"], 3), _relative(r["run"], out)]
        for r in rows
    ]  # fmt: skip
    counts = {state: sum(r["state"] == state for r in rows) for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    facts = ", ".join(f"{n} {state.lower()}" for state, n in counts.items() if n)
    html = [f"<p>study <b>{escape(study.study_name)}</b>: {len(rows)} trials ({escape(facts)}); searched "
            f"<code>{escape(describe(space))}</code>; {escape(objective.replace('_', ' '))} maximised.</p>"]  # fmt: skip
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    if complete:
        best = study.best_trial
        params = ", ".join(f"{k} {cell(v)}" for k, v in best.params.items())
        html.append(f"<p>best: trial {best.number}, {escape(objective.replace('_', ' '))} {best.value:.4f} ({escape(params)}).</p>")
        plots.save(history_figure(study, objective), out / "tune_history.png")
        html.append("<h2>Optimisation history</h2>" + image_tag(out / "tune_history.png", "optimisation history"))
    importances, why_not = _importances(study)
    if importances:
        plots.save(importance_figure(importances), out / "tune_importances.png")
        html.append("<h2>Parameter importances</h2>" + image_tag(out / "tune_importances.png", "parameter importances"))
    elif complete:
        html.append(f"<p>{escape(why_not)}</p>")
    html.append("<h2>Trials</h2>" + table(header, body, numeric={0, *range(2, 2 + len(names) + 4)}))
    path = out / "tune.html"
    write_text(path, page(f"imgcls tune: {study.study_name}", "\n".join(html)))
    return path


def _relative(run: str | None, out: Path) -> str:
    if not run:
        return ""
    try:
        return os.path.relpath(run, out.resolve())
    except ValueError:  # another drive (Windows)
        return run
