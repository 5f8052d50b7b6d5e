"""The optimizers and learning-rate schedules of a run, and Muon for conv filters beside SGD-Nesterov for everything
else (`--optimizer muon`).

Muon (Jordan et al. 2024) steps a weight matrix by its momentum made orthogonal (the U V^T of its SVD, approximated
by a Newton-Schulz iteration), so every direction of the update moves at the same rate whatever the gradient's
spectrum. airbench94_muon uses it for its conv filters and reaches 94% on CIFAR-10 in 8 epochs instead of 9.9.
torch.optim.Muon takes 2-D parameters only and decays weights; a conv's filters are 4-D (stepped here as the
out x in*k*k matrix they apply) and, with a batch norm after the conv, scale-free: their norm is held fixed instead,
so the lr alone sets how far each step turns them. What it gave here: bench/RESULTS.md.
"""

import torch
import torch.nn as nn

from imgcls.training import finetune

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # a quintic whose fixed point pulls singular values into about [0.7, 1.2]
NS_STEPS = 3  # airbench94_muon's count (torch.optim.Muon's default is 5)
MOMENTUM = 0.6  # the filters' (airbench94_muon's); the other groups keep --momentum


def orthogonalise(g: torch.Tensor, steps: int = NS_STEPS) -> torch.Tensor:
    """An approximate U V^T of the matrix g, by Newton-Schulz: fast and rough, which is all Muon needs."""
    a, b, c = NS_COEFFICIENTS
    x = g / (g.norm() + 1e-7)  # singular values at most 1, where the iteration converges
    wide = x.shape[0] <= x.shape[1]
    x = x if wide else x.T  # x @ x.T on the smaller side
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return x if wide else x.T


def filter_groups(groups: list[dict], base_lr: float, filter_lr: float) -> list[dict]:
    """`groups` (finetune.param_groups') with each group's conv filters (4-D weights) moved to a Muon group just before
    it, at filter_lr scaled as that group's lr is to base_lr (discriminative lrs of a fine-tune); the order of the rest,
    so the head's weights stay last, is kept."""
    out = []
    for group in groups:
        filters = [p for p in group["params"] if p.ndim == 4]
        rest = [p for p in group["params"] if p.ndim != 4]
        if filters:
            out.append(
                {"params": filters, "lr": filter_lr * group["lr"] / base_lr, "momentum": MOMENTUM, "weight_decay": 0.0, "muon": True}
            )
        if rest:
            out.append({**group, "params": rest})
    return out


class Muon(torch.optim.SGD):
    """SGD with Nesterov momentum for every group but those marked `muon`, whose filters take Muon's step: Nesterov
    momentum, orthogonalised, after the filters are set back to norm sqrt(out channels) (each filter unit norm on
    average, as airbench94_muon holds them)."""

    def __init__(self, groups: list[dict], lr: float, momentum: float):
        super().__init__(groups, lr=lr, momentum=momentum, nesterov=True)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            if group.get("muon"):
                for p in group["params"]:
                    if p.grad is not None:
                        self._filter_step(p, group)
                        p.grad = None  # done: SGD's step below skips parameters without a gradient
        return super().step()

    def _filter_step(self, p: torch.Tensor, group: dict) -> None:
        momentum = group["momentum"]
        buf = self.state[p].setdefault("muon_momentum", torch.zeros_like(p))
        buf.mul_(momentum).add_(p.grad)
        g = p.grad.add(buf, alpha=momentum)
        p.mul_(p.shape[0] ** 0.5 / (p.norm() + 1e-12))
        p.add_(orthogonalise(g.flatten(1).float()).view_as(p).to(p.dtype), alpha=-group["lr"])


def make_optimizer(cfg, model: nn.Module, num_classes: int) -> torch.optim.Optimizer:
    """The run's optimizer over finetune.param_groups (discriminative lrs, no decay on biases and norms)."""
    head = finetune.classifier(model, num_classes)
    groups = finetune.param_groups(model, head, cfg.lr, cfg.lr_mult or 1.0, cfg.weight_decay, cfg.norm_lr_mult or 1.0)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    if cfg.optimizer == "muon":
        return Muon(filter_groups(groups, cfg.lr, cfg.muon_lr), lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_schedule(cfg, optimizer, steps_per_epoch: int):
    """The LR scheduler and whether it steps per batch (True) or per epoch (False)."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle" and total >= 4:  # fewer steps leave OneCycle's warm-up phase empty
        peaks = [group["lr"] for group in optimizer.param_groups]  # discriminative lrs: each group's own peak
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=total, pct_start=max(0.25, 2 / total)), True
    if cfg.schedule == "linear":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: triangle(step, total)), True
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total), True
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, cfg.epochs // 3), gamma=0.1), False
    return None, False


def triangle(step: int, total: int, start: float = 0.2, peak: float = 0.23, end: float = 0.07) -> float:
    """airbench94's lr schedule, as a fraction of the peak lr: linear from `start` up to 1 at `peak` of the run, then
    linear down to `end`. Unlike one-cycle it leaves momentum alone and ends well above zero, which suits the short runs
    where Lookahead averages the last steps."""
    at = step / max(total, 1)
    return start + (1 - start) * at / peak if at < peak else 1 + (end - 1) * (at - peak) / (1 - peak)
