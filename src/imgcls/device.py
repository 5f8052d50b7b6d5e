"""Device choice and the speed-ups that depend on it (mixed precision, channels_last)."""

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


def cpu_has_bf16() -> bool:
    """Native bf16 math (AVX512-BF16 or AMX): there bf16 autocast trains small CNNs about 2x faster;
    elsewhere oneDNN emulates it and it is slower than fp32."""
    cpu = torch.cpu
    return any(getattr(cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def amp_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for a precision setting, or None for plain fp32.

    auto: bf16 on GPUs that have it (no loss scaling needed), else fp16; bf16 on CPUs with native bf16; fp32 otherwise.
    """
    if precision == "fp32" or device.type == "mps":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def use_channels_last(device: torch.device, convolutional: bool) -> bool:
    """channels_last lets cuDNN use its tensor-core kernels, and oneDNN on CPUs its blocked ones (measured on
    2 cores: digitnet and speednet train about 1.3x faster); MPS gains nothing from it."""
    return convolutional and device.type in ("cuda", "cpu")
