"""A layer-by-layer table of a model: output shapes and parameter counts for a given input."""

import torch
import torch.nn as nn

from imgcls.models.registry import num_params


def summarize(model: nn.Module, in_shape: tuple[int, int, int]) -> str:
    rows: list[tuple[str, str, str, int]] = []
    hooks = []
    for name, module in model.named_modules():
        if name and not list(module.children()):  # leaves only: containers would repeat their children

            def hook(mod, _inputs, output, name=name):
                shape = "x".join(map(str, output.shape[1:])) if isinstance(output, torch.Tensor) else "-"
                rows.append((name, type(mod).__name__, shape, sum(p.numel() for p in mod.parameters(recurse=False))))

            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *in_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    width = max(5, *(len(r[0]) for r in rows))
    kind = max(4, *(len(r[1]) for r in rows))
    lines = [f"{'layer':<{width}}  {'type':<{kind}}  {'output':>12}  {'params':>10}", "-" * (width + kind + 28)]
    lines += [f"{n:<{width}}  {t:<{kind}}  {s:>12}  {p:>10,}" for n, t, s, p in rows]
    total = num_params(model)
    lines += [
        "-" * (width + kind + 28),
        f"input {'x'.join(map(str, in_shape))}, total params {total:,} ({total * 4 / 2**20:.2f} MiB as float32)",
    ]
    return "\n".join(lines)
