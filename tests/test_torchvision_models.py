"""torchvision's classification models as --model, and --pretrained: their ImageNet weights from torch.hub's cache."""

import importlib.util
import json
from pathlib import Path
from urllib.error import URLError

import pytest
import torch

from conftest import WeightsAtStart, api_resume, api_train, cache_torchvision_weights, logged, make_folder, one_line_error, run_cli
from imgcls import checkpoint
from imgcls.errors import ImgclsError
from imgcls.models import MODELS, create_model, get_model_info
from imgcls.models.pretrained import pretrained_weights
from imgcls.models.torchvision_models import IMAGENET_MEAN, IMAGENET_STD, cache_path, default_weights
from imgcls.training.callbacks import Callback

QUICK = ["--epochs", "1", "--batch-size", "8", "--device", "cpu"]
NEEDS_TIMM = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed: pip install 'imgcls[timm]'")


@pytest.fixture(autouse=True)
def torch_home(tmp_path, monkeypatch):
    """torch.hub's cache (where --pretrained looks) inside the test's folder: nothing real is read or downloaded."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def rgb_folder() -> Path:
    return make_folder(Path("two"), per_class=10, size=(32, 32))


def test_names_reach_built_ins_first_and_torchvision_otherwise():
    assert get_model_info("resnet18") is MODELS["resnet18"]  # the small-image built-in shadows torchvision's
    assert create_model("tv:resnet18", (3, 32, 32), 2).conv1.kernel_size == (7, 7)
    assert create_model("torchvision:resnet18", (3, 32, 32), 2).fc.out_features == 2
    assert create_model("mobilenet_v3_small", (3, 32, 32), 5).classifier[-1].out_features == 5
    with pytest.raises(ImgclsError, match="unknown model 'tv:nosuch'.*imgcls models --all"):
        get_model_info("tv:nosuch")


@pytest.mark.parametrize("model", ["tv:resnet18", "mobilenet_v3_small"])
def test_a_torchvision_model_trains_from_scratch_when_auto_finds_no_weights(model, capsys):
    code, out, err = run_cli(capsys, "train", "--data", rgb_folder(), "--model", model, *QUICK)
    assert code == 0, err
    lines = [line for line in err.splitlines() if "--pretrained" in line]
    assert len(lines) == 1, err
    path = cache_path(default_weights(model))
    assert lines[0].startswith(f"imgcls: --pretrained auto: no ImageNet weights for {model.removeprefix('tv:')}")
    assert str(path) in lines[0] and "IMGCLS_OFFLINE" in lines[0] and lines[0].endswith("training from scratch instead")
    run = Path("runs") / f"two-{model.replace(':', '-')}-1"
    assert json.loads((run / "config.json").read_text())["pretrained"] == "off"
    ckpt = checkpoint.load(run)
    assert ckpt["model"] == model and ckpt["mean"] != list(IMAGENET_MEAN)


def test_pretrained_on_starts_from_the_cached_imagenet_weights_with_a_new_head(capsys, monkeypatch, caplog):
    imagenet = cache_torchvision_weights("tv:resnet18")
    start = WeightsAtStart()
    api_train(str(rgb_folder()), model="tv:resnet18", pretrained="on", epochs=1, batch_size=8, device="cpu", lr=0.001, out="run",
              callbacks=[start])  # fmt: skip  # a fine-tuning lr
    out = caplog.text
    assert "--pretrained" not in out
    path = cache_path(default_weights("tv:resnet18"))
    assert f"weights from {path}: 120 tensors loaded, 2 skipped (shape or name differ), 2 new (fc.weight, fc.bias)" in out
    body = [k for k in imagenet if not k.startswith("fc.")]
    assert all(torch.equal(start.weights[k], imagenet[k]) for k in body)
    assert start.weights["fc.weight"].shape == (2, 512)
    ckpt = checkpoint.load(Path("run"))
    assert (ckpt["mean"], ckpt["std"]) == (list(IMAGENET_MEAN), list(IMAGENET_STD))
    assert json.loads(Path("run/config.json").read_text())["pretrained"] == "on"

    # The checkpoint rebuilds the model for predict and export (ONNX, with its parity check).
    code, out, err = run_cli(capsys, "predict", "run", "two/cat/000.png", "--format", "json")
    assert code == 0, err
    assert json.loads(out)[0]["predictions"][0]["label"] in ("cat", "dog")
    code, out, err = run_cli(capsys, "export", "run", "--parity-images", "4")
    assert code == 0, err
    assert Path("run/best.onnx").is_file()

    # Resuming keeps ImageNet's normalisation and never loads the weights file again.
    path.unlink()
    resumed = {}

    class Resumed(Callback):
        def on_fit_start(self, trainer):
            resumed["mean"] = trainer.data.mean

    api_resume("run", callbacks=[Resumed()])
    assert resumed["mean"] == IMAGENET_MEAN


def test_pretrained_on_without_the_weights_is_a_one_line_error_naming_the_file(capsys):
    err = one_line_error(capsys, "train", "--data", rgb_folder(), "--model", "mobilenet_v3_small", "--pretrained", "on", *QUICK)
    assert str(cache_path(default_weights("mobilenet_v3_small"))) in err and "IMGCLS_OFFLINE" in err
    assert not Path("runs").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "cnn", "--pretrained", "on"], "model 'cnn' has no pretrained weights"),
        (["--pretrained", "on"], "model 'the recipe default' has no pretrained weights"),
        (["--model", "tv:resnet18", "--pretrained", "on", "--weights", "x.pt"], "--pretrained on and --weights both"),
    ],
)
def test_pretrained_on_without_imagenet_weights_to_use_is_refused(capsys, args, message):
    torch.save(create_model("tv:resnet18", (3, 32, 32), 2).state_dict(), "x.pt")
    assert message in one_line_error(capsys, "train", "--data", rgb_folder(), *QUICK, *args)


def test_an_unknown_pretrained_setting_is_refused():
    with pytest.raises(ImgclsError, match="unknown pretrained 'yes': choose one of auto, on, off"):
        api_train(pretrained="yes")


@pytest.mark.parametrize(
    "model, data, message",
    [
        ("mobilenet_v3_small", "mnist-sample", "takes 3-channel images, the data has 1"),
        ("vit_b_16", "rgb", "takes 224x224 images, got 32x32: pass --image-size 224"),
        pytest.param(
            "timm:vit_tiny_patch16_224", "rgb", "model 'timm:vit_tiny_patch16_224' takes 224x224 images, got 32x32", marks=NEEDS_TIMM
        ),
        pytest.param(
            "timm:convnext_nano", "mnist-sample", "model 'timm:convnext_nano' needs images of at least 32x32, got 28x28", marks=NEEDS_TIMM
        ),
    ],
)
def test_data_a_torchvision_or_timm_model_cannot_take_is_refused_before_a_run_folder_is_made(capsys, model, data, message):
    data = rgb_folder() if data == "rgb" else data
    assert message in one_line_error(capsys, "train", "--data", data, "--model", model, "--pretrained", "off", *QUICK)
    assert not Path("runs").exists()


def test_models_lists_the_torchvision_models_and_their_cached_weights(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0 and "`imgcls models --all`" in out and "tv:resnet18" in out
    code, out, _ = run_cli(capsys, "models", "--all")
    assert code == 0 and {"resnet50", "efficientnet_b0", "vit_b_16"} <= set(out.split())
    cache_torchvision_weights("tv:resnet18")
    code, out, _ = run_cli(capsys, "models", "--pretrained")
    rows = {line.split()[0]: line for line in out.splitlines()}
    assert rows["resnet18"].split()[1:] == ["resnet18-f37072fd.pth", "cached"]
    assert rows["resnet50"].endswith("not cached")


def test_a_failed_download_is_one_line_in_auto_and_an_error_in_on(monkeypatch, caplog):
    def no_network(url, **kwargs):
        raise URLError("no network")

    monkeypatch.setenv("IMGCLS_OFFLINE", "0")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    assert pretrained_weights("efficientnet_b0", (3, 64, 64), "auto", None) == (None, "off")
    err = logged(caplog)
    assert len(err.splitlines()) == 1 and "no network" in err and str(cache_path(default_weights("efficientnet_b0"))) in err
    with pytest.raises(ImgclsError, match="no network.*put the file at that path, or use --pretrained auto"):
        pretrained_weights("efficientnet_b0", (3, 64, 64), "on", None)
