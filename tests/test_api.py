"""imgcls as a library: imgcls.train/resume/evaluate/export/load, the user's own nn.Module and Dataset, callbacks,
Run and Predictor objects, and the command line's --model FILE.py:Class over the same calls."""

import json
import os
import subprocess
import sys
import textwrap
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgcls
from conftest import SHARED_DATA, api_resume, api_train, make_folder, needs_shared_data, one_line_error, run_cli
from imgcls.training.callbacks import Callback

NETS = '''
import torch.nn as nn


class Net(nn.Module):
    """The course's MLP: flatten, a hidden layer, the classes."""

    def __init__(self, num_classes, in_channels=1, image_size=28, hidden=128):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.body(x)


class Five(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 5)

    def forward(self, x):
        return self.fc(x.flatten(1))


class Colour(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 3)

    def forward(self, x):
        return self.conv(x).mean((2, 3))
'''


def sample(split: str = "train", n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    with resources.files("imgcls.assets").joinpath("mnist_sample.npz").open("rb") as f:
        found = np.load(f)
        return found[f"{split}_images"][:n], found[f"{split}_labels"][:n]


class Digits(torch.utils.data.Dataset):
    """A user's map-style Dataset: PIL images and int labels, with class names."""

    classes = [f"digit {i}" for i in range(10)]

    def __init__(self, split: str, n: int | None = None):
        self.images, self.labels = sample(split, n)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return Image.fromarray(self.images[i]), int(self.labels[i])


@pytest.fixture
def nets(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "nets", raising=False)  # each test imports its own file
    return path


def python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "IMGCLS_OFFLINE": "1"})  # fmt: skip


def digit_png(path: Path, index: int = 0) -> tuple[Path, int]:
    images, labels = sample("test")
    Image.fromarray(images[index]).save(path)
    return path, int(labels[index])


