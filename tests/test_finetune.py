"""Fine-tuning from weights: the frozen stage on cached features, discriminative learning rates, the photo recipe."""

import json
import signal
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from conftest import WeightsAtStart, api_resume, api_train, cache_torchvision_weights, make_folder, run_cli
from imgcls import checkpoint
from imgcls.data import load_dataset
from imgcls.models import create_model
from imgcls.training import finetune
from imgcls.training.callbacks import Callback

QUICK = ["--batch-size", "8", "--device", "cpu"]
QUICK_OPTIONS = {"batch_size": 8, "device": "cpu"}


@pytest.fixture(autouse=True)
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def photos(size=(80, 72), per_class=10) -> Path:
    """A folder of images over 64 px: what the photo recipe (and the ImageNet ResNet-18) is for."""
    return make_folder(Path("photos"), per_class=per_class, size=size)


@pytest.fixture
def digits() -> Path:
    """A two-class folder (3s and 8s) of the MNIST sample's test digits, which the digit_run fixture never trained on."""
    from PIL import Image

    data = load_dataset("mnist-sample")
    for digit in ("3", "8"):
        (Path("digits") / digit).mkdir(parents=True)
        picked = data.test.images[data.test.labels == data.classes.index(digit)][:40]
        for i, image in enumerate(picked):
            Image.fromarray(image[0].numpy()).save(Path("digits") / digit / f"{i}.png")
    return Path("digits")


def head_names(model: nn.Module, num_classes: int) -> set[str]:
    head = finetune.classifier(model, num_classes)
    return {f"{name}.{p}" for name, module in model.named_modules() if module is head for p in ("weight", "bias")}


def test_the_head_is_the_last_linear_layer_with_one_output_per_class():
    model = create_model("resnet18", (3, 96, 96), 5)
    assert finetune.classifier(model, 5) is model.fc
    model = create_model("mobilenet_v3_small", (3, 96, 96), 7)
    assert finetune.classifier(model, 7) is model.classifier[-1]
    model = create_model("speednet", (3, 32, 32), 4)
    assert finetune.classifier(model, 4) is model[-1]
    assert finetune.classifier(nn.Sequential(nn.Conv2d(3, 4, 1)), 4) is None


def test_discriminative_learning_rates_rise_from_lr_over_lr_mult_to_lr_at_the_head():
    model = create_model("resnet18", (3, 96, 96), 5)
    groups = finetune.param_groups(model, model.fc, lr=1e-3, lr_mult=100, weight_decay=0.01)
    lrs = sorted({g["lr"] for g in groups})
    assert lrs == pytest.approx([1e-5, 1e-5 * 100 ** (1 / 3), 1e-5 * 100 ** (2 / 3), 1e-3])
    head = [g for g in groups if g["lr"] == pytest.approx(1e-3)]
    assert {id(p) for g in head for p in g["params"]} == {id(model.fc.weight), id(model.fc.bias)}
    first = next(g for g in groups if g["lr"] == pytest.approx(1e-5) and g["weight_decay"] > 0)
    assert first["params"][0] is model.conv1.weight  # the first layer learns slowest
    assert all((g["weight_decay"] == 0) == all(p.ndim <= 1 for p in g["params"]) for g in groups)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    same = finetune.param_groups(model, model.fc, lr=1e-3, lr_mult=1, weight_decay=0.01)
    assert {g["lr"] for g in same} == {1e-3} and len(same) == 3  # norms, other biases, weights


