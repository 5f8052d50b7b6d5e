"""Muon for conv filters beside SGD-Nesterov for everything else (`--optimizer muon`).

Muon (Jordan et al. 2024) steps a weight matrix by its momentum made orthogonal (the U V^T of its SVD, approximated
by a Newton-Schulz iteration), so every direction of the update moves at the same rate whatever the gradient's
spectrum. airbench94_muon uses it for its conv filters and reaches 94% on CIFAR-10 in 8 epochs instead of 9.9.
torch.optim.Muon takes 2-D parameters only and decays weights; a conv's filters are 4-D (stepped here as the
out x in*k*k matrix they apply) and, with a batch norm after the conv, scale-free: their norm is held fixed instead,
so the lr alone sets how far each step turns them. What it gave here: bench/RESULTS.md.
"""

import torch

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
