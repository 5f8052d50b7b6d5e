"""imgcls train --config FILE (and train's config=): the options of a YAML or JSON file, as config.json holds them."""

import json
from pathlib import Path

import pytest

import imgcls
from conftest import api_train, make_folder, one_line_error, run_cli
from imgcls.errors import ImgclsError


@pytest.mark.slow  # two runs in subprocesses or stores: kept out of the default suite's minutes
def test_a_runs_config_json_trains_the_same_run_again(capsys):
    make_folder(Path("pets"), per_class=12)
    code, _, err = run_cli(capsys, "train", "--data", "pets", "--model", "cnn", "--epochs", "2", "--lr", "0.03", "--out", "first")
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", "--config", "first/config.json", "--out", "again")
    assert code == 0, err
    first, again = imgcls.Run.open("first"), imgcls.Run.open("again")
    assert again.config == first.config
    same = ("train_loss", "train_acc", "val_loss", "val_acc")
    assert [[row[k] for k in same] for row in again.history] == [[row[k] for k in same] for row in first.history]


def test_options_given_beside_the_file_win_and_yaml_reads_as_json_does(capsys):
    make_folder(Path("pets"), per_class=12)
    Path("settings.yaml").write_text("data: pets\nmodel: cnn\nepochs: 2\nlr: 0.02\nflip: false\n")
    code, _, err = run_cli(capsys, "train", "--config", "settings.yaml", "--epochs", "1", "--out", "run")
    assert code == 0, err
    config = imgcls.Run.open("run").config
    assert (config["epochs"], config["lr"], config["flip"], config["model"]) == (1, 0.02, False, "cnn")
    run = api_train(config={"data": "pets", "model": "cnn", "epochs": 1}, lr=0.01)  # a dict from Python, the argument winning
    assert (run.config["lr"], run.config["model"]) == (0.01, "cnn")


@pytest.mark.parametrize(
    "name, text, says",
    [
        ("a.yaml", "lr: 0.1\nepoch: 2\n", "unknown option 'epoch': did you mean epochs?"),
        ("b.yaml", "lr: [1\n", "is not valid YAML (expected ',' or ']', but got '<stream end>', line 2): fix the file"),
        ("c.json", '{"lr": 1', "is not valid JSON"),
        ("d.yaml", "- 1\n- 2\n", "holds a list, not a mapping of option names to values"),
        ("e.yaml", "lr: fast\n", "--lr must be a number, got 'fast'"),
    ],
)
def test_a_bad_config_file_is_one_line(capsys, name, text, says):
    Path(name).write_text(text)
    assert says in one_line_error(capsys, "train", "--config", name)


def test_a_missing_file_and_resume_beside_a_config_are_refused(capsys):
    assert "--config nope.yaml: no such file" in one_line_error(capsys, "train", "--config", "nope.yaml")
    Path("c.yaml").write_text("epochs: 1\n")
    assert "drop --config" in one_line_error(capsys, "train", "--resume", "somewhere", "--config", "c.yaml")


def test_a_config_of_python_data_asks_for_the_data():
    Path("python.json").write_text(json.dumps({"data": "python:my-arrays", "epochs": 1}))
    with pytest.raises(ImgclsError, match="only Python can hand over: pass it as data="):
        imgcls.train(config="python.json")