def test_a_users_class_trains_and_another_process_rebuilds_it_from_any_folder(nets, tmp_path):
    from nets import Net  # imported as users do: the module nets, from the folder of the notebook

    run = api_train("mnist-sample", Net, epochs=2, model_args={"hidden": 64}, out=tmp_path / "run")
    assert run.summary["test_accuracy"] > 0.85
    assert run.config["model"] == f"{nets}:Net" and run.config["model_args"] == {"hidden": 64}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    png, label = digit_png(elsewhere / "digit.png", 3)
    loaded = python(
        f"""
        import imgcls
        p = imgcls.load({str(run.dir)!r})
        print(p.predict("digit.png")[0].label, p.predict("digit.png", top_k=3)[0].top[2][0] in p.classes)
        """,
        elsewhere,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == [str(label), "True"]
    for args in (["predict", run.dir, png], ["export", run.dir, "--format", "onnx"], ["evaluate", run.dir]):
        done = subprocess.run([sys.executable, "-m", "imgcls", *map(str, args)], capture_output=True, text=True, cwd=elsewhere, timeout=300)
        assert done.returncode == 0, (args, done.stderr)


def test_the_command_line_takes_a_model_file_and_its_arguments(nets, tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "--model", "nets.py:Net", "--model-args", '{"hidden": 32}', "--epochs", "1", "--out", "r")
    assert code == 0, err
    assert f"model {nets}:Net: 25,450 params" in out  # 784 x 32 + 32 + 32 x 10 + 10
    code, out, err = run_cli(capsys, "predict", "r", digit_png(tmp_path / "d.png")[0])
    assert code == 0, err


def test_a_class_defined_in_a_notebook_predicts_exports_and_serves_through_its_program(tmp_path):
    script = tmp_path / "notebook.py"  # as a notebook's cells: the class lives in __main__, importable nowhere else
    script.write_text(NETS + "\nimport imgcls\nrun = imgcls.train(model=Net, epochs=1, out='run', progress=False, report=False)\n")
    trained = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert trained.returncode == 0, trained.stderr
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["model"] == "__main__:Net"
    assert (run / "best.torchscript.pt").is_file() and (run / "best.torchscript.pt.json").is_file()
    png, label = digit_png(tmp_path / "d.png")
    for args in (["predict", run, png, "--format", "json"], ["export", run, "--format", "onnx"], ["evaluate", run]):
        done = subprocess.run([sys.executable, "-m", "imgcls", *map(str, args)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (args, done.stderr)
    from imgcls.server.app import create_app  # serve's app over the same Predictor

    predictor = imgcls.load(run)
    assert predictor.predict(png)[0].label == predictor.predict(np.asarray(Image.open(png)))[0].label
    assert create_app(predictor).title == "imgcls"
    resumed = subprocess.run([sys.executable, "-m", "imgcls", "train", "--resume", str(run)], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 2 and "hand it over again" in resumed.stderr and "Traceback" not in resumed.stderr


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--model", "nets.py:Nope"], "nets.py has no Nope: check the class's name"),
        (["--model", "missing.py:Net"], "missing.py does not exist"),
        (["--model", "no_such_module:Net"], "cannot import no_such_module"),
        (["--model", "nets.py:Net", "--model-args", '{"bogus": 1}'], "failed: TypeError"),
        (["--model", "nets.py:Five"], "gives outputs of shape (2, 5) for a batch of 2 images; it must give 2 x 10"),
        (["--model", "nets.py:Colour"], "fails on the data's images (a batch of shape (2, 1, 28, 28)"),
        (["--model-args", "[1, 2]"], "give a JSON object"),
    ],
    ids=["no-class", "no-file", "no-module", "constructor", "outputs", "forward", "args-not-object"],
)
def test_a_users_model_that_cannot_train_is_one_line(nets, capsys, args, fragment):
    if args[0] == "--model-args":
        with pytest.raises(SystemExit):  # argparse's own usage error, status 2
            run_cli(capsys, "train", *args)
        assert fragment in capsys.readouterr().err
        return
    err = one_line_error(capsys, "train", *args, "--epochs", "1", "--out", "r")
    assert fragment in err, err
    assert not Path("r").exists()  # refused before the run folder


def test_a_users_dataset_of_pil_images_trains_with_its_class_names():
    run = api_train(Digits("train", 3000), epochs=4)
    assert run.summary["classes"] == Digits.classes and run.summary["test_accuracy"] > 0.8
    assert run.config["data"] == "python:Digits" and run.dir.name.startswith("Digits-digitnet")
    assert abs(run.summary["test_images"] - 600) <= 5  # 20% held out for test (stratified), then 10% of the rest for val
    evaluated = imgcls.evaluate(run, Digits("test", 500))  # another split of the same classes
    assert abs(evaluated.images - 100) <= 2 and evaluated.accuracy > 0.7


def test_tensors_arrays_and_dicts_of_splits_train_as_given():
    images, labels = sample("train", 2000)
    tensors = api_train((torch.from_numpy(images).float() / 255, torch.from_numpy(labels)), "mlp", epochs=1)  # floats in [0, 1]
    assert abs(tensors.summary["test_images"] - 400) <= 5 and tensors.summary["classes"] == [str(i) for i in range(10)]
    test_images, test_labels = sample("test", 300)
    splits = {"train": (images[:, :, :, None], labels), "test": (test_images, test_labels)}  # N x H x W x C arrays, N x H x W
    run = api_train(splits, "mlp", epochs=1)
    assert run.summary["test_images"] == 300 and run.summary["epochs_run"] == 1
    mixed = [(Image.fromarray(np.full((20 + i % 3, 20, 3), 40 * (i % 2), np.uint8)), i % 2) for i in range(60)]
    resized = api_train(mixed, "mlp", epochs=1, image_size=16)  # mixed sizes: every image to 16 x 16, colour
    assert imgcls.load(resized).in_shape == (3, 16, 16)


@pytest.mark.parametrize(
    "data, fragment",
    [
        ([(np.zeros((8, 8), np.uint8), 0)] * 5 + [("a picture", 1)], "item 5: its image is a str"),
        ([(np.zeros((8, 8), np.uint8), 0), (np.zeros((8, 8), np.uint8), "cat")], "item 1: its label is 'cat'"),
        ([(np.zeros((8, 8), np.float64), 0)], "item 0: an array image must be uint8"),
        ({"train": [(np.zeros((8, 8), np.uint8), 0)], "extra": []}, "unknown splits extra"),
        (42, "data of type int is no dataset"),
    ],
    ids=["image-type", "label", "dtype", "splits", "not-data"],
)
def test_a_dataset_item_of_the_wrong_kind_is_one_line_naming_its_index(data, fragment):
    with pytest.raises(imgcls.ImgclsError) as error:
        api_train(data, "mlp", epochs=1)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_a_callback_sees_every_epoch_and_can_stop_the_run_to_resume(tmp_path):
    class Rows(Callback):
        def __init__(self):
            self.rows, self.ended = [], None

        def on_epoch_end(self, trainer, row):
            self.rows.append(row)

        def on_fit_end(self, trainer, summary):
            self.ended = summary

    rows = Rows()
    run = api_train(epochs=3, callbacks=[rows], out=tmp_path / "seen")
    assert [r["epoch"] for r in rows.rows] == [1, 2, 3] and rows.ended == run.summary
    assert [round(r["val_acc"], 6) for r in rows.rows] == [round(r["val_acc"], 6) for r in run.history]

    class StopAfterFirstEpoch(Callback):
        def on_epoch_end(self, trainer, row):
            trainer.request_stop()

    stopped = api_train(epochs=3, callbacks=[StopAfterFirstEpoch()], out=tmp_path / "stopped")
    assert stopped.interrupted is not None and not stopped.finished and len(stopped.history) == 1
    assert "stopped by a callback" in repr(stopped)
    finished = api_resume(stopped)
    assert finished.finished and finished.summary["epochs_run"] == 3


def test_a_run_object_reads_its_folder_plots_and_shows_in_a_notebook(tmp_path):
    run = api_train(epochs=2, out=tmp_path / "run", report=True)
    opened = imgcls.Run.open(tmp_path / "run")
    assert opened.summary == run.summary and len(opened.history) == 2 and opened.config["epochs"] == 2
    figures = opened.plot()
    assert set(figures) == {"curves", "confusion_matrix"} and all(f.axes for f in figures.values())
    page = opened._repr_html_()
    assert f"{run.summary['test_accuracy']:.2%}" in page and "data:image/png;base64," in page
    with pytest.raises(imgcls.ImgclsError, match="is not a run folder"):
        imgcls.Run.open(tmp_path)


def test_predictor_takes_paths_folders_pil_images_arrays_and_tensors(digit_run, tmp_path):
    predictor = imgcls.load(digit_run)
    images, labels = sample("test", 4)
    folder = tmp_path / "digits"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    by_path = predictor.predict(folder)
    assert [p.path.name for p in by_path] == ["0.png", "1.png", "2.png", "3.png", "broken.png"]
    assert by_path[-1].label is None and by_path[-1].error
    expected = [p.label for p in by_path[:4]]
    assert [p.label for p in predictor.predict([Image.fromarray(i) for i in images])] == expected
    assert [p.label for p in predictor.predict(images)] == expected  # a batch N x H x W
    assert [p.label for p in predictor.predict(torch.from_numpy(images)[:, None].float() / 255)] == expected  # N x C x H x W floats
    assert predictor.predict(images[0])[0].label == expected[0]  # one H x W array
    top = predictor.predict(folder / "0.png", top_k=3)[0]
    assert len(top.top) == 3 and top.top[0] == (top.label, top.probability) and predictor.classes[int(labels[0])] in predictor.classes


def test_options_are_checked_as_on_the_command_line_and_unknown_names_suggest_the_closest():
    with pytest.raises(imgcls.ImgclsError, match=r"unknown option epoch=: did you mean epochs=\?"):
        imgcls.train(epoch=3)
    with pytest.raises(imgcls.ImgclsError, match="--lr must be positive and finite, got -1"):
        imgcls.train(lr=-1.0)
    with pytest.raises(imgcls.ImgclsError, match="--augment must be true or false"):
        imgcls.train(augment="yes")


def test_the_library_logs_and_never_prints(capsys, caplog):
    api_train(epochs=1)
    assert capsys.readouterr() == ("", "")  # pytest's log handler is installed: the console handler stands back
    assert any(r.getMessage().startswith("epoch 1/1  train loss") for r in caplog.records)
    # A script with no logging set up sees the same lines the command line prints.
    script = "import imgcls; imgcls.train(epochs=1, report=False, progress=False)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=Path.cwd())
    assert done.returncode == 0 and "epoch 1/1  train loss" in done.stdout and "data mnist-sample:" in done.stdout, done.stderr


def test_evaluate_export_and_lr_find_from_python(digit_run, tmp_path):
    evaluated = imgcls.evaluate(digit_run, out=tmp_path / "eval")
    assert evaluated.accuracy > 0.9 and {p.name for p in evaluated.files} == {"confusion_matrix_test.csv", "evaluation_test.json"}
    exported = imgcls.export(digit_run, "torchscript", out=tmp_path / "m.pt", parity_images=4)
    assert exported.path.is_file() and exported.max_abs_diff < 1e-3
    found = imgcls.lr_find(steps=12, out=tmp_path / "lr")
    assert (found.dir / "lr_find.png").is_file() and found.steepest > 0 and found.config.model == "digitnet"


def test_a_folder_of_photos_trains_from_python_as_from_the_command_line(tmp_path):
    photos = make_folder(tmp_path / "photos", per_class=15)
    run = api_train(str(photos), epochs=1, batch_size=8)
    assert run.summary["classes"] == ["cat", "dog"] and (run.dir / "split.json").is_file()


def test_every_train_option_is_declared_once_and_becomes_a_flag():
    from dataclasses import fields

    from imgcls.cli import build_parser
    from imgcls.options import SETUP, TrainConfig

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    train_flags = {o for a in sub["train"]._actions for o in a.option_strings}
    lr_find_flags = {o for a in sub["lr-find"]._actions for o in a.option_strings}
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        assert flag in train_flags and f.metadata["help"], flag
        assert (flag in lr_find_flags) == (f.metadata["group"] == SETUP), flag


@needs_shared_data
def test_a_torchvision_dataset_works_as_it_is():
    import torchvision

    mnist = torchvision.datasets.MNIST(SHARED_DATA, train=False, download=False)
    run = api_train(mnist, epochs=2)
    assert run.summary["classes"] == mnist.classes and run.summary["test_images"] == 2000
    assert run.summary["test_accuracy"] > 0.9 and run.config["data"] == "python:MNIST"


def test_an_instance_is_trained_in_place_and_a_stopped_run_of_a_file_class_resumes_from_another_folder(nets, tmp_path, capsys):
    from nets import Net

    net = Net(10, hidden=32)
    before = net.body[1].weight.clone()
    run = api_train(model=net, epochs=1, model_args={"hidden": 32}, out=tmp_path / "instance")
    assert not torch.equal(net.body[1].weight, before)  # the user's own object was trained
    assert run.config["model"] == f"{nets}:Net" and imgcls.load(run).predict(sample("test", 1)[0])[0].label is not None

    class StopAtOnce(Callback):
        def on_step(self, trainer):
            trainer.request_stop()

    stopped = api_train(model=Net, epochs=2, out=tmp_path / "stopped", callbacks=[StopAtOnce()])
    assert stopped.interrupted is not None
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    resumed = subprocess.run([sys.executable, "-m", "imgcls", "train", "--resume", str(stopped.dir)], capture_output=True, text=True,
                             cwd=elsewhere, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch 1/2, step 1/" in resumed.stdout and json.loads((stopped.dir / "summary.json").read_text())["epochs_run"] == 2
