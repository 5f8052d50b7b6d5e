"""`imgcls autoencode` and `imgcls embed`: the models' shapes, training that learns, the run folder and report, embeddings,
anomaly scores, the encoder in a classifier (--weights), resuming, and one-line errors."""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED_DATA, WeightsAtStart, api_train, make_folder, needs_shared_data, one_line_error, run_cli, save_checkpoint
from imgcls.autoencode import train as ae_train
from imgcls.autoencode.codes import encode
from imgcls.autoencode.train import load_checkpoint, load_model
from imgcls.data import load_dataset
from imgcls.models.autoencoder import AutoEncoder

QUICK = ["--epochs", "2"]


def cli_autoencode(root: Path, *args: str) -> Path:
    """`imgcls autoencode ARGS --out ROOT/run` in a subprocess (offline, own cache): the run folder."""
    env = {**os.environ, "IMGCLS_OFFLINE": "1", "IMGCLS_CACHE": str(root / "cache")}
    result = subprocess.run([sys.executable, "-m", "imgcls", "autoencode", *args, "--out", str(root / "run")], capture_output=True,
                            text=True, env=env, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return root / "run"


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory) -> Path:
    return cli_autoencode(tmp_path_factory.mktemp("ae"), *QUICK)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory) -> Path:
    return cli_autoencode(tmp_path_factory.mktemp("vae"), *QUICK, "--variational")


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def digits(n: int) -> np.ndarray:
    """The first n test digits of the embedded MNIST sample, uint8 N x 1 x 28 x 28."""
    return load_dataset("mnist-sample").test.images[:n].numpy()


def save_images(folder: Path, images: np.ndarray, prefix: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"{prefix}{i:02d}.png")
        Image.fromarray(image[0]).save(paths[-1])
    return paths


@pytest.mark.parametrize("variational", [False, True])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 33, 17)])
def test_encoder_and_decoder_shapes(shape, variational):
    model = AutoEncoder(shape, 12, variational)
    code, logvar = model.encoder(torch.randn(5, *shape))
    assert code.shape == (5, 12)
    assert (logvar.shape == (5, 12)) if variational else logvar is None
    assert model.decoder(code).shape == (5, *shape)
    logits, _, _ = model(torch.randn(5, *shape), torch.randn(5, 12))
    assert logits.shape == (5, *shape)


