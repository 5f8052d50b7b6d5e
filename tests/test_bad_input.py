"""Bad option values, output paths and damaged model files: one line naming the problem and the fix, exit 2, no traceback."""

import errno
import os
import subprocess
import sys

import pytest
import torch

from conftest import one_line_error, save_checkpoint
from imgcls.config import TrainConfig, check
from imgcls.errors import ImgclsError
from imgcls.exporter import export

QUICK = ["--model", "mlp", "--epochs", "1"]  # so that the old code, which let these through, failed fast


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["train", "--batch-size", "0"], "--batch-size must be positive, got 0"),
        (["train", *QUICK, "--lr", "inf"], "--lr must be positive and finite, got inf"),
        (["train", *QUICK, "--lr", "nan"], "--lr must be positive and finite, got nan"),
        (["train", *QUICK, "--weight-decay", "-1"], "--weight-decay must be zero or more and finite, got -1.0"),
        (["train", *QUICK, "--weight-decay", "nan"], "--weight-decay must be zero or more and finite, got nan"),
        (["train", *QUICK, "--label-smoothing", "1"], "--label-smoothing must be in [0, 1), got 1.0"),
        (["train", *QUICK, "--seed", str(2**64)], "--seed must be a 64-bit integer"),
        (["train", *QUICK, "--val-fraction", "inf"], "--val-fraction must be between 0 and 1, got inf"),
        (["train", *QUICK, "--image-size", "0"], "--image-size must be between 1 and 7,071 (the 50-megapixel decode limit), got 0"),
        (["train", *QUICK, "--image-size", "-3"], "--image-size must be between 1 and 7,071 (the 50-megapixel decode limit), got -3"),
        (["train", *QUICK, "--dropout", "1"], "--dropout must be in [0, 1), got 1.0"),
        (["train", *QUICK, "--dropout", "-0.1"], "--dropout must be in [0, 1), got -0.1"),
        (["train", *QUICK, "--dropout", "nan"], "--dropout must be in [0, 1), got nan"),
        (["train", *QUICK, "--crop-padding", "-1"], "--crop-padding must be zero or more, got -1"),
        (["train", *QUICK, "--rotate", "-5"], "--rotate must be between 0 and 180 degrees, got -5.0"),
        (["train", *QUICK, "--rotate", "nan"], "--rotate must be between 0 and 180 degrees, got nan"),
        (["train", *QUICK, "--precision", "fp16", "--device", "cpu"], "--precision fp16 runs ~90x slower than fp32 on a CPU"),
        (["evaluate", "run", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["report", "run", "--batch-size", "-1"], "--batch-size must be at least 1, got -1"),
        (["predict", "run", "x.png", "--top-k", "0"], "--top-k must be at least 1, got 0"),
        (["predict", "run", "x.png", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["export", "run", "--tolerance", "nan"], "--tolerance must be zero or a positive number, got nan"),
        (["export", "run", "--tolerance", "-1"], "--tolerance must be zero or a positive number, got -1.0"),
        (["export", "run", "--parity-images", "0"], "--parity-images must be at least 1, got 0"),
        (["serve", "run", "--port", "99999"], "--port must be between 1 and 65535, got 99999"),
        (["serve", "run", "--port", "0"], "--port must be between 1 and 65535, got 0"),
        (["serve", "run", "--max-upload-mb", "nan"], "--max-upload-mb must be a positive number, got nan"),
        (["serve", "run", "--max-upload-mb", "inf"], "--max-upload-mb must be a positive number, got inf"),
        (["serve", "run", "--max-upload-mb", "0"], "--max-upload-mb must be a positive number, got 0.0"),
        (["datasets", "--show", "mnist-sample", "--per-class", "1000"], "--per-class must be between 1 and 100, got 1000"),
        (["models", "--summary", "mlp", "--classes", "0"], "--classes must be at least 1, got 0"),
        (["models", "--summary", "mlp", "--input", "0,28,28"], "--input must be C,H,W sizes of at least 1"),
    ],
)
def test_bad_option_values_name_the_option(capsys, args, fragment):
    assert fragment in one_line_error(capsys, *args)


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"epochs": 2.5}, "--epochs must be an integer, got 2.5"),
        ({"batch_size": True}, "--batch-size must be an integer, got True"),
        ({"lr": "0.1"}, "--lr must be a number, got '0.1'"),
        ({"momentum": 1.0}, "--momentum must be in [0, 1), got 1.0"),
    ],
)
def test_python_api_configs_are_checked_too(settings, message):
    with pytest.raises(ImgclsError) as error:
        check(TrainConfig(**settings))
    assert str(error.value) == message


