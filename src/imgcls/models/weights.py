"""Initial weights for a new run (`imgcls train --weights`): another imgcls run's, or a state dict file
(torch.save or safetensors, with torchvision, timm or any other key names). Every tensor whose name and shape
fit the model is loaded; the rest of the model (a head for other classes, say) keeps its fresh initialisation."""

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from imgcls.errors import ImgclsError, missing_extra

# Where training scripts commonly keep the weights inside a saved dict (an imgcls checkpoint is a "state_dict" one).
WRAPPERS = ("state_dict", "model", "model_state_dict")
# Added to every key by DistributedDataParallel and by torch.compile.
PREFIXES = ("module.", "_orig_mod.")
WANTED = "pass an imgcls run folder or checkpoint, or a state dict saved with torch.save (.pt, .pth) or safetensors"


@dataclass
class Weights:
    path: Path
    state_dict: dict[str, torch.Tensor]
    model: str | None = None  # the imgcls model they were trained as, when the file says
    model_options: dict | None = None  # and that model's options (speednet's width, whitening stem, ...)


@dataclass
class Report:
    path: Path
    loaded: list[str]
    skipped: list[str]  # in the file, but no model tensor has that name and shape
    new: list[str]  # in the model, not in the file: they stay as initialised

    def __str__(self) -> str:
        new = f" ({', '.join(self.new)})" if 0 < len(self.new) <= 4 else ""
        return (
            f"weights from {self.path}: {len(self.loaded)} tensors loaded, {len(self.skipped)} skipped (shape or name differ), "
            f"{len(self.new)} new{new}"
        )


def read_state_dict(path: str | Path) -> Weights:
    """The named tensors of a run folder (its best.pt), an imgcls checkpoint, or a .pt/.pth/.safetensors state dict, on the CPU."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ImgclsError(f"--weights {path} does not exist: {WANTED}")
    if path.is_dir():
        found = [path / name for name in ("best.pt", "last.pt") if (path / name).is_file()]
        if not found:
            raise ImgclsError(f"--weights {path} is a folder without best.pt or last.pt: {WANTED}")
        path = found[0]
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise missing_extra("--weights with a .safetensors file", "safetensors", e) from None
        try:
            return _named_tensors(path, load_file(str(path), device="cpu"))
        except Exception as e:  # noqa: BLE001 - a damaged file, whatever the reader raises
            raise ImgclsError(f"cannot read --weights {path} ({type(e).__name__}): it is damaged or not a safetensors file") from None
    try:
        with warnings.catch_warnings():  # torch's warnings on a foreign file (its pickle protocol) would come before our one line
            warnings.simplefilter("ignore")
            saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt, truncated, foreign or pickled-object files all get the same advice
        raise ImgclsError(
            f"cannot read --weights {path} ({type(e).__name__}): it is damaged, or not tensors saved with torch.save "
            "(a whole pickled model is refused: save its state_dict())"
        ) from None
    return _named_tensors(path, saved)


def _named_tensors(path: Path, saved) -> Weights:
    model, options = None, None
    while isinstance(saved, dict) and not any(isinstance(v, torch.Tensor) for v in saved.values()):
        if isinstance(saved.get("model"), str):  # an imgcls checkpoint names its model
            model, options = saved["model"], saved.get("model_options")
        inner = next((saved[key] for key in WRAPPERS if isinstance(saved.get(key), dict)), None)
        if inner is None:
            break
        saved = inner
    tensors = (
        {_strip(k): v for k, v in saved.items() if isinstance(k, str) and isinstance(v, torch.Tensor)} if isinstance(saved, dict) else {}
    )
    if not tensors:
        raise ImgclsError(f"--weights {path} holds no named tensors: {WANTED}")
    return Weights(path, tensors, model, options if isinstance(options, dict) else None)


def _strip(key: str) -> str:
    while True:
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        else:
            return key


def transfer(model: nn.Module, weights: Weights, model_name: str) -> Report:
    """Copy every tensor of `weights` whose name and shape fit into `model` (parameters and buffers, in place)."""
    own = model.state_dict()
    fits = {k: v for k, v in weights.state_dict.items() if k in own and own[k].shape == v.shape}
    # Biases and norm statistics alone (a 10-class head's bias fits any 10-class model) are no pretrained model:
    # at least one weight matrix or kernel must fit.
    if not any(v.ndim >= 2 for v in fits.values()):
        hint = (
            f"it holds a '{weights.model}' model: pass --model {weights.model}"
            if weights.model and weights.model != model_name
            else "it was trained for another architecture; pick the matching --model"
        )
        raise ImgclsError(f"--weights {weights.path} fits none of model '{model_name}''s {len(own)} tensors: {hint}")
    model.load_state_dict(fits, strict=False)  # copies in place, to the model's device, dtype and memory format
    return Report(weights.path, list(fits), [k for k in weights.state_dict if k not in fits], [k for k in own if k not in fits])
