"""imgcls tune: Optuna studies whose trials are real runs; the search space; two workers sharing one study through
SQLite and through a real PostgreSQL server."""

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
import yaml

import imgcls
from conftest import StopAt, free_port, make_folder, one_line_error, run_cli, tiny_dataset
from imgcls.config import TrainConfig
from imgcls.errors import ImgclsError
from imgcls.experiments.space import parse_spec, read_space, recipe_space

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def tiny_splits() -> dict:
    """A tiny dataset as a Python caller hands it over: (images, labels) per split."""
    data = tiny_dataset()
    return {name: (getattr(data, name).images, getattr(data, name).labels) for name in ("train", "val", "test")}


def tune(**options):
    return imgcls.tune(tiny_splits(), model="cnn", epochs=2, report=False, progress=False, **options)


def test_search_spec_reads_ranges_log_scales_and_choices_in_each_options_type():
    space = parse_spec("lr=1e-3:1e-1:log, weight-decay=0:1e-3,batch_size=32|64,crop_padding=0:4,schedule=cosine|linear,flip=on|off")
    assert space == {
        "lr": {"low": 0.001, "high": 0.1, "log": True}, "weight_decay": {"low": 0.0, "high": 0.001, "log": False},
        "batch_size": {"choices": [32, 64]}, "crop_padding": {"low": 0, "high": 4, "log": False},
        "schedule": {"choices": ["cosine", "linear"]}, "flip": {"choices": [True, False]},
    }  # fmt: skip
    assert isinstance(space["crop_padding"]["high"], int)


@pytest.mark.parametrize(
    "spec, says",
    [
        ("lrr=1e-3:1e-1", "unknown option 'lrr': did you mean lr?"),
        ("data=a|b", "data cannot be tuned"),
        ("lr=0.1:0.01", "must go from low to high"),
        ("weight_decay=0:1e-3:log", "log range must start above 0"),
        ("label_smoothing=0:1.5", "label_smoothing must be in [0, 1)"),
        ("schedule=cosine|fast", "'fast' is not one of"),
        ("batch_size=a|b", "batch_size takes int values"),
        ("lr", "give a range or choices"),
        ("lr=1:2:3", "NAME=LOW:HIGH[:log]"),
        ("optimizer=0:1", "takes choices"),
    ],
)
def test_a_bad_search_spec_is_one_line_naming_the_fix(spec, says):
    with pytest.raises(ImgclsError) as e:
        parse_spec(spec)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_a_space_file_takes_yaml_and_json_in_every_form(tmp_path):
    Path("space.yaml").write_text("lr: {low: 0.001, high: 0.1, log: true}\nbatch_size: {choices: [32, 64]}\n"
                                  "label_smoothing: [0, 0.2]\nweight_decay: '1e-5:1e-3:log'\n")  # fmt: skip
    assert read_space("space.yaml") == {
        "lr": {"low": 0.001, "high": 0.1, "log": True}, "batch_size": {"choices": [32, 64]},
        "label_smoothing": {"low": 0, "high": 0.2, "log": False}, "weight_decay": {"low": 1e-5, "high": 1e-3, "log": True},
    }  # fmt: skip
    Path("space.json").write_text('{"lr": {"low": 0.01, "high": 0.1}}')
    assert read_space("space.json") == {"lr": {"low": 0.01, "high": 0.1, "log": False}}
    Path("bad.yaml").write_text("lr: {low: 1}\n")
    with pytest.raises(ImgclsError, match="lr must be"):
        read_space("bad.yaml")


def test_the_default_space_is_drawn_around_the_recipe_and_its_augmentation():
    cfg = TrainConfig(lr=0.2, weight_decay=5e-4, batch_size=1024, crop_padding=2, rotate=0.0, crop_scale=1.0, augment=True)
    space = recipe_space(cfg, train_images=45_000)
    assert space["lr"] == {"low": pytest.approx(0.04), "high": pytest.approx(1.0), "log": True}
    assert space["weight_decay"] == {"low": pytest.approx(5e-5), "high": pytest.approx(5e-3), "log": True}
    assert space["batch_size"] == {"choices": [512, 1024, 2048]} and space["crop_padding"] == {"low": 0, "high": 4, "log": False}
    assert "rotate" not in space and "crop_scale" not in space  # the recipe has neither
    small = recipe_space(TrainConfig(lr=0.05, weight_decay=0.0, batch_size=64, augment=False, crop_padding=2), train_images=40)
    assert "weight_decay" not in small and "crop_padding" not in small and small["batch_size"] == {"choices": [32, 40]}