def test_the_frozen_stage_trains_the_head_alone_on_features_computed_once(caplog, digit_run, digits):
    """One forward pass per training image and flip, and per val image and flip (TTA), whatever --freeze-epochs is; the
    backbone is unchanged by it and the head has learnt."""
    seen, after = {"images": 0}, {}

    class Counting(Callback):
        """Between on_fit_start and the first epoch's start lies the frozen stage."""

        def on_fit_start(self, trainer):
            after["before"] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
            self.hook = trainer.model.register_forward_hook(
                lambda module, args, out: seen.__setitem__("images", seen["images"] + len(args[0]))
            )

        def on_epoch_start(self, trainer):
            if self.hook is not None:
                self.hook.remove()
                self.hook = None
                after.update(now={k: v.clone() for k, v in trainer.model.state_dict().items()}, head=head_names(trainer.model, 2),
                             train=len(trainer.data.train), val=len(trainer.data.val))  # fmt: skip

    api_train(str(digits), weights=str(digit_run), freeze_epochs=20, epochs=1, **QUICK_OPTIONS, out="tuned", callbacks=[Counting()])
    out = caplog.text
    assert seen["images"] == after["train"] + after["val"]  # not 20 epochs' worth (digits: no flips, no TTA)
    changed = {k for k in after["now"] if not torch.equal(after["now"][k], after["before"][k])}
    assert changed == after["head"]  # batch-norm statistics included in the unchanged
    assert "frozen backbone: head trained 20 epochs on cached features" in out
    summary = json.loads(Path("tuned/summary.json").read_text())
    assert summary["frozen_stage"]["epochs"] == 20 and 0 <= summary["frozen_stage"]["val_acc"] <= 1
    config = json.loads(Path("tuned/config.json").read_text())
    assert (config["model"], config["optimizer"], config["lr_mult"], config["freeze_epochs"]) == ("digitnet", "adamw", 100.0, 20)


def test_the_frozen_stage_alone_learns_a_head_on_good_features(digit_run, digits):
    """Features of a digit classifier separate 3s from 8s: the head trained on them alone (the recipe's freeze epochs)
    gets the classes before any epoch of the whole model."""
    summary = api_train(str(digits), weights=str(digit_run), epochs=1, batch_size=8, device="cpu").summary
    assert summary["frozen_stage"]["val_acc"] >= 0.9


def test_no_frozen_stage_from_scratch_or_with_freeze_epochs_0(digit_run, digits):
    assert api_train(str(digits), epochs=1, batch_size=8, device="cpu").summary["frozen_stage"] is None
    run = api_train(str(digits), weights=str(digit_run), freeze_epochs=0, epochs=1, batch_size=8, device="cpu")
    assert run.summary["frozen_stage"] is None
    assert run.config["freeze_epochs"] == 0


def test_a_stop_in_the_frozen_stage_resumes_from_the_initial_weights(digit_run, digits):
    class Stopping(Callback):  # SIGTERM as the frozen stage starts
        def on_fit_start(self, trainer):
            trainer.request_stop(signal.SIGTERM)

    run = api_train(str(digits), weights=str(digit_run), epochs=1, batch_size=8, device="cpu", out="tuned", callbacks=[Stopping()])
    assert run.interrupted is not None and run.interrupted.signum == signal.SIGTERM
    last = checkpoint.load(Path("tuned"), which="last")
    source = checkpoint.load(digit_run)["state_dict"]
    assert last["progress"]["frozen_stage"] is None and last["progress"]["epoch"] == 0
    assert torch.equal(last["state_dict"]["0.weight"], source["0.weight"])  # the transferred weights were kept
    summary = api_resume("tuned").summary
    freeze_epochs = json.loads(Path("tuned/config.json").read_text())["freeze_epochs"]
    assert summary["frozen_stage"]["epochs"] == freeze_epochs >= 5 and summary["epochs_run"] == 1


