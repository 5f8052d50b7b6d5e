import dataclasses
import errno
import math
import os

import pytest
import torch

from conftest import OnStep, tiny_dataset
from imgcls import checkpoint, files
from imgcls import device as device_module
from imgcls.config import TrainConfig, fill_defaults
from imgcls.data.core import Dataset
from imgcls.device import amp_dtype
from imgcls.errors import ImgclsError
from imgcls.evaluation import predict_logits
from imgcls.interrupt import Interrupted
from imgcls.models import create_model
from imgcls.training import callbacks as callbacks_module
from imgcls.training import trainer as engine_module
from imgcls.training.trainer import Trainer, batches_per_epoch


def trainer_for(tmp_path, data: Dataset, name="run", **cfg) -> Trainer:
    config = fill_defaults(
        TrainConfig(**{"model": "cnn", "optimizer": "adamw", "epochs": 3, "batch_size": 16, "device": "cpu", **cfg}), data
    )
    (tmp_path / name).mkdir(exist_ok=True)
    return Trainer(config, data, tmp_path / name)


def test_overfits_a_tiny_batch(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = tiny_dataset(n_train=32, shape=(1, 8, 8))
    data.train.images = torch.randint(0, 256, (32, 1, 8, 8), generator=g, dtype=torch.uint8)
    data.train.labels = torch.randint(0, 3, (32,), generator=g)  # random labels: only memorising fits them
    trainer = trainer_for(tmp_path, data, model="mlp", epochs=60, batch_size=32, lr=0.003, augment=False, schedule="none")
    trainer.fit()
    assert trainer.progress.history[-1]["train_acc"] == 1.0


def test_learns_a_learnable_task_and_writes_a_complete_run(tmp_path):
    trainer = trainer_for(tmp_path, tiny_dataset(n_train=256))
    summary = trainer.fit()
    assert summary["test_accuracy"] >= 0.9
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"best.pt", "last.pt", "metrics.csv", "summary.json", "confusion_matrix.csv"}
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0] == "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds" and len(rows) == 4
    assert set(summary) >= {
        "test_accuracy",
        "best_val_accuracy",
        "best_epoch",
        "epochs_run",
        "train_seconds",
        "num_params",
        "per_class_accuracy",
    }
    assert set(summary["per_class_accuracy"]) == {"c0", "c1", "c2"}
    assert summary["best_val_accuracy"] == max(r["val_acc"] for r in trainer.progress.history)


def test_checkpoints_load_with_weights_only_and_carry_what_predict_needs(tmp_path):
    trainer = trainer_for(tmp_path, tiny_dataset(), epochs=1)
    trainer.fit()
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(tmp_path / "run" / name, weights_only=True)
        assert ckpt["classes"] == ["c0", "c1", "c2"] and ckpt["mean"] == [0.5] and ckpt["in_shape"] == [1, 12, 12]
        assert ckpt["model"] == "cnn" and ckpt["config"]["epochs"] == 1
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_atomic_writes_give_files_the_umask_mode_not_mkstemps_private_one(tmp_path):
    files.atomic_write(tmp_path / "summary.json", lambda f: f.write(b"{}"))
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_same_seed_same_result_on_cpu(tmp_path):
    a = trainer_for(tmp_path, tiny_dataset(), name="a").fit()
    b = trainer_for(tmp_path, tiny_dataset(), name="b").fit()
    assert a["test_loss"] == b["test_loss"]


