"""imgcls train --weights: start a run from another run's weights or a state dict file, where names and shapes fit."""

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import StopAt, WeightsAtStart, api_resume, api_train, make_folder, one_line_error, run_cli, save_checkpoint
from imgcls import checkpoint
from imgcls.errors import ImgclsError
from imgcls.models import create_model
from imgcls.models.weights import read_state_dict, transfer

QUICK = ["--model", "cnn", "--epochs", "1", "--device", "cpu"]


@pytest.fixture
def source_run(capsys):
    """A cnn trained for one epoch on two classes of 16x16 colour images."""
    code, _, err = run_cli(capsys, "train", "--data", make_folder(Path("two")), *QUICK, "--out", "source")
    assert code == 0, err
    return Path("source")


def test_a_run_with_other_classes_gives_its_body_and_the_new_run_a_new_head(source_run, caplog):
    three = make_folder(Path("three"), classes=("ant", "bee", "cow"))
    start = WeightsAtStart()
    api_train(str(three), model="cnn", epochs=1, device="cpu", weights=str(source_run), out="target", callbacks=[start])
    assert (
        f"weights from {source_run / 'best.pt'}: 6 tensors loaded, 2 skipped (shape or name differ), 2 new (head.weight, head.bias)"
        in caplog.text
    )
    source = checkpoint.load(source_run)["state_dict"]
    for name in ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias"):
        assert torch.equal(start.weights[name], source[name]), name
    assert start.weights["head.weight"].shape == (3, 128) and source["head.weight"].shape == (2, 128)
    assert json.loads(Path("target/config.json").read_text())["weights"] == str(source_run.resolve())


def test_a_state_dict_saved_under_ddp_or_torch_compile_loads_without_its_prefixes(tmp_path):
    source = create_model("cnn", (3, 16, 16), 2)
    torch.save({f"module._orig_mod.{k}": v for k, v in source.state_dict().items()}, tmp_path / "ddp.pth")
    model = create_model("cnn", (3, 16, 16), 2)
    report = transfer(model, read_state_dict(tmp_path / "ddp.pth"), "cnn")
    assert len(report.loaded) == 8 and not report.skipped and not report.new
    for (k, v), w in zip(model.state_dict().items(), source.state_dict().values()):
        assert torch.equal(v, w), k


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "model_state_dict"])
def test_the_common_wrappers_of_training_scripts_are_unwrapped(tmp_path, wrapper):
    source = create_model("mlp", (1, 8, 8), 3)
    torch.save({"epoch": 7, wrapper: source.state_dict(), "optimizer": {"state": {}}}, tmp_path / "w.pt")
    weights = read_state_dict(tmp_path / "w.pt")
    assert weights.state_dict.keys() == source.state_dict().keys()


def test_safetensors_files_load(tmp_path):
    from safetensors.torch import save_file

    source = create_model("cnn", (1, 16, 16), 4)
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    model = create_model("cnn", (1, 16, 16), 4)
    assert len(transfer(model, read_state_dict(tmp_path / "w.safetensors"), "cnn").loaded) == 8
    assert torch.equal(model.state_dict()["conv2.weight"], source.state_dict()["conv2.weight"])


def test_without_the_safetensors_package_a_safetensors_file_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "w.safetensors").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # import fails as if not installed
    with pytest.raises(ImgclsError, match=r"pip install 'imgcls\[safetensors\]'"):
        read_state_dict(tmp_path / "w.safetensors")