def test_photos_fine_tune_the_imagenet_resnet18_when_its_weights_are_cached(capsys, caplog):
    imagenet = cache_torchvision_weights("resnet18")
    start = WeightsAtStart()
    api_train(str(photos()), image_size=72, epochs=1, **QUICK_OPTIONS, out="run", callbacks=[start])
    out = caplog.text
    assert "--pretrained" not in out
    config = json.loads(Path("run/config.json").read_text())
    assert (config["model"], config["pretrained"], config["crop_scale"], config["optimizer"]) == ("resnet18", "on", 0.35, "adamw")
    assert "120 tensors loaded, 2 skipped (shape or name differ), 2 new (fc.weight, fc.bias)" in out
    assert f"frozen backbone: head trained {config['freeze_epochs']} epochs" in out
    assert torch.equal(start.weights["conv1.weight"], imagenet["conv1.weight"])  # the ImageNet stem: 7x7/2
    ckpt = checkpoint.load(Path("run"))
    assert ckpt["mean"] == [0.485, 0.456, 0.406]
    # Everything downstream works on the result: evaluate (same split and size), predict, export with its ONNX parity check.
    code, out, err = run_cli(capsys, "evaluate", "run")
    assert code == 0 and "accuracy" in out, err
    code, out, err = run_cli(capsys, "predict", "run", "photos/cat/000.png", "--format", "json")
    assert code == 0 and json.loads(out)[0]["predictions"][0]["label"] in ("cat", "dog"), err
    code, out, err = run_cli(capsys, "export", "run", "--parity-images", "4")
    assert code == 0, err


def test_photos_train_from_scratch_after_one_line_when_no_weights_can_be_had(capsys):
    code, out, err = run_cli(capsys, "train", "--data", photos(), "--image-size", "72", "--epochs", "1", *QUICK, "--out", "run")
    assert code == 0, err
    lines = [line for line in err.splitlines() if "--pretrained" in line]
    assert len(lines) == 1 and lines[0].startswith("imgcls: --pretrained auto: no ImageNet weights for resnet18")
    assert lines[0].endswith("training from scratch instead") and "resnet18-f37072fd.pth" in lines[0]
    config = json.loads(Path("run/config.json").read_text())
    assert (config["model"], config["pretrained"], config["freeze_epochs"], config["lr_mult"]) == ("speednet", "off", 0, 1.0)


def test_the_size_photos_were_resized_to_is_recorded_for_resume_and_evaluate(capsys):
    make_folder(Path("mixed"), per_class=10, size=(150, 120))
    make_folder(Path("mixed"), per_class=3, size=(90, 200), seed=1)  # overwrites some files: two sizes in the folder
    code, out, err = run_cli(capsys, "train", "--data", "mixed", "--epochs", "1", *QUICK, "--pretrained", "off", "--out", "run")
    assert code == 0, err
    assert "resizing to 128x128" in err
    assert json.loads(Path("run/config.json").read_text())["image_size"] == 128
    assert checkpoint.load(Path("run"))["in_shape"] == [3, 128, 128]


def test_lr_find_starts_from_the_weights_it_is_given(capsys, monkeypatch, digit_run, digits):
    started = {}
    from imgcls.training import lr_find as lr_find_module

    probe = lr_find_module.probe

    def recording(cfg, data, run_dir, steps, start_lr, end_lr, initial):
        started["initial"] = initial
        return probe(cfg, data, run_dir, steps, start_lr, end_lr, initial)

    monkeypatch.setattr(lr_find_module, "probe", recording)
    code, out, err = run_cli(capsys, "lr-find", "--data", digits, "--weights", digit_run, "--steps", "5", *QUICK)
    assert code == 0, err
    assert started["initial"].path == digit_run / "best.pt" and "digitnet" in out


def test_a_fine_tuned_photo_model_is_served(capsys):
    pytest.importorskip("fastapi", reason="imgcls[serve] is not installed")
    from fastapi.testclient import TestClient

    from imgcls.inference import Predictor
    from imgcls.server.app import create_app

    cache_torchvision_weights("resnet18")
    code, _, err = run_cli(capsys, "train", "--data", photos(), "--image-size", "72", "--epochs", "1", *QUICK, "--out", "run")
    assert code == 0, err
    with TestClient(create_app(Predictor.open(Path("run"), device="cpu"), top_k=2)) as client:
        assert client.get("/model").json()["input_size"] == [3, 72, 72]
        image = Path("photos/dog/003.png").read_bytes()
        answer = client.post("/predict", files={"file": ("dog.png", image, "image/png")})
    assert answer.status_code == 200, answer.text
    assert {p["label"] for p in answer.json()["predictions"]} == {"cat", "dog"}
