"""Recurrent classifiers (rnn, lstm, gru): images read row by row, their options, recipe, clipping and every use of a run."""

import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from conftest import cli_train, one_line_error, run_cli, tiny_dataset
from imgcls import checkpoint
from imgcls.checkpoint import load_model
from imgcls.config import TrainConfig, check, fill_defaults
from imgcls.data import load_dataset
from imgcls.data.core import Dataset, Split
from imgcls.errors import ImgclsError
from imgcls.exporter import export
from imgcls.models import create_model, model_options
from imgcls.training.trainer import Trainer

KINDS = ["rnn", "lstm", "gru"]
OPTIONS = {"hidden_size": 24, "layers": 2, "bidirectional": True, "pool": "last"}
FLAGS = ["--hidden-size", "24", "--layers", "2", "--bidirectional", "--pool", "last"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "shape,options",
    [((1, 28, 28), {}), ((3, 32, 32), {}), ((1, 1, 1), {}), ((3, 40, 24), OPTIONS), ((3, 40, 24), {"bidirectional": True, "pool": "mean"})],
    ids=["grey", "colour", "one-pixel", "all-options", "bidirectional-mean"],
)
def test_grey_and_colour_images_of_any_size_map_to_logits_in_fp32_and_bf16(kind, shape, options):
    model = create_model(kind, shape, 7, **options)
    x = torch.randn(3, *shape)
    assert model(x).shape == (3, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what --precision bf16 (or auto, on CPUs with bf16) trains under
        logits = model(x)
    logits.float().sum().backward()
    assert logits.shape == (3, 7) and all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_each_row_is_one_time_step_with_its_channels_flattened(kind):
    model = create_model(kind, (3, 5, 4), 2, hidden_size=6)
    seen = []
    model.rnn.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = torch.randn(2, 3, 5, 4)
    model(x)
    rows = seen[0]
    assert rows.shape == (2, 5, 12) and model.rnn.input_size == 12 and model.rnn.batch_first
    assert torch.equal(rows[1, 3], torch.cat([x[1, 0, 3], x[1, 1, 3], x[1, 2, 3]]))  # row 3: red, green, blue pixels
    assert isinstance(model.rnn, {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[kind])


def test_options_size_the_network_and_pick_what_the_classifier_reads():
    model = create_model("lstm", (1, 28, 28), 10, **OPTIONS)
    assert (model.rnn.hidden_size, model.rnn.num_layers, model.rnn.bidirectional) == (24, 2, True)
    assert model.head.in_features == 48
    assert model_options("lstm") == {"hidden_size", "layers", "bidirectional", "pool"}
    default = create_model("rnn", (1, 8, 8), 3)
    assert (default.rnn.hidden_size, default.rnn.num_layers, default.rnn.bidirectional, default.pool) == (128, 1, False, "max")
    x = torch.randn(2, 1, 8, 8)
    rows = x.permute(0, 2, 1, 3).reshape(2, 8, 8)
    assert torch.allclose(default(x), default.head(default.rnn(rows)[0].amax(1)), atol=1e-6)
    last = create_model("gru", (1, 8, 8), 3, bidirectional=True, pool="last")
    out, _ = last.rnn(rows)
    # The forward direction ends at the last row, the backward one at the first.
    features = torch.cat([out[:, -1, :128], out[:, 0, 128:]], dim=1)
    assert torch.allclose(last(x), last.head(features), atol=1e-6)


def test_gradient_clipping_bounds_each_steps_gradient_norm(tmp_path):
    data = tiny_dataset(n_train=64, shape=(1, 8, 8))

    def grad_norm(clip: float) -> float:
        cfg = fill_defaults(TrainConfig(model="lstm", device="cpu", precision="fp32", clip_grad=clip, lr=1e-9), data)
        trainer = Trainer(cfg, data, tmp_path)
        trainer.train_step(torch.arange(32))
        return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.model.parameters()])).item()

    assert grad_norm(0.0) > 0.01
    assert grad_norm(1e-3) == pytest.approx(1e-3, rel=1e-3)


