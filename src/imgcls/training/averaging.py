"""Weight averaging: an exponential moving average (EMA) of a model's weights, the model that is evaluated and saved;
or Lookahead, where the weights themselves are pulled back to their average every few steps.

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


class Lookahead:
    """airbench94's Lookahead: every EVERY steps an average of the weights (and norm statistics) moves toward them by
    1 - decay, and the weights are set to it. The decay rises as DECAY * (step / total) ** 3: early steps run free,
    late ones are pulled to the average of the last few hundred, which settles the noisy end of a short high-lr run.
    At the end of every epoch the model is set to the average (settle): the weights validated, tested and saved."""

    EVERY, DECAY = 5, 0.95**5

    def __init__(self, model: nn.Module, total_steps: int):
        self.total = total_steps
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    def step(self, model: nn.Module, step: int) -> None:
        """After optimizer step number `step` (1-based, counted over the whole run)."""
        if step % self.EVERY == 0:
            self._update(model, self.DECAY * min(1.0, step / self.total) ** 3)

    def settle(self, model: nn.Module) -> None:
        """Set the model to the average (the steps since the last update are left out)."""
        self._update(model, 1.0)

    @torch.no_grad()
    def _update(self, model: nn.Module, decay: float) -> None:
        state = model.state_dict()
        for name, average in self.average.items():
            average.lerp_(state[name].detach(), 1 - decay)
            state[name].copy_(average)

    def state_dict(self) -> dict:
        return {"average": self.average, "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        for name, value in state["average"].items():
            self.average[name].copy_(value)
        self.total = state["total"]