def test_output_paths_under_a_file_are_refused_before_any_work(tmp_path, capsys):
    save_checkpoint(tmp_path / "run" / "best.pt", "mlp")
    (tmp_path / "file").write_text("")
    file, under = tmp_path / "file", tmp_path / "file" / "sub"
    err = one_line_error(capsys, "evaluate", tmp_path / "run", "--out", file)
    assert f"--out {file} is a file, not a folder: choose another --out" in err
    err = one_line_error(capsys, "train", *QUICK, "--out", under)
    assert f"--out {under} lies under {file}, which is a file: choose another --out" in err
    err = one_line_error(capsys, "datasets", "--show", "mnist-sample", "--out", under)
    assert f"--out {under} lies under {file}" in err
    err = one_line_error(capsys, "datasets", "--show", "mnist-sample", "--out", tmp_path)
    assert f"--out {tmp_path} is a folder: give a file name in it" in err
    err = one_line_error(capsys, "predict", tmp_path / "run", tmp_path, "--plot", under)
    assert f"--plot {under} lies under {file}" in err
    err = one_line_error(capsys, "export", tmp_path / "run", "--out", under)
    assert f"--out {under} lies under {file}" in err
    assert not (tmp_path / "run" / "best.onnx").exists()


def test_an_oserror_no_check_foresaw_is_one_line_naming_the_path(capsys, monkeypatch):
    def disk_full(data, path, per_class):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr("imgcls.report.write_preview", disk_full)
    err = one_line_error(capsys, "datasets", "--show", "mnist-sample", "--out", "grid.png")
    assert f"grid.png: {os.strerror(errno.ENOSPC)}: check the path" in err


def test_a_damaged_onnx_file_is_a_one_line_error(tmp_path, capsys):
    save_checkpoint(tmp_path / "run" / "best.pt", "mlp")
    model = export(tmp_path / "run", "onnx", images=2).path
    model.write_bytes(model.read_bytes()[:2000])  # an interrupted copy
    err = one_line_error(capsys, "predict", model, tmp_path)
    assert f"cannot load {model} (InvalidProtobuf): damaged or not an ONNX model: export it again with `imgcls export`" in err


def test_checkpoints_missing_a_key_name_it(tmp_path, capsys):
    ckpt = torch.load(save_checkpoint(tmp_path / "best.pt", "mlp"), weights_only=True)
    del ckpt["mean"]
    torch.save(ckpt, tmp_path / "no-mean.pt")
    for command in (["evaluate"], ["predict", "--top-k", "1"]):
        err = one_line_error(capsys, *command, tmp_path / "no-mean.pt", *([tmp_path] if command[0] == "predict" else []))
        assert f"{tmp_path / 'no-mean.pt'} lacks 'mean': it was edited or written by another version" in err
    ckpt = torch.load(tmp_path / "best.pt", weights_only=True)
    ckpt["progress"] = {"epoch": 1}  # a last.pt without the optimizer and the rest that --resume needs
    (tmp_path / "cut").mkdir()
    torch.save(ckpt, tmp_path / "cut" / "last.pt")
    err = one_line_error(capsys, "train", "--resume", tmp_path / "cut")
    assert "lacks 'optimizer', 'scheduler', 'scaler', 'rng'" in err


def test_the_console_shows_no_traceback(tmp_path):
    (tmp_path / "file").write_text("")
    for args in (["train", "--dropout", "2", "--model", "mlp"], ["serve", tmp_path, "--port", "99999"], ["models", "--summary", "mlp", "--classes", "-1"],
                 ["datasets", "--show", "mnist-sample", "--out", tmp_path / "file" / "grid.png"]):  # fmt: skip
        result = subprocess.run([sys.executable, "-m", "imgcls", *map(str, args)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("imgcls: error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
