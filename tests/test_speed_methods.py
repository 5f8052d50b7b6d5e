"""The speed methods of issue #13: each does what it says, and the options round-trip through checkpoints and resume."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import OnStep, tiny_dataset
from imgcls import checkpoint
from imgcls.config import TrainConfig, check, fill_defaults
from imgcls.data.augment import Augment, alternating_flip, prepare, random_crop
from imgcls.errors import ImgclsError
from imgcls.evaluation import predict_logits, shifted
from imgcls.inference import Predictor
from imgcls.interrupt import Interrupted
from imgcls.models import create_model
from imgcls.models.fast import PatchWhitening, init_from_data
from imgcls.training.averaging import Lookahead, WeightAverage
from imgcls.training.optim import triangle
from imgcls.training.trainer import Trainer


def smooth_images(n=64, c=3, side=16, seed=0) -> torch.Tensor:
    """Images whose neighbouring pixels and channels are strongly correlated, as in photos."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, side + 2, side + 2, generator=g) + 0.3 * torch.randn(n, c, side + 2, side + 2, generator=g)
    return F.avg_pool2d(x, 3, stride=1)


def test_whitening_layer_decorrelates_its_patches():
    images = smooth_images()
    layer = PatchWhitening(3, eps=1e-7)
    layer.init_from_data(images)
    out = F.conv2d(images, layer.weight)  # no bias: the whitening alone
    channels = out.permute(1, 0, 2, 3).reshape(24, -1)
    cov = torch.cov(channels[:12])
    assert torch.allclose(cov, torch.eye(12), atol=1e-3)
    assert torch.equal(channels[12:], -channels[:12])  # both signs, for the GELU after it
    assert not layer.weight.requires_grad and layer.bias.requires_grad


def test_whitening_stem_is_set_from_data_and_saved_with_the_model():
    model = create_model("speednet", (3, 16, 16), 4, whiten=True)
    before = model[0].weight.clone()
    assert init_from_data(model, smooth_images()) and not torch.equal(model[0].weight, before)
    assert not init_from_data(create_model("speednet", (3, 16, 16), 4), smooth_images())  # nothing to set
    assert "0.weight" in model.state_dict()


def test_dirac_convs_are_the_identity_on_their_inputs_at_init():
    model = create_model("speednet", (3, 16, 16), 4, dirac=True)
    convs = [m for m in model.modules() if type(m) is nn.Conv2d and m.kernel_size == (3, 3) and m.out_channels >= m.in_channels]
    assert len(convs) == 7
    for conv in convs:
        x = torch.randn(2, conv.in_channels, 6, 6)
        assert torch.allclose(conv(x)[:, : conv.in_channels], x, atol=1e-6)


def test_batch_norm_without_scale_keeps_its_weight_at_one():
    model = create_model("speednet", (3, 16, 16), 4, bn_scale=False)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(not bn.weight.requires_grad and bn.bias.requires_grad for bn in norms)
    trainer_model = create_model("speednet", (3, 16, 16), 4)
    assert all(m.weight.requires_grad for m in trainer_model.modules() if isinstance(m, nn.BatchNorm2d))


def test_weight_average_is_the_running_ema_with_its_ramp():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.5)
    expected = None
    for step in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(4, 3))  # moves the batch-norm statistics, which are averaged too
        d = min(0.5, step / (step + 10))  # 0 on the first update: a copy of the model
        current = [t.detach().clone() for t in (*model.parameters(), model[1].running_mean)]
        expected = current if expected is None else [d * e + (1 - d) * c for e, c in zip(expected, current)]
        average.update(model)
    for got, want in zip((*average.module.parameters(), average.module[1].running_mean), expected):
        assert torch.allclose(got, want, atol=1e-6)
    assert average.module[1].num_batches_tracked == model[1].num_batches_tracked


def test_alternating_flips_mirror_each_image_on_every_other_epoch():
    images = torch.arange(2000 * 4, dtype=torch.uint8).view(2000, 1, 1, 4)
    index = torch.arange(2000)
    flipped = [(alternating_flip(images, index, epoch) != images).any(3).view(-1) for epoch in range(3)]
    assert torch.equal(flipped[0], ~flipped[1]) and torch.equal(flipped[0], flipped[2])
    assert 0.45 < flipped[0].float().mean() < 0.55
    aug = Augment(flip=True, alternate_flips=True)
    x = prepare(images, torch.zeros(1, 1, 1), torch.ones(1, 1, 1), aug, torch.Generator(), index=index, epoch=1)
    assert torch.equal(x, alternating_flip(images, index, 1).float() / 255)


