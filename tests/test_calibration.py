"""Calibration: the expected calibration error of every run, before and after a temperature fitted on val, and the
temperature applied wherever probabilities are shown (evaluate, predict, serve, the API, the export)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import imgcls
from conftest import api_resume, api_train, run_cli
from imgcls import calibration
from imgcls.training.callbacks import Callback


def overconfident(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(z), so z is calibrated; the model's logits are 4 z: far too sure."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 5, generator=generator) * 1.5
    labels = torch.multinomial(z.softmax(1), 1, generator=generator).squeeze(1)
    return 4 * z, labels


def test_a_temperature_fitted_on_val_removes_an_overconfident_models_calibration_error():
    val_logits, val_labels = overconfident(4000, 0)
    test_logits, test_labels = overconfident(4000, 1)
    temperature = calibration.fit_temperature(val_logits, val_labels)
    assert temperature == pytest.approx(4, rel=0.15)
    figures = calibration.figures(test_logits, test_labels, temperature)
    assert figures["ece_uncalibrated"] > 0.15 and figures["ece"] < 0.03, figures
    assert calibration.fit_temperature(torch.empty(0, 5), torch.empty(0, dtype=torch.long)) == 1.0


def test_the_reliability_bins_hold_the_confidences_and_accuracies():
    probs = torch.tensor([[0.95, 0.05], [0.92, 0.08], [0.55, 0.45], [0.35, 0.65]])
    confidence, accuracy, counts = calibration.reliability(probs, torch.tensor([0, 1, 0, 1]), bins=10)
    assert counts.tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 0, 2]
    assert confidence[9].item() == pytest.approx(0.935) and accuracy[9].item() == pytest.approx(0.5)
    assert accuracy[5].item() == 1.0 and accuracy[6].item() == 1.0 and torch.isnan(accuracy[0])


class StopAfterFirstEpoch(Callback):
    def on_epoch_end(self, trainer, row):
        trainer.request_stop()


def test_every_run_measures_calibration_and_the_temperature_is_used_everywhere(tmp_path, capsys):
    run = api_train(epochs=2, out=tmp_path / "run", report=True)
    summary = run.summary
    temperature = summary["temperature"]
    assert temperature != 1.0 and {"ece", "ece_uncalibrated", "val_ece", "val_ece_uncalibrated"} <= summary.keys()
    assert summary["val_ece"] < summary["val_ece_uncalibrated"]  # fitted there: never worse on val
    assert torch.load(run.dir / "best.pt", weights_only=True)["temperature"] == temperature
    assert (run.dir / "reliability.png").is_file() and "test ECE (calibrated)" in (run.dir / "report.html").read_text()

    image = tmp_path / "digit.png"
    Image.fromarray(np.pad(np.full((16, 4), 255, np.uint8), ((6, 6), (12, 12)))).save(image)  # a 1
    predictor = imgcls.load(run)
    assert predictor.temperature == temperature
    pixels = torch.from_numpy(np.array(Image.open(image)))[None, None]
    raw = predictor.probabilities(pixels)
    predictor.temperature = 1.0
    assert not torch.allclose(raw, predictor.probabilities(pixels))  # the temperature changed what is shown
    predictor.temperature = temperature
    shown = predictor.predict(image)[0].probability
    assert shown == pytest.approx(raw.max().item(), abs=1e-6)

    code, out, err = run_cli(capsys, "predict", run.dir, image, "--format", "json")
    assert code == 0 and json.loads(out)[0]["predictions"][0]["probability"] == pytest.approx(shown, abs=1e-6), err
    code, out, err = run_cli(capsys, "evaluate", run.dir)
    assert code == 0 and f"temperature {temperature:.3g}" in out, err
    assert imgcls.evaluate(run).ece == pytest.approx(summary["ece"], abs=1e-6)
    code, out, err = run_cli(capsys, "export", run.dir, "--format", "onnx", "--parity-images", "8")
    assert code == 0, err
    assert json.loads((run.dir / "best.onnx.json").read_text())["temperature"] == temperature
    onnx = imgcls.load(run.dir / "best.onnx", backend="onnx")
    assert onnx.predict(image)[0].probability == pytest.approx(shown, abs=1e-4)
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from imgcls.server.app import create_app

    with TestClient(create_app(imgcls.load(run))) as client:
        answer = client.post("/predict", files={"file": ("digit.png", image.read_bytes(), "image/png")}).json()
        assert client.get("/model").json()["temperature"] == temperature
    assert answer["predictions"][0]["probability"] == pytest.approx(shown, abs=1e-6)


def test_the_temperature_survives_a_resume_and_calibration_can_be_turned_off(tmp_path):
    whole = api_train(epochs=2, out=tmp_path / "whole")
    stopped = api_train(epochs=2, out=tmp_path / "stopped", callbacks=[StopAfterFirstEpoch()])
    assert stopped.interrupted is not None and not (tmp_path / "stopped" / "summary.json").exists()
    resumed = api_resume(stopped)
    assert resumed.summary["temperature"] == pytest.approx(whole.summary["temperature"], rel=1e-5)
    assert torch.load(resumed.dir / "best.pt", weights_only=True)["temperature"] == resumed.summary["temperature"]
    plain = api_train(epochs=1, out=tmp_path / "plain", calibrate=False)
    assert plain.summary["temperature"] == 1.0 and plain.summary["ece"] == plain.summary["ece_uncalibrated"]
    assert "temperature" not in torch.load(plain.dir / "best.pt", weights_only=True) and plain.config["calibrate"] is False


def test_the_coverage_table_and_the_suggested_min_confidence():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.45, 0.55]])
    rows = calibration.coverage_table(probs, torch.tensor([0, 0, 1, 0]), shares=(1.0, 0.5))
    assert rows[0] == pytest.approx({"coverage": 1.0, "accuracy": 0.5, "min_confidence": 0.55})
    assert rows[1] == pytest.approx({"coverage": 0.5, "accuracy": 1.0, "min_confidence": 0.8})
    assert calibration.suggested_min_confidence(probs) is None  # too few images to say
    confident = torch.linspace(0.5, 1.0, 201)
    suggested = calibration.suggested_min_confidence(torch.stack([confident, 1 - confident], 1))
    assert suggested == pytest.approx(0.525, abs=1e-6)  # 95% of the images are at or above it


def test_min_confidence_answers_unknown_and_coverage_draws_the_curve(tmp_path, capsys):
    run = api_train(epochs=1, out=tmp_path / "run", report=True)
    suggested = run.summary["suggested_min_confidence"]
    assert 0 < suggested < 1 and (run.dir / "coverage.png").is_file()
    assert "suggested --min-confidence" in (run.dir / "report.html").read_text()
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((28, 28), 90, np.uint8)).save(blank)  # no digit at all
    shown = imgcls.load(run).predict(blank)[0]
    strict = imgcls.load(run, min_confidence=min(1.0, shown.probability + 0.01)).predict(blank)[0]
    assert strict.label == "unknown" and strict.labels == [] and strict.top == shown.top
    assert imgcls.load(run, min_confidence=shown.probability).predict(blank)[0].label == shown.label
    code, out, err = run_cli(capsys, "predict", run.dir, blank, "--min-confidence", "1", "--format", "json")
    assert code == 0 and json.loads(out)[0]["label"] == "unknown", err
    code, out, err = run_cli(capsys, "predict", run.dir, blank, "--min-confidence", "1")
    assert out.splitlines()[0].split()[:2] == ["file", "label"] and " unknown " in out.splitlines()[1]
    code, out, err = run_cli(capsys, "predict", run.dir, blank, "--min-confidence", "1.5")
    assert code != 0 and "min_confidence must be a probability from 0 to 1" in err
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from imgcls.server.app import create_app

    predictor = imgcls.load(run, min_confidence=1.0)
    with TestClient(create_app(predictor)) as client:
        answer = client.post("/predict", files={"file": ("blank.png", blank.read_bytes(), "image/png")}).json()
    assert answer["label"] == "unknown" and answer["predictions"][0]["label"] == shown.label

    code, out, err = run_cli(capsys, "evaluate", run.dir, "--coverage")
    assert code == 0 and "coverage  accuracy  --min-confidence" in out and f"--min-confidence {suggested:.2f}" in out, err
    evaluation = imgcls.evaluate(run, coverage=True)
    assert [round(r["coverage"], 2) for r in evaluation.coverage] == [1.0, 0.95, 0.9, 0.8, 0.7, 0.5]
    assert evaluation.coverage[0]["accuracy"] == pytest.approx(run.summary["test_accuracy"], abs=1e-6)
    assert evaluation.coverage[-1]["accuracy"] >= evaluation.coverage[0]["accuracy"]  # the confident half is right more often
    assert (run.dir / "coverage_test.png").is_file()
