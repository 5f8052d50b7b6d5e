"""What an autoencoder makes of images: its losses, codes, reconstruction errors and reconstructions, and images
decoded from codes. Training, the report and `imgcls embed` all use these."""

from dataclasses import dataclass

import torch

from imgcls.data.augment import denormalize, prepare
from imgcls.device import autocast
from imgcls.models.autoencoder import AutoEncoder

EVAL_BATCH = 1024


def kl_divergence(code: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(code, exp(logvar)) || N(0, I)) of each row, in nats."""
    return 0.5 * (code.square() + logvar.exp() - 1 - logvar).sum(1)


def losses(model: AutoEncoder, images: torch.Tensor, mean, std, amp, channels_last: bool, generator=None):
    """Summed squared error and KL (zeros for a plain autoencoder) of each uint8 image, its code and its reconstruction
    in [0, 1]. A VAE samples its code with noise from `generator` (training) or decodes its mean (evaluation)."""
    target = images.float().div_(255)
    x = prepare(images, mean, std)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    noise = None
    if model.variational and generator is not None:
        noise = torch.randn(len(x), model.latent_dim, generator=generator, device=x.device)
    with autocast(x.device, amp):
        logits, code, logvar = model(x, noise)
    recon = logits.float().sigmoid()
    squared = (recon - target).square().flatten(1).sum(1)
    kl = kl_divergence(code.float(), logvar.float()) if logvar is not None else torch.zeros_like(squared)
    return squared, kl, code.float(), recon


@dataclass
class Encoded:
    codes: torch.Tensor  # N x latent_dim: the code (a VAE's mean code)
    errors: torch.Tensor  # N: reconstruction MSE per pixel, pixels in [0, 1]
    kl: torch.Tensor  # N: KL from the prior in nats (zeros for a plain autoencoder)


@torch.inference_mode()
def encode(model: AutoEncoder, images: torch.Tensor, mean, std, amp=None, channels_last=False, batch_size=EVAL_BATCH) -> Encoded:
    """Codes, errors and KL of uint8 images, batch by batch on the model's device; results on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    parts = []
    for start in range(0, len(images), batch_size):
        squared, kl, code, _ = losses(model, images[start : start + batch_size].to(device), mean, std, amp, channels_last)
        parts.append((code.cpu(), squared.cpu() / images[0].numel(), kl.cpu()))
    if not parts:
        return Encoded(torch.empty(0, model.latent_dim), torch.empty(0), torch.empty(0))
    return Encoded(*(torch.cat(column) for column in zip(*parts)))


@torch.inference_mode()
def reconstruct(model: AutoEncoder, images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 reconstructions of a few uint8 images."""
    model.eval()
    recon = losses(model, images.to(next(model.parameters()).device), mean, std, None, False)[3]
    return to_pixels(recon)


@torch.inference_mode()
def decode(model: AutoEncoder, codes: torch.Tensor) -> torch.Tensor:
    """uint8 images decoded from codes."""
    model.eval()
    return to_pixels(model.decoder(codes.to(next(model.parameters()).device)).float().sigmoid())


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    return denormalize(x, 0.0, 1.0).cpu()
