"""Rebuilding a trained model from its checkpoint, ready for inference."""

import torch
import torch.nn as nn

from imgcls.errors import ImgclsError
from imgcls.models import create_model


def load_model(ckpt: dict, device: torch.device | str = "cpu") -> nn.Module:
    """The checkpoint's model with its weights, in eval mode on `device`."""
    model = create_model(ckpt["model"], tuple(ckpt["in_shape"]), len(ckpt["classes"]), **ckpt.get("model_options", {}))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise ImgclsError(
            f"{ckpt['path']} does not match model '{ckpt['model']}' with {len(ckpt['classes'])} classes ({str(e).splitlines()[0]}): "
            "the file was edited or written by another version; retrain or use the run's own best.pt"
        ) from None
    return model.to(device).eval()


def normalisation(ckpt: dict, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The checkpoint's mean and std as C x 1 x 1 tensors, ready to normalise a batch."""
    return (
        torch.tensor(ckpt["mean"], device=device).view(-1, 1, 1),
        torch.tensor(ckpt["std"], device=device).view(-1, 1, 1),
    )