def test_the_loss_goes_down_and_reconstructions_beat_the_mean_image(ae_run):
    history = rows(ae_run / "metrics.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2]
    assert float(history[1]["train_mse"]) < float(history[0]["train_mse"])
    assert float(history[1]["val_mse"]) < float(history[0]["val_mse"])
    # Recomputed here from best.pt and the test images, not taken from the run's own figures.
    data = load_dataset("mnist-sample")
    ckpt = load_checkpoint(ae_run)
    model = load_model(ckpt)
    recon = torch.sigmoid(model(((data.test.images.float() / 255) - ckpt["mean"][0]) / ckpt["std"][0])[0]).detach()
    target = data.test.images.float() / 255
    mse = (recon - target).square().mean().item()
    baseline = (target - data.train.images.float().mean(0) / 255).square().mean().item()
    assert mse < 0.6 * baseline
    summary = json.loads((ae_run / "summary.json").read_text())
    assert summary["test_mse"] == pytest.approx(mse, rel=0.05) and summary["mean_image_mse"] == pytest.approx(baseline, rel=1e-3)
    assert summary["test_kl"] is None and summary["kind"] == "ae"


def test_the_vae_logs_its_kl_and_samples_its_prior(vae_run):
    history = rows(vae_run / "metrics.csv")
    assert all(float(r["train_kl"]) > 0 and float(r["val_kl"]) > 0 for r in history)
    summary = json.loads((vae_run / "summary.json").read_text())
    assert summary["kind"] == "vae" and summary["test_kl"] > 0 and summary["test_mse"] < summary["mean_image_mse"]
    assert (vae_run / "prior_samples.png").stat().st_size > 1000
    assert "Samples from the prior" in (vae_run / "report.html").read_text()


def test_the_run_folder_holds_metrics_checkpoints_anomalies_and_report(ae_run):
    for name in ("config.json", "metrics.csv", "best.pt", "last.pt", "summary.json", "anomalies.csv", "report.html"):
        assert (ae_run / name).is_file(), name
    assert list(rows(ae_run / "metrics.csv")[0]) == ae_train.COLUMNS
    anomalies = rows(ae_run / "anomalies.csv")
    assert len(anomalies) == 2000 and [int(r["rank"]) for r in anomalies] == list(range(1, 2001))
    scores = [float(r["mse"]) for r in anomalies]
    assert scores == sorted(scores, reverse=True) and len({r["index"] for r in anomalies}) == 2000
    page = (ae_run / "report.html").read_text()
    for name, heading in ae_train_plots().items():
        if name != "prior_samples.png":  # a VAE's only
            assert (ae_run / name).stat().st_size > 1000 and heading in page, name
    assert "prior_samples.png" not in page and not (ae_run / "prior_samples.png").exists()
    assert "PCA" in page


def ae_train_plots() -> dict:
    from imgcls.autoencode.report import PLOTS

    return PLOTS


def test_embed_writes_one_row_of_codes_per_image_as_csv_and_npy(ae_run, capsys, tmp_path):
    images = digits(6)
    paths = save_images(tmp_path / "imgs", images)
    Image.fromarray(np.repeat(images[0][0][..., None], 3, 2)).resize((56, 56)).save(tmp_path / "imgs" / "big-rgb.png")  # resized
    code, out, err = run_cli(capsys, "embed", ae_run, tmp_path / "imgs", "--out", "e.csv", "--scores")
    assert code == 0, err
    table = rows(tmp_path / "e.csv")
    assert len(table) == 7 and list(table[0]) == ["file", "score", *(f"z{i}" for i in range(16))]
    # The codes are the model's own for these images.
    model, ckpt = load_model(load_checkpoint(ae_run)), load_checkpoint(ae_run)
    mean, std = torch.tensor(ckpt["mean"]).view(-1, 1, 1), torch.tensor(ckpt["std"]).view(-1, 1, 1)
    expected = encode(model, torch.from_numpy(images), mean, std)
    by_file = {r["file"]: r for r in table}
    for i, path in enumerate(paths):
        row = by_file[str(path)]
        assert [float(row[f"z{j}"]) for j in range(16)] == pytest.approx(expected.codes[i].tolist(), rel=1e-4, abs=1e-4)
        assert float(row["score"]) == pytest.approx(expected.errors[i].item(), rel=1e-4)

    code, out, err = run_cli(capsys, "embed", ae_run, *map(str, paths), "--out", "e.npy", "--scores")
    assert code == 0, err
    assert np.load(tmp_path / "e.npy").shape == (6, 16)
    assert (tmp_path / "e.files.txt").read_text().splitlines() == [str(p) for p in paths]
    assert np.load(tmp_path / "e.scores.npy").shape == (6,)


def test_unusual_images_score_as_more_anomalous_than_digits(ae_run, capsys, tmp_path):
    images = digits(20)
    save_images(tmp_path / "imgs", images, "digit")
    save_images(tmp_path / "imgs", 255 - images[:3], "inverted")
    noise = np.random.default_rng(0).integers(0, 256, (3, 1, 28, 28), dtype=np.uint8)
    save_images(tmp_path / "imgs", noise, "noise")
    code, _, err = run_cli(capsys, "embed", ae_run, tmp_path / "imgs", "--out", "s.csv", "--scores")
    assert code == 0, err
    scores = {Path(r["file"]).name: float(r["score"]) for r in rows(tmp_path / "s.csv")}
    real = [v for k, v in scores.items() if k.startswith("digit")]
    odd = [v for k, v in scores.items() if not k.startswith("digit")]
    assert len(real) == 20 and len(odd) == 6
    assert min(odd) > max(real)


@pytest.mark.parametrize("which", ["ae_run", "vae_run"])
def test_train_with_weights_starts_aenet_from_the_encoder(which, request, caplog):
    run = request.getfixturevalue(which)
    start = WeightsAtStart()
    api_train(weights=str(run), epochs=1, freeze_epochs=0, out="clf", callbacks=[start])
    assert json.loads(Path("clf/config.json").read_text())["model"] == "aenet"  # from the checkpoint, without --model
    encoder = {k: v for k, v in load_checkpoint(run)["state_dict"].items() if k.startswith("encoder.") and "logvar" not in k}
    started = start.weights
    assert set(encoder) == {k for k in started if k.startswith("encoder.")}
    for key, value in encoder.items():
        assert torch.equal(started[key], value), key
    assert f"{len(encoder)} tensors loaded" in caplog.text


def test_an_interrupted_run_resumes_to_the_same_result(tmp_path, capsys, monkeypatch):
    make_folder(tmp_path / "pics", per_class=20, size=(12, 12))
    args = ["autoencode", "--data", tmp_path / "pics", "--epochs", "3", "--batch-size", "8", "--variational"]
    code, _, err = run_cli(capsys, *args, "--out", "whole")
    assert code == 0, err
    end_epoch = ae_train.Run.end_epoch

    def stop_after_the_first(self, row):
        row = end_epoch(self, row)
        self.stop_signal = signal.SIGINT  # what Ctrl-C does: the next step stops the run
        return row

    monkeypatch.setattr(ae_train.Run, "end_epoch", stop_after_the_first)
    code, _, err = run_cli(capsys, *args, "--out", "cut")
    assert code == 130 and "resume with: imgcls autoencode --resume cut" in err
    assert len(rows(Path("cut/metrics.csv"))) == 1
    monkeypatch.setattr(ae_train.Run, "end_epoch", end_epoch)
    code, out, err = run_cli(capsys, "autoencode", "--resume", "cut")
    assert code == 0 and "resuming at epoch 2/3" in out, err
    whole, cut = rows(Path("whole/metrics.csv")), rows(Path("cut/metrics.csv"))
    assert [r["val_mse"] for r in cut] == [r["val_mse"] for r in whole]
    assert (Path("cut/split.json")).read_text() == Path("whole/split.json").read_text()


def test_bad_inputs_give_one_line(ae_run, capsys, tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    save_images(tmp_path / "imgs", digits(1))
    classifier = save_checkpoint(tmp_path / "clf.pt")
    assert "--epochs must be positive, got 0" in one_line_error(capsys, "autoencode", "--epochs", "0")
    assert "--beta must be zero or more and finite" in one_line_error(capsys, "autoencode", "--beta", "-1")
    assert "--latent-dim must be positive" in one_line_error(capsys, "autoencode", "--latent-dim", "0")
    assert "drop --epochs" in one_line_error(capsys, "autoencode", "--resume", ae_run, "--epochs", "3")
    assert "not an autoencoder run folder" in one_line_error(capsys, "autoencode", "--resume", tmp_path / "nowhere")
    assert "does not exist" in one_line_error(capsys, "embed", tmp_path / "nowhere", tmp_path / "imgs")
    assert "classifier's" in one_line_error(capsys, "embed", classifier, tmp_path / "imgs")
    assert "must end in .csv or .npy" in one_line_error(capsys, "embed", ae_run, tmp_path / "imgs", "--out", "e.txt")
    assert "could be read as an image" in one_line_error(capsys, "embed", ae_run, tmp_path / "notes.png")
    assert "not an imgcls checkpoint" in one_line_error(capsys, "predict", ae_run, tmp_path / "imgs")
    code, out, err = run_cli(capsys, "embed", ae_run, tmp_path / "imgs", tmp_path / "notes.png", "--out", "e.csv")
    assert code == 1 and "cannot read" in err and "notes.png" in err and len(rows(tmp_path / "e.csv")) == 1


@pytest.mark.slow
@needs_shared_data
@pytest.mark.parametrize("variational", [False, True])
@pytest.mark.parametrize("data", [["--data", "mnist", "--data-dir", SHARED_DATA], ["--data", SHARED_DATA / "cifar10-jpeg"]])
def test_real_data_reconstructs_far_better_than_the_mean_image(capsys, data, variational):
    code, _, err = run_cli(capsys, "autoencode", *data, *(["--variational"] if variational else []), "--out", "run")
    assert code == 0, err
    summary = json.loads(Path("run/summary.json").read_text())
    assert summary["test_images"] == 10_000 and summary["epochs_run"] == 1
    assert summary["test_mse"] < 0.5 * summary["mean_image_mse"]
