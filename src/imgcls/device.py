"""Device choice and the CUDA-only speed-ups (mixed precision, channels_last)."""

import contextlib

import torch

from imgcls.errors import ImgclsError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ImgclsError("--device cuda was asked for but no CUDA GPU is visible: use --device auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ImgclsError("--device mps was asked for but Apple's MPS backend is not available: use --device auto or cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise ImgclsError(f"unknown device '{name}': choose auto, cpu, cuda or mps")
    return torch.device(name)


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU has it (no loss scaling needed), else fp16; None on CPU and MPS."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def use_channels_last(device: torch.device, convolutional: bool) -> bool:
    """channels_last lets cuDNN use its fastest (tensor core) convolution kernels; on CPU it rarely pays."""
    return device.type == "cuda" and convolutional
