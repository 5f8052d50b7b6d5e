import sys

import pytest

from conftest import tiny_dataset
from imgcls.cli import main
from imgcls.config import TrainConfig, fill_defaults
from imgcls.errors import ImgclsError
from imgcls.training.loggers import Interval, TensorBoardLogger, VisdomLogger
from imgcls.training.trainer import Trainer

EPOCHS, STEPS = 2, 16  # 64 training images in batches of 4: read-backs at steps 10 and 16 of each epoch


def fit(tmp_path, loggers=(), name="run") -> Trainer:
    data = tiny_dataset()
    cfg = fill_defaults(TrainConfig(model="mlp", epochs=EPOCHS, batch_size=4, device="cpu"), data)
    (tmp_path / name).mkdir()
    trainer = Trainer(cfg, data, tmp_path / name, callbacks=loggers)
    trainer.fit()
    for logger in loggers:
        logger.close()
    return trainer


def test_interval_averages_only_the_steps_since_the_last_read_back():
    class P:
        epoch, totals = 0, [4.0, 3.0, 4.0]

    interval, p = Interval(), P()
    assert interval.update(p) == (1.0, 0.75)
    p.totals = [5.0, 7.0, 8.0]  # 4 more images: loss 1/4, 4 correct
    assert interval.update(p) == (0.25, 1.0)
    p.epoch, p.totals = 1, [2.0, 1.0, 2.0]  # a new epoch starts from zero
    assert interval.update(p) == (1.0, 0.5)


def test_tensorboard_event_files_hold_the_scalars_and_images(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard not installed (pip install 'imgcls[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = fit(tmp_path, [TensorBoardLogger()])
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert [e.step for e in events.Scalars("train/loss")] == [10, 16, 26, 32]
    assert all(0 <= e.value <= 1 for e in events.Scalars("train/accuracy"))
    val = events.Scalars("epoch/val_acc")
    assert [e.step for e in val] == [16, 32]
    assert [e.value for e in val] == pytest.approx([r["val_acc"] for r in trainer.progress.history])
    assert {"epoch/train_loss", "epoch/val_loss", "epoch/lr", "train/lr"} <= set(tags["scalars"])
    images = events.Images("epoch/augmented_train_images")
    assert len(images) == EPOCHS and images[0].width > 0


def test_loggers_leave_training_exactly_as_without_them(tmp_path):
    class Null:
        def line(self, **kwargs):
            pass

        def images(self, *args, **kwargs):
            pass

    plain = fit(tmp_path, name="plain").progress.history
    logged = fit(tmp_path, [VisdomLogger(client=Null())], name="logged").progress.history
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in plain] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in logged
    ]


class FakeVisdom:
    def __init__(self):
        self.lines, self.image_calls = [], []

    def line(self, Y, X, win, env, name, update, opts):
        self.lines.append({"y": Y[0], "x": X[0], "win": win, "env": env, "name": name, "update": update, "opts": opts})

    def images(self, tensor, nrow, win, env, opts):
        self.image_calls.append((tensor, win, env))


def test_visdom_plots_live_curves_and_sample_images(tmp_path):
    client = FakeVisdom()
    trainer = fit(tmp_path, [VisdomLogger(client=client)])
    windows = {}
    for call in client.lines:
        windows.setdefault(call["win"], []).append(call)
    assert set(windows) == {"loss", "accuracy", "learning rate"}
    for calls in windows.values():  # a window is created once, then appended to
        assert calls[0]["update"] is None and all(c["update"] == "append" for c in calls[1:])
        assert {c["env"] for c in calls} == {"run"}
    val = [c for c in windows["accuracy"] if c["name"] == "validation"]
    assert [(c["x"], c["y"]) for c in val] == [(r["epoch"], r["val_acc"]) for r in trainer.progress.history]
    assert [c["x"] for c in windows["loss"] if c["name"] == "train (running)"] == [10 / STEPS, 1, 1 + 10 / STEPS, 2]
    assert len(client.image_calls) == EPOCHS
    images, win, _ = client.image_calls[0]
    assert images.dtype == "uint8" and images.shape == (16, 1, 12, 12) and win == "augmented train images"


def test_missing_optional_packages_name_the_pip_command(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "visdom", None)  # makes `import visdom` fail
    with pytest.raises(ImgclsError, match=r"pip install 'imgcls\[visdom\]'"):
        VisdomLogger()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert main(["train", "--tensorboard", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "imgcls: error: --tensorboard needs the tensorboard package: pip install 'imgcls[tensorboard]'"
