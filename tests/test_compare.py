"""`imgcls runs` and `imgcls compare` (imgcls.runs, imgcls.compare): the table of a folder's runs, finished, training,
interrupted and damaged, in every format and order, and the page comparing runs, on two real runs and, where a test is
about reading them, run files written as a run writes them."""

import base64
import csv
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import api_train, one_line_error, run_cli, tiny_dataset
from imgcls.files import write_json
from imgcls.rundir import read_metrics, write_metrics


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """Two real runs on the same data that differ in lr and epochs; tests that change the folder copy it first."""
    root = tmp_path_factory.mktemp("runs")
    tiny = tiny_dataset()
    data = {split: (getattr(tiny, split).images, getattr(tiny, split).labels) for split in ("train", "val", "test")}
    api_train(data, "mlp", epochs=2, lr=0.02, out=root / "tiny-mlp-1")
    api_train(data, "mlp", epochs=3, lr=0.1, out=root / "tiny-mlp-2")
    return root


def summary(run) -> dict:
    return json.loads((run / "summary.json").read_text())


def unfinished_copy(run, to):
    """A run stopped after its first epoch, as its folder then is: config, metrics and last.pt, no summary yet."""
    to.mkdir(parents=True)
    for name in ("config.json", "last.pt", ".lock"):
        shutil.copy(run / name, to / name)
    write_metrics(to / "metrics.csv", read_metrics(run / "metrics.csv")[:1])
    return to


@pytest.fixture
def mixed(runs_dir, tmp_path):
    """The two runs, a study's trial two levels down, an interrupted run, a damaged one, and folders that hold no run."""
    root = shutil.copytree(runs_dir, tmp_path / "runs")
    shutil.copytree(root / "tiny-mlp-2", root / "tune-x" / "trial-10")
    unfinished_copy(root / "tiny-mlp-2", root / "stopped")
    shutil.copytree(root / "tiny-mlp-1", root / "broken")
    (root / "broken" / "summary.json").write_text('{"test_accuracy": 0.9')  # cut short
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("try a bigger lr")
    write_json(root / "gan" / "config.json", {"data": "mnist-sample", "epochs": 5, "z_dim": 128})  # another command's run
    return root


def test_runs_lists_each_run_once_with_its_figures_and_status(mixed, capsys):
    code, out, err = run_cli(capsys, "runs", mixed)
    assert code == 0 and not err
    lines = out.splitlines()
    names = [line.split()[0] for line in lines[1:]]
    assert names == ["stopped", "tiny-mlp-1", "tiny-mlp-2", "tune-x/trial-10", "broken:"]  # the damaged one last, on its own line
    assert lines[0].split()[:3] == ["name", "status", "dataset"] and "test acc %" in lines[0] and "date" in lines[0]
    finished = summary(mixed / "tiny-mlp-2")
    row = lines[names.index("tiny-mlp-2") + 1].split()
    assert row[1:6] == ["finished", "tensors", "mlp", "fast", "3"]
    assert f"{finished['test_accuracy']:.2%}".rstrip("%") in row and f"{finished['best_val_accuracy']:.2%}".rstrip("%") in row
    assert lines[names.index("stopped") + 1].split()[1:6] == ["interrupted", "tensors", "mlp", "fast", "1/3"]
    assert lines[-1].startswith("broken: damaged: summary.json cannot be read") and f"--resume {mixed / 'broken'}" in lines[-1]