def test_reflect_padding_shifts_without_a_black_border():
    images = torch.randint(1, 256, (200, 3, 6, 6), dtype=torch.uint8)  # no zero pixel anywhere
    shifted_ = random_crop(images, 2, torch.Generator().manual_seed(0), mode="reflect")
    assert (shifted_ > 0).all() and not torch.equal(shifted_, images)
    reflected = torch.nn.functional.pad(images, (2,) * 4, mode="reflect")
    for i in range(5):  # each image is some window of its reflected copy
        windows = reflected[i].unfold(1, 6, 1).unfold(2, 6, 1)  # C, 5, 5, 6, 6
        assert any(torch.equal(windows[:, y, x], shifted_[i]) for y in range(5) for x in range(5))
    assert (random_crop(images, 2, torch.Generator().manual_seed(0)) == 0).any()  # zeros: a black border


def test_shift_tta_averages_the_flipped_and_shifted_views():
    x = torch.randn(3, 2, 5, 5)
    assert torch.equal(shifted(x, 1)[..., 1:, 1:], x[..., :-1, :-1]) and torch.equal(shifted(x, -1)[..., :-1, :-1], x[..., 1:, 1:])
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 9, 3))
    images = torch.randint(0, 256, (3, 2, 5, 5), dtype=torch.uint8)
    mean, std = torch.full((2, 1, 1), 0.5), torch.full((2, 1, 1), 0.25)
    x = (images.float() / 255 - mean) / std
    views = [x, shifted(x, 1), shifted(x, -1)]
    views += [v.flip(3) for v in views]
    want = torch.stack([model(v) for v in views]).mean(0)
    assert torch.allclose(predict_logits(model, images, mean, std, tta=True, tta_shift=1), want, atol=1e-5)
    flip_only = (model(x) + model(x.flip(3))) / 2
    assert torch.allclose(predict_logits(model, images, mean, std, tta=True), flip_only, atol=1e-5)


def speed_trainer(tmp_path, name="run", **options) -> Trainer:
    data = tiny_dataset(n_train=64, shape=(3, 12, 12))
    options = {"model": "speednet", "epochs": 2, "batch_size": 16, "device": "cpu", "precision": "fp32", "flip": True, **options}
    cfg = fill_defaults(TrainConfig(**options), data)
    (tmp_path / name).mkdir(exist_ok=True)
    return Trainer(cfg, data, tmp_path / name)


METHODS = dict(whiten=True, dirac=True, bn_scale=False, ema=0.9, alternate_flips=True, tta_shift=1, lookahead=True, width=8)


def test_methods_round_trip_through_checkpoints(tmp_path):
    trainer = speed_trainer(tmp_path, epochs=1, **METHODS)
    assert isinstance(trainer.model[0], PatchWhitening) and trainer.ema is not None
    trainer.fit()
    best, last = checkpoint.load(tmp_path / "run"), checkpoint.load(tmp_path / "run", which="last")
    assert best["model_options"] == last["model_options"] == {"width": 8, "whiten": True, "dirac": True, "bn_scale": False}
    assert last["lookahead"]["total"] == trainer.steps_per_epoch
    assert last["config"]["tta_shift"] == 1 and last["config"]["alternate_flips"] and last["ema"]["updates"] == trainer.steps_per_epoch
    # best.pt holds the average (what was validated and tested), last.pt the trained weights beside it
    averaged, trained = last["ema"]["weights"], last["state_dict"]
    assert all(torch.equal(best["state_dict"][k], v) for k, v in averaged.items())
    assert not all(torch.equal(averaged[k], v) for k, v in trained.items())
    model = checkpoint.load_model(best)
    assert isinstance(model[0], PatchWhitening) and not model[2][2].weight.requires_grad
    # predict and serve average the same views as the run's evaluation
    images = trainer.data.test.images
    mean, std = checkpoint.normalisation(best)
    want = (predict_logits(model, images, mean, std, tta=True, tta_shift=1) / best["temperature"]).softmax(1)  # calibrated
    assert torch.allclose(Predictor.from_checkpoint(tmp_path / "run", device="cpu").probabilities(images), want, atol=1e-5)


