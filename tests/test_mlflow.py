"""Runs tracked in MLflow (--mlflow, imgcls.MLflowLogger): against a real `mlflow server` on loopback, read back with
MlflowClient, and in local stores (the default SQLite file, a file store); the errors of a server that is not there
and of mlflow not installed."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import StopAt, free_port, make_folder, one_line_error, run_cli
from imgcls.rundir import read_metrics

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

# mlflow's SQL store still calls an SQLAlchemy loader that SQLAlchemy 2.1 deprecates: theirs to change, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning")


class Server:
    """`mlflow server` on a free loopback port; `url` waits until it answers (it boots in seconds)."""

    def __init__(self, root):
        self.log = root / "server.log"
        self.port = free_port()
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                   "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")]  # fmt: skip
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        self.up = False

    @property
    def url(self) -> str:
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while not self.up:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                    self.up = response.status == 200
            except OSError:
                assert self.process.poll() is None, f"mlflow server exited: {self.log.read_text()}"
                assert time.monotonic() < deadline, f"mlflow server did not answer in 120 s: {self.log.read_text()}"
                time.sleep(0.2)
        return url


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.process.terminate()
    server.process.wait(30)


@pytest.mark.parametrize("store", ["http", "postgresql"])
def test_an_unreachable_store_is_one_line_at_once(capsys, store):
    start = time.monotonic()
    err = one_line_error(capsys, "train", "--mlflow", f"{store}://127.0.0.1:{free_port()}/db", "--epochs", "1")
    what = "MLflow tracking server" if store == "http" else "database"
    assert f"no {what} answers at {store}://127.0.0.1:" in err and "start it" in err
    assert time.monotonic() - start < 15  # no minutes of HTTP retries
    assert not Path("runs").exists()  # refused before any run folder


def test_mlflow_not_installed_names_the_extra(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what an environment without the package imports
    err = one_line_error(capsys, "train", "--mlflow", "--epochs", "1")
    assert "pip install 'imgcls[mlflow]'" in err


def test_tracking_starts_on_resume_in_the_default_local_store(capsys, tmp_path):
    """--mlflow alone: sqlite:///mlflow.db in the working folder. A run first tracked when resumed gets its earlier
    epochs too, and mlflow.json records the store by its absolute path."""
    from imgcls.api import train

    pics = make_folder(tmp_path / "pics")
    stopped = train(str(pics), model="mlp", epochs=2, batch_size=4, out="run", progress=False, report=False, callbacks=[StopAt(2, 1)])
    assert stopped.interrupted is not None
    code, out, err = run_cli(capsys, "train", "--resume", "run", "--mlflow", "--mlflow-experiment", "local")
    assert code == 0, err
    record = json.loads((tmp_path / "run" / "mlflow.json").read_text())
    assert record["tracking_uri"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(record["tracking_uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("local").experiment_id])
    assert run.info.run_id == record["run_id"] and run.info.status == "FINISHED"
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_acc")] == [
        (row["epoch"], pytest.approx(row["val_acc"], rel=1e-5)) for row in rows
    ]
    assert f"MLflow run {run.info.run_id}" in out


@pytest.mark.slow  # two runs in subprocesses or stores: kept out of the default suite's minutes
def test_a_file_store_and_a_store_gone(capsys, tmp_path, monkeypatch):
    """mlflow 3 refuses file stores (./mlruns) unless MLFLOW_ALLOW_FILE_STORE=true; said in one line. Once a tracked
    run's store is gone, export is done all the same (a warning), and resume says how to go on without it."""
    pics = make_folder(tmp_path / "pics")
    if hasattr(mlflow.environment_variables, "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
        err = one_line_error(capsys, "train", "--data", pics, "--mlflow", "file:./mlruns")
        assert "set MLFLOW_ALLOW_FILE_STORE=true" in err and "sqlite:///mlflow.db" in err
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    code, _, err = run_cli(capsys, "train", "--data", pics, "--model", "mlp", "--epochs", "1", "--out", "run", "--mlflow", "mlruns")
    assert code == 0, err
    client = MlflowClient((tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("pics").experiment_id])
    assert run.data.tags["dataset"] == "pics" and run.data.metrics["epochs_run"] == 1
    assert "best.pt" in {a.path for a in client.list_artifacts(run.info.run_id)}

    gone = f"http://127.0.0.1:{free_port()}"
    (tmp_path / "run" / "mlflow.json").write_text(json.dumps({"tracking_uri": gone, "run_id": run.info.run_id}))
    code, _, err = run_cli(capsys, "export", "run")
    assert code == 0 and (tmp_path / "run" / "best.onnx").is_file()
    assert f"warning: best.onnx was not logged to MLflow: no MLflow tracking server answers at {gone}" in err
    err = one_line_error(capsys, "train", "--resume", "run")
    assert f"answers at {gone}" in err and "delete that file to resume untracked" in err


@pytest.fixture(scope="module")
def tracked(server, tmp_path_factory):
    """A run tracked on the server: stopped in epoch 2 of 3 (as by Ctrl-C), resumed by `imgcls train --resume` (no
    --mlflow: the run folder's mlflow.json continues it), then `imgcls export`. (client, run folder, MLflow run id,
    the MLflow run's status while stopped)."""
    import imgcls
    from imgcls.cli import main

    root = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("IMGCLS_OFFLINE", "1")
        env.setenv("IMGCLS_CACHE", str(root / "cache"))
        env.chdir(root)
        pics = make_folder(root / "pics")
        logger = imgcls.MLflowLogger(server.url, experiment="shapes")
        stopped = imgcls.train(str(pics), model="mlp", epochs=3, batch_size=4, out="run", progress=False, callbacks=[StopAt(2, 1), logger])
        assert stopped.interrupted is not None
        client = MlflowClient(server.url)
        run_id = json.loads((root / "run" / "mlflow.json").read_text())["run_id"]
        status = client.get_run(run_id).info.status
        assert main(["train", "--resume", "run"]) == 0
        assert main(["export", "run"]) == 0
    return client, root / "run", run_id, status


@pytest.mark.slow  # a real mlflow server and a run stopped, resumed and exported: half a minute
def test_a_tracked_run_logs_its_config_and_tags(tracked):
    client, run_dir, run_id, _ = tracked
    run = client.get_run(run_id)
    config = json.loads((run_dir / "config.json").read_text())
    assert run.data.params == {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items() if v is not None}
    assert {k: run.data.tags[k] for k in ("dataset", "model", "recipe", "task")} == {
        "dataset": "pics", "model": "mlp", "recipe": config["recipe"], "task": "single-label"
    }  # fmt: skip
    assert run.info.run_name == "run"


@pytest.mark.slow  # a real mlflow server and a run stopped, resumed and exported: half a minute
def test_a_resumed_run_continues_its_mlflow_run(tracked):
    client, run_dir, run_id, stopped = tracked
    assert stopped == "KILLED"  # stopped on request: resumable
    (run,) = client.search_runs([client.get_experiment_by_name("shapes").experiment_id])
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    rows = read_metrics(run_dir / "metrics.csv")
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    for column in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"):
        history = client.get_metric_history(run_id, column)
        assert [(m.step, m.value) for m in history] == [(row["epoch"], pytest.approx(row[column], rel=1e-5)) for row in rows], column
    summary = json.loads((run_dir / "summary.json").read_text())
    figures = {k: float(v) for k, v in summary.items() if isinstance(v, int | float) and v == v}
    assert {k: run.data.metrics[k] for k in figures} == pytest.approx(figures)
    assert "per_class_accuracy" not in run.data.metrics and "test_accuracy" in figures


@pytest.mark.slow  # a real mlflow server and a run stopped, resumed and exported: half a minute
def test_a_tracked_run_logs_its_files_and_export(tracked, tmp_path):
    client, run_dir, run_id, _ = tracked
    logged = {a.path for a in client.list_artifacts(run_id)}
    plots = {p.name for p in run_dir.glob("*.png")}
    assert plots and "curves.png" in plots
    assert {"report.html", "best.pt", "summary.json", "config.json", "metrics.csv", "best.onnx", "best.onnx.json", *plots} <= logged
    assert "last.pt" not in logged and "mlflow.json" not in logged
    for name in ("summary.json", "best.onnx"):
        copy = client.download_artifacts(run_id, name, str(tmp_path))
        assert (tmp_path / name).read_bytes() == (run_dir / name).read_bytes(), copy


@pytest.mark.slow  # two training processes under torchrun: 20 s
def test_a_run_on_two_processes_is_one_mlflow_run_logged_by_rank_0(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [sys.executable, "-m", "imgcls", "train", "--nproc", "2", "--model", "mlp", "--epochs", "2", "--device", "cpu", "--no-report"]
    result = subprocess.run([*command, "--out", "run", "--mlflow", store, "--mlflow-experiment", "ddp"], capture_output=True, text=True,
                            env=env, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])  # rank 1 started none
    assert run.info.run_id == json.loads((tmp_path / "run" / "mlflow.json").read_text())["run_id"] and run.info.status == "FINISHED"
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    history = client.get_metric_history(run.info.run_id, "val_acc")
    assert [(m.step, m.value) for m in history] == [
        (row["epoch"], pytest.approx(row["val_acc"], rel=1e-5)) for row in rows
    ]  # each epoch once
    assert len(rows) == 2 and result.stdout.count("MLflow run") == 1
