"""Weight averaging: an exponential moving average (EMA) of a model's weights, the model that is evaluated and saved.

The average of the last few hundred steps' weights sits nearer the middle of the loss valley than the last step's,
so it usually tests better for the same training (airbench's Lookahead/EMA; bench/RESULTS.md has what it gave here).
"""

import copy

import torch
import torch.nn as nn


class WeightAverage:
    """EMA of `model`'s parameters and float buffers (batch-norm statistics); integer buffers are copied.
        The decay ramps up as min(decay, n / (n + 10)) after n updates: the first update copies the model (whatever weights it was
    given after this was made), and early averages do not hold on to the random init."""

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.updates = decay, 0

    def current_decay(self) -> float:
        return min(self.decay, self.updates / (self.updates + 10))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        weight = 1 - self.current_decay()
        self.updates += 1
        mine = [*self.module.parameters(), *self.module.buffers()]
        theirs = [*model.parameters(), *model.buffers()]
        floats = [(a, b) for a, b in zip(mine, theirs) if a.is_floating_point()]
        torch._foreach_lerp_([a for a, _ in floats], [b.detach() for _, b in floats], weight)
        for a, b in zip(mine, theirs):
            if not a.is_floating_point():
                a.copy_(b)

    def state_dict(self) -> dict:
        return {"weights": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["weights"])
        self.updates = state["updates"]