def test_the_recipes_give_recurrent_models_adam_clipping_and_no_shifts():
    sample = load_dataset("mnist-sample")
    for kind in KINDS:
        cfg = fill_defaults(TrainConfig(model=kind), sample)
        assert (cfg.model, cfg.optimizer, cfg.clip_grad, cfg.crop_padding, cfg.flip, cfg.tta) == (kind, "adam", 1.0, 0, False, False)
        assert cfg.lr == 4e-3 and cfg.model_options() == {}
    accurate = fill_defaults(TrainConfig(model="lstm", recipe="accurate"), sample)
    assert accurate.epochs == 3 * fill_defaults(TrainConfig(model="lstm"), sample).epochs and accurate.clip_grad == 1.0
    assert fill_defaults(TrainConfig(), sample).clip_grad == 0.0  # the CNNs train unclipped
    own = fill_defaults(TrainConfig(model="gru", clip_grad=0.5, optimizer="sgd", hidden_size=64, pool="last"), sample)
    assert (own.clip_grad, own.optimizer, own.model_options()) == (0.5, "sgd", {"hidden_size": 64, "pool": "last"})
    # Colour images: flips and flip TTA, 20 epochs of CIFAR-10's 45,000 training images.
    split = Split(torch.zeros(1, 3, 32, 32, dtype=torch.uint8).expand(45_000, 3, 32, 32), torch.zeros(45_000, dtype=torch.long))
    cifar = Dataset("cifar-like", list("0123456789"), split, split, split, (0.5,) * 3, (0.25,) * 3, flips_ok=True)
    colour = fill_defaults(TrainConfig(model="lstm"), cifar)
    assert (colour.epochs, colour.flip, colour.tta, colour.crop_padding, colour.clip_grad) == (20, True, True, 0, 1.0)


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--model", "lstm", "--hidden-size", "0"], "--hidden-size must be between 1 and 65,536, got 0"),
        (["--model", "gru", "--layers", "0"], "--layers must be between 1 and 100, got 0"),
        (["--model", "rnn", "--clip-grad", "-1"], "--clip-grad must be zero (off) or more and finite, got -1.0"),
        (["--model", "rnn", "--clip-grad", "nan"], "--clip-grad must be zero (off) or more and finite, got nan"),
        (["--model", "cnn", "--hidden-size", "64"], "--hidden-size applies to: rnn, lstm, gru; model 'cnn' has no hidden size option"),
        (["--layers", "2"], "--layers applies to: rnn, lstm, gru; model 'digitnet' has no layers option"),  # the recipe's model
        (["--model", "mlp", "--bidirectional"], "--bidirectional applies to: rnn, lstm, gru; model 'mlp'"),
        (["--model", "speednet", "--pool", "max"], "--pool applies to: rnn, lstm, gru; model 'speednet'"),
    ],
)
def test_bad_option_values_are_one_line_errors(capsys, args, fragment):
    assert fragment in one_line_error(capsys, "train", "--epochs", "1", *args)


def test_a_config_with_a_bad_pool_or_bidirectional_value_is_refused():
    with pytest.raises(ImgclsError, match="unknown pool 'first': choose one of last, mean, max"):
        check(TrainConfig(model="lstm", pool="first"))
    with pytest.raises(ImgclsError, match="unknown pool 'first'"):
        create_model("gru", (1, 8, 8), 3, pool="first")
    with pytest.raises(ImgclsError, match="--bidirectional must be true or false, got 'yes'"):
        check(TrainConfig(model="lstm", bidirectional="yes"))


def train(capsys, *args) -> dict:
    assert run_cli(capsys, "train", "--out", "run", *args)[0] == 0
    return json.loads(Path("run/summary.json").read_text())