def test_a_study_runs_its_trials_as_runs_keeps_the_best_and_continues_where_it_stopped(tmp_path):
    result = tune(search={"lr": {"low": 0.005, "high": 0.2, "log": True}}, trials=2, pruner="none", out="study")
    trials = result.study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for t in trials:  # each trial a finished run folder, its objective the run's best val accuracy
        summary = imgcls.Run.open(t.user_attrs["run"]).summary
        assert t.value == summary["best_val_accuracy"] and t.user_attrs["test_accuracy"] == summary["test_accuracy"]
        assert Path(t.user_attrs["run"]) == (tmp_path / "study" / f"trial-{t.number}").resolve()
        assert imgcls.Run.open(t.user_attrs["run"]).config["lr"] == t.params["lr"]
    best = max(trials, key=lambda t: t.value)
    assert result.best["number"] == best.number and result.best["value"] == best.value
    saved = yaml.safe_load(result.config_file.read_text())
    assert saved["lr"] == best.params["lr"] and saved["epochs"] == 2 and saved["model"] == "cnn"
    page = result.report.read_text()
    assert "optimisation history" in page and "parameter importances" in page and page.count("<tr>") == 1 + 2
    # The same study again, asked for 3: one more trial, numbered on.
    again = tune(search={"lr": {"low": 0.005, "high": 0.2, "log": True}}, trials=3, pruner="none", out="study")
    assert [t.number for t in again.study.get_trials()] == [0, 1, 2] and (tmp_path / "study" / "trial-2" / "summary.json").is_file()
    # A worker with another space is refused rather than mixed into the study.
    with pytest.raises(ImgclsError, match="was started with search space lr=0.005:0.2:log: run the same command"):
        tune(search={"lr": {"low": 0.001, "high": 0.2, "log": True}}, trials=5, pruner="none", out="study")


def test_a_study_of_the_recipes_space_tries_the_recipes_own_settings_first():
    result = tune(trials=1, pruner="none", out="study")
    first, run = result.study.get_trials()[0], imgcls.Run.open("study/trial-0")
    assert set(first.params) >= {"lr", "weight_decay", "label_smoothing"} and first.user_attrs["recipe_defaults"]
    assert all(run.config[k] == v for k, v in first.params.items())
    assert result.defaults["number"] == 0 and "0 (recipe)" in result.report.read_text()
    fixed = tune(trials=1, pruner="none", out="fixed", lr=0.02, batch_size=16)  # options given are not searched
    assert not {"lr", "batch_size"} & set(fixed.study.get_trials()[0].params)


def test_pruned_trials_stop_at_an_epoch_and_leave_a_resumable_run():
    # Optuna's ThresholdPruner below an unreachable accuracy prunes every trial after its first epoch.
    result = tune(search="lr=0.01:0.1", trials=2, pruner=optuna.pruners.ThresholdPruner(lower=1.5), out="study")
    trials = result.study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED] * 2
    assert all(t.user_attrs["epochs_run"] == 1 and t.intermediate_values.keys() == {1} for t in trials)
    run = imgcls.Run.open(trials[0].user_attrs["run"])
    assert not run.finished and (run.dir / "last.pt").is_file() and len(run.history) == 1
    assert result.best is None and result.config_file is None and "pruned" in result.report.read_text()


def test_ctrl_c_in_a_trial_stops_the_study_and_keeps_it():
    result = tune(search="lr=0.01:0.1", trials=3, pruner="none", out="study", callbacks=[StopAt(2, 1)])
    assert result.interrupted is not None
    assert [t.state for t in result.study.get_trials()] == [optuna.trial.TrialState.FAIL]
    assert (Path("study/trial-0/last.pt")).is_file()
    again = tune(search="lr=0.01:0.1", trials=1, pruner="none", out="study")  # the study goes on from there
    assert [t.state.name for t in again.study.get_trials()] == ["FAIL", "COMPLETE"] and again.best["number"] == 1


