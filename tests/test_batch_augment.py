"""Batch augmentations: torchvision's TrivialAugmentWide and RandAugment on uint8 batches, MixUp and CutMix with soft
targets, from the command line and from Python."""

import json
from pathlib import Path

import pytest
import torch

from conftest import api_train, make_folder, run_cli, tiny_dataset
from imgcls.config import TrainConfig, fill_defaults
from imgcls.data.augment import Augment, prepare
from imgcls.training.trainer import Trainer


@pytest.mark.parametrize("policy", ["trivial", "rand"])
def test_auto_augment_changes_uint8_batches_reproducibly_per_group(policy):
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    mean, std = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
    torch.manual_seed(0)
    first = prepare(images, mean, std, Augment(auto_augment=policy), torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    again = prepare(images, mean, std, Augment(auto_augment=policy), torch.Generator().manual_seed(0))
    assert first.shape == images.shape and torch.equal(first, again)  # torch's global generator, saved in last.pt
    changed = [(first[i] * 255 - images[i].float()).abs().max() > 1 for i in range(64)]
    assert sum(changed) >= 16  # most groups drew an op that changes pixels (identity is one of the draws)


def test_mixup_and_cutmix_train_on_soft_targets(tmp_path):
    data = tiny_dataset(n_train=128, shape=(3, 16, 16))
    cfg = fill_defaults(TrainConfig(data="tiny", model="cnn", epochs=1, batch_size=32, device="cpu", mixup=0.4, cutmix=1.0), data)
    trainer = Trainer(cfg, data, tmp_path / "run")
    x = torch.randn(32, 3, 16, 16)
    y = torch.randint(0, 3, (32,))
    mixed, target = trainer.mix(x, y)
    assert target.shape == (32, 3) and torch.allclose(target.sum(1), torch.ones(32))
    assert not torch.equal(mixed, x)
    trainer.fit()
    assert trainer.progress.history[0]["train_loss"] > 0


def test_batch_augmentations_from_the_command_line_and_python(tmp_path, capsys):
    photos = make_folder(tmp_path / "photos", per_class=20)
    code, out, err = run_cli(capsys, "train", "--data", photos, "--epochs", "1", "--auto-augment", "trivial", "--mixup", "0.2",
                             "--cutmix", "1", "--out", "r")  # fmt: skip
    assert code == 0, err
    assert "TrivialAugmentWide, MixUp 0.2, CutMix 1" in out
    config = json.loads(Path("r/config.json").read_text())
    assert (config["auto_augment"], config["mixup"], config["cutmix"]) == ("trivial", 0.2, 1.0)
    run = api_train(str(photos), epochs=1, auto_augment="rand")
    assert run.config["auto_augment"] == "rand" and run.config["mixup"] == 0.0