def comparable(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


@pytest.mark.parametrize("stop_at", [5, 16, 40], ids=["mid-epoch-1", "end-of-epoch-1", "mid-epoch-3"])
def test_resume_after_interrupt_equals_an_uninterrupted_run(tmp_path, stop_at):
    data = tiny_dataset(n_train=256)
    options = dict(model="mlp", dropout=0.2, epochs=3, crop_padding=2, rotate=10.0)  # dropout and augmentation use the RNGs
    straight = trainer_for(tmp_path, data, name="straight", **options)
    expected = straight.fit()

    interrupted = trainer_for(tmp_path, data, name="resumed", **options)
    interrupted.callbacks = OnStep(
        lambda t: t.request_stop() if t.progress.epoch * t.steps_per_epoch + t.progress.step == stop_at else None
    )
    with pytest.raises(Interrupted):
        interrupted.fit()

    ckpt = checkpoint.load(tmp_path / "resumed", which="last")
    resumed = trainer_for(tmp_path, data, name="resumed", **options)
    resumed.load_last(ckpt)
    got = resumed.fit()
    assert comparable(resumed.progress.history) == comparable(straight.progress.history)
    assert got["test_loss"] == expected["test_loss"] and got["test_accuracy"] == expected["test_accuracy"]
    for (k, v), w in zip(resumed.model.state_dict().items(), straight.model.state_dict().values()):
        assert torch.equal(v, w), k


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = trainer_for(tmp_path, tiny_dataset(n_train=256), epochs=3)
    trainer.callbacks = OnStep(lambda t: t.progress.epoch == 1 and [g.update(lr=1e12) for g in t.optimizer.param_groups])
    with pytest.raises(ImgclsError, match=r"loss became (nan|inf) in epoch 2.*last.pt keeps the last good state \(epoch 1\).*lower --lr"):
        trainer.fit()
    ckpt = checkpoint.load(tmp_path / "run", which="last")
    assert ckpt["progress"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_early_stopping_stops_after_patience_epochs_without_improvement(tmp_path):
    trainer = trainer_for(tmp_path, tiny_dataset(), epochs=30, patience=2, lr=1e-9, schedule="none")
    summary = trainer.fit()
    assert summary["stopped_early"] and summary["epochs_run"] == summary["best_epoch"] + 2 < 30


def test_best_epoch_ties_in_accuracy_go_to_the_lower_loss(tmp_path):
    trainer = trainer_for(tmp_path, tiny_dataset(), epochs=4)
    scripted = iter([(0.9, 0.5), (0.9, 0.3), (0.8, 0.1), (0.9, 0.4)])  # val (accuracy, loss) of each epoch
    real = trainer._eval

    def val(split, shifts=True):
        result = real(split, shifts)
        if shifts:  # the test set's pass
            return result
        accuracy, loss = next(scripted)
        return dataclasses.replace(result, accuracy=accuracy, loss=loss)

    trainer._eval = val
    summary = trainer.fit()
    assert (summary["best_epoch"], summary["best_val_accuracy"]) == (2, 0.9)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "muon"])
@pytest.mark.parametrize("schedule", ["cosine", "onecycle", "step", "none"])
def test_every_optimizer_and_schedule_trains(tmp_path, optimizer, schedule):
    trainer = trainer_for(tmp_path, tiny_dataset(n_train=128), epochs=2, optimizer=optimizer, schedule=schedule)
    first_lr = trainer.optimizer.param_groups[0]["lr"]
    summary = trainer.fit()
    assert math.isfinite(summary["test_loss"])
    lrs = [r["lr"] for r in trainer.progress.history]
    if schedule == "none":
        assert lrs == [first_lr] * 2
    else:
        assert lrs[-1] < max(lrs[0], first_lr)


def test_cuda_code_paths_run_on_cpu(tmp_path, monkeypatch):
    """AMP autocast and channels_last are what a GPU run uses; bf16 autocast and channels_last also work on CPU."""
    monkeypatch.setattr(engine_module, "use_channels_last", lambda device, conv: True)
    trainer = trainer_for(tmp_path, tiny_dataset(n_train=256), epochs=3, precision="bf16")
    assert trainer.amp == torch.bfloat16
    assert trainer.model.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert not trainer.model.conv2.weight.is_contiguous()
    summary = trainer.fit()
    assert summary["test_accuracy"] > 0.5
    weights = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["state_dict"]
    assert weights["conv2.weight"].is_contiguous()  # saved in the default layout, loadable anywhere


