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


def table() -> str:
    """The built-in models with their parameter counts on MNIST-shaped and CIFAR-shaped inputs (10 classes)."""
    from imgcls.models.registry import MODELS, create_model

    width = max(len(n) for n in MODELS)
    lines = [f"{'model':<{width}}  {'1x28x28':>11}  {'3x32x32':>11}  description"]
    for name, info in MODELS.items():
        counts = [f"{num_params(create_model(name, s, 10)):>11,}" for s in ((1, 28, 28), (3, 32, 32))]
        lines.append(f"{name:<{width}}  {counts[0]}  {counts[1]}  {info.description}")
    return "\n".join(lines)


def parse_shape(text: str) -> tuple[int, int, int]:
    """C,H,W as typed (`--input 3,32,32`); one line for anything else."""
    from imgcls.errors import ImgclsError

    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ImgclsError(f"--input must be C,H,W sizes of at least 1, such as 3,32,32, got '{text}'")
    return shape