@pytest.mark.slow  # MLflow creating its SQLite store takes most of half a minute
def test_each_trial_is_tracked_in_mlflow_as_a_run_of_its_own():
    from mlflow.tracking import MlflowClient

    tune(search="lr=0.01:0.1", trials=2, pruner="none", out="study", callbacks=[imgcls.MLflowLogger("sqlite:///mlflow.db")])
    client = MlflowClient("sqlite:///mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted(Path(r.data.tags["run_dir"]).name for r in runs) == ["trial-0", "trial-1"]
    assert {r.info.status for r in runs} == {"FINISHED"} and len({r.data.params["lr"] for r in runs}) == 2


def test_no_trial_starts_after_the_timeout():
    result = tune(search="lr=0.01:0.1", trials=5, pruner="none", out="study", timeout=1e-3)
    assert len(result.study.get_trials()) == 1 and result.best["number"] == 0


@pytest.mark.slow  # two runs in subprocesses or stores: kept out of the default suite's minutes
def test_the_command_line_prints_the_best_trials_command_and_its_config_trains(capsys):
    make_folder(Path("pets"), per_class=12)
    code, out, err = run_cli(capsys, "tune", "--data", "pets", "--model", "cnn", "--epochs", "1", "--trials", "2", "--no-report",
                             "--search", "lr=0.01:0.1:log", "--pruner", "none", "--study", "pets")  # fmt: skip
    assert code == 0, err
    assert "study pets: 2 trials (2 complete); report in runs/tune-pets/tune.html" in out
    command = out.split("train it with:\n  ")[1].splitlines()[0]
    assert command.startswith("imgcls train --data pets --model cnn --epochs 1 --no-report --lr ")
    code, out, err = run_cli(capsys, "train", "--config", "runs/tune-pets/best.yaml", "--out", "best")
    assert code == 0, err
    assert f"{imgcls.Run.open('best').config['lr']}" in command  # trained with the best trial's lr
    assert "--trials must be at least 1" in one_line_error(capsys, "tune", "--trials", "0")
    assert "both set as an option and searched" in one_line_error(
        capsys, "tune", "--data", "pets", "--lr", "0.1", "--search", "lr=0.01:0.1"
    )
    assert "cannot open --storage nosuchdb://x" in one_line_error(capsys, "tune", "--data", "pets", "--storage", "nosuchdb://x")


def start_workers(folder: Path, storage: str, study: str, trials: int, workers: int = 2) -> list[subprocess.Popen]:
    command = [sys.executable, "-m", "imgcls", "tune", "--data", str(folder), "--model", "cnn", "--epochs", "2", "--no-report",
               "--trials", str(trials), "--search", "lr=0.01:0.2:log", "--storage", storage, "--study", study, "--out", "study"]  # fmt: skip
    return [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(workers)]


def check_shared(storage: str, study: str, trials: int, processes: list[subprocess.Popen]) -> None:
    for p in processes:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    finished = optuna.load_study(study_name=study, storage=storage).get_trials(states=FINISHED)
    # Each worker stops once the study holds `trials` finished or running ones: together they run that many.
    assert trials <= len(finished) <= trials + 1
    assert len({t.user_attrs["pid"] for t in finished}) == 2  # both did some of the work
    assert sorted(t.number for t in finished) == list(range(len(finished)))
    assert all((Path("study") / f"trial-{t.number}" / "summary.json").is_file() for t in finished)


@pytest.mark.slow  # two processes that each start torch: kept out of the default suite's minutes
def test_two_workers_share_one_study_in_a_sqlite_file(tmp_path):
    make_folder(Path("pets"), per_class=12)
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    check_shared(storage, "shared", 6, start_workers(Path("pets"), storage, "shared", 6))


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) + [shutil.which("initdb") or ""]
    return next((Path(p).parent for p in found if p and os.access(p, os.X_OK)), None)


@contextlib.contextmanager
def postgres_server():
    """A real PostgreSQL server on loopback in a folder of its own (as the postgres user when run as root: the server
    refuses root), trust authentication; yields its port."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        if os.environ.get("IMGCLS_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL is required here (IMGCLS_REQUIRE_POSTGRES) but initdb was not found")
        pytest.skip("no PostgreSQL server installed (Debian: apt install postgresql)")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="imgcls-pg-"))  # outside pytest's root-only folders, for the postgres user
    if as_user:
        shutil.chown(root, "postgres")
    port, data = free_port(), root / "data"
    subprocess.run([*as_user, bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"], check=True,
                   capture_output=True)  # fmt: skip
    server = [*as_user, bin_dir / "pg_ctl", "-D", data, "-l", root / "log", "-w", "-o", f"-p {port} -k {root} -h 127.0.0.1"]
    subprocess.run([*server, "start"], check=True, capture_output=True)
    try:
        yield port
    finally:
        subprocess.run([*as_user, bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_one_study_on_a_postgresql_server():
    import psycopg

    make_folder(Path("pets"), per_class=12)
    with postgres_server() as port:
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True) as admin:
            admin.execute("CREATE DATABASE imgcls_tune")
        storage = f"postgresql://postgres@127.0.0.1:{port}/imgcls_tune"
        check_shared(storage, "pg", 4, start_workers(Path("pets"), storage, "pg", 4))
        # A server that does not answer is one line.
        with pytest.raises(ImgclsError, match="cannot open --storage postgresql://postgres@127.0.0.1:1/x"):
            imgcls.tune(tiny_splits(), storage="postgresql://postgres@127.0.0.1:1/x", trials=1, progress=False)
