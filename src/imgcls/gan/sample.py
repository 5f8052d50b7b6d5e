"""Drawing images from a generator: the saved generator of a run, its noise and classes, images back as uint8."""

from pathlib import Path

import torch

from imgcls.checkpoint import read_tagged
from imgcls.errors import ImgclsError
from imgcls.gan.models import Generator

FORMAT = "imgcls-gan-v1"
BATCH = 256  # images generated at a time


def class_labels(num_classes: int, per_class: int) -> torch.Tensor | None:
    """per_class of each class in turn (0, 0, ..., 1, 1, ...), or None for an unconditional generator."""
    return torch.arange(num_classes).repeat_interleave(per_class) if num_classes else None


@torch.inference_mode()
def generate(G: Generator, noise: torch.Tensor, labels: torch.Tensor | None, device: torch.device | str) -> torch.Tensor:
    """uint8 N x C x H x W images of the generator (in eval mode) for this noise and these classes, on the CPU."""
    was_training = G.training
    G.eval()
    out = []
    for start in range(0, len(noise), BATCH):
        y = labels[start : start + BATCH].to(device) if labels is not None else None
        x = G(noise[start : start + BATCH].to(device), y).float()
        out.append(x.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).cpu())
    G.train(was_training)
    return torch.cat(out)


def load_generator(run: str | Path, device: torch.device | str = "cpu") -> tuple[Generator, dict]:
    """A GAN run's generator (its folder or generator.pt) in eval mode, and the checkpoint's other entries."""
    path = Path(run).expanduser()
    if path.is_dir():
        path = path / "generator.pt"
        if not path.is_file():
            raise ImgclsError(f"{path.parent} is not a GAN run (no generator.pt): pass a run folder made by `imgcls gan`")
    elif not path.is_file():
        raise ImgclsError(f"{path} does not exist: pass a run folder made by `imgcls gan`")
    ckpt = read_tagged(path, FORMAT, "a generator saved by `imgcls gan`", "pass a run folder made by `imgcls gan`")
    G = Generator(tuple(ckpt["shape"]), ckpt["num_classes"], ckpt["z_dim"], ckpt["width"])
    G.load_state_dict(ckpt["state_dict"])
    return G.to(device).eval(), ckpt


def labels_for(n: int, ckpt: dict, class_name: str | None) -> torch.Tensor | None:
    """The classes of n images: all of class_name, else the classes in turn (0, 1, ..., 0, 1, ...); None when unconditional."""
    classes, conditional = ckpt["classes"], ckpt["num_classes"] > 0
    if class_name is None:
        return torch.arange(n) % len(classes) if conditional else None
    if not conditional:
        raise ImgclsError("this generator was trained without classes (unconditional): drop --class")
    if class_name not in classes:
        raise ImgclsError(f"unknown class '{class_name}': choose one of {', '.join(classes)}")
    return torch.full((n,), classes.index(class_name))


def noise(n: int, z_dim: int, seed: int) -> torch.Tensor:
    """Noise drawn on the CPU, so that a seed gives the same images on any device."""
    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))
