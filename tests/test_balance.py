"""Classes out of balance: balanced accuracy and macro F1 in every run, --balance weight and sample, and a line that
says so when the training classes are 3:1 or worse."""

import json
from pathlib import Path

import pytest
import torch

from conftest import api_train, make_folder, run_cli, tiny_dataset
from imgcls.config import TrainConfig, fill_defaults
from imgcls.evaluation import EvalResult
from imgcls.training.tasks import class_weights
from imgcls.training.trainer import Trainer


def test_balanced_accuracy_and_macro_f1_from_the_confusion_matrix():
    result = EvalResult(0.0, 9 / 12, torch.tensor([[8, 2, 0], [1, 1, 0], [0, 0, 0]]))
    assert result.balanced_accuracy == pytest.approx((8 / 10 + 1 / 2) / 2)  # the class with no images is left out
    assert result.macro_f1 == pytest.approx((2 * 8 / (10 + 9) + 2 * 1 / (2 + 3)) / 2)
    assert result.per_class_precision(["a", "b", "c"]) == {"a": 8 / 9, "b": 1 / 3, "c": None}


def test_class_weights_are_inverse_frequencies_averaging_one_per_image():
    labels = torch.tensor([0] * 90 + [1] * 10)
    weights = class_weights(labels, 3)
    assert weights.tolist() == pytest.approx([100 / (3 * 90), 100 / (3 * 10), 0.0])
    assert weights[labels].mean().item() == pytest.approx(2 / 3)  # (n / K) per class: the mean over images is 1 for K present


def unbalanced(tmp_path: Path) -> Path:
    root = make_folder(tmp_path / "skewed", classes=("common", "rare"), per_class=40)
    for i in range(30):  # 40:10 in all; train keeps the ratio
        (root / "rare" / f"{i:03d}.png").unlink()
    return root


def test_a_run_on_skewed_classes_says_so_and_reports_balanced_figures(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "--data", unbalanced(tmp_path), "--epochs", "1", "--out", "r")
    assert code == 0, err  # the recipe weights the loss from 3:1 on, and says so
    assert "the training classes are out of balance (4.0:1, common against rare): --balance weight corrects for it" in err
    assert json.loads(Path("r/config.json").read_text())["balance"] == "weight"
    summary = json.loads(Path("r/summary.json").read_text())
    assert 0 <= summary["balanced_accuracy"] <= 1 and 0 <= summary["macro_f1"] <= 1
    code, out, err = run_cli(capsys, "train", "--data", unbalanced(tmp_path), "--epochs", "1", "--balance", "none", "--out", "n")
    assert code == 0 and "(4.0:1, common against rare): --balance weight or --balance sample corrects for it" in err, err
    code, out, err = run_cli(capsys, "train", "--epochs", "1", "--out", "m")  # balanced classes: no line, no weights
    assert code == 0 and "out of balance" not in err and json.loads(Path("m/config.json").read_text())["balance"] == "none"
    code, out, err = run_cli(capsys, "evaluate", "r")
    assert code == 0 and "balanced accuracy" in out and "precision" in out, err


def test_weight_weights_the_loss_and_sample_draws_classes_evenly(tmp_path):
    data = tiny_dataset(n_train=400, classes=2)
    keep = torch.cat([torch.nonzero(data.train.labels == 0).flatten(), torch.nonzero(data.train.labels == 1).flatten()[:20]])
    data.train = data.train.subset(keep)  # about 10:1
    for balance in ("none", "weight", "sample"):
        cfg = fill_defaults(TrainConfig(data="tiny", model="mlp", epochs=1, batch_size=32, device="cpu", balance=balance), data)
        trainer = Trainer(cfg, data, tmp_path / balance)
        drawn = data.train.labels[torch.cat(trainer.batches(0)).cpu()]
        share = (drawn == 1).float().mean().item()
        if balance == "sample":
            assert 0.4 < share < 0.6 and len(drawn) <= len(data.train)  # the rare class as often; the epoch as long
        else:
            assert share < 0.1
        weight = trainer.task.weight
        assert (weight is not None) == (balance == "weight")
        if weight is not None:
            assert weight[1] / weight[0] == pytest.approx((data.train.labels == 0).sum().item() / 20)


def test_balance_trains_from_python_and_is_recorded(tmp_path):
    run = api_train(str(unbalanced(tmp_path)), epochs=1, balance="sample")
    assert run.config["balance"] == "sample" and "balanced_accuracy" in run.summary
