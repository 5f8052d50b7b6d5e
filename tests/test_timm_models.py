"""timm's models as --model timm:NAME, and --pretrained: their weights from the Hugging Face cache."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

timm = pytest.importorskip("timm", reason="timm is not installed: pip install 'imgcls[timm]'")

from huggingface_hub import constants  # noqa: E402 - timm's dependencies, present when timm is
from safetensors.torch import save_file  # noqa: E402

from conftest import WeightsAtStart, api_train, logged, make_folder, one_line_error, run_cli  # noqa: E402
from imgcls import checkpoint  # noqa: E402
from imgcls.errors import ImgclsError  # noqa: E402
from imgcls.models import create_model, get_model_info  # noqa: E402
from imgcls.models.pretrained import pretrained_weights  # noqa: E402

QUICK = ["--epochs", "1", "--batch-size", "8", "--device", "cpu"]
QUICK_OPTIONS = {"epochs": 1, "batch_size": 8, "device": "cpu"}
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    """The Hugging Face cache (where --pretrained looks for timm's weights) inside the test's folder, and the Hub
    offline: nothing real is read or downloaded. huggingface_hub reads HF_HOME and HF_HUB_OFFLINE when imported, so
    its constants are set rather than the environment."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hf" / "hub"


def rgb_folder() -> Path:
    return make_folder(Path("two"), per_class=10, size=(32, 32))


def grey_folder() -> Path:
    """MNIST's size and channels; mnist-sample itself takes a minute an epoch for an ImageNet network on a CPU."""
    return make_folder(Path("grey"), per_class=10, size=(28, 28), mode="L")


def repo_cache(model: str) -> Path:
    return Path(constants.HF_HUB_CACHE) / ("models--" + timm.models.get_pretrained_cfg(model).hf_hub_id.replace("/", "--"))


def imagenet_state(model: str) -> dict[str, torch.Tensor]:
    """A 1000-class RGB state dict of a timm model (random), with batch-norm statistics of real activations, as trained
    weights have: the initial ones blow eval logits up to hundreds."""
    torch.manual_seed(1)
    net = timm.create_model(model, pretrained=False)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    with torch.no_grad():
        net(torch.randn(16, 3, 32, 32))
    return net.state_dict()


def cache_hub_file(model: str) -> tuple[dict[str, torch.Tensor], Path]:
    """What a download from the Hub leaves in its cache: snapshots/<commit>/model.safetensors and refs/main naming the commit."""
    state = imagenet_state(model)
    path = repo_cache(model) / "snapshots" / COMMIT / "model.safetensors"
    path.parent.mkdir(parents=True)
    save_file(state, str(path))
    (repo_cache(model) / "refs").mkdir()
    (repo_cache(model) / "refs" / "main").write_text(COMMIT)
    return state, path


def test_a_timm_model_trains_predicts_and_exports(capsys):
    code, out, err = run_cli(
        capsys, "train", "--data", rgb_folder(), "--model", "timm:resnet18", "--pretrained", "off", *QUICK, "--out", "run"
    )
    assert code == 0, err
    assert "model timm:resnet18: 11,177,538 params" in out
    ckpt = checkpoint.load(Path("run"))
    assert ckpt["model"] == "timm:resnet18" and ckpt["state_dict"]["conv1.weight"].shape == (64, 3, 7, 7)  # timm's, not the built-in
    assert ckpt["state_dict"]["fc.weight"].shape == (2, 512)

    code, out, err = run_cli(capsys, "predict", "run", "two/cat/000.png", "--format", "json")
    assert code == 0, err
    assert json.loads(out)[0]["predictions"][0]["label"] in ("cat", "dog")
    code, out, err = run_cli(capsys, "export", "run", "--parity-images", "4")
    assert code == 0, err
    assert "parity on 4 images" in out and Path("run/best.onnx").is_file()


def test_grey_data_trains_a_timm_model_built_for_one_channel(capsys):
    code, out, err = run_cli(capsys, "train", "--data", grey_folder(), "--model", "timm:regnety_002", "--pretrained", "off", *QUICK)
    assert code == 0, err
    ckpt = checkpoint.load(Path("runs/grey-timm-regnety_002-1"))
    assert ckpt["in_shape"] == [1, 28, 28] and ckpt["state_dict"]["stem.conv.weight"].shape[1] == 1


def test_pretrained_on_starts_from_the_cached_weights_with_a_new_head(caplog):
    hub, path = cache_hub_file("resnet18")
    start = WeightsAtStart()
    api_train(str(rgb_folder()), model="timm:resnet18", pretrained="on", **QUICK_OPTIONS, lr=0.001, out="run", callbacks=[start])
    assert "--pretrained" not in caplog.text
    assert (
        f"weights from {path}: {len(hub) - 2} tensors loaded, 2 skipped (shape or name differ), 2 new (fc.weight, fc.bias)" in caplog.text
    )
    assert all(torch.equal(start.weights[k], hub[k]) for k in hub if not k.startswith("fc."))
    assert start.weights["fc.weight"].shape == (2, 512)
    cfg = timm.models.get_pretrained_cfg("resnet18")
    ckpt = checkpoint.load(Path("run"))
    assert (ckpt["mean"], ckpt["std"]) == (list(cfg.mean), list(cfg.std))
    assert json.loads(Path("run/config.json").read_text())["pretrained"] == "on"


def test_grey_data_gets_the_first_convolution_summed_over_rgb_and_the_mean_averaged(caplog):
    hub, path = cache_hub_file("resnet18")
    start = WeightsAtStart()
    api_train(str(grey_folder()), model="timm:resnet18", pretrained="on", **QUICK_OPTIONS, out="run", callbacks=[start])
    assert f"weights from {path}: {len(hub) - 2} tensors loaded, 2 skipped" in caplog.text
    assert torch.allclose(start.weights["conv1.weight"], hub["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(start.weights["layer1.0.conv1.weight"], hub["layer1.0.conv1.weight"])
    cfg = timm.models.get_pretrained_cfg("resnet18")
    ckpt = checkpoint.load(Path("run"))
    assert ckpt["mean"] == pytest.approx([sum(cfg.mean) / 3]) and ckpt["std"] == pytest.approx([sum(cfg.std) / 3])


def test_without_the_weights_on_is_an_error_naming_the_path_auto_a_line_and_that_path_then_works(capsys):
    where = repo_cache("resnet18") / "snapshots" / "main" / "model.safetensors"
    args = ["train", "--data", rgb_folder(), "--model", "timm:resnet18", *QUICK]
    err = one_line_error(capsys, *args, "--pretrained", "on")
    assert "no ImageNet weights for resnet18.a1_in1k (timm) (https://huggingface.co/timm/resnet18.a1_in1k -> " in err
    assert f"{where}: IMGCLS_OFFLINE is set" in err and err.strip().endswith(
        "put the file at that path, or use --pretrained auto to train from scratch"
    )
    assert not Path("runs").exists()

    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    lines = [line for line in err.splitlines() if "--pretrained" in line]
    assert len(lines) == 1 and str(where) in lines[0] and lines[0].endswith("training from scratch instead"), err
    assert json.loads(Path("runs/two-timm-resnet18-1/config.json").read_text())["pretrained"] == "off"

    # The file put by hand at the path the message names is used, without refs/main.
    where.parent.mkdir(parents=True)
    save_file(imagenet_state("resnet18"), str(where))
    code, out, err = run_cli(capsys, *args, "--pretrained", "on")
    assert code == 0, err
    assert f"weights from {where}: " in out


def test_a_failed_download_is_one_line_in_auto_and_an_error_in_on(monkeypatch, caplog):
    monkeypatch.setenv("IMGCLS_OFFLINE", "0")  # so the Hub is asked, and refuses: it is offline
    assert pretrained_weights("timm:resnet18", (3, 32, 32), "auto", None) == (None, "off")
    err = logged(caplog)
    assert len(err.splitlines()) == 1 and str(repo_cache("resnet18")) in err and err.endswith("training from scratch instead\n")
    with pytest.raises(ImgclsError, match=r"resnet18\.a1_in1k \(timm\).*put the file at that path, or use --pretrained auto"):
        pretrained_weights("timm:resnet18", (3, 32, 32), "on", None)


@pytest.mark.parametrize(
    "model, message",
    [
        ("timm:nosuch", f"unknown model 'timm:nosuch': timm {timm.__version__} has no model 'nosuch' (`imgcls models --all` lists them)"),
        ("timm:resnet18.nosuch", "timm's resnet18 has no weights 'nosuch' (its tags: a1_in1k, a2_in1k, "),
        ("timm:", "has no model ''"),
    ],
)
def test_an_unknown_timm_name_is_a_one_line_error(capsys, model, message):
    assert message in one_line_error(capsys, "train", "--data", rgb_folder(), "--model", model, *QUICK)


def test_without_timm_a_timm_model_says_how_to_install_it(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now fails as if it were not installed
    err = one_line_error(capsys, "train", "--data", rgb_folder(), "--model", "timm:resnet18", *QUICK)
    assert "model 'timm:resnet18' needs a package that is not installed (timm): pip install 'imgcls[timm]'" in err
    code, out, err = run_cli(capsys, "models", "--all")
    assert code == 0 and "resnet50" in out.split() and "timm:" not in out
    assert err == "timm's models (--model timm:NAME) need timm: pip install 'imgcls[timm]'\n"


@pytest.mark.parametrize("model, side", [("timm:resnet18", 1), ("timm:convnext_nano", 32), ("timm:inception_v3", 75)])
def test_the_smallest_side_found_on_the_meta_device_is_what_the_real_model_takes(model, side):
    assert get_model_info(model).min_size == side
    net = create_model(model, (3, side, side), 2).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, side, side)).shape == (1, 2)
        if side > 1:
            with pytest.raises(RuntimeError):
                net(torch.randn(1, 3, side - 1, side - 1))


def test_models_lists_timm_models_and_the_cached_weights(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0 and "timm:NAME" in out
    code, out, _ = run_cli(capsys, "models", "--all")
    assert code == 0 and {"resnet50", "timm:resnet18", "timm:convnext_nano", "timm:vit_tiny_patch16_224"} <= set(out.split())
    cache_hub_file("resnet18")
    code, out, err = run_cli(capsys, "models", "--pretrained")
    rows = [line.split() for line in out.splitlines() if line.startswith("timm:")]
    assert code == 0 and rows == [["timm:resnet18.a1_in1k", "model.safetensors", "cached"]]
    assert "resnet50" in out.split()  # torchvision's, cached or not
    assert f"timm: only weights already in the Hugging Face cache ({constants.HF_HUB_CACHE}) are listed" in err


def test_timm_is_imported_only_for_a_timm_model():
    code = (
        "import sys; import imgcls.cli, imgcls.training.run; from imgcls.models import get_model_info; "
        "get_model_info('cnn'); get_model_info('resnet50'); assert 'timm' not in sys.modules; "
        "get_model_info('timm:resnet18'); assert 'timm' in sys.modules"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}  # this checkout's imgcls, from the test's folder
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