def test_torchvision_resnet18_weights_fill_all_but_the_imagenet_stem_and_head(tmp_path):
    from torchvision.models import resnet18

    torch.save(resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")  # what its ImageNet download holds
    model = create_model("resnet18", (3, 32, 32), 10)
    report = transfer(model, read_state_dict(tmp_path / "resnet18.pth"), "resnet18")
    different = ["conv1.weight", "fc.weight", "fc.bias"]  # a 3x3 stem for small images, 10 classes instead of 1000
    assert report.skipped == different and report.new == different
    assert len(report.loaded) == len(model.state_dict()) - 3


def test_weights_of_another_architecture_are_an_error_not_a_run_from_scratch(tmp_path, capsys):
    torch.save(create_model("mlp", (3, 16, 16), 2).state_dict(), tmp_path / "mlp.pt")
    err = one_line_error(capsys, "train", "--data", make_folder(Path("two")), *QUICK, "--weights", tmp_path / "mlp.pt")
    assert "fits none of model 'cnn''s 8 tensors: it was trained for another architecture; pick the matching --model" in err


def test_a_matching_bias_alone_does_not_count_and_an_imgcls_checkpoint_names_its_model(capsys):
    # A 2-class cnn and a 2-class mlp share only "head.bias" (shape [2]).
    save_checkpoint(Path("cnn.pt"), model="cnn", in_shape=(3, 16, 16), classes=("cat", "dog"))
    data = make_folder(Path("two"))
    err = one_line_error(capsys, "train", "--data", data, "--model", "mlp", "--epochs", "1", "--weights", "cnn.pt")
    assert "fits none of model 'mlp''s 10 tensors: it holds a 'cnn' model: pass --model cnn" in err


def truncated_state_dict() -> bytes:
    torch.save(create_model("cnn", (3, 16, 16), 2).state_dict(), "whole.pt")
    data = Path("whole.pt").read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "make,fragment",
    [
        (lambda: None, "does not exist"),
        (lambda: Path("w.pt").write_bytes(truncated_state_dict()), "it is damaged, or not tensors saved with torch.save"),
        (lambda: torch.save({"epoch": 3, "lr": 0.1}, "w.pt"), "holds no named tensors"),
        (lambda: Path("w.pt").mkdir(), "is a folder without best.pt or last.pt"),
        (lambda: Path("w.safetensors").write_bytes(b"\x08\x00"), "it is damaged or not a safetensors file"),
    ],
    ids=["missing", "corrupt", "no-tensors", "empty-folder", "corrupt-safetensors"],
)
def test_unreadable_weights_are_one_line_before_any_data_loads_or_run_folder_is_made(capsys, make, fragment):
    make()
    path = "w.safetensors" if Path("w.safetensors").exists() else "w.pt"
    err = one_line_error(capsys, "train", "--data", "no-such-folder", "--weights", path, "--out", "run")
    assert f"--weights {path}" in err and fragment in err
    assert not Path("run").exists()


def test_a_resumed_run_continues_from_last_pt_not_from_the_initial_weights(source_run, capsys):
    three = make_folder(Path("three"), classes=("ant", "bee", "cow"))
    weights = Path("initial.pt")
    weights.write_bytes((source_run / "best.pt").read_bytes())
    options = {"model": "cnn", "epochs": 2, "batch_size": 4, "device": "cpu", "weights": str(weights)}
    expected = api_train(str(three), **options, out="straight").summary

    assert api_train(str(three), **options, out="resumed", callbacks=[StopAt(2, 2)]).interrupted is not None
    weights.unlink()  # a resume needs only the run folder
    assert one_line_error(capsys, "train", "--resume", "resumed", "--weights", source_run).endswith("drop --weights\n")
    got = api_resume("resumed").summary
    assert got["test_loss"] == expected["test_loss"]
    straight, resumed = checkpoint.load("straight", "last"), checkpoint.load("resumed", "last")
    assert straight["progress"]["history"][1]["train_loss"] == resumed["progress"]["history"][1]["train_loss"]
    for k, v in straight["state_dict"].items():
        assert torch.equal(v, resumed["state_dict"][k]), k


def test_a_run_started_from_a_speednet_run_builds_the_same_speednet(capsys):
    """Without --model the weights' model is used, with its options (width, whitening stem, logit scale) unless given anew."""
    shape = ["--model", "speednet", "--width", "8", "--whiten", "--logit-scale", "0.5"]
    code, _, err = run_cli(capsys, "train", "--data", make_folder(Path("two")), *shape, "--epochs", "1", "--device", "cpu", "--out", "src")
    assert code == 0, err
    code, out, err = run_cli(capsys, "train", "--data", make_folder(Path("two")), "--weights", "src", "--epochs", "1", "--out", "dst")
    assert code == 0, err
    tensors = len(checkpoint.load(Path("src"))["state_dict"])
    assert f"{tensors} tensors loaded, 0 skipped" in out
    config = json.loads(Path("dst/config.json").read_text())
    assert (config["model"], config["width"], config["whiten"], config["logit_scale"]) == ("speednet", 8, True, 0.5)
    code, out, err = run_cli(
        capsys, "train", "--data", make_folder(Path("two")), "--weights", "src", "--width", "16", "--epochs", "1", "--out", "wide"
    )
    assert code == 0, err
    assert json.loads(Path("wide/config.json").read_text())["width"] == 16 and "0 skipped" not in out  # given anew: it wins
