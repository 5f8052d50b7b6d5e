import io
import json
import shutil
import warnings

import pytest
import torch

from conftest import save_checkpoint
from imgcls import exporter as export_module
from imgcls.checkpoint import load_model
from imgcls.cli import main
from imgcls.errors import ImgclsError
from imgcls.exporter import export, onnx_session, read_metadata
from imgcls.inference import Predictor
from imgcls.models import MODELS


def run_exported(path, fmt, x: torch.Tensor) -> torch.Tensor:
    """The exported file, loaded the way a user would, on a float batch."""
    if fmt == "onnx":
        return torch.from_numpy(onnx_session(path).run(None, {"images": x.numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(io.BytesIO(path.read_bytes()))(x).detach()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("model", list(MODELS))
def test_every_model_exports_with_parity_and_a_dynamic_batch(tmp_path, model, fmt):
    ckpt = save_checkpoint(tmp_path / "run" / "best.pt", model, in_shape=(1, 28, 28))
    result = export(tmp_path / "run", fmt, images=8)
    assert result.path == tmp_path / "run" / ("best.onnx" if fmt == "onnx" else "best.torchscript.pt")
    assert result.inputs == "8 images of the mnist-sample test split"  # real digits, not noise
    assert result.max_abs_diff <= 1e-4
    meta = read_metadata(result.path)
    assert meta["classes"] == list("0123456789") and meta["in_shape"] == [1, 28, 28] and meta["mean"] == [0.13]
    assert meta["std"] == [0.31] and meta["parity"]["max_abs_diff"] == result.max_abs_diff and meta["model"] == model
    ck = torch.load(ckpt, weights_only=True)
    ck["path"] = str(ckpt)
    reference = load_model(ck)
    for batch in (1, 3):  # a batch size the export never saw
        x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            assert torch.allclose(run_exported(result.path, fmt, x), reference(x), atol=1e-4), batch


def test_cli_export_then_predict_with_the_onnx_backend_matches_torch(digit_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(digit_run, run)
    assert main(["predict", str(run), str(tmp_path), "--backend", "onnx"]) == 2  # nothing exported yet
    assert "imgcls export" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert "parity on 64 images of the mnist-sample test split" in out and "max abs difference on logits" in out
    assert float(out.split("logits ")[1].split()[0]) <= 1e-3
    assert (run / "best.onnx").is_file() and json.loads((run / "best.onnx.json").read_text())["in_shape"] == [1, 28, 28]
    torch_p, onnx_p = Predictor.open(run), Predictor.open(run, "onnx")
    assert onnx_p.backend == "onnx" and Predictor.open(run / "best.onnx").backend == "onnx"
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(torch_p.probabilities(images), onnx_p.probabilities(images), atol=1e-5)


def test_torchscript_export_to_a_chosen_path(digit_run, tmp_path, capsys):
    assert main(["export", str(digit_run), "--format", "torchscript", "--out", str(tmp_path / "m.pt"), "--parity-images", "5"]) == 0
    assert "parity on 5 images" in capsys.readouterr().out
    assert (tmp_path / "m.pt").is_file() and read_metadata(tmp_path / "m.pt")["export_format"] == "torchscript"


def test_a_parity_failure_exits_nonzero_with_the_difference_and_writes_nothing(tmp_path, monkeypatch, capsys):
    save_checkpoint(tmp_path / "run" / "best.pt", "mlp")
    real = export_module._runner
    monkeypatch.setattr(export_module, "_runner", lambda blob, fmt: lambda x: real(blob, fmt)(x) + 0.5)
    assert main(["export", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imgcls: error: parity check failed: max abs difference on logits 0.5 > tolerance 0.001")
    assert not (tmp_path / "run" / "best.onnx").exists() and not (tmp_path / "run" / "best.onnx.json").exists()


def test_bad_export_requests_are_one_line_errors(tmp_path, capsys):
    save_checkpoint(tmp_path / "run" / "best.pt", "mlp")
    for args, message in [
        (["export", str(tmp_path / "run"), "--format", "tflite"], "unknown export format 'tflite': choose onnx or torchscript"),
        (["export", str(tmp_path / "nothing")], "does not exist"),
        (["predict", str(tmp_path / "missing.onnx"), str(tmp_path)], "does not exist"),
    ]:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("imgcls: error: ") and message in err and err.count("\n") == 1
    (tmp_path / "run" / "best.onnx").write_bytes(b"")
    with pytest.raises(ImgclsError, match="no metadata file"):
        Predictor.open(tmp_path / "run" / "best.onnx")


def test_parity_falls_back_to_random_images_when_the_data_is_gone(tmp_path):
    save_checkpoint(tmp_path / "run" / "best.pt", "mlp", in_shape=(3, 8, 8), classes=("a", "b"), data=str(tmp_path / "gone"))
    result = export(tmp_path / "run", "torchscript", images=4)
    assert result.inputs.startswith("4 random images (the run's data could not be loaded")