# One epoch of the 9,000-image sample with the recipe's other settings (1-4 s on one core): seeds 0-4 on an Intel Xeon
# with AMX reached rnn 73.8-77.7% (fp32) and 74.3-77.8% (bf16), lstm 84.0-85.4% and 84.3-84.8%, gru 82.0-84.7% and
# 82.0-84.9%; chance is 10%.
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kind,target", [("rnn", 0.65), ("lstm", 0.75), ("gru", 0.72)])
def test_each_kind_learns_the_mnist_sample_in_one_epoch(capsys, kind, target, precision):
    summary = train(capsys, "--model", kind, "--epochs", "1", "--precision", precision, "--device", "cpu")
    assert summary["model"] == kind and summary["test_images"] == 2000
    assert summary["test_accuracy"] >= target


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory) -> Path:
    """One epoch of an LSTM with every option away from its default, on the embedded sample."""
    root = tmp_path_factory.mktemp("lstm-run")
    cli_train(root, "--model", "lstm", "--epochs", "1", *FLAGS)
    return root / "run"


def test_options_are_saved_and_rebuild_the_same_model(lstm_run):
    ckpt = checkpoint.load(lstm_run)
    assert ckpt["model"] == "lstm" and ckpt["model_options"] == OPTIONS
    config = json.loads((lstm_run / "config.json").read_text())
    assert {k: config[k] for k in OPTIONS} == OPTIONS and config["clip_grad"] == 1.0 and config["optimizer"] == "adam"
    model = load_model(ckpt)
    assert (model.rnn.hidden_size, model.rnn.num_layers, model.rnn.bidirectional, model.pool) == (24, 2, True, "last")


def test_evaluate_and_predict_use_the_saved_model(lstm_run, tmp_path, capsys):
    summary = json.loads((lstm_run / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.5
    run = tmp_path / "run"
    shutil.copytree(lstm_run, run)
    code, out, _ = run_cli(capsys, "evaluate", run)
    assert code == 0 and f"accuracy {summary['test_accuracy']:.2%}" in out
    test = load_dataset("mnist-sample").test
    for i in range(10):
        Image.fromarray(test.images[i, 0].numpy()).save(tmp_path / f"{i}-{test.labels[i].item()}.png")
    code, out, _ = run_cli(capsys, "predict", run, *sorted(tmp_path.glob("*.png")), "--format", "json", "--top-k", "1")
    predictions = json.loads(out)
    assert code == 0 and len(predictions) == 10
    right = sum(Path(p["file"]).stem.split("-")[1] == p["predictions"][0]["label"] for p in predictions)
    assert right >= 5


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_has_parity_at_any_batch_size(lstm_run, tmp_path, fmt):
    run = tmp_path / "run"
    shutil.copytree(lstm_run, run)
    result = export(run, fmt, images=16)
    assert result.max_abs_diff <= 1e-4 and result.inputs == "16 images of the mnist-sample test split"
    meta = json.loads(result.metadata.read_text())
    assert meta["model"] == "lstm" and meta["model_options"] == OPTIONS
    reference = load_model(checkpoint.load(run))
    for batch in (1, 5):
        x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
        if fmt == "onnx":
            from imgcls.exporter import onnx_session

            got = torch.from_numpy(onnx_session(result.path).run(None, {"images": x.numpy()})[0])
        else:
            with warnings.catch_warnings():  # torch.jit.load's deprecation warning
                warnings.simplefilter("ignore")
                got = torch.jit.load(str(result.path))(x)
        with torch.no_grad():
            assert torch.allclose(got, reference(x), atol=1e-4), batch


def test_the_predictor_on_the_onnx_export_agrees_with_torch(lstm_run, tmp_path):
    from imgcls.inference import Predictor

    run = tmp_path / "run"
    shutil.copytree(lstm_run, run)
    export(run, "onnx", images=4)
    images = np.asarray(load_dataset("mnist-sample").test.images[:8])
    torch_p, onnx_p = Predictor.open(run), Predictor.open(run, "onnx")
    assert torch.allclose(torch_p.probabilities(images), onnx_p.probabilities(images), atol=1e-5)
    assert math.isclose(float(onnx_p.probabilities(images).sum()), 8.0, rel_tol=1e-5)
