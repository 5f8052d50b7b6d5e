"""--optimizer muon: Muon's orthogonalised steps for conv filters, SGD-Nesterov for the rest (imgcls.optim)."""

import copy
import json

import pytest
import torch
import torch.nn as nn

from conftest import run_cli, tiny_dataset
from imgcls.config import TrainConfig, fill_defaults
from imgcls.training import finetune, optim
from imgcls.training.optim import make_optimizer


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, bias=False), nn.BatchNorm2d(16),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )  # fmt: skip


@pytest.mark.parametrize("shape", [(16, 72), (72, 16), (32, 32)])
def test_orthogonalise_gives_about_the_orthogonal_factor(shape):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    u, _, vt = torch.linalg.svd(g, full_matrices=False)
    x = optim.orthogonalise(g)
    singular = torch.linalg.svdvals(x)
    assert x.shape == g.shape
    # Three rough steps: none above 1.3 and most pulled near 1 (the exact factor's are all 1; a square random matrix's
    # smallest start too near 0 to get there), on the same singular vectors.
    assert singular.max() < 1.3 and singular.median() > 0.6
    assert torch.nn.functional.cosine_similarity(x.flatten(), (u @ vt).flatten(), dim=0) > 0.9


def test_filter_groups_put_conv_filters_in_muon_groups_and_keep_the_head_last():
    model = net()
    groups = finetune.param_groups(model, model[-1], lr=0.5, lr_mult=1.0, weight_decay=1e-3)
    split = optim.filter_groups(groups, base_lr=0.5, filter_lr=0.24)
    muon = [g for g in split if g.get("muon")]
    assert [p.shape for g in muon for p in g["params"]] == [model[0].weight.shape, model[3].weight.shape]
    assert all(g["lr"] == 0.24 and g["momentum"] == optim.MOMENTUM and g["weight_decay"] == 0 for g in muon)
    assert split[-1]["params"] == [model[-1].weight] and split[-1]["weight_decay"] == 1e-3
    assert sum(len(g["params"]) for g in split) == len(list(model.parameters()))


def test_filter_groups_scale_the_filter_lr_with_a_fine_tunes_discriminative_lrs():
    model = net()
    groups = finetune.param_groups(model, model[-1], lr=1e-3, lr_mult=100.0, weight_decay=0.0)
    split = optim.filter_groups(groups, base_lr=1e-3, filter_lr=0.24)
    lrs = [g["lr"] for g in split if g.get("muon")]
    assert lrs == sorted(lrs) and lrs[0] < 0.24 / 10  # the first filters learn slowest, as the other first layers


def test_muon_holds_filters_at_unit_norm_and_steps_the_rest_as_sgd():
    model, reference = net(), net()
    x, y = torch.randn(8, 3, 10, 10, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3] * 2)
    groups = optim.filter_groups(finetune.param_groups(model, model[-1], 0.1, 1.0, 1e-3), 0.1, 0.24)
    muon = optim.Muon(groups, lr=0.1, momentum=0.85)
    sgd = torch.optim.SGD(finetune.param_groups(reference, reference[-1], 0.1, 1.0, 1e-3), lr=0.1, momentum=0.85, nesterov=True)
    before = copy.deepcopy(model[3].weight.detach())
    for opt, m in ((muon, model), (sgd, reference)):
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    assert not torch.allclose(model[3].weight, before)
    # Each step first sets the filters back to norm sqrt(out) (unit norm per filter on average): seen with a step of lr 0.
    for group in muon.param_groups:
        group["lr"] = 0.0 if group.get("muon") else group["lr"]
    nn.functional.cross_entropy(model(x), y).backward()
    muon.step()
    for filters in (model[0].weight, model[3].weight):
        assert filters.norm().item() == pytest.approx(filters.shape[0] ** 0.5, rel=1e-5)
    # Before any filter moved, both took the same first step on the rest; after it the inputs to the head differ,
    # so only the first step compares exactly: check it on fresh copies.
    model, reference = net(), net()
    muon = optim.Muon(optim.filter_groups(finetune.param_groups(model, model[-1], 0.1, 1.0, 1e-3), 0.1, 0.24), lr=0.1, momentum=0.85)
    sgd = torch.optim.SGD(finetune.param_groups(reference, reference[-1], 0.1, 1.0, 1e-3), lr=0.1, momentum=0.85, nesterov=True)
    for opt, m in ((muon, model), (sgd, reference)):
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    for mine, theirs in (
        (model[-1].weight, reference[-1].weight),
        (model[-1].bias, reference[-1].bias),
        (model[1].bias, reference[1].bias),
    ):
        assert torch.allclose(mine, theirs, atol=1e-6)
    assert not torch.allclose(model[0].weight, reference[0].weight)


def test_muon_keeps_the_recipes_sgd_settings_for_the_rest():
    data = tiny_dataset(shape=(3, 16, 16))
    data.flips_ok = True
    sgd = fill_defaults(TrainConfig(data="tiny", device="cpu"), data)
    muon = fill_defaults(TrainConfig(data="tiny", device="cpu", optimizer="muon"), data)
    assert (muon.lr, muon.weight_decay, muon.momentum, muon.norm_lr_mult) == (sgd.lr, sgd.weight_decay, sgd.momentum, sgd.norm_lr_mult)
    assert muon.muon_lr == 0.24
    opt = make_optimizer(fill_defaults(TrainConfig(data="tiny", device="cpu", optimizer="muon", muon_lr=0.1), data), net(), 4)
    assert isinstance(opt, optim.Muon) and [g["lr"] for g in opt.param_groups if g.get("muon")] == [pytest.approx(0.1)]


def test_train_with_muon_from_the_command_line(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "--optimizer", "muon", "--muon-lr", "0.3", "--epochs", "1", "--out", tmp_path / "run")
    assert code == 0, err
    assert "recipe fast: muon lr 0.2 (filters 0.3)" in out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["optimizer"], config["muon_lr"], config["weight_decay"]) == ("muon", 0.3, 5e-4)  # the digit recipe's sgd decay
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # One epoch of the sample, seeds 0-2 in bf16 and fp32 (Intel Xeon, AMX): muon 97.2-97.9%, sgd 91.9-95.5%.
    assert summary["test_accuracy"] > 0.96
