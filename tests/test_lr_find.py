import csv
import json
import math
import shlex
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import make_folder, tiny_dataset
from imgcls.cli import build_parser, main
from imgcls.config import TrainConfig, fill_defaults
from imgcls.errors import ImgclsError
from imgcls.models import MODELS
from imgcls.training.lr_find import lr_at, probe, suggest
from imgcls.training.trainer import Trainer


def filled(data, **options) -> TrainConfig:
    return fill_defaults(TrainConfig(**{"model": "mlp", "batch_size": 32, "device": "cpu", "epochs": 3, **options}), data)


def test_the_lr_grows_exponentially_from_start_to_end(tmp_path):
    lrs = [lr_at(i, 7, 1e-6, 1.0) for i in range(7)]
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1.0)
    assert [b / a for a, b in zip(lrs, lrs[1:])] == pytest.approx([10.0] * 6)
    data = tiny_dataset()
    result = probe(filled(data), data, tmp_path, steps=5, start_lr=1e-4, end_lr=1e-2)  # small enough not to diverge
    assert [r["lr"] for r in result.rows] == pytest.approx([1e-4 * 10 ** (i / 2) for i in range(5)])
    assert [r["step"] for r in result.rows] == [1, 2, 3, 4, 5] and not result.diverged


def test_the_suggestion_is_the_steepest_descent_and_the_minimum_is_a_tenth_of_the_best_lr():
    lrs = [10 ** (-6 + 7 * i / 69) for i in range(70)]
    # Falls fastest around lr 1e-2, bottoms out near 1e-1, then climbs.
    losses = [2 - math.tanh(2 * (math.log10(lr) + 2)) + 3 * max(0.0, math.log10(lr) + 1) ** 2 for lr in lrs]
    rows = [{"lr": lr, "smoothed_loss": loss} for lr, loss in zip(lrs, losses)]
    steepest, minimum = suggest(rows, 70)
    assert 10**-2.2 < steepest < 10**-1.8
    best = lrs[losses.index(min(losses))]
    assert minimum == pytest.approx(best / 10)
    with pytest.raises(ImgclsError, match="not finite by step 1"):
        suggest([{"lr": 1e-7, "smoothed_loss": math.nan}], 100)


def test_the_suggested_lr_lies_where_the_loss_falls_and_trains_the_model(tmp_path):
    data = tiny_dataset(n_train=256)
    cfg = filled(data)
    result = probe(cfg, data, tmp_path, steps=60, start_lr=1e-5, end_lr=10.0)
    lrs = [r["lr"] for r in result.rows]
    smoothed = [r["smoothed_loss"] for r in result.rows]
    at = lrs.index(result.steepest)
    assert 1e-5 < result.steepest < lrs[smoothed.index(min(smoothed))] < lrs[-1]  # before the minimum, so below any divergence
    assert smoothed[at + 1] < smoothed[at] < smoothed[0]  # the loss falls there
    accuracy = {}
    for lr in (result.steepest, 1e-5):  # the suggestion trains it; the start of the range does not
        (tmp_path / f"{lr:g}").mkdir()
        trainer = Trainer(replace(cfg, lr=lr), data, tmp_path / f"{lr:g}")
        for _ in range(cfg.epochs):
            trainer.train_epoch()
            row = trainer.end_epoch()
        accuracy[lr] = row["val_acc"]
    # Seeds 0-4 in fp32 and bf16 (Intel Xeon, AMX): the suggestion trains to 72-100%, the start of the range to 25-47%.
    assert accuracy[result.steepest] >= 0.7 and accuracy[result.steepest] - accuracy[1e-5] >= 0.3


def test_a_diverging_loss_stops_the_probe_early(tmp_path):
    data = tiny_dataset()
    result = probe(filled(data), data, tmp_path, steps=60, start_lr=1e-5, end_lr=1e6)
    assert result.diverged and len(result.rows) < 60
    best = min(r["smoothed_loss"] for r in result.rows[:-1])
    last = result.rows[-1]["smoothed_loss"]
    assert not math.isfinite(last) or last > 4 * best
    assert result.steepest < result.rows[-1]["lr"]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_model_can_be_probed(tmp_path, model):
    data = tiny_dataset(n_train=32, shape=(1, 28, 28))
    result = probe(filled(data, model=model, batch_size=8), data, tmp_path, steps=4, start_lr=1e-4, end_lr=1e-2)
    assert len(result.rows) == 4 and all(math.isfinite(r["loss"]) for r in result.rows)
    assert 1e-4 <= result.steepest <= 1e-2


def test_cli_writes_the_curve_and_prints_a_train_command_with_the_suggestion(tmp_path, capsys):
    folder = make_folder(tmp_path / "pets")
    argv = ["--data", str(folder), "--model", "mlp", "--batch-size", "4", "--no-augment"]
    assert main(["lr-find", *argv, "--steps", "12", "--start-lr", "1e-4", "--end-lr", "1"]) == 0
    out = capsys.readouterr().out
    run = Path("runs/pets-mlp-lr-find-1")
    info = json.loads((run / "lr_find.json").read_text())
    with open(run / "lr_find.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "lr", "loss", "smoothed_loss"] and len(rows) == info["steps_run"] <= 12
    assert 1e-4 <= info["suggested_lr"] <= 1 and info["minimum_lr_div10"] < 1 and info["diverged"] is False
    assert info["config"]["model"] == "mlp" and info["config"]["augment"] is False and "lr" not in info["config"]
    assert (run / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(run.glob("*.pt"))  # a probe: no weights kept
    assert f"suggested lr {info['suggested_lr']:.2g} (steepest descent)" in out
    command = next(line.strip() for line in out.splitlines() if line.strip().startswith("imgcls train"))
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert args.command == "train" and args.model == "mlp" and args.batch_size == 4 and args.augment is False
    assert args.data == str(folder) and args.lr == pytest.approx(info["suggested_lr"], rel=0.05)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--steps", "1"], "--steps must be at least 2"),
        (["--start-lr", "0"], "0 < start < end"),
        (["--start-lr", "1", "--end-lr", "0.5"], "0 < start < end"),
        (["--end-lr", "inf"], "0 < start < end"),
        (["--end-lr", "nan"], "0 < start < end"),
        (["--model", "nosuch"], "unknown model"),
    ],
)
def test_bad_values_are_one_line_errors(capsys, args, message):
    assert main(["lr-find", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imgcls: error: ") and message in err and err.count("\n") == 1
    assert not Path("runs").exists()