def test_batches_per_epoch_drops_a_last_batch_of_one():
    assert batches_per_epoch(100, 32) == 4
    assert batches_per_epoch(97, 32) == 3
    assert batches_per_epoch(1, 32) == 1


def test_without_a_terminal_progress_is_logged_as_plain_lines(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(callbacks_module, "LOG_EVERY", 0.0)
    trainer = trainer_for(tmp_path, tiny_dataset(n_train=320), epochs=1)  # 20 steps: shown at steps 10 and 20
    trainer.callbacks = callbacks_module.ProgressBar()
    trainer.fit()
    lines = [r.getMessage() for r in caplog.records if " step " in r.getMessage()]
    assert [line.split()[3] for line in lines] == ["10/20", "20/20"]
    assert all("img/s" in line and "loss" in line for line in lines)


def test_precision_setting_picks_the_autocast_dtype(monkeypatch):
    cpu = torch.device("cpu")
    assert amp_dtype(cpu, "fp32") is None and amp_dtype(cpu, "bf16") == torch.bfloat16 and amp_dtype(cpu, "fp16") == torch.float16
    monkeypatch.setattr(device_module, "cpu_has_bf16", lambda: True)
    assert amp_dtype(cpu, "auto") == torch.bfloat16
    monkeypatch.setattr(device_module, "cpu_has_bf16", lambda: False)
    assert amp_dtype(cpu, "auto") is None  # emulated bf16 is slower than fp32


def test_flip_tta_averages_the_logits_of_each_image_and_its_mirror():
    torch.manual_seed(0)
    model = create_model("cnn", (3, 16, 16), 4).eval()
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    mean, std = torch.full((3, 1, 1), 0.5), torch.full((3, 1, 1), 0.25)
    plain, mirrored = predict_logits(model, images, mean, std), predict_logits(model, images.flip(3), mean, std)
    assert torch.allclose(predict_logits(model, images, mean, std, tta=True), (plain + mirrored) / 2, atol=1e-6)
    assert not torch.allclose(plain, mirrored)


def test_compiled_training_saves_the_plain_models_weights(tmp_path):
    """torch.compile is the GPU recipe's option; its code path is the same on CPU."""
    trainer = trainer_for(tmp_path, tiny_dataset(n_train=64), model="mlp", epochs=1, compile=True)
    assert trainer.forward is not trainer.model
    summary = trainer.fit()
    assert math.isfinite(summary["test_loss"])
    weights = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["state_dict"]
    assert set(weights) == set(create_model("mlp", (1, 12, 12), 3).state_dict())  # no "_orig_mod." prefixes


class FullDisk:
    """A file whose writes fail as on a full disk, passed to the real torch.save so its zip writer reacts as it does there."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self):
        self.f.flush()


def test_a_full_disk_stops_with_one_message_keeps_the_last_good_state_and_resumes(tmp_path, monkeypatch):
    data = tiny_dataset(n_train=256)
    straight = trainer_for(tmp_path, data, name="straight", model="mlp")
    straight.fit()

    disk = {"full": False}
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f: real_save(obj, FullDisk(f) if disk["full"] else f))
    trainer = trainer_for(tmp_path, data, model="mlp")
    trainer.callbacks = OnStep(lambda t: disk.update(full=t.progress.epoch == 1))  # the disk fills up during epoch 2
    with pytest.raises(files.WriteFailed) as failed:
        trainer.fit()
    message = str(failed.value)
    assert f"in {tmp_path / 'run'} (No space left on device)" in message and "is kept" in message and "\n" not in message
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]
    assert checkpoint.load(tmp_path / "run", which="last")["progress"]["epoch"] == 1

    disk["full"] = False  # space freed
    resumed = trainer_for(tmp_path, data, model="mlp")
    resumed.load_last(checkpoint.load(tmp_path / "run", which="last"))
    resumed.fit()
    assert comparable(resumed.progress.history) == comparable(straight.progress.history)