def test_a_resumed_run_continues_the_average(tmp_path):
    straight = speed_trainer(tmp_path, "straight", **METHODS)
    straight.fit()
    stopped = speed_trainer(tmp_path, "resumed", **METHODS)
    stopped.callbacks = OnStep(lambda t: t.progress.epoch == 1 and t.progress.step == 2 and t.request_stop())
    with pytest.raises(Interrupted):
        stopped.fit()
    resumed = speed_trainer(tmp_path, "resumed", **METHODS)
    resumed.load_last(checkpoint.load(tmp_path / "resumed", which="last"))
    resumed.fit()
    assert resumed.ema.updates == straight.ema.updates
    for (k, v), w in zip(resumed.model.state_dict().items(), straight.model.state_dict().values()):  # the lookahead's pull too
        assert torch.allclose(v.float(), w.float(), atol=1e-6), k
    for (k, v), w in zip(resumed.ema.module.state_dict().items(), straight.ema.module.state_dict().values()):
        assert torch.allclose(v, w, atol=1e-6), k


def test_lookahead_pulls_the_weights_to_their_average_every_five_steps():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    lookahead = Lookahead(model, total_steps=10)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    lookahead.step(model, 4)  # not a fifth step: the weights run free
    assert torch.equal(model[0].weight, start + 1)
    lookahead.step(model, 5)
    decay = Lookahead.DECAY * 0.5**3  # halfway: the pull is still weak
    pulled = decay * start + (1 - decay) * (start + 1)
    assert torch.allclose(model[0].weight, pulled)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    lookahead.settle(model)  # the end of an epoch: back to the average, without the steps since
    assert torch.allclose(model[0].weight, pulled)
    assert model[1].num_batches_tracked.dtype == torch.int64  # integer buffers are not averaged


def test_linear_schedule_warms_up_from_a_fifth_then_decays_to_seven_percent(tmp_path):
    assert [round(triangle(s, 100), 3) for s in (0, 23, 100)] == [0.2, 1.0, 0.07]
    assert triangle(10, 100) < triangle(20, 100) and triangle(50, 100) > triangle(80, 100)
    trainer = speed_trainer(tmp_path, schedule="linear", lr=0.1, norm_lr_mult=8.0, epochs=3)  # 4 steps an epoch
    peaks = [g["lr"] for g in trainer.optimizer.param_groups]
    assert sorted(set(peaks)) == pytest.approx([0.02, 0.16])  # each group starts at a fifth of its own peak (norms: 8x)
    seen = []
    trainer.callbacks = OnStep(lambda t: seen.append([g["lr"] for g in t.optimizer.param_groups]))
    trainer.fit()
    total = 3 * trainer.steps_per_epoch
    for step, lrs in enumerate(seen, 1):
        assert lrs == pytest.approx([g["initial_lr"] * triangle(step, total) for g in trainer.optimizer.param_groups])


def test_norm_layers_learn_at_the_multiplied_lr_other_biases_at_the_lr_and_neither_decays(tmp_path):
    trainer = speed_trainer(tmp_path, lr=0.1, norm_lr_mult=8.0, weight_decay=1e-3, schedule="none")
    norms = {id(p) for m in trainer.model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    for group in trainer.optimizer.param_groups:
        kinds = {"norm" if id(p) in norms else "bias" if p.ndim == 1 else "weight" for p in group["params"]}
        assert len(kinds) == 1
        want = {"norm": (0.8, 0.0), "bias": (0.1, 0.0), "weight": (0.1, 1e-3)}[kinds.pop()]
        assert (group["lr"], group["weight_decay"]) == pytest.approx(want)
    assert trainer.lr == 0.1  # what metrics.csv logs: the weights' lr


def test_speednet_width_sets_its_channels():
    model = create_model("speednet", (3, 32, 32), 10, width=16)
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [8, 16, 16, 64, 64, 64, 64] and model[-1].in_features == 64


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"model": "cnn", "whiten": True}, r"--whiten applies to: speednet; model 'cnn' has no whiten option"),
        ({"ema": 1.0}, r"--ema must be in \[0, 1\)"),
        ({"tta_shift": 9}, r"--tta-shift must be between 0 and 4 pixels"),
        ({"model": "cnn", "width": 32}, r"--width applies to: speednet"),
        ({"norm_lr_mult": 0.0}, r"--norm-lr-mult must be positive"),
        ({"schedule": "wave"}, r"unknown schedule 'wave'"),
        ({"pad_mode": "wrap"}, r"unknown pad mode 'wrap'"),
    ],
)
def test_bad_method_options_are_one_line_errors(options, message):
    with pytest.raises(ImgclsError, match=message):
        check(TrainConfig(**options))