def test_runs_sorts_by_a_column_and_writes_csv_json_and_markdown(mixed, capsys):
    accuracies = {run: round(100 * summary(mixed / run)["test_accuracy"], 2) for run in ("tiny-mlp-1", "tiny-mlp-2")}
    code, out, _ = run_cli(capsys, "runs", mixed, "--format", "csv", "--sort", "test_acc")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["name"] for r in rows][-2:] == ["broken", "stopped"]  # runs without a test accuracy come last
    tested = [r for r in rows if r["test_acc"]]
    assert [float(r["test_acc"]) for r in tested] == sorted((float(r["test_acc"]) for r in tested), reverse=True)
    assert {r["name"]: float(r["test_acc"]) for r in tested if r["name"] in accuracies} == accuracies
    assert {r["name"]: r["status"] for r in rows}["broken"] == "damaged"

    _, out, _ = run_cli(capsys, "runs", mixed, "--format", "json", "--sort", "name", "--reverse")
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["tune-x/trial-10", "tiny-mlp-2", "tiny-mlp-1", "stopped", "broken"]
    assert rows[1]["params"] == summary(mixed / "tiny-mlp-2")["num_params"] and rows[1]["epochs"] == 3 and rows[1]["max_epochs"] == 3
    assert rows[1]["seconds"] == summary(mixed / "tiny-mlp-2")["train_seconds"] and re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d", rows[1]["date"]
    )

    _, out, _ = run_cli(capsys, "runs", mixed, "--format", "markdown")
    table, damaged = out.strip().split("\n\n")
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()]
    assert cells[0][:2] == ["name", "status"] and set(cells[1]) == {"---"} and len({len(r) for r in cells}) == 1
    assert [r[0] for r in cells[2:]] == ["stopped", "tiny-mlp-1", "tiny-mlp-2", "tune-x/trial-10"] and damaged.startswith("broken: damaged")


def test_an_unfinished_run_is_training_while_a_process_holds_it(runs_dir, tmp_path, capsys):
    run = unfinished_copy(runs_dir / "tiny-mlp-2", tmp_path / "runs" / "live")
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import sys\nfrom imgcls.rundir import lock_run\nwith lock_run({str(run)!r}):\n print('held', flush=True)\n sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        _, out, _ = run_cli(capsys, "runs", tmp_path / "runs", "--format", "json")
        assert json.loads(out)[0]["status"] == "training"
    finally:
        holder.communicate("", timeout=30)
    _, out, _ = run_cli(capsys, "runs", tmp_path / "runs", "--format", "json")
    assert json.loads(out)[0]["status"] == "interrupted"  # its process is gone: `imgcls train --resume` continues it


def test_the_api_gives_a_dataframe_or_without_pandas_the_rows(runs_dir, monkeypatch):
    import imgcls

    frame = imgcls.runs(runs_dir, sort="best_val_acc")
    assert list(frame["best_val_acc"]) == sorted(frame["best_val_acc"], reverse=True)
    assert set(frame["status"]) == {"finished"} and "test_acc" in frame.columns
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if not installed
    rows = imgcls.runs(runs_dir)
    assert isinstance(rows, list) and [r["name"] for r in rows] == ["tiny-mlp-1", "tiny-mlp-2"] and rows[0]["model"] == "mlp"


def test_runs_of_a_missing_folder_is_one_line_and_an_empty_one_says_so(capsys, tmp_path):
    assert "nowhere does not exist: name the folder that holds your runs" in one_line_error(capsys, "runs", "nowhere")
    (tmp_path / "empty").mkdir()
    assert run_cli(capsys, "runs", "empty")[1] == "no runs in empty\n"


def colours(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3).astype(int)


def drawn(pixels: np.ndarray, colour: str) -> int:
    """Pixels of about this colour (a run's line or bars)."""
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels - rgb).sum(1) < 30).sum())


def test_compare_writes_one_page_and_prints_the_settings_that_differ(runs_dir, capsys):
    code, out, err = run_cli(capsys, "compare", runs_dir / "tiny-mlp-1", runs_dir / "tiny-mlp-2", "--out", "pages/two.html")
    assert code == 0 and not err
    lines = out.splitlines()
    assert lines[0].split() == ["run", "tiny-mlp-1", "tiny-mlp-2"] and lines[-1] == "saved pages/two.html"
    differing = lines[lines.index("settings that differ:") + 1 : -2]
    assert sorted(line.split() for line in differing) == [["epochs", "2", "3"], ["lr", "0.02", "0.1"]]  # those only
    first, second = summary(runs_dir / "tiny-mlp-1"), summary(runs_dir / "tiny-mlp-2")
    assert f"{first['test_accuracy']:.2%}".rstrip("%") in out and f"{second['test_accuracy']:.2%}".rstrip("%") in out

    page = Path("pages/two.html").read_text()
    images = [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]
    assert len(images) == 2 and "<link" not in page and 'src="http' not in page  # self-contained: curves and per-class bars
    curves = colours(images[0])
    assert drawn(curves, "#1f77b4") > 100 and drawn(curves, "#ff7f0e") > 100  # both runs' lines (matplotlib's C0 and C1)
    assert "<td>lr</td><td>0.02</td><td>0.1</td>" in page and "<td>batch_size</td>" not in page
    assert first["classes"] == second["classes"] == ["0", "1", "2"]
    for name in first["classes"]:
        row = re.search(rf"<tr><td>{name}</td><td class=num>([^<]+)</td><td class=num>([^<]+)</td></tr>", page)
        assert row and row.groups() == tuple(f"{s['per_class_accuracy'][name]:.2%}" for s in (first, second))


def test_compare_takes_runs_with_other_classes_and_labels_and_unfinished_runs(runs_dir, tmp_path):
    import imgcls

    # A multi-label run's files as its trainer writes them: mAP and per-label AP in the summary, val_map in metrics.csv.
    labels = shutil.copytree(runs_dir / "tiny-mlp-1", tmp_path / "labels")
    history = [
        {"epoch": 1, "train_loss": 0.5, "train_acc": 0.4, "val_loss": 0.4, "val_acc": 0.5, "val_map": 0.7, "lr": 0.01, "seconds": 1.0}
    ]
    write_metrics(labels / "metrics.csv", history, ("val_map",))
    per_label = {"1": {"ap": 0.8125, "precision": 0.75, "recall": 0.5}, "sky": {"ap": 0.5, "precision": None, "recall": 0.0}}
    shared = ("dataset", "model", "test_loss", "test_images", "best_val_accuracy", "best_epoch", "epochs_run", "stopped_early",
              "train_seconds", "images_per_second", "num_params", "device", "skipped_files", "frozen_stage")  # fmt: skip
    write_json(labels / "summary.json", {k: summary(labels)[k] for k in shared} | {
        "task": "multi-label", "classes": ["1", "sky"], "test_accuracy": 0.25, "mean_average_precision": 0.65625, "f1_micro": 0.5,
        "f1_macro": 0.4, "per_label": per_label, "thresholds": [0.5, 0.5], "best_val_map": 0.7,
    })  # fmt: skip
    stopped = unfinished_copy(runs_dir / "tiny-mlp-2", tmp_path / "a" / "tiny-mlp-2")  # same name as the finished one
    result = imgcls.compare([imgcls.Run.open(runs_dir / "tiny-mlp-2"), labels, stopped], out=tmp_path / "three.html")

    assert result.names == [f"{runs_dir.name}/tiny-mlp-2", "labels", "a/tiny-mlp-2"]  # a parent folder tells them apart
    assert [r["status"] for r in result.rows] == ["finished", "finished", "interrupted"] and result.rows[1]["test_map"] == 0.6562
    assert result.differing["epochs"] == [3, 2, 3] and "batch_size" not in result.differing
    page = result.page.read_text()
    assert result.page == tmp_path / "three.html" and page.count("data:image/png") == 2
    assert result.classes == ["0", "1", "2", "sky"]  # the union, in the order the runs name them
    assert re.search(r"<tr><td>sky</td><td class=num>-</td><td class=num>0.5000</td><td class=num>-</td></tr>", page)
    assert re.search(r"<tr><td>1</td><td class=num>[\d.]+%</td><td class=num>0.8125</td><td class=num>-</td></tr>", page)
    assert "<td>mean_average_precision</td>" in page and "accuracy (AP for multi-label runs)" in page
    assert "run " in result.table() and "test mAP" in result.table()


def test_compare_refuses_fewer_than_two_runs_and_what_is_not_one(runs_dir, tmp_path, capsys):
    one = runs_dir / "tiny-mlp-1"
    assert "compare needs two runs or more, got 1" in one_line_error(capsys, "compare", one)
    assert "nowhere is not a run folder (no config.json)" in one_line_error(capsys, "compare", one, "nowhere")
    assert "is given twice" in one_line_error(capsys, "compare", one, f"{runs_dir}/../{runs_dir.name}/tiny-mlp-1")
    broken = shutil.copytree(one, tmp_path / "broken")
    (broken / "config.json").write_bytes(b"\xff\xfe not json")
    assert "broken is damaged: config.json cannot be read" in one_line_error(capsys, "compare", one, broken)
    assert not (tmp_path / "compare.html").exists()


def test_compare_writes_compare_html_here_by_default(runs_dir, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "compare", runs_dir / "tiny-mlp-1", runs_dir / "tiny-mlp-2")
    assert code == 0 and out.endswith("saved compare.html\n") and (tmp_path / "compare.html").stat().st_size > 10_000
